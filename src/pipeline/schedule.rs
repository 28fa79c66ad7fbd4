//! When `sluice retrain` runs again: a fixed interval (`--every 24h`) or a cron expression
//! (`--cron "0 3 * * *"`, UTC; parsed by the `croner` crate, 5 or 6 fields).

use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Schedule {
    Every(Duration),
    Cron(Box<croner::Cron>),
}

impl Schedule {
    pub fn cron(expression: &str) -> Result<Schedule, String> {
        expression
            .parse::<croner::Cron>()
            .map(|c| Schedule::Cron(Box::new(c)))
            .map_err(|e| format!("`{expression}` is not a cron expression: {e}"))
    }

    /// How long to wait from `now` until the next run.
    pub fn delay_after(&self, now: chrono::DateTime<chrono::Utc>) -> Result<Duration, String> {
        match self {
            Schedule::Every(every) => Ok(*every),
            Schedule::Cron(cron) => {
                let next = cron
                    .find_next_occurrence(&now, false)
                    .map_err(|e| e.to_string())?;
                Ok((next - now).to_std().unwrap_or_default())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn cron_waits_until_the_next_match_and_every_is_fixed() {
        let now = chrono::Utc
            .with_ymd_and_hms(2026, 11, 22, 1, 30, 0)
            .unwrap();
        let nightly = Schedule::cron("0 3 * * *").unwrap();
        assert_eq!(
            nightly.delay_after(now).unwrap(),
            Duration::from_secs(90 * 60)
        );
        assert_eq!(
            Schedule::Every(Duration::from_secs(5))
                .delay_after(now)
                .unwrap(),
            Duration::from_secs(5)
        );
        assert!(Schedule::cron("every day").is_err());
    }
}
