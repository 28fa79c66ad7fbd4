//! Pipeline files: the shipped ones validate, and mistakes are reported with the file,
//! the key path, the line and what was expected, all at once.

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice::config::{self, ConfigError};

fn pipelines_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines")
}

/// Writes `text` as a pipeline file next to a copy of the feedback schema.
fn load_text(text: &str) -> Result<sluice::pipeline::Pipeline, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/customer_feedback.json");
    std::fs::copy(schema, dir.path().join("feedback.json")).unwrap();
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, text).unwrap();
    sluice::pipeline::load_with_vars(&file, &|_| None)
}

const VALID: &str = "\
name: t
source:
  kafka:
    brokers: localhost:9092
    topics: [feedback]
decode:
  schema: feedback.json
sinks:
  - parquet:
      path: /tmp/out
      partition_by: [date(_timestamp)]
      roll:
        max_rows: 10
dead_letter:
  parquet:
    path: /tmp/dead
";

#[test]
fn every_shipped_pipeline_validates() {
    let mut checked = 0;
    for entry in std::fs::read_dir(pipelines_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            if sluice::pipeline::job::is_job_file(&path) {
                sluice::pipeline::job::load(&path, &|_| None).unwrap_or_else(|e| panic!("{e}"));
            } else {
                sluice::pipeline::load_with_vars(&path, &|_| None)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            checked += 1;
        }
    }
    assert!(checked >= 2, "found {checked} pipeline files");
}

#[test]
fn a_valid_file_loads_with_defaults_filled_in() {
    let pipeline = load_text(VALID).unwrap();
    assert_eq!(pipeline.group_id(), "sluice-t");
    assert_eq!(
        pipeline.row_schema().fields().len(),
        10,
        "6 fields + 4 provenance columns"
    );
}

fn issue_for<'a>(error: &'a ConfigError, path: &str) -> &'a config::ConfigIssue {
    error
        .issues
        .iter()
        .find(|i| i.path == path)
        .unwrap_or_else(|| panic!("no issue for `{path}` in:\n{error}"))
}

#[test]
fn an_unknown_key_is_named_with_its_path_and_line() {
    let error = load_text(&VALID.replace(
        "        max_rows: 10",
        "        max_rows: 10\n        max_rowz: 5",
    ))
    .unwrap_err();
    let issue = issue_for(&error, "sinks[0].parquet.roll.max_rowz");
    assert!(
        issue.message.starts_with("unknown field `max_rowz`"),
        "{issue}"
    );
    assert!(
        issue.message.contains("expected one of `max_rows`"),
        "{issue}"
    );
    assert_eq!(issue.line, Some(14));
}

#[test]
fn a_wrong_type_names_the_key_and_what_was_expected() {
    let error = load_text(&VALID.replace("max_rows: 10", "max_rows: lots")).unwrap_err();
    let issue = issue_for(&error, "sinks[0].parquet.roll.max_rows");
    assert!(
        issue.message.contains("invalid type: string \"lots\""),
        "{issue}"
    );
    assert_eq!(issue.line, Some(13));
    let rendered = error.to_string();
    assert!(
        rendered.contains("pipeline.yaml:13: sinks[0].parquet.roll.max_rows: invalid type"),
        "{rendered}"
    );
}

#[test]
fn a_missing_required_key_is_reported_at_its_parent() {
    let error = load_text(&VALID.replace("    topics: [feedback]\n", "")).unwrap_err();
    let issue = issue_for(&error, "source.kafka");
    assert!(issue.message.contains("missing field `topics`"), "{issue}");
    assert_eq!(issue.line, Some(3));
}

#[test]
fn independent_mistakes_are_all_reported_at_once() {
    let text = VALID
        .replace("max_rows: 10", "max_rows: -1")
        .replace(
            "    topics: [feedback]\n",
            "    topics: [feedback]\n    colour: blue\n",
        )
        .replace("name: t\n", "name: t\nversion: 2\n");
    let error = load_text(&text).unwrap_err();
    assert!(error.issues.len() >= 3, "{error}");
    issue_for(&error, "sinks[0].parquet.roll.max_rows");
    issue_for(&error, "source.kafka.colour");
    issue_for(&error, "version");
}

#[test]
fn semantic_mistakes_name_the_key_too() {
    let text = VALID
        .replace("[date(_timestamp)]", "[date(created)]")
        .replace(
            "schema: feedback.json",
            "schema: feedback.json\n  unknown_fields: reject",
        )
        .replace(
            "dead_letter:\n  parquet:\n    path: /tmp/dead\n",
            "dead_letter: {}\nmetrics:\n  listen: 9464\n",
        );
    let error = load_text(&text).unwrap_err();
    let listen = issue_for(&error, "metrics.listen");
    assert!(listen.message.contains("expected HOST:PORT"), "{listen}");
    let partition = issue_for(&error, "sinks[0].parquet.partition_by");
    assert!(
        partition.message.contains("unknown column `created`"),
        "{partition}"
    );
    let dead = issue_for(&error, "dead_letter");
    assert!(
        dead.message.contains("bad records must go somewhere"),
        "{dead}"
    );
}

#[test]
fn environment_variables_are_interpolated_and_a_missing_one_is_an_error() {
    let text = VALID.replace("localhost:9092", "${BROKERS}");
    let error = load_text(&text).unwrap_err();
    assert!(
        error.to_string().contains("`BROKERS` is not set"),
        "{error}"
    );
    let with_default = VALID.replace("localhost:9092", "${BROKERS:-k1:9092}");
    let pipeline = load_text(&with_default).unwrap();
    let config::SourceConfig::Kafka(kafka) = &pipeline.config.source;
    assert_eq!(kafka.brokers, "k1:9092");
}

#[test]
fn the_validate_command_reports_errors_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "name: x\nsource: {}\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("validate")
        .arg(pipelines_dir().join("demo.yaml"))
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.contains("demo.yaml: ok"), "{stdout}");
    assert!(stderr.contains("bad.yaml"), "{stderr}");
    assert!(stderr.contains("missing field `decode`"), "{stderr}");
}

/// The window stage of `stages[0]` in a shipped pipeline file, as YAML.
fn first_window(file: &str) -> serde_norway::Value {
    let text = std::fs::read_to_string(pipelines_dir().join(file)).unwrap();
    let value: serde_norway::Value = serde_norway::from_str(&text).unwrap();
    let window = value["stages"][0]["window"].clone();
    assert!(
        window.is_mapping(),
        "{file}: stages[0] is not a window stage"
    );
    window
}

#[test]
fn models_are_trained_on_the_same_windows_they_serve() {
    // The bootstrap pipelines make the training windows; the maintenance pipelines feed
    // the trained models the same features only if their window stages are identical.
    for (training, serving) in [
        ("bearing-windows.yaml", "maintenance.yaml"),
        ("process-windows.yaml", "maintenance-process.yaml"),
    ] {
        assert_eq!(
            first_window(training),
            first_window(serving),
            "{training} and {serving} must window alike"
        );
    }
}
