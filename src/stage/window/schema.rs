//! The window stage's output schema, planned from its config and the input schema before
//! any record arrives: keys, window bounds, carried columns, one column per feature and
//! band, provenance. Config mistakes (a key that is not a string column, a window size or
//! slide out of range, bands without samples and a sample rate, an output column named
//! twice) become plan issues with their key path.

use std::time::Duration;

use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

use super::{RECORDS_COLUMN, WINDOW_END_COLUMN, WINDOW_ID_COLUMN, WINDOW_START_COLUMN};
use crate::config::{limits, WindowConfig};
use crate::stage::PlanIssues;

/// Most windows one record may count in (`size / slide`).
const MAX_WINDOWS_PER_RECORD: u32 = 1000;

pub(super) fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// Name of the column holding `feature` of `field`.
pub fn feature_column(field: &str, feature: &str) -> String {
    format!("{field}_{feature}")
}

/// Name of the column holding band `band` of `field`.
pub fn band_column(field: &str, band: &str) -> String {
    format!("{field}_band_{band}")
}

/// The stage's output schema: keys, window bounds, carried columns, features, provenance.
///
/// Long on purpose: every window-config check with its key path, then the output columns in
/// the order they are written.
pub fn output_schema(config: &WindowConfig, input: &Schema, issues: &mut PlanIssues) -> Schema {
    let mut fields = Vec::new();
    let utf8 = |key: &str, name: &str, issues: &mut PlanIssues| match input.field_with_name(name) {
        Ok(f) if f.data_type() == &DataType::Utf8 => {}
        Ok(f) => issues.add(
            key,
            format!("column `{name}` is {}, expected utf8", f.data_type()),
        ),
        Err(_) => issues.unknown_column(key, name, input),
    };
    if config.key.is_empty() {
        issues.add("key", "expected at least one key column");
    }
    for (i, name) in config.key.iter().enumerate() {
        utf8(&format!("key[{i}]"), name, issues);
        fields.push(Field::new(name, DataType::Utf8, false));
    }
    match input.field_with_name(&config.time) {
        Ok(f) if matches!(f.data_type(), DataType::Timestamp(TimeUnit::Millisecond, _)) => {}
        Ok(f) => issues.add(
            "time",
            format!(
                "column `{}` is {}, expected timestamp_ms",
                config.time,
                f.data_type()
            ),
        ),
        Err(_) => issues.unknown_column("time", &config.time, input),
    }
    if config.size.as_millis() == 0 {
        issues.add("size", "expected a window of at least 1ms");
    } else {
        issues.duration("size", config.size, limits::MILLISECOND, limits::YEAR);
    }
    let slide = config.slide();
    // Each record counts in size / slide windows: keep that a small number.
    let smallest = (config.size / MAX_WINDOWS_PER_RECORD).max(limits::MILLISECOND);
    if slide < smallest || slide > config.size {
        issues.add(
            "slide",
            format!(
                "expected a slide from {} to the window size {} (larger would skip records, \
                 smaller would put each record in more than {MAX_WINDOWS_PER_RECORD} windows)",
                humantime::format_duration(smallest),
                humantime::format_duration(config.size)
            ),
        );
    }
    issues.duration(
        "allowed_lateness",
        config.allowed_lateness,
        Duration::ZERO,
        limits::YEAR,
    );
    fields.push(Field::new(WINDOW_ID_COLUMN, DataType::Utf8, false));
    fields.push(Field::new(WINDOW_START_COLUMN, timestamp_type(), false));
    fields.push(Field::new(WINDOW_END_COLUMN, timestamp_type(), false));
    fields.push(Field::new(RECORDS_COLUMN, DataType::Int64, false));
    for (i, name) in config.only_with.iter().enumerate() {
        if input.field_with_name(name).is_err() {
            issues.unknown_column(&format!("only_with[{i}]"), name, input);
        }
    }
    for (i, name) in config.carry.iter().enumerate() {
        utf8(&format!("carry[{i}]"), name, issues);
        fields.push(Field::new(name, DataType::Utf8, true));
    }
    if config.fields.is_empty() {
        issues.add("fields", "expected at least one field to summarize");
    }
    for (i, field) in config.fields.iter().enumerate() {
        let key = format!("fields[{i}]");
        let is_list = match input.field_with_name(&field.input) {
            Ok(f) => match f.data_type() {
                t if t.is_numeric() => false,
                DataType::List(item) if item.data_type().is_numeric() => true,
                other => {
                    issues.add(
                        &format!("{key}.input"),
                        format!(
                            "column `{}` is {other}, expected a number or a list of numbers",
                            field.input
                        ),
                    );
                    false
                }
            },
            Err(_) => {
                issues.unknown_column(&format!("{key}.input"), &field.input, input);
                false
            }
        };
        match (&field.sample_rate, is_list) {
            (Some(rate), _) => match input.field_with_name(rate) {
                Ok(f) if f.data_type().is_numeric() => {}
                Ok(f) => issues.add(
                    &format!("{key}.sample_rate"),
                    format!("column `{rate}` is {}, expected a number", f.data_type()),
                ),
                Err(_) => issues.unknown_column(&format!("{key}.sample_rate"), rate, input),
            },
            (None, true) => issues.add(
                &format!("{key}.sample_rate"),
                format!(
                    "`{}` holds chunks of samples: name the column with their sample rate",
                    field.input
                ),
            ),
            (None, false) => {}
        }
        if !field.bands.is_empty() && !is_list {
            issues.add(
                &format!("{key}.bands"),
                "band power needs a list column of samples with a sample_rate",
            );
        }
        for (b, band) in field.bands.iter().enumerate() {
            if !(band.low_hz >= 0.0 && band.high_hz > band.low_hz) {
                issues.add(
                    &format!("{key}.bands[{b}]"),
                    "expected 0 <= low_hz < high_hz",
                );
            }
        }
        for feature in &field.features {
            fields.push(Field::new(
                feature_column(&field.input, feature.name()),
                DataType::Float64,
                false,
            ));
        }
        for band in &field.bands {
            fields.push(Field::new(
                band_column(&field.input, &band.name),
                DataType::Float64,
                false,
            ));
        }
    }
    fields.extend(crate::schema::provenance_fields());
    let mut seen = std::collections::HashSet::new();
    for f in &fields {
        if !seen.insert(f.name().clone()) {
            issues.add(
                "",
                format!("output column `{}` would appear twice", f.name()),
            );
        }
    }
    Schema::new(fields)
}
