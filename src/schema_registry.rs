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

/// Waits between attempts while the registry cannot be reached, growing to the last.
const BACKOFF: [Duration; 5] = [
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

/// Why [`patiently`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum Gave {
    #[error(transparent)]
    Up(RegistryError),
    #[error("stopped while waiting for the schema registry")]
    Cancelled,
}

/// Runs `call` until it succeeds or fails for good, waiting with backoff while the
/// registry is unavailable (logged once, as `what`) or until `shutdown`. While it waits,
/// `/health` says so (the problem `schema_registry` of `stats`, cleared when it answers).
pub async fn patiently<T, F, Fut>(
    what: &str,
    shutdown: &tokio_util::sync::CancellationToken,
    stats: &crate::telemetry::Stats,
    mut call: F,
) -> Result<T, Gave>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RegistryError>>,
{
    let mut attempt = 0;
    loop {
        let outcome = call().await;
        if attempt > 0 && !matches!(&outcome, Err(e) if e.is_transient()) {
            stats.readiness.set_problem("schema_registry", None);
        }
        match outcome {
            Ok(value) => return Ok(value),
            Err(e) if e.is_transient() => {
                if attempt == 0 {
                    tracing::warn!(error = %e, "waiting for the schema registry ({what}); the stream pauses here");
                }
                stats.readiness.set_problem(
                    "schema_registry",
                    Some(format!("waiting for the schema registry ({what}): {e}")),
                );
                let wait = BACKOFF[attempt.min(BACKOFF.len() - 1)];
                attempt += 1;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return Err(Gave::Cancelled),
                }
            }
            Err(e) => return Err(Gave::Up(e)),
        }
    }
}

/// A schema as the registry returns it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RegisteredSchema {
    /// Its global id (answers by subject and version carry it).
    #[serde(default)]
    pub id: Option<u32>,
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

    /// Registers the Avro `schema` under `subject` (or finds it there); its id.
    /// Registers `schema` of `schema_type` (`AVRO`, `PROTOBUF`) under `subject`; its id
    /// (the existing one when the subject has the schema already).
    pub async fn register(
        &self,
        subject: &str,
        schema: &str,
        schema_type: &str,
    ) -> Result<u32, RegistryError> {
        #[derive(Deserialize)]
        struct Registered {
            id: u32,
        }
        let mut body = serde_json::json!({ "schema": schema });
        if schema_type != "AVRO" {
            body["schemaType"] = serde_json::json!(schema_type);
        }
        let body = body.to_string();
        let request = self
            .client
            .post(format!("{}/subjects/{subject}/versions", self.url))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .body(body);
        let registered: Registered = self
            .send(request, || RegistryError::NotFound {
                url: self.url.clone(),
                what: format!("subject `{subject}`"),
            })
            .await?;
        Ok(registered.id)
    }

    /// `GET path`, its JSON body parsed; `not_found` for a 404.
    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        not_found: impl FnOnce() -> RegistryError,
    ) -> Result<T, RegistryError> {
        let request = self.client.get(format!("{}/{path}", self.url));
        self.send(request, not_found).await
    }

    /// Sends `request` (with the credentials); its JSON answer parsed.
    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        not_found: impl FnOnce() -> RegistryError,
    ) -> Result<T, RegistryError> {
        let request = request.header("Accept", "application/vnd.schemaregistry.v1+json");
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
        serde_json::from_slice(&body).map_err(|e| refused(format!("unexpected answer: {e}")))
    }
}
