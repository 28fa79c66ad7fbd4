//! Secrets kept out of everything the process prints: log lines (text and JSON), the
//! errors the binary prints, and the `/metrics` and `/health` answers.
//!
//! The loaded pipeline says which values are secrets (see `config::redact`); the binary
//! hands them to [`hide`] before the run starts, and every output path goes through
//! [`redact`]. Logging writes through [`RedactingStderr`], so a secret that reaches a log
//! line by any route (a librdkafka message quoting a setting, a misplaced value in an
//! error) is replaced by its `${NAME}` before it leaves the process.

use std::borrow::Cow;
use std::io::Write;
use std::sync::{OnceLock, RwLock};

use crate::config::Redactions;

fn registry() -> &'static RwLock<Redactions> {
    static SECRETS: OnceLock<RwLock<Redactions>> = OnceLock::new();
    SECRETS.get_or_init(|| RwLock::new(Redactions::default()))
}

/// Hides the secrets among `redactions` from now on.
pub fn hide(redactions: &Redactions) {
    let secrets = redactions.secrets();
    if secrets.is_empty() {
        return;
    }
    if let Ok(mut held) = registry().write() {
        held.extend(&secrets);
    }
}

/// `text` with every hidden secret replaced.
pub fn redact(text: &str) -> Cow<'_, str> {
    match registry().read() {
        // Borrowed unless a secret actually occurs in `text`.
        Ok(held) => held.apply(text),
        Err(_) => Cow::Borrowed(text),
    }
}

/// Standard error, with secrets replaced (tracing formats each event into one buffer and
/// writes it at once, so a secret is never split across writes).
#[derive(Debug, Clone, Copy, Default)]
pub struct RedactingStderr;

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingStderr;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingStderr
    }
}
