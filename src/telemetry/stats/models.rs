//! The model side of [`Stats`]: which version each infer stage serves and which it
//! refused, drift against the reference profile and its events, live accuracy from delayed
//! labels, shadow agreement, and the runs of the pipeline's retrain job.

use super::super::labels::*;
use super::Stats;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

impl Stats {
    /// `stage` now serves `model` at `version`.
    pub fn record_model_serving(&self, stage: &str, model: &str, version: &str) {
        let labels = ModelLabels {
            stage: stage.to_owned(),
            model: model.to_owned(),
            version: version.to_owned(),
        };
        let mut serving = self.serving.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(previous) = serving.insert(stage.to_owned(), labels.clone()) {
            self.model_info.remove(&previous);
        }
        self.model_info.get_or_create(&labels).set(1);
    }

    /// The watcher of `stage` refused `version` of `model` (it failed to load or does not
    /// fit the stage); the serving version stays.
    pub fn record_model_rejected(&self, stage: &str, model: &str, version: &str) {
        self.model_rejected
            .get_or_create(&ModelLabels {
                stage: stage.to_owned(),
                model: model.to_owned(),
                version: version.to_owned(),
            })
            .inc();
    }

    /// The drift of `version`'s last window of `rows` rows against its reference profile:
    /// PSI per signal.
    pub fn record_drift(
        &self,
        stage: &str,
        model: &str,
        version: &str,
        rows: u64,
        signals: &[(String, f64)],
    ) {
        for (signal, psi) in signals {
            self.drift
                .get_or_create(&DriftLabels {
                    stage: stage.to_owned(),
                    model: model.to_owned(),
                    version: version.to_owned(),
                    signal: signal.clone(),
                })
                .set(*psi);
        }
        self.drift_rows
            .get_or_create(&ModelLabels {
                stage: stage.to_owned(),
                model: model.to_owned(),
                version: version.to_owned(),
            })
            .set(rows as i64);
        let mut history = self.drift_history.lock().unwrap_or_else(|p| p.into_inner());
        if history.len() == super::DRIFT_HISTORY {
            history.pop_front();
        }
        history.push_back(super::DriftWindow {
            stage: stage.to_owned(),
            model: model.to_owned(),
            version: version.to_owned(),
            rows,
            signals: signals.to_vec(),
        });
    }

    /// The last drift windows (up to 4,096), oldest first.
    pub fn drift_history(&self) -> Vec<super::DriftWindow> {
        let history = self.drift_history.lock().unwrap_or_else(|p| p.into_inner());
        history.iter().cloned().collect()
    }

    /// The live accuracy of `version` on its last window of `rows` labelled predictions:
    /// `(metric, value)` pairs.
    pub fn record_live_accuracy(
        &self,
        stage: &str,
        model: &str,
        version: &str,
        rows: u64,
        metrics: &[(&str, f64)],
    ) {
        for (metric, value) in metrics {
            self.live_accuracy
                .get_or_create(&LiveAccuracyLabels {
                    stage: stage.to_owned(),
                    model: model.to_owned(),
                    version: version.to_owned(),
                    metric: (*metric).to_owned(),
                })
                .set(*value);
        }
        self.live_accuracy_rows
            .get_or_create(&ModelLabels {
                stage: stage.to_owned(),
                model: model.to_owned(),
                version: version.to_owned(),
            })
            .set(rows as i64);
    }

    /// `n` predictions or labels at `stage` ended as `outcome` in the live-accuracy join.
    pub fn record_label_join(&self, stage: &str, outcome: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.label_join
            .get_or_create(&LabelJoinLabels {
                stage: stage.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc_by(n);
    }

    /// Predictions or labels at `stage` that ended as `outcome`.
    pub fn label_join(&self, stage: &str, outcome: &str) -> u64 {
        self.label_join
            .get(&LabelJoinLabels {
                stage: stage.to_owned(),
                outcome: outcome.to_owned(),
            })
            .map_or(0, |c| c.get())
    }

    /// The last live `metric` of `version` at `stage` of `model`, if a window was scored.
    pub fn live_accuracy(
        &self,
        stage: &str,
        model: &str,
        version: &str,
        metric: &str,
    ) -> Option<f64> {
        self.live_accuracy
            .get(&LiveAccuracyLabels {
                stage: stage.to_owned(),
                model: model.to_owned(),
                version: version.to_owned(),
                metric: metric.to_owned(),
            })
            .map(|g| g.get())
    }

    /// A drift event (`raised` or `cleared`) of `signal` at `stage`.
    pub fn record_drift_event(&self, stage: &str, signal: &str, state: &str) {
        self.drift_events
            .get_or_create(&DriftEventLabels {
                stage: stage.to_owned(),
                signal: signal.to_owned(),
                state: state.to_owned(),
            })
            .inc();
    }

    /// A shadow version (`label`, `NAME/VERSION`) was compared with the served one on
    /// `compared` rows, `agreed` of them with the same top class.
    pub fn record_shadow(&self, stage: &str, model: &str, label: &str, compared: u64, agreed: u64) {
        let labels = ModelLabels {
            stage: stage.to_owned(),
            model: model.to_owned(),
            version: label.rsplit_once('/').map_or(label, |(_, v)| v).to_owned(),
        };
        self.shadow_rows.get_or_create(&labels).inc_by(compared);
        self.shadow_agreed.get_or_create(&labels).inc_by(agreed);
    }

    /// (agreed, compared) for shadow `version` at `stage`.
    pub fn shadow_agreement(&self, stage: &str, model: &str, version: &str) -> (u64, u64) {
        let labels = ModelLabels {
            stage: stage.to_owned(),
            model: model.to_owned(),
            version: version.to_owned(),
        };
        let get =
            |family: &Family<ModelLabels, Counter>| family.get(&labels).map_or(0, |c| c.get());
        (get(&self.shadow_agreed), get(&self.shadow_rows))
    }

    /// Drift was raised: wakes a retrain job waiting for it.
    pub fn record_drift_raised(&self) {
        self.drift_raised.notify_one();
    }

    /// A run of the pipeline's retrain job, started by `trigger` (`schedule`, `drift`),
    /// ended with `outcome` (`published`, `kept`, `failed`).
    pub fn record_retrain(&self, trigger: &str, outcome: &str) {
        self.retrain_runs
            .get_or_create(&RetrainLabels {
                trigger: trigger.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Retrain runs started by `trigger`, whatever their outcome.
    pub fn retrain_runs(&self, trigger: &str) -> u64 {
        ["published", "kept", "failed"]
            .iter()
            .filter_map(|outcome| {
                self.retrain_runs
                    .get(&RetrainLabels {
                        trigger: trigger.to_owned(),
                        outcome: (*outcome).to_owned(),
                    })
                    .map(|c| c.get())
            })
            .sum()
    }

    /// Drift events of `signal` at `stage` in `state`.
    pub fn drift_events(&self, stage: &str, signal: &str, state: &str) -> u64 {
        self.drift_events
            .get(&DriftEventLabels {
                stage: stage.to_owned(),
                signal: signal.to_owned(),
                state: state.to_owned(),
            })
            .map_or(0, |c| c.get())
    }

    /// The last drift of `signal` at `stage` (any version), if measured.
    pub fn drift(&self, stage: &str, signal: &str) -> Option<f64> {
        let serving = self.serving.lock().unwrap_or_else(|p| p.into_inner());
        let labels = serving.get(stage)?;
        let key = DriftLabels {
            stage: stage.to_owned(),
            model: labels.model.clone(),
            version: labels.version.clone(),
            signal: signal.to_owned(),
        };
        drop(serving);
        self.drift.get(&key).map(|g| g.get())
    }

    /// The version `stage` serves now.
    pub fn serving_version(&self, stage: &str) -> Option<String> {
        let serving = self.serving.lock().unwrap_or_else(|p| p.into_inner());
        serving.get(stage).map(|labels| labels.version.clone())
    }

    /// Whether `stage` has refused `version`.
    pub fn rejected_version(&self, stage: &str, version: &str) -> bool {
        let serving = self.serving.lock().unwrap_or_else(|p| p.into_inner());
        let model = serving
            .get(stage)
            .map(|l| l.model.clone())
            .unwrap_or_default();
        drop(serving);
        self.model_rejected
            .get(&ModelLabels {
                stage: stage.to_owned(),
                model,
                version: version.to_owned(),
            })
            .is_some_and(|c| c.get() > 0)
    }
}
