//! A client for a Confluent-compatible schema registry: writer schemas by id, as the
//! Confluent wire format (magic byte `0`, 4-byte big-endian schema id, body) refers to
//! them. Basic auth or a bearer token; each request has the configured timeout.
//!
//! Errors say whether trying again can help: an unreachable registry (connection refused,
//! timeout, 5xx) is [`RegistryError::Unavailable`]; a missing id or a refused login is
//! final for that id.

use std::time::Duration;

use serde::Deserialize;

use crate::config::SchemaRegistryConfig;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("schema registry {url} unavailable: {message}")]
    Unavailable { url: String, message: String },
    #[error("{what} is not in the schema registry {url}")]
    NotFound { url: String, what: String },
    #[error("schema registry {url} refused the request ({status}): {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("schema registry {url}: {0}", url = .1)]
    Client(#[source] reqwest::Error, String),
}

impl RegistryError {
    /// Whether asking again later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

/// A schema as the registry returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RegisteredSchema {
    pub schema: String,
    /// `AVRO` (the default when absent), `PROTOBUF` or `JSON`.
    #[serde(default = "avro", rename = "schemaType")]
    pub schema_type: String,
}

fn avro() -> String {
    "AVRO".into()
}

/// A registry client (cheap to clone).
#[derive(Debug, Clone)]
pub struct SchemaRegistry {
    url: String,
    client: reqwest::Client,
    auth: Auth,
}

#[derive(Clone)]
enum Auth {
    None,
    Basic(String, Option<String>),
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Auth::None => "None",
            Auth::Basic(..) => "Basic(..)",
            Auth::Bearer(_) => "Bearer(..)",
        })
    }
}

impl SchemaRegistry {
    pub fn new(config: &SchemaRegistryConfig) -> Result<Self, RegistryError> {
        let url = config.url.trim_end_matches('/').to_owned();
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| RegistryError::Client(e, url.clone()))?;
        // `${VAR:-}` of an unset variable is an empty value: no credential.
        let given = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
        let auth = match (given(&config.username), given(&config.bearer_token)) {
            (Some(user), _) => Auth::Basic(user, given(&config.password)),
            (None, Some(token)) => Auth::Bearer(token),
            (None, None) => Auth::None,
        };
        Ok(SchemaRegistry { url, client, auth })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema registered under `id`.
    pub async fn schema_by_id(&self, id: u32) -> Result<RegisteredSchema, RegistryError> {
        self.get(&format!("schemas/ids/{id}"), || RegistryError::NotFound {
            url: self.url.clone(),
            what: format!("schema id {id}"),
        })
        .await
    }

    /// Version `version` (a number or `latest`) of `subject`.
    pub async fn subject_version(
        &self,
        subject: &str,
        version: &str,
    ) -> Result<RegisteredSchema, RegistryError> {
        self.get(&format!("subjects/{subject}/versions/{version}"), || {
            RegistryError::NotFound {
                url: self.url.clone(),
                what: format!("subject `{subject}` version {version}"),
            }
        })
        .await
    }

    /// `GET path`, its JSON body parsed; `not_found` for a 404.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        not_found: impl FnOnce() -> RegistryError,
    ) -> Result<T, RegistryError> {
        let request = self
            .client
            .get(format!("{}/{path}", self.url))
            .header("Accept", "application/vnd.schemaregistry.v1+json");
        let request = match &self.auth {
            Auth::None => request,
            Auth::Basic(user, password) => request.basic_auth(user, password.as_ref()),
            Auth::Bearer(token) => request.bearer_auth(token),
        };
        let unavailable = |message: String| RegistryError::Unavailable {
            url: self.url.clone(),
            message,
        };
        let response = request
            .send()
            .await
            .map_err(|e| unavailable(crate::telemetry::chain(&e)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| unavailable(crate::telemetry::chain(&e)))?;
        if status.is_server_error() {
            return Err(unavailable(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(not_found());
        }
        let refused = |message: String| RegistryError::Refused {
            url: self.url.clone(),
            status: status.as_u16(),
            message,
        };
        if !status.is_success() {
            return Err(refused(String::from_utf8_lossy(&body).into_owned()));
        }
        serde_json::from_slice(&body).map_err(|e| refused(format!("not a schema: {e}")))
    }
}
