//! S3 and S3-compatible stores.
//!
//! Credentials follow the standard AWS chain: values from the pipeline
//! file, then `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`,
//! then the profile named by `AWS_PROFILE` (or `default`) in
//! `~/.aws/credentials` (`AWS_SHARED_CREDENTIALS_FILE`), then web identity
//! (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`), then the container or
//! instance metadata service.

use std::collections::BTreeMap;
use std::path::PathBuf;

use object_store::RetryConfig;
use object_store::aws::{AmazonS3, AmazonS3Builder};

use crate::secret::Secret;

/// How to reach S3, as configured in the pipeline file; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// AWS region (default: `AWS_REGION`, the profile's region, or `us-east-1`).
    pub region: Option<String>,
    /// Endpoint override for S3-compatible servers (`http://127.0.0.1:9000`).
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); default: on with an endpoint override, off otherwise.
    pub path_style: Option<bool>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<Secret>,
    /// Session token for temporary credentials.
    pub session_token: Option<Secret>,
    /// Profile in the shared credentials file (default: `AWS_PROFILE` or `default`).
    pub profile: Option<String>,
}

impl S3Settings {
    /// A client for `bucket`.
    pub(crate) fn build(&self, bucket: &str) -> Result<AmazonS3, object_store::Error> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let env_keys = std::env::var_os("AWS_ACCESS_KEY_ID").is_some();
        let web_identity = std::env::var_os("AWS_WEB_IDENTITY_TOKEN_FILE").is_some();
        let profile_name = self
            .profile
            .clone()
            .or_else(|| std::env::var("AWS_PROFILE").ok());
        if self.access_key_id.is_none() && !env_keys && (!web_identity || self.profile.is_some()) {
            let name = profile_name.as_deref().unwrap_or("default");
            if let Some(profile) = read_profile(name) {
                if let Some(v) = profile.get("aws_access_key_id") {
                    builder = builder.with_access_key_id(v);
                }
                if let Some(v) = profile.get("aws_secret_access_key") {
                    builder = builder.with_secret_access_key(v);
                }
                if let Some(v) = profile.get("aws_session_token") {
                    builder = builder.with_token(v);
                }
                if std::env::var_os("AWS_REGION").is_none()
                    && std::env::var_os("AWS_DEFAULT_REGION").is_none()
                    && let Some(region) = profile.get("region")
                {
                    builder = builder.with_region(region);
                }
            }
        }
        if let Some(v) = &self.region {
            builder = builder.with_region(v);
        }
        if let Some(v) = &self.access_key_id {
            builder = builder.with_access_key_id(v);
        }
        if let Some(v) = &self.secret_access_key {
            builder = builder.with_secret_access_key(v.expose());
        }
        if let Some(v) = &self.session_token {
            builder = builder.with_token(v.expose());
        }
        if let Some(endpoint) = &self.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let path_style = self.path_style.unwrap_or(self.endpoint.is_some());
        builder = builder.with_virtual_hosted_style_request(!path_style);
        // Every retry happens in RetryingStore, logged and under the pipeline's policy;
        // requests keep object_store's timeouts (5 s to connect, 30 s per request).
        builder
            .with_retry(RetryConfig {
                max_retries: 0,
                ..RetryConfig::default()
            })
            .build()
    }
}

/// `name`'s keys from the shared credentials file, plus its region from the config file.
fn read_profile(name: &str) -> Option<BTreeMap<String, String>> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let credentials = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")))?;
    let config = std::env::var_os("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/config")));
    let mut values = ini_section(&std::fs::read_to_string(credentials).ok()?, name)?;
    if let Some(text) = config.and_then(|c| std::fs::read_to_string(c).ok()) {
        let section = if name == "default" {
            "default".to_string()
        } else {
            format!("profile {name}")
        };
        if let Some(region) = ini_section(&text, &section).and_then(|s| s.get("region").cloned()) {
            values.entry("region".into()).or_insert(region);
        }
    }
    Some(values)
}

/// The `key = value` pairs of `[section]` in an INI text.
fn ini_section(text: &str, section: &str) -> Option<BTreeMap<String, String>> {
    let mut found = None;
    let mut current = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim() == section;
            if current {
                found.get_or_insert_with(BTreeMap::new);
            }
            continue;
        }
        if current && let Some((k, v)) = line.split_once('=') {
            found
                .get_or_insert_with(BTreeMap::new)
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_from_their_section_only() {
        let text = "[default]\naws_access_key_id = AKIADEFAULT\n\n[ci]\n# comment\naws_access_key_id=AKIACI\naws_secret_access_key = s3cr3t\n";
        let ci = ini_section(text, "ci").unwrap();
        assert_eq!(ci["aws_access_key_id"], "AKIACI");
        assert_eq!(ci["aws_secret_access_key"], "s3cr3t");
        assert_eq!(
            ini_section(text, "default").unwrap()["aws_access_key_id"],
            "AKIADEFAULT"
        );
        assert!(ini_section(text, "missing").is_none());
    }
}
