//! No config value may panic or hang a run, and every invalid one is an error that names
//! its key path or line:
//! - extreme durations and sizes in shipped pipeline files are refused by `validate` at
//!   their key path (they used to panic, hang, or dead-letter every record);
//! - `${...}` nesting works and broken `${...}` are errors; empty and scalar files, YAML
//!   syntax and tab errors in job files name what was expected and the right line;
//! - librdkafka properties are checked at `validate`;
//! - a property-based test mutates every shipped pipeline and job file (hostile values,
//!   deleted, duplicated and tab-indented lines, truncation) and checks each load ends,
//!   without a panic, in success or in errors that all carry a key path or a line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use proptest::prelude::*;

use crate::common::project;
use sluice::config::ConfigError;

/// Loads `text` as the file `name` would be loaded, from beside the shipped pipelines
/// (so their relative schema, model and lookup paths resolve). The file is written under
/// a temporary name that scans of `pipelines/*.yaml` do not pick up.
fn load_beside_pipelines(name: &str, text: &str) -> Result<(), ConfigError> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = project("pipelines").join(format!(".test-{}-{n}.tmp", std::process::id()));
    std::fs::write(&file, text).unwrap();
    let loaded = if sluice::pipeline::job::is_job_file(Path::new(name)) {
        sluice::pipeline::job::load(&file, &|_| None).map(drop)
    } else {
        sluice::pipeline::load_with_vars(&file, &|_| None).map(drop)
    };
    let _ = std::fs::remove_file(&file);
    loaded
}

fn shipped(name: &str) -> String {
    std::fs::read_to_string(project("pipelines").join(name)).unwrap()
}

/// The error `validate` gives when `from` is replaced by `to` in a shipped file.
fn error_with(file: &str, from: &str, to: &str) -> ConfigError {
    let text = shipped(file);
    assert!(text.contains(from), "{file} has no `{from}`");
    load_beside_pipelines(file, &text.replacen(from, to, 1))
        .err()
        .unwrap_or_else(|| panic!("{file} with `{to}` loaded"))
}

fn assert_issue_at(error: &ConfigError, path: &str) {
    assert!(
        error
            .issues
            .iter()
            .any(|i| i.path == path && i.line.is_some()),
        "no issue at `{path}` (with a line) in:\n{error}"
    );
}

#[test]
fn extreme_durations_and_sizes_are_refused_at_their_key_path() {
    let cases = [
        (
            "sentiment.yaml",
            "max_wait: 5ms",
            "max_wait: 18446744073709551615s",
            "stages[1].infer.max_wait",
        ),
        (
            "sentiment.yaml",
            "max_wait: 5ms",
            "max_wait: 500000000y",
            "stages[1].infer.max_wait",
        ),
        (
            "sentiment.yaml",
            "max_wait: 100ms",
            "max_wait: 18446744073709551615s",
            "source.kafka.batch.max_wait",
        ),
        (
            "maintenance.yaml",
            "size: 250ms",
            "size: 500000000y",
            "stages[0].window.size",
        ),
        (
            "sentiment.yaml",
            "max_rows: 256",
            "max_rows: 18446744073709551615",
            "source.kafka.batch.max_rows",
        ),
        (
            "sentiment.yaml",
            "max_batch: 1024",
            "max_batch: 18446744073709551615",
            "stages[2].infer.max_batch",
        ),
        (
            "sentiment.yaml",
            "max_age: 5s\n  - kafka",
            "max_age: 500000000y\n  - kafka",
            "sinks[0].parquet.roll.max_age",
        ),
        (
            "sentiment.yaml",
            "refresh: 1m",
            "refresh: 0s",
            "stages[3].enrich.lookup[0].refresh",
        ),
        (
            "retrain-sentiment.yaml",
            "epochs: 60",
            "epochs: 18446744073709551615",
            "trainer.epochs",
        ),
    ];
    for (file, from, to, path) in cases {
        let error = error_with(file, from, to);
        assert_issue_at(&error, path);
        assert!(
            error.to_string().contains("expected a"),
            "{path}: says what was expected:\n{error}"
        );
    }
}

#[test]
fn librdkafka_properties_are_checked_at_validate() {
    let error = error_with(
        "sentiment.yaml",
        "session.timeout.ms: 6000",
        "session.timeout.ms: -6000",
    );
    assert_issue_at(&error, "source.kafka.properties.session.timeout.ms");
    let error = error_with(
        "sentiment.yaml",
        "session.timeout.ms: 6000",
        "session.timeout.ms: 6000\n      security.protocol: sasl_plaintext\n      sasl.mechanism: NOT-A-MECHANISM",
    );
    assert!(
        error
            .issues
            .iter()
            .any(|i| i.path.starts_with("source.kafka.properties")
                && i.message.contains("NOT-A-MECHANISM")),
        "{error}"
    );
}

#[test]
fn nested_defaults_resolve_and_broken_variables_are_errors_with_lines() {
    let text = shipped("demo.yaml").replace(
        "${SLUICE_BROKERS:-localhost:9092}",
        "${NOT_SET:-${ALSO_NOT_SET:-localhost:9093}}",
    );
    load_beside_pipelines("demo.yaml", &text).unwrap();
    for broken in ["${:-x}", "${}", "${not a name}", "${UNCLOSED"] {
        let text = shipped("demo.yaml").replace("${SLUICE_BROKERS:-localhost:9092}", broken);
        let error = load_beside_pipelines("demo.yaml", &text).unwrap_err();
        assert!(error.issues[0].line.is_some(), "{broken}: {error}");
    }
}

#[test]
fn empty_scalar_and_malformed_files_say_what_was_expected_and_where() {
    let error = load_beside_pipelines("empty.yaml", "").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("the file is empty: expected a mapping"),
        "{error}"
    );
    let error = load_beside_pipelines("scalar.yaml", "just words\n").unwrap_err();
    assert!(error.to_string().contains("found a string"), "{error}");
    assert!(!error.to_string().contains("TopLevelShape"), "{error}");

    // A syntax error in a job file, at its line.
    let job = shipped("retrain-sentiment.yaml");
    let lines = job.lines().count();
    let error =
        load_beside_pipelines("retrain-x.yaml", &format!("{job}extra: [unclosed\n")).unwrap_err();
    let line = error.issues[0].line.expect("a line");
    assert!(line > lines, "line {line} of {lines}:\n{error}");
    // A tab where indentation is expected, at the tab's line.
    let (at, _) = job
        .lines()
        .enumerate()
        .find(|(_, l)| l.starts_with("  ") && !l.trim_start().starts_with('#'))
        .unwrap();
    let tabbed: Vec<String> = job
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == at {
                format!("\t{}", l.trim_start())
            } else {
                l.to_owned()
            }
        })
        .collect();
    let error = load_beside_pipelines("retrain-x.yaml", &tabbed.join("\n")).unwrap_err();
    assert_eq!(error.issues[0].line, Some(at + 1), "{error}");
}

#[test]
fn a_secret_in_the_wrong_key_is_shown_as_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let password = "correct-horse-battery-staple";
    for (from, to) in [
        ("max_rows: 256", "max_rows: ${SASL_PASSWORD}"),
        ("group_id: sluice-sentiment", "group_id: sluice-sentiment\n    start: ${SASL_PASSWORD}"),
        (
            "session.timeout.ms: 6000",
            "session.timeout.ms: 6000\n      security.protocol: sasl_plaintext\n      sasl.mechanism: ${SASL_PASSWORD}",
        ),
    ] {
        let text = shipped("sentiment.yaml").replace(from, to);
        let file = project("pipelines").join(format!(".test-secret-{}.tmp", std::process::id()));
        std::fs::write(&file, &text).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["--log-json", "validate"])
            .arg(&file)
            .env("SASL_PASSWORD", password)
            .current_dir(dir.path())
            .output()
            .unwrap();
        std::fs::remove_file(&file).unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success(), "{to}: {printed}");
        assert!(!printed.contains(password), "{to} leaked: {printed}");
        assert!(printed.contains("${SASL_PASSWORD}"), "{to}: {printed}");
    }
}

/// Values that have broken config loaders.
const HOSTILE: &[&str] = &[
    "18446744073709551615s",
    "500000000y",
    "-1",
    "0",
    "0s",
    "18446744073709551615",
    "-9223372036854775808",
    "1e400",
    "\"\"",
    "~",
    "[]",
    "{}",
    "${",
    "${:-x}",
    "${X:-${Y:-z}}",
    "\"\\u0000\"",
    "ü🦀",
    "&a",
    "*a",
    "!!binary aGk=",
    ".nan",
    "true",
    "99999999999999999999999999999",
    "[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]",
    "0.0000001ms",
    "1 GiB",
    "18 EiB",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// The value after the line's `: ` (or the whole line) becomes a hostile value.
    Value(usize),
    Delete,
    Duplicate,
    /// Its indentation becomes a tab.
    Tab,
    /// The file ends before this line.
    Truncate,
    /// A key nobody knows, at the line's indentation.
    UnknownKey,
}

fn mutate(text: &str, line: usize, mutation: &Mutation) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let at = line % lines.len().max(1);
    let mut out: Vec<String> = Vec::with_capacity(lines.len() + 1);
    for (i, l) in lines.iter().enumerate() {
        if i != at {
            out.push((*l).to_owned());
            continue;
        }
        let indent = &l[..l.len() - l.trim_start().len()];
        match mutation {
            Mutation::Value(v) => {
                let hostile = HOSTILE[*v % HOSTILE.len()];
                out.push(match l.split_once(": ") {
                    Some((key, _)) => format!("{key}: {hostile}"),
                    None => format!("{indent}{hostile}"),
                });
            }
            Mutation::Delete => {}
            Mutation::Duplicate => {
                out.push((*l).to_owned());
                out.push((*l).to_owned());
            }
            Mutation::Tab => out.push(format!("\t{}", l.trim_start())),
            Mutation::Truncate => break,
            Mutation::UnknownKey => {
                out.push(format!("{indent}no_such_key: 1"));
                out.push((*l).to_owned());
            }
        }
    }
    out.join("\n")
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (0..HOSTILE.len()).prop_map(Mutation::Value),
        1 => Just(Mutation::Delete),
        1 => Just(Mutation::Duplicate),
        1 => Just(Mutation::Tab),
        1 => Just(Mutation::Truncate),
        1 => Just(Mutation::UnknownKey),
    ]
}

fn shipped_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(project("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    fn mutated_shipped_files_load_or_fail_with_a_key_path_or_line_never_panic_or_hang(
        file in 0usize..64,
        line in 0usize..400,
        mutation in mutation(),
    ) {
        let files = shipped_files();
        let path = &files[file % files.len()];
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = mutate(&std::fs::read_to_string(path).unwrap(), line, &mutation);
        let (done, outcome) = std::sync::mpsc::channel();
        let loading = text.clone();
        std::thread::spawn(move || {
            let result = std::panic::catch_unwind(|| load_beside_pipelines(&name, &loading));
            let _ = done.send(result.map(|r| r.err().map(|e| (e.to_string(), e.issues))));
        });
        let outcome = outcome
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("loading hung:\n{text}"));
        let failure = outcome.unwrap_or_else(|_| panic!("loading panicked:\n{text}"));
        if let Some((shown, issues)) = failure {
            prop_assert!(!issues.is_empty());
            for issue in &issues {
                prop_assert!(
                    issue.line.is_some() || !matches!(issue.path.as_str(), "" | "."),
                    "an issue without a key path or line: {}\nfile:\n{}", shown, text
                );
            }
        }
    }
}
