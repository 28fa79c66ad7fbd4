//! An S3-protocol server process (moto's server mode, PyPI `moto[server]`, installed by
//! `scripts/setup.sh`) on a free loopback port, and what tests do with its buckets.
//! `SLUICE_MOTO_SERVER` overrides the binary's path.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt};

use super::noida::terminate;

pub const ACCESS_KEY: &str = "sluice-test-key";
pub const SECRET_KEY: &str = "sluice-test-secret-do-not-print";

/// A moto S3 server process; stopped when dropped.
pub struct S3Server {
    child: Child,
    pub port: u16,
    pub endpoint: String,
}

impl S3Server {
    pub fn start() -> S3Server {
        let port = super::free_port();
        let child = spawn(port);
        S3Server {
            child,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Stops the server (moto keeps its data in memory: a restart starts empty).
    pub fn stop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }

    /// Creates `bucket` (moto's server accepts unsigned requests).
    pub fn create_bucket(&self, bucket: &str) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    /// The `storage` block of a pipeline file for this server (credentials from the
    /// environment variables a test sets with [`Self::env`]).
    pub fn storage_yaml(&self) -> String {
        format!(
            "storage:\n  s3://:\n    endpoint: {}\n    region: us-east-1\n    path_style: true\n    allow_http: true\n    access_key_id: ${{SLUICE_TEST_S3_KEY}}\n    secret_access_key: ${{SLUICE_TEST_S3_SECRET}}\n",
            self.endpoint
        )
    }

    /// Variables [`Self::storage_yaml`] reads.
    pub fn env(&self) -> [(&'static str, &'static str); 2] {
        [
            ("SLUICE_TEST_S3_KEY", ACCESS_KEY),
            ("SLUICE_TEST_S3_SECRET", SECRET_KEY),
        ]
    }

    /// A client for `bucket`.
    pub fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_endpoint(&self.endpoint)
                .with_region("us-east-1")
                .with_allow_http(true)
                .with_virtual_hosted_style_request(false)
                .with_access_key_id(ACCESS_KEY)
                .with_secret_access_key(SECRET_KEY)
                .build()
                .unwrap(),
        )
    }

    /// Every key in `bucket` under `prefix`.
    pub async fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let store = self.store(bucket);
        let prefix = object_store::path::Path::from(prefix);
        let mut keys: Vec<String> = store
            .list(Some(&prefix))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        keys.sort();
        keys
    }

    /// Downloads every object of `bucket` under `prefix` into `dir` (same relative paths).
    pub async fn download(&self, bucket: &str, prefix: &str, dir: &Path) -> PathBuf {
        let store = self.store(bucket);
        for key in self.keys(bucket, prefix).await {
            let bytes = store
                .get(&object_store::path::Path::from(key.as_str()))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let path = dir.join(&key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        dir.join(prefix)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }
}

fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("SLUICE_MOTO_SERVER") {
        return path.into();
    }
    which("moto_server").unwrap_or_else(|| {
        panic!("moto_server not found: run scripts/setup.sh --test (installs moto[server])")
    })
}

fn which(name: &str) -> Option<PathBuf> {
    let python_bin = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(python_bin)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn spawn(port: u16) -> Child {
    let mut child = Command::new(binary())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("moto_server exited: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "moto_server did not listen in 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}
