//! `storage`: how to reach object-store URLs (`s3://`, `gs://`, `az://`, `abfss://`), one
//! block per URL prefix. Without a block, a URL uses its service's standard environment
//! (for S3: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, instance profiles and web identity; for GCS:
//! `GOOGLE_SERVICE_ACCOUNT`, workload identity; for Azure: `AZURE_STORAGE_ACCOUNT_NAME`,
//! `AZURE_STORAGE_ACCOUNT_KEY`, managed identity). A block's settings win over the
//! environment.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `storage.<URL prefix>`: settings for every URL starting with the prefix (the longest
/// matching prefix wins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Endpoint of an S3-compatible service or an emulator (`http://127.0.0.1:9000`).
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// S3: path-style requests (`ENDPOINT/BUCKET/KEY`), which most S3-compatible servers
    /// need. Default: virtual-hosted style, as AWS wants.
    #[serde(default)]
    pub path_style: Option<bool>,
    /// Allow a plain-`http://` endpoint. Default: false.
    #[serde(default)]
    pub allow_http: Option<bool>,
    /// S3 access key id (use `${VAR}`).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// S3 secret access key (use `${VAR}` or `${file:PATH}`): never printed.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// S3 session token for temporary credentials: never printed.
    #[serde(default)]
    pub session_token: Option<String>,
    /// Any other `object_store` option of the URL's service (`aws_*`, `google_*`,
    /// `azure_*`, or client options such as `timeout`), by its documented name.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl StorageConfig {
    /// Values that are credentials, with the key they sit under.
    pub fn credentials(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        if let Some(secret) = &self.secret_access_key {
            out.push(("secret_access_key", secret.as_str()));
        }
        if let Some(token) = &self.session_token {
            out.push(("session_token", token.as_str()));
        }
        for (key, value) in &self.options {
            if super::redact::is_secret_name(key) {
                out.push(("options", value.as_str()));
            }
        }
        out
    }
}
