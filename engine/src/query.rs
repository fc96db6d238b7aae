//! SQL over a pipeline's Parquet outputs, with DataFusion.
//!
//! Each output is registered as a table under its name, its Hive partition
//! columns typed as in the pipeline's output schema, or as text when that
//! schema is known only from a lookup database (see `plan::OfflineSchema`).

use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

use arrow::datatypes::{DataType, Schema};

use crate::plan::PlannedOutput;

/// A session with every output registered as a table; `schema` is the
/// schema of the records reaching the outputs (`Pipeline::output_schema`),
/// `None` when unknown (partition columns are then text).
pub async fn session(
    outputs: &[PlannedOutput],
    schema: Option<&Schema>,
) -> Result<SessionContext, DataFusionError> {
    let ctx = SessionContext::new();
    for output in outputs {
        let partition_cols = output
            .options
            .partition_by
            .iter()
            .map(|c| {
                let data_type = match schema {
                    Some(schema) => schema.field_with_name(c)?.data_type().clone(),
                    None => DataType::Utf8,
                };
                Ok((c.clone(), data_type))
            })
            .collect::<Result<Vec<_>, DataFusionError>>()?;
        std::fs::create_dir_all(&output.path)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let url = format!("{}/", output.path.trim_end_matches('/'));
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(partition_cols);
        ctx.register_listing_table(&output.name, &url, options, None, None)
            .await?;
    }
    Ok(ctx)
}

/// Runs `sql` over `outputs` (see [`session`]).
pub async fn run(
    outputs: &[PlannedOutput],
    schema: Option<&Schema>,
    sql: &str,
) -> Result<Vec<RecordBatch>, DataFusionError> {
    let ctx = session(outputs, schema).await?;
    ctx.sql(sql).await?.collect().await
}
