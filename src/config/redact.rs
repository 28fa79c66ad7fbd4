//! Keeping values that came from outside a config file out of what sluice prints.
//!
//! A value put in the wrong key is echoed by the error about it (`invalid type: string
//! "hunter2"`); a broker error may quote a setting back. So every value that
//! interpolation took from the environment or a file is shown as its `${NAME}` in config
//! errors, and *secrets* are shown that way in every log line, error, `/metrics` and
//! `/health` answer of the run. A secret is a value from `${file:...}`, from a variable
//! whose name says it is one (`PASSWORD`, `SECRET`, `TOKEN`, `KEY`, ...), or the value of a
//! librdkafka property that holds a credential ([`SENSITIVE_PROPERTIES`]), however it got
//! there.

use std::borrow::Cow;

use super::interpolate::Substitution;

/// librdkafka properties whose values are credentials.
pub const SENSITIVE_PROPERTIES: &[&str] = &[
    "sasl.password",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "ssl.certificate.pem",
    "sasl.jaas.config",
];

/// Words in a variable name that mark its value as a secret.
const SECRET_WORDS: &[&str] = &[
    "PASS",
    "SECRET",
    "TOKEN",
    "CREDENTIAL",
    "PRIVATE",
    "KEY",
    "AUTH",
    "JAAS",
];

/// Whether a `${NAME}` (or `file:PATH`) holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    if name.starts_with("file:") {
        return true;
    }
    let upper = name.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|w| upper.contains(w))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    value: String,
    shown: String,
    secret: bool,
}

/// Values to hide and what to show instead.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redactions {
    /// Longest values first, so a value containing another is replaced whole.
    entries: Vec<Entry>,
}

/// Ordinary (non-secret) values shorter than this are left alone: replacing `1` or `cpu`
/// inside unrelated words would garble messages and hide nothing.
const MIN_PLAIN_LEN: usize = 3;

impl Redactions {
    /// Every substituted value, shown as its `${NAME}`.
    pub fn from_substitutions(substitutions: &[Substitution]) -> Self {
        let mut redactions = Redactions::default();
        for s in substitutions {
            redactions.add(
                &s.value,
                format!("${{{}}}", s.name),
                is_secret_name(&s.name),
            );
        }
        redactions
    }

    /// Hides `value` (a credential) as `shown`.
    pub fn add_secret(&mut self, value: &str, shown: String) {
        self.add(value, shown, true);
    }

    fn add(&mut self, value: &str, shown: String, secret: bool) {
        if value.is_empty() || (!secret && value.chars().count() < MIN_PLAIN_LEN) {
            return;
        }
        if let Some(entry) = self.entries.iter_mut().find(|e| e.value == value) {
            entry.secret |= secret;
            return;
        }
        self.entries.push(Entry {
            value: value.to_owned(),
            shown,
            secret,
        });
        self.entries.sort_by(|a, b| {
            b.value
                .len()
                .cmp(&a.value.len())
                .then(a.value.cmp(&b.value))
        });
    }

    /// Adds `other`'s values.
    pub fn extend(&mut self, other: &Redactions) {
        for e in &other.entries {
            self.add(&e.value, e.shown.clone(), e.secret);
        }
    }

    /// Only the secrets (what runtime output hides).
    pub fn secrets(&self) -> Redactions {
        Redactions {
            entries: self.entries.iter().filter(|e| e.secret).cloned().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `text` with every value replaced: secrets wherever they occur, other values where
    /// they stand as a whole token.
    pub(crate) fn apply<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for entry in &self.entries {
            if !out.contains(entry.value.as_str()) {
                continue;
            }
            let replaced = if entry.secret {
                out.replace(entry.value.as_str(), &entry.shown)
            } else {
                replace_tokens(&out, &entry.value, &entry.shown)
            };
            out = Cow::Owned(replaced);
        }
        out
    }
}

/// Replaces `value` where neither neighbour is a letter, digit or `_`.
fn replace_tokens(text: &str, value: &str, shown: &str) -> String {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(value) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + value.len()..].chars().next();
        out.push_str(&rest[..at]);
        if word(before) || word(after) {
            out.push_str(value);
        } else {
            out.push_str(shown);
        }
        rest = &rest[at + value.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(name: &str, value: &str) -> Substitution {
        Substitution {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn secrets_are_hidden_anywhere_and_plain_values_as_whole_tokens() {
        let r = Redactions::from_substitutions(&[
            sub("SASL_PASSWORD", "hunter2"),
            sub("SLUICE_OUT", "/tmp/run"),
            sub("SLUICE_DEVICE", "cpu"),
        ]);
        assert_eq!(
            r.apply(r#"invalid type: string "hunter2", expected usize"#),
            r#"invalid type: string "${SASL_PASSWORD}", expected usize"#
        );
        assert_eq!(r.apply("xhunter2y"), "x${SASL_PASSWORD}y");
        assert_eq!(
            r.apply("path /tmp/run/feedback"),
            "path ${SLUICE_OUT}/feedback"
        );
        assert_eq!(r.apply("on cpu, not cpus"), "on ${SLUICE_DEVICE}, not cpus");
        let secrets = r.secrets();
        assert_eq!(
            secrets.apply("/tmp/run hunter2"),
            "/tmp/run ${SASL_PASSWORD}"
        );
    }

    #[test]
    fn secret_names_are_recognised() {
        assert!(is_secret_name("SASL_PASSWORD"));
        assert!(is_secret_name("kafka_api_key"));
        assert!(is_secret_name("file:/var/run/secrets/kafka/password"));
        assert!(!is_secret_name("SLUICE_BROKERS"));
    }
}
