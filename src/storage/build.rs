//! Building an object store for a URL: the service's builder from its standard
//! environment, then the `storage` block's settings, and short per-request retries.

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};

use super::StorageError;
use crate::config::StorageConfig;

/// Retries of one object-store request: a few, quickly. A store that stays away longer
/// ends the attempt, and the runtime retries whole attempts with a longer backoff
/// (`runtime`), with nothing committed past what is durable.
fn retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(3),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: std::time::Duration::from_secs(30),
    }
}

pub(super) fn s3(
    url: &str,
    block: Option<(&str, &StorageConfig)>,
) -> Result<object_store::aws::AmazonS3, StorageError> {
    let mut builder = AmazonS3Builder::from_env()
        .with_url(url)
        .with_retry(retry());
    if let Some((prefix, block)) = block {
        if let Some(endpoint) = &block.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &block.region {
            builder = builder.with_region(region);
        }
        if let Some(path_style) = block.path_style {
            builder = builder.with_virtual_hosted_style_request(!path_style);
        }
        if let Some(allow) = block.allow_http {
            builder = builder.with_allow_http(allow);
        }
        if let Some(id) = &block.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &block.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = &block.session_token {
            builder = builder.with_token(token);
        }
        for (key, value) in &block.options {
            let parsed: AmazonS3ConfigKey =
                key.to_ascii_lowercase()
                    .parse()
                    .map_err(|_| StorageError::Option {
                        prefix: prefix.to_owned(),
                        key: key.clone(),
                        service: "S3",
                    })?;
            builder = builder.with_config(parsed, value);
        }
    }
    builder.build().map_err(|source| StorageError::Build {
        url: url.to_owned(),
        source,
    })
}

/// Settings of a block that only S3 has, refused for other services.
fn s3_only(prefix: &str, block: &StorageConfig) -> Result<(), StorageError> {
    let only = [
        ("region", block.region.is_some()),
        ("path_style", block.path_style.is_some()),
        ("access_key_id", block.access_key_id.is_some()),
        ("secret_access_key", block.secret_access_key.is_some()),
        ("session_token", block.session_token.is_some()),
    ];
    match only.into_iter().find(|(_, set)| *set) {
        Some((key, _)) => Err(StorageError::S3Only {
            prefix: prefix.to_owned(),
            key,
        }),
        None => Ok(()),
    }
}

pub(super) fn gcs(
    url: &str,
    block: Option<(&str, &StorageConfig)>,
) -> Result<object_store::gcp::GoogleCloudStorage, StorageError> {
    let mut builder = GoogleCloudStorageBuilder::from_env()
        .with_url(url)
        .with_retry(retry());
    if let Some((prefix, block)) = block {
        s3_only(prefix, block)?;
        if let Some(endpoint) = &block.endpoint {
            builder = builder.with_base_url(endpoint);
        }
        if let Some(allow) = block.allow_http {
            builder = builder
                .with_client_options(object_store::ClientOptions::new().with_allow_http(allow));
        }
        for (key, value) in &block.options {
            let parsed: GoogleConfigKey =
                key.to_ascii_lowercase()
                    .parse()
                    .map_err(|_| StorageError::Option {
                        prefix: prefix.to_owned(),
                        key: key.clone(),
                        service: "Google Cloud Storage",
                    })?;
            builder = builder.with_config(parsed, value);
        }
    }
    builder.build().map_err(|source| StorageError::Build {
        url: url.to_owned(),
        source,
    })
}

pub(super) fn azure(
    url: &str,
    block: Option<(&str, &StorageConfig)>,
) -> Result<object_store::azure::MicrosoftAzure, StorageError> {
    let mut builder = MicrosoftAzureBuilder::from_env()
        .with_url(url)
        .with_retry(retry());
    if let Some((prefix, block)) = block {
        s3_only(prefix, block)?;
        if let Some(endpoint) = &block.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        if let Some(allow) = block.allow_http {
            builder = builder.with_allow_http(allow);
        }
        for (key, value) in &block.options {
            let parsed: AzureConfigKey =
                key.to_ascii_lowercase()
                    .parse()
                    .map_err(|_| StorageError::Option {
                        prefix: prefix.to_owned(),
                        key: key.clone(),
                        service: "Azure Blob Storage",
                    })?;
            builder = builder.with_config(parsed, value);
        }
    }
    builder.build().map_err(|source| StorageError::Build {
        url: url.to_owned(),
        source,
    })
}
