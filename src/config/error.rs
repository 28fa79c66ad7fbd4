//! Config errors: each one names the file, the key path, the line and what was expected,
//! and shows values that came from the environment as their `${NAME}`.

use std::fmt;
use std::path::PathBuf;

use super::redact::Redactions;

/// One problem in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Key path inside the file, e.g. `sinks[0].parquet.roll.max_rows` (`.` = the root).
    pub path: String,
    /// 1-based line of the key (or of its nearest ancestor present in the file).
    pub line: Option<usize>,
    /// What is wrong and what was expected.
    pub message: String,
}

/// Problems collected by a check that reports all of them (paths without lines: the
/// loader adds those).
#[derive(Debug, Default)]
pub struct Issues(pub Vec<ConfigIssue>);

impl Issues {
    pub fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue {
            path: path.into(),
            line: None,
            message: message.into(),
        });
    }

    /// Adds the range error of a bounded value, if any.
    pub fn check(
        &mut self,
        path: impl Into<String>,
        checked: Result<(), super::limits::OutOfRange>,
    ) {
        if let Err(out_of_range) = checked {
            self.add(path, out_of_range.to_string());
        }
    }
}

/// Every problem found in one pipeline file, reported together.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub issues: Vec<ConfigIssue>,
    /// Applied to the messages when shown.
    pub redactions: Redactions,
}

impl ConfigError {
    pub fn single(file: impl Into<PathBuf>, path: &str, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.into(),
            issues: vec![ConfigIssue {
                path: path.to_owned(),
                line: None,
                message: message.into(),
            }],
            redactions: Redactions::default(),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "."
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.issues.len();
        write!(
            f,
            "{} error{} in {}",
            count,
            if count == 1 { "" } else { "s" },
            self.file.display()
        )?;
        for issue in &self.issues {
            let text = issue.to_string();
            let text = self.redactions.apply(&text);
            match issue.line {
                Some(line) => write!(f, "\n  {}:{line}: {text}", self.file.display())?,
                None => write!(f, "\n  {}: {text}", self.file.display())?,
            }
        }
        Ok(())
    }
}
