//! Rate-limited logging: the same problem logged once per window, with a count of the
//! repeats in between.
//!
//! A broker outage makes librdkafka report the same error for every broker, every retry
//! and every partition: hundreds of lines a minute that bury the one line an operator
//! needs. Each problem has a key (an error code, a sink and a reason); the first
//! occurrence is logged at once, repeats inside the window are counted, and the next
//! occurrence after the window is logged with that count.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one kind of problem is logged at most.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);

/// Decides which occurrences of a repeated problem are logged.
#[derive(Debug)]
pub struct Throttle {
    window: Duration,
    seen: Mutex<HashMap<String, Seen>>,
}

#[derive(Debug)]
struct Seen {
    logged_at: Instant,
    suppressed: u64,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(DEFAULT_WINDOW)
    }
}

impl Throttle {
    pub fn new(window: Duration) -> Self {
        Throttle {
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(repeats suppressed since the last time it was logged)` when this occurrence
    /// of `key` should be logged, `None` when it should be counted only.
    pub fn allow(&self, key: &str) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match seen.get_mut(key) {
            Some(entry) if now.duration_since(entry.logged_at) < self.window => {
                entry.suppressed += 1;
                None
            }
            Some(entry) => {
                let suppressed = std::mem::take(&mut entry.suppressed);
                entry.logged_at = now;
                Some(suppressed)
            }
            None => {
                // Keys are error codes and component names, but bound the map anyway.
                if seen.len() >= 1024 {
                    seen.clear();
                }
                seen.insert(
                    key.to_owned(),
                    Seen {
                        logged_at: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_inside_the_window_are_counted_and_reported_with_the_next_line() {
        let throttle = Throttle::new(Duration::from_millis(40));
        assert_eq!(throttle.allow("down"), Some(0));
        assert_eq!(throttle.allow("down"), None);
        assert_eq!(throttle.allow("down"), None);
        assert_eq!(throttle.allow("other"), Some(0), "keys are independent");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(throttle.allow("down"), Some(2));
        assert_eq!(throttle.allow("down"), None);
    }
}
