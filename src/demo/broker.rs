//! A Kafka-protocol broker process for `sluice bench --broker noida`: noida-db (PyPI
//! `noida-db`, installed by `scripts/setup.sh`; `SLUICE_NOIDA_DB` overrides its path),
//! started on a free loopback port with its data in a temporary directory, stopped when
//! dropped. Unlike the in-process mock cluster it keeps every record, so long runs (millions
//! of records, many partitions) can be measured.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

/// Why the broker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("noida-db is not installed (scripts/setup.sh installs it from PyPI; SLUICE_NOIDA_DB may point at the binary)")]
    NotInstalled,
    #[error("starting {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("noida-db did not open {address} within 20 s")]
    NotListening { address: String },
    #[error("creating topic `{topic}`: {message}")]
    Topic { topic: String, message: String },
    #[error("a temporary directory: {0}")]
    Io(#[from] std::io::Error),
}

/// A running noida-db process.
pub struct Broker {
    child: Child,
    pub address: String,
    port: u16,
    binary: PathBuf,
    data: tempfile::TempDir,
}

impl Broker {
    /// Starts one on a free port with an empty data directory.
    pub fn start() -> Result<Broker, BrokerError> {
        let binary = binary().ok_or(BrokerError::NotInstalled)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let data = tempfile::tempdir()?;
        let child = spawn(&binary, port, data.path())?;
        Ok(Broker {
            child,
            address: format!("127.0.0.1:{port}"),
            port,
            binary,
            data,
        })
    }

    /// Stops the process (SIGTERM, then SIGKILL after 5 s); its data stays.
    pub fn stop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) -> Result<(), BrokerError> {
        self.child = spawn(&self.binary, self.port, self.data.path())?;
        Ok(())
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), BrokerError> {
        let error = |message: String| BrokerError::Topic {
            topic: topic.to_owned(),
            message,
        };
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.address)
            .create()
            .map_err(|e| error(e.to_string()))?;
        let created = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .map_err(|e| error(e.to_string()))?;
        for result in created {
            result.map_err(|(_, code)| error(code.to_string()))?;
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }
}

/// noida-db serving Kafka on `port` from `data`, once the port is open.
fn spawn(binary: &Path, port: u16, data: &Path) -> Result<Child, BrokerError> {
    let mut child = Command::new(binary)
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
        .map_err(|source| BrokerError::Spawn {
            path: binary.to_owned(),
            source,
        })?;
    let address = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&address).is_err() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(BrokerError::NotListening { address });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

/// SIGTERM, then SIGKILL if the process has not exited within `grace`; its exit status
/// when it exited by itself.
pub fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: sending a signal to our own child process id.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
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

/// The noida-db binary: `SLUICE_NOIDA_DB`, else the one inside the installed Python package.
fn binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("SLUICE_NOIDA_DB") {
        return Some(PathBuf::from(path));
    }
    let output = Command::new("python3")
        .args([
            "-c",
            "import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), 'noida-db'))",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    (output.status.success() && path.exists()).then_some(path)
}
