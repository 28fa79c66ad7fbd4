//! When a retrain job runs again: a fixed interval (`--every 24h`, `retrain.every`) or a
//! cron expression (`--cron "0 3 * * *"`, `retrain.cron`; UTC, parsed by the `croner`
//! crate, 5 or 6 fields), and [`repeat`], the one loop both `sluice retrain --every` and a
//! pipeline's `retrain:` section run on.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A schedule that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("`{expression}` is not a cron expression")]
    Cron {
        expression: String,
        #[source]
        source: croner::errors::CronError,
    },
    #[error("the cron expression has no next run")]
    NoNextRun(#[source] croner::errors::CronError),
}

#[derive(Debug, Clone)]
pub enum Schedule {
    Every(Duration),
    Cron(Box<croner::Cron>),
}

impl Schedule {
    pub fn cron(expression: &str) -> Result<Schedule, ScheduleError> {
        expression
            .parse::<croner::Cron>()
            .map(|c| Schedule::Cron(Box::new(c)))
            .map_err(|source| ScheduleError::Cron {
                expression: expression.to_owned(),
                source,
            })
    }

    /// How long to wait from `now` until the next run.
    pub fn delay_after(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Duration, ScheduleError> {
        match self {
            Schedule::Every(every) => Ok(*every),
            Schedule::Cron(cron) => {
                let next = cron
                    .find_next_occurrence(&now, false)
                    .map_err(ScheduleError::NoNextRun)?;
                Ok((next - now).to_std().unwrap_or_default())
            }
        }
    }
}

/// Runs `task` now (when `at_once`) and then at every time `schedule` gives, until
/// `shutdown`; without a schedule, once. Shutdown does not wait for a run in progress:
/// the caller's tasks must leave nothing half-done when dropped (retraining publishes by
/// a rename at its very end).
pub async fn repeat<F, Fut>(
    schedule: Option<&Schedule>,
    at_once: bool,
    shutdown: &CancellationToken,
    mut task: F,
) -> Result<(), ScheduleError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut first = at_once;
    loop {
        if !first {
            let Some(schedule) = schedule else {
                return Ok(());
            };
            let delay = schedule.delay_after(chrono::Utc::now())?;
            tracing::info!(next_in = %humantime::format_duration(delay), "next retrain scheduled");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
        first = false;
        tokio::select! {
            _ = task() => {}
            _ = shutdown.cancelled() => return Ok(()),
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
