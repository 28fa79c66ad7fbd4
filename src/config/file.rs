//! Reading a YAML config file, shared by pipeline files and retrain job files: the text,
//! `${...}` interpolation ([`super::interpolate`]), YAML syntax, the shape of the top level,
//! and typed deserialization with the key path of the first mistake. Every error names
//! the file, the key path and the line ([`super::locate`]), and shows values that came from
//! the environment as their `${NAME}` ([`super::redact`]).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_norway::Value;

use super::interpolate::interpolate;
use super::redact::Redactions;
use super::{ConfigError, ConfigIssue, LineIndex};

/// A config file read and parsed as YAML, not yet typed.
#[derive(Debug)]
pub struct YamlFile {
    pub file: PathBuf,
    pub root: Value,
    pub lines: LineIndex,
    /// The values interpolation took from outside the file.
    pub redactions: Redactions,
}

impl YamlFile {
    /// Reads `file` (`what`: "pipeline", "retrain job"), resolves its `${...}` with `lookup`
    /// and parses it; the top level must be a mapping with (some of) `keys`.
    pub fn read(
        file: &Path,
        what: &str,
        keys: &[&str],
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<YamlFile, ConfigError> {
        let raw = std::fs::read_to_string(file).map_err(|e| {
            ConfigError::single(file, ".", format!("cannot read the {what} file: {e}"))
        })?;
        let interpolated = interpolate(&raw, lookup).map_err(|issues| ConfigError {
            file: file.to_owned(),
            issues: issues
                .into_iter()
                .map(|i| ConfigIssue {
                    path: ".".into(),
                    line: Some(i.line),
                    message: i.message,
                })
                .collect(),
            redactions: Redactions::default(),
        })?;
        let redactions = Redactions::from_substitutions(&interpolated.substitutions);
        let text = interpolated.text;
        let fail = |line, message: String| ConfigError {
            file: file.to_owned(),
            issues: vec![ConfigIssue {
                path: ".".into(),
                line,
                message,
            }],
            redactions: redactions.clone(),
        };
        let root: Value = serde_norway::from_str(&text).map_err(|e| {
            let line = e
                .location()
                .map(|l| l.line())
                .or_else(|| super::locate::syntax_error_line(&text))
                .or(Some(1));
            fail(line, format!("not valid YAML: {e}"))
        })?;
        let expected = || {
            format!(
                "expected a mapping with the {what}'s keys ({})",
                keys.join(", ")
            )
        };
        match &root {
            Value::Mapping(_) => {}
            Value::Null => return Err(fail(Some(1), format!("the file is empty: {}", expected()))),
            other => {
                return Err(fail(
                    Some(1),
                    format!("{}, found {}", expected(), describe(other)),
                ))
            }
        }
        Ok(YamlFile {
            file: file.to_owned(),
            lines: LineIndex::new(&text),
            root,
            redactions,
        })
    }

    /// An error of this file: issues without a line get the line of their key path (a
    /// missing key: of the mapping that should hold it; the top level: line 1).
    pub fn error(&self, mut issues: Vec<ConfigIssue>) -> ConfigError {
        for issue in &mut issues {
            if issue.line.is_none() {
                issue.line = self.lines.line_of(&issue.path).or(Some(1));
            }
        }
        ConfigError {
            file: self.file.clone(),
            issues,
            redactions: self.redactions.clone(),
        }
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Deserializes one YAML value, turning a failure into an issue with the full key path.
///
/// Enums are written in map form (`kafka: {...}`), which serde_norway reads through
/// `singleton_map_recursive`; the value goes through its YAML text for that.
pub fn typed<T: DeserializeOwned>(value: &Value, prefix: &str) -> Result<T, ConfigIssue> {
    let issue = |path: String, message: String| ConfigIssue {
        path,
        line: None,
        message,
    };
    let text =
        serde_norway::to_string(value).map_err(|e| issue(prefix.to_owned(), e.to_string()))?;
    let mut track = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(
        serde_norway::Deserializer::from_str(&text),
        &mut track,
    );
    let parsed: Result<T, _> =
        serde_norway::with::singleton_map_recursive::deserialize(deserializer);
    parsed.map_err(|error| {
        let err = serde_path_to_error::Error::new(track.path(), error);
        let inner = err.path().to_string();
        let path = match (prefix.is_empty(), inner.as_str()) {
            (true, ".") => String::new(),
            (true, _) => inner,
            (false, ".") => prefix.to_owned(),
            (false, _) if inner.starts_with('[') => format!("{prefix}{inner}"),
            (false, _) => format!("{prefix}.{inner}"),
        };
        // Positions refer to the re-serialized section; the line index gives the real one.
        let message = err.into_inner().to_string();
        let message = match message.rfind(" at line ") {
            Some(cut) => &message[..cut],
            None => &message,
        };
        // serde_norway starts messages with its own (section-relative) path: drop it.
        let message = match message.split_once(": ") {
            Some((own_path, rest)) if !own_path.contains(' ') && path.contains(own_path) => rest,
            _ => message,
        };
        issue(path, message.to_owned())
    })
}
