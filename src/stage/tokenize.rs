//! `tokenize`: a text column -> `input_ids`, `attention_mask`, `token_type_ids`.
//!
//! Uses HF `tokenizers` with the model's `tokenizer.json`, with the file's own padding
//! switched off: each batch is padded to its longest row (not to a fixed length), and
//! texts are truncated to `max_len` tokens. The three outputs are `List<Int64>` columns
//! whose rows all have the batch's length, so their value buffers are `[rows, seq]`
//! row-major matrices that the `infer` stage hands to ONNX Runtime without copying.
//! Null or empty text is rejected (dead letter).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, ListArray, RecordBatch};
use arrow::buffer::OffsetBuffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tokenizers::{Tokenizer, TruncationParams};

use super::{PlanContext, PlanIssues, Rejection, StageError, StageOutput};
use crate::batch::DeadLetterKind;
use crate::config::TokenizeConfig;

pub(crate) const OUTPUTS: [&str; 3] = ["input_ids", "attention_mask", "token_type_ids"];

pub struct TokenizeStage {
    name: String,
    tokenizer: Arc<Tokenizer>,
    input: usize,
    output_schema: SchemaRef,
}

fn token_list_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Int64, false)))
}

/// Why a tokenizer file cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer file {} does not exist", .0.display())]
    Missing(PathBuf),
    #[error("model `{model}` has no current version")]
    Registry {
        model: String,
        #[source]
        source: crate::model::RegistryError,
    },
    #[error("model `{model}` version {version} has no tokenizer.json ({})", .path.display())]
    NotInModel {
        model: String,
        version: String,
        path: PathBuf,
    },
}

/// The tokenizer file named by `tokenizer`: a `.json` path (relative to the pipeline
/// file) or the current version of a registry model.
pub(crate) fn tokenizer_path(
    config: &TokenizeConfig,
    ctx: &PlanContext,
) -> Result<PathBuf, TokenizerError> {
    if config.tokenizer.ends_with(".json") {
        let path = ctx.base_dir.join(&config.tokenizer);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(TokenizerError::Missing(path))
        };
    }
    let version =
        ctx.registry
            .current(&config.tokenizer)
            .map_err(|source| TokenizerError::Registry {
                model: config.tokenizer.clone(),
                source,
            })?;
    let path = version.dir.join("tokenizer.json");
    if path.is_file() {
        Ok(path)
    } else {
        Err(TokenizerError::NotInModel {
            model: version.name.clone(),
            version: version.version.to_string(),
            path,
        })
    }
}

/// Output schema: the input plus the three token columns.
pub fn output_schema(config: &TokenizeConfig, input: &Schema, issues: &mut PlanIssues) -> Schema {
    match input.field_with_name(&config.input) {
        Ok(field)
            if matches!(
                field.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) => {}
        Ok(field) => issues.add(
            "input",
            format!(
                "column `{}` is {}, expected text (Utf8)",
                config.input,
                field.data_type()
            ),
        ),
        Err(_) => issues.unknown_column("input", &config.input, input),
    }
    if config.max_len < 2 {
        issues.add("max_len", "expected at least 2 (room for [CLS] and [SEP])");
    } else {
        issues.count("max_len", config.max_len, 2, 1 << 16);
    }
    let mut fields: Vec<Arc<Field>> = input.fields().iter().cloned().collect();
    for name in OUTPUTS {
        let name = format!("{}{name}", config.output_prefix);
        if input.field_with_name(&name).is_ok() {
            issues.add(
                "output_prefix",
                format!("output column `{name}` already exists; set `output_prefix`"),
            );
        }
        fields.push(Arc::new(Field::new(name, token_list_type(), false)));
    }
    Schema::new(fields)
}

impl TokenizeStage {
    pub fn new(
        name: String,
        config: &TokenizeConfig,
        tokenizer_file: &Path,
        input: &Schema,
        output_schema: SchemaRef,
    ) -> Result<Self, StageError> {
        let mut tokenizer =
            Tokenizer::from_file(tokenizer_file).map_err(|e| StageError::Setup {
                stage: name.clone(),
                message: format!("cannot load {}: {e}", tokenizer_file.display()),
            })?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: config.max_len,
                ..Default::default()
            }))
            .map_err(|e| StageError::Setup {
                stage: name.clone(),
                message: format!("truncation to {}: {e}", config.max_len),
            })?;
        let input = input.index_of(&config.input)?;
        Ok(TokenizeStage {
            name,
            tokenizer: Arc::new(tokenizer),
            input,
            output_schema,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn output_schema(&self) -> &SchemaRef {
        &self.output_schema
    }

    pub async fn process(&self, rows: RecordBatch) -> Result<StageOutput, StageError> {
        let tokenizer = self.tokenizer.clone();
        let input = self.input;
        let schema = self.output_schema.clone();
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || tokenize(&tokenizer, rows, input, schema, &name))
            .await
            .map_err(StageError::Task)?
    }
}

fn tokenize(
    tokenizer: &Tokenizer,
    rows: RecordBatch,
    input: usize,
    schema: SchemaRef,
    stage: &str,
) -> Result<StageOutput, StageError> {
    let text = cast(rows.column(input), &DataType::Utf8)?;
    let text = text.as_string::<i32>();
    let mut rejected = Vec::new();
    let mut texts = Vec::with_capacity(text.len());
    let mut positions = Vec::with_capacity(text.len());
    for row in 0..text.len() {
        match text.is_valid(row).then(|| text.value(row)) {
            None => rejected.push(Rejection::new(
                row,
                DeadLetterKind::NullField,
                "text is null",
            )),
            Some(t) if t.trim().is_empty() => rejected.push(Rejection::new(
                row,
                DeadLetterKind::EmptyText,
                "text is empty",
            )),
            Some(t) => {
                texts.push(t);
                positions.push(row);
            }
        }
    }
    let encodings = tokenizer
        .encode_batch_fast(texts, true)
        .map_err(|e| StageError::Failed {
            stage: stage.to_owned(),
            message: format!("tokenizer failed: {e}"),
        })?;
    let seq = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
    let n = rows.num_rows();
    let mut ids = vec![0_i64; n * seq];
    let mut mask = vec![0_i64; n * seq];
    let mut types = vec![0_i64; n * seq];
    for (encoding, &row) in encodings.iter().zip(&positions) {
        let start = row * seq;
        for (j, ((&id, &m), &t)) in encoding
            .get_ids()
            .iter()
            .zip(encoding.get_attention_mask())
            .zip(encoding.get_type_ids())
            .enumerate()
        {
            ids[start + j] = i64::from(id);
            mask[start + j] = i64::from(m);
            types[start + j] = i64::from(t);
        }
    }
    let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(seq, n));
    let list = |values: Vec<i64>| -> Result<ArrayRef, StageError> {
        let field = Arc::new(Field::new_list_field(DataType::Int64, false));
        Ok(Arc::new(ListArray::try_new(
            field,
            offsets.clone(),
            Arc::new(Int64Array::from(values)),
            None,
        )?))
    };
    let mut columns = rows.columns().to_vec();
    columns.push(list(ids)?);
    columns.push(list(mask)?);
    columns.push(list(types)?);
    Ok(StageOutput {
        rows: RecordBatch::try_new(schema, columns)?,
        rejected,
        aggregated: false,
    })
}
