//! `enrich`: derived columns from model outputs ([`derive`]) and lookup joins against
//! reference tables ([`lookup`]), in that order.

pub mod derive;
pub mod lookup;

use std::sync::{Arc, RwLock};

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};

use self::derive::LabelCache;
use self::lookup::{SharedTable, Table};
use super::{PlanContext, PlanIssues, StageError, StageOutput};
use crate::config::{limits, DeriveConfig, EnrichConfig, LookupConfig};
use crate::model::Registry;

pub struct EnrichStage {
    name: String,
    derive: Vec<DeriveConfig>,
    lookups: Vec<(LookupConfig, SharedTable)>,
    registry: Registry,
    labels: LabelCache,
    output_schema: SchemaRef,
}

pub fn output_schema(
    config: &EnrichConfig,
    input: &Schema,
    ctx: &PlanContext,
    issues: &mut PlanIssues,
) -> Schema {
    let mut fields: Vec<Arc<Field>> = input.fields().iter().cloned().collect();
    derive::plan(&config.derive, &mut fields, issues);
    for (i, lookup) in config.lookup.iter().enumerate() {
        let key = format!("lookup[{i}]");
        issues.duration(
            &format!("{key}.refresh"),
            lookup.refresh,
            limits::SECOND,
            limits::YEAR,
        );
        let schema = Schema::new(fields.clone());
        if schema.field_with_name(&lookup.on).is_err() {
            issues.unknown_column(&format!("{key}.on"), &lookup.on, &schema);
        }
        let table = match lookup::Source::open(&lookup.path, &ctx.base_dir, &ctx.storage)
            .and_then(|source| lookup::read(&source))
        {
            Ok(t) => t,
            Err(e) => {
                issues.add(&format!("{key}.path"), e.to_string());
                continue;
            }
        };
        match lookup::output_fields(lookup, &table.schema()) {
            Ok(added) => {
                for field in added {
                    if schema.field_with_name(field.name()).is_ok() {
                        issues.add(
                            &format!("{key}.columns"),
                            format!("column `{}` already exists", field.name()),
                        );
                    }
                    fields.push(Arc::new(field));
                }
            }
            Err(e) => issues.add(&format!("{key}.columns"), e),
        }
    }
    Schema::new(fields)
}

impl EnrichStage {
    pub async fn start(
        name: String,
        config: &EnrichConfig,
        ctx: &PlanContext,
        _input: &Schema,
        output_schema: SchemaRef,
    ) -> Result<Self, StageError> {
        let mut lookups = Vec::with_capacity(config.lookup.len());
        for lookup in &config.lookup {
            let setup = |e: lookup::LookupError| StageError::Setup {
                stage: name.clone(),
                message: e.to_string(),
            };
            let source =
                lookup::Source::open(&lookup.path, &ctx.base_dir, &ctx.storage).map_err(setup)?;
            let batch = lookup::read(&source).map_err(setup)?;
            let table: SharedTable = Arc::new(RwLock::new(Arc::new(
                Table::build(&batch, lookup, &source).map_err(setup)?,
            )));
            lookup::spawn_refresh(Arc::downgrade(&table), lookup.clone(), source, name.clone());
            lookups.push((lookup.clone(), table));
        }
        Ok(EnrichStage {
            name,
            derive: config.derive.clone(),
            lookups,
            registry: ctx.registry.clone(),
            labels: LabelCache::default(),
            output_schema,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn process(&self, rows: RecordBatch) -> Result<StageOutput, StageError> {
        let mut columns = rows.columns().to_vec();
        let mut fields: Vec<Arc<Field>> = rows.schema().fields().iter().cloned().collect();
        for op in &self.derive {
            let partial =
                RecordBatch::try_new(Arc::new(Schema::new(fields.clone())), columns.clone())?;
            let column = derive::compute(op, &partial, &self.registry, &self.labels)?;
            fields.push(self.output_schema.field(fields.len()).clone().into());
            columns.push(column);
        }
        for (lookup, table) in &self.lookups {
            let keys = columns[Schema::new(fields.clone()).index_of(&lookup.on)?].clone();
            for column in lookup::current(table).join(&keys)? {
                fields.push(self.output_schema.field(fields.len()).clone().into());
                columns.push(column);
            }
        }
        Ok(StageOutput {
            rows: RecordBatch::try_new(self.output_schema.clone(), columns)?,
            rejected: Vec::new(),
            aggregated: false,
        })
    }
}
