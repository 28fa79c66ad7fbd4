//! The `sql` stage end to end on the mock cluster: generated feedback (with malformed
//! records) through `SELECT *, lower(text) ..., CAST(...) ... WHERE ...` into Parquet; the
//! rows read back are exactly the well-formed records the WHERE keeps, with the computed
//! columns, and the provenance columns intact. Also: a statement polars cannot run stops
//! start-up with the key path.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int32Type};
use rdkafka::mocking::MockCluster;

use crate::common;

use sluice::demo::feeds::feedback::{produce, FeedbackGenerator};

const QUERY: &str = "SELECT *, lower(text) AS text_lc, CAST(rating AS INT) * 2 AS double_stars \
                     FROM batch WHERE rating >= 4 AND channel <> 'email'";

fn pipeline_text(brokers: &str, out: &Path, query: &str) -> String {
    format!(
        "name: sql-test
source:
  kafka:
    brokers: {brokers}
    topics: [customer-feedback]
    batch: {{max_rows: 128, max_wait: 50ms}}
decode:
  schema: {schema}
  max_record_bytes: 16 KiB
stages:
  - sql:
      query: \"{query}\"
sinks:
  - parquet:
      path: {out}/rows
dead_letter:
  parquet:
    path: {out}/dead
",
        schema = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schemas/customer_feedback.json")
            .display(),
        out = out.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_stage_filters_and_computes_columns_between_kafka_and_parquet() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("customer-feedback", 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("pipeline.yaml");
    std::fs::write(&file, pipeline_text(&brokers, out.path(), QUERY)).unwrap();
    let pipeline = sluice::pipeline::load(&file).unwrap();

    let records: Vec<_> = FeedbackGenerator::new(11, 0.02, 1_795_000_000_000, 10)
        .take(3_000)
        .collect();
    let mut expected = BTreeMap::new();
    for record in records.iter().filter(|r| r.well_formed) {
        let json: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
        let rating = json["rating"].as_i64();
        let channel = json["channel"].as_str();
        if rating.is_some_and(|r| r >= 4) && channel.is_some_and(|c| c != "email") {
            let text = json["text"].as_str().unwrap().to_lowercase();
            expected.insert(
                json["id"].as_str().unwrap().to_owned(),
                (text, rating.unwrap() * 2),
            );
        }
    }
    let malformed = records.iter().filter(|r| !r.well_formed).count() as u64;
    let produced = produce(&brokers, "customer-feedback", records)
        .await
        .unwrap();
    let stats = common::consume_all(pipeline, produced).await;
    assert_eq!(stats.records_in, produced);
    assert_eq!(stats.dead_letters, malformed);

    let mut got = BTreeMap::new();
    for batch in common::read_dataset(&out.path().join("rows")) {
        let schema = batch.schema();
        assert_eq!(
            schema.field_with_name("double_stars").unwrap().data_type(),
            &DataType::Int32
        );
        assert!(matches!(
            schema.field_with_name("_timestamp").unwrap().data_type(),
            DataType::Timestamp(_, Some(tz)) if tz.as_ref() == "UTC"
        ));
        let column = |name: &str| batch.column_by_name(name).unwrap();
        let (ids, text) = (
            column("id").as_string::<i32>(),
            column("text_lc").as_string::<i32>(),
        );
        let stars = column("double_stars").as_primitive::<Int32Type>();
        assert_eq!(column("_offset").null_count(), 0);
        for row in 0..batch.num_rows() {
            got.insert(
                ids.value(row).to_owned(),
                (text.value(row).to_owned(), i64::from(stars.value(row))),
            );
        }
    }
    assert!(expected.len() > 100, "the WHERE should keep a good share");
    assert_eq!(got, expected);
}

#[test]
fn a_statement_polars_cannot_run_is_a_startup_error_with_the_key_path() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("pipeline.yaml");
    let bad = "SELECT *, CAST(missing_column AS INT) AS x FROM batch";
    std::fs::write(&file, pipeline_text("localhost:1", out.path(), bad)).unwrap();
    let error = sluice::pipeline::load(&file).unwrap_err().to_string();
    assert!(error.contains("pipeline.yaml"), "{error}");
    assert!(error.contains("stages[0].sql.query"), "{error}");
    assert!(error.contains("missing_column"), "{error}");
}
