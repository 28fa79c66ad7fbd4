//! Bounds on every duration and count a file can set, checked when it is loaded.
//!
//! serde accepts any `humantime` duration and any integer that fits the field, so
//! `500000000y` or `18446744073709551615s` parse fine and then overflow the first
//! `Instant + Duration`, or make a window that no event fits. Each field has a range that
//! covers every real use with room to spare; a value outside it is a config error at its
//! key path, so `validate` catches it and no run ever sees it.

use std::fmt::Display;
use std::time::Duration;

pub(crate) const MILLISECOND: Duration = Duration::from_millis(1);
pub(crate) const SECOND: Duration = Duration::from_secs(1);
pub(crate) const MINUTE: Duration = Duration::from_secs(60);
pub const HOUR: Duration = Duration::from_secs(3600);
pub(crate) const DAY: Duration = Duration::from_secs(86_400);
/// A leap year: the longest window, schedule or lookback a file may set.
pub(crate) const YEAR: Duration = Duration::from_secs(366 * 86_400);

/// A value outside its range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {what} from {min} to {max}, found {found}")]
pub struct OutOfRange {
    pub what: &'static str,
    pub min: String,
    pub max: String,
    pub found: String,
}

/// Refuses a `value` outside `min..=max`.
pub(crate) fn duration(value: Duration, min: Duration, max: Duration) -> Result<(), OutOfRange> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(OutOfRange {
        what: "a duration",
        min: show(min),
        max: show(max),
        found: show(value),
    })
}

/// Refuses a `value` outside `min..=max`.
pub(crate) fn count<T: PartialOrd + Display>(value: T, min: T, max: T) -> Result<(), OutOfRange> {
    if value >= min && value <= max {
        return Ok(());
    }
    Err(OutOfRange {
        what: "a number",
        min: min.to_string(),
        max: max.to_string(),
        found: value.to_string(),
    })
}

fn show(duration: Duration) -> String {
    if duration.is_zero() {
        "0s".into()
    } else {
        humantime::format_duration(duration).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_outside_their_range_are_refused_with_both_ends() {
        assert!(duration(SECOND, MILLISECOND, HOUR).is_ok());
        let message = duration(Duration::from_secs(u64::MAX), MILLISECOND, HOUR)
            .unwrap_err()
            .to_string();
        assert!(
            message.starts_with("expected a duration from 1ms to 1h, found "),
            "{message}"
        );
        assert!(duration(Duration::ZERO, MILLISECOND, HOUR).is_err());
    }

    #[test]
    fn counts_outside_their_range_are_refused() {
        assert!(count(5usize, 1, 10).is_ok());
        assert_eq!(
            count(usize::MAX, 1, 10).unwrap_err().to_string(),
            format!("expected a number from 1 to 10, found {}", usize::MAX)
        );
    }
}
