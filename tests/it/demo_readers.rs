//! `sluice demo` works as the README says, and what it writes is read by pyarrow and
//! DuckDB as a Hive-partitioned dataset with the expected rows (scripts/check_dataset.py),
//! for the plain pipeline and for the sentiment pipeline (whose embedding column must read
//! back as a 384-float vector).

use std::path::Path;
use std::process::Command;

fn summary_number(summary: &str, label: &str) -> u64 {
    let line = summary
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{summary}"));
    line.trim_start()[label.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number in `{line}`"))
}

fn python_check(dataset: &Path, rows: u64, extra: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_dataset.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(dataset)
        .arg(rows.to_string())
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}\n(pyarrow and duckdb come from scripts/setup.sh)",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `sluice demo ARGS --out OUT` (on the CPU) and returns its stdout; fails on a
/// non-zero exit.
fn run_demo(args: &[&str], out: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("demo")
        .args(args)
        .arg("--out")
        .arg(out)
        .env("SLUICE_DEVICE", "cpu")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_demo_prints_its_summary_and_pyarrow_and_duckdb_read_what_it_wrote() {
    let out = tempfile::tempdir().unwrap();
    let stdout = run_demo(&["--pipeline", "demo", "--records", "5000"], out.path());

    assert_eq!(summary_number(&stdout, "records in"), 5_000);
    let rows = summary_number(&stdout, "rows written");
    let dead = summary_number(&stdout, "dead letters");
    assert_eq!(
        rows + dead,
        5_000,
        "every record is a row or a dead letter:\n{stdout}"
    );
    assert!(dead > 0, "the demo stream includes malformed records");
    assert!(
        stdout.contains(&format!("(read back from Parquet: {rows})")),
        "{stdout}"
    );
    assert_eq!(
        summary_number(&stdout, "Kafka messages out"),
        5_000,
        "rows + dead letters"
    );

    python_check(&out.path().join("feedback"), rows, &[]);
    python_check(&out.path().join("dead_letters"), dead, &[]);
}

#[test]
fn the_sentiment_demo_labels_real_reviews_and_its_vectors_read_back() {
    let out = tempfile::tempdir().unwrap();
    let stdout = run_demo(&["--records", "400"], out.path());
    let rows = summary_number(&stdout, "rows written");
    let dead = summary_number(&stdout, "dead letters");
    assert_eq!(rows + dead, 400, "{stdout}");
    assert_eq!(dead, 4, "1% broken: 2 torn JSON, 2 empty texts\n{stdout}");
    // Labels of real held-out reviews: the head's accuracy is about 77%, so well above
    // chance but not perfect.
    let agree_line = stdout.lines().find(|l| l.contains("agree with")).unwrap();
    let percent: f64 = agree_line
        .split(": ")
        .nth(1)
        .unwrap()
        .split('%')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(percent > 65.0, "{agree_line}");
    python_check(
        &out.path().join("feedback"),
        rows,
        &["--vector", "embedding:384"],
    );
    python_check(&out.path().join("dead_letters"), dead, &[]);
}
