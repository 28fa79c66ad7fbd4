//! What `/health` answers: ready, or the reason the pipeline is not.
//!
//! Start-up readiness is two steps (the models are loaded, the consumer has its first
//! partition assignment). On top of those, components report *problems* that stop the
//! pipeline from making progress while it keeps trying: authentication failing, no
//! broker reachable, a disk full. A problem is set under a key by whoever sees it and
//! cleared by whoever sees it gone (e.g. a broker back up in librdkafka's statistics); the
//! first one is what `/health` and `sluice status` show, so an operator reads the cause
//! rather than a generic "not ready".

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Readiness {
    stages_ready: AtomicBool,
    assigned: AtomicBool,
    /// Problem key (e.g. `source: authentication`) -> what is wrong.
    problems: Mutex<BTreeMap<String, String>>,
}

impl Readiness {
    pub fn set_stages_ready(&self) {
        self.stages_ready.store(true, Relaxed);
    }

    pub fn set_assigned(&self) {
        self.assigned.store(true, Relaxed);
    }

    /// Reports (`Some`) or clears (`None`) the problem under `key`.
    pub fn set_problem(&self, key: &str, problem: Option<String>) {
        let mut problems = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        match problem {
            Some(problem) => {
                problems.insert(key.to_owned(), problem);
            }
            None => {
                problems.remove(key);
            }
        }
    }

    /// Clears every problem whose key starts with `prefix` (a client that is healthy again).
    pub fn clear_problems(&self, prefix: &str) {
        let mut problems = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        problems.retain(|key, _| !key.starts_with(prefix));
    }

    /// `None` when ready, else what is wrong or still missing.
    pub fn not_ready(&self) -> Option<String> {
        let problems = self.problems.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(problem) = problems.values().next() {
            return Some(problem.clone());
        }
        match (self.stages_ready.load(Relaxed), self.assigned.load(Relaxed)) {
            (true, true) => None,
            (false, _) => Some("loading stages and models".into()),
            (true, false) => Some("waiting for the first partition assignment".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_is_the_answer_until_it_is_cleared() {
        let readiness = Readiness::default();
        assert_eq!(readiness.not_ready().unwrap(), "loading stages and models");
        readiness.set_stages_ready();
        readiness.set_assigned();
        assert!(readiness.not_ready().is_none());
        readiness.set_problem(
            "source: authentication",
            Some("authentication failed: bad password".into()),
        );
        assert_eq!(
            readiness.not_ready().unwrap(),
            "authentication failed: bad password"
        );
        readiness.clear_problems("source:");
        assert!(readiness.not_ready().is_none());
    }
}
