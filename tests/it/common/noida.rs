//! A noida-db broker process (PyPI `noida-db`, installed by `scripts/setup.sh`) for tests
//! that need a broker in a separate process or what the mock cluster lacks
//! (`offsets_for_times`). `SLUICE_NOIDA_DB` overrides the binary's path.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

/// A noida-db broker process on a free loopback port; stopped when dropped.
pub struct Broker {
    child: Child,
    pub address: String,
    _data: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = tempfile::tempdir().unwrap();
        let child = spawn(port, data.path());
        Broker {
            child,
            address: format!("127.0.0.1:{port}"),
            _data: data,
        }
    }

    /// Stops the broker process (its data stays for [`Broker::restart`]).
    pub fn stop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }

    /// Starts the broker again on the same port with the same data.
    pub fn restart(&mut self) {
        let port = self.address.rsplit_once(':').unwrap().1.parse().unwrap();
        self.child = spawn(port, self._data.path());
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.address)
            .create()
            .unwrap();
        let created = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .unwrap();
        assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }
}

/// A noida-db process serving Kafka on `port` from `data`, once the port is open.
fn spawn(port: u16, data: &std::path::Path) -> Child {
    let binary = noida_binary();
    let child = Command::new(&binary)
        .args([
            "start",
            "--only",
            "kafka",
            "--kafka-port",
            &port.to_string(),
            "--data-dir",
        ])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    let address = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&address).is_err() {
        assert!(Instant::now() < deadline, "noida-db did not open {address}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn noida_binary() -> PathBuf {
    if let Ok(path) = std::env::var("SLUICE_NOIDA_DB") {
        return PathBuf::from(path);
    }
    let output = Command::new("python3")
        .args(["-c", "import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), 'noida-db'))"])
        .output()
        .expect("python3 is needed to find noida-db");
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    assert!(
        output.status.success() && path.exists(),
        "noida-db is not installed: run scripts/setup.sh (pip install noida-db==0.2.3)"
    );
    path
}

/// SIGTERM, then SIGKILL if the process has not exited within `grace`.
pub fn terminate(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    // SAFETY: sending a signal to our own child process id.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
