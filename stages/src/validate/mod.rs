//! The validate stage: raw JSON payloads in, a typed Arrow batch out.
//!
//! The JSON Schema (draft 2020-12) decides both what is valid and the Arrow
//! schema of the output. Each payload is decoded in one pass into column
//! buffers while every keyword is checked; a bad record is rolled back and
//! rejected alone with the JSON pointer, keyword and value at fault, so the
//! rest of its batch goes on. Data-quality rules (SQL predicates) then run
//! column-wise over the decoded batch: a failing `error` rule sends the row
//! to the DLQ, a failing `warn` rule to the review queue.

mod columns;
mod decode;
mod schema;

use arrow::array::{Array, BinaryArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;

use crate::expr::{self, CompiledExpr, SqlError};
use crate::{Reject, Route, StageError, StageOutput};
use columns::RecordColumns;
pub use decode::Violation;
use decode::{Ctx, decode_record};

/// How bad a failed data-quality rule is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Severity {
    /// The record is wrong: dead-letter queue.
    #[default]
    Error,
    /// The record is suspicious: review queue.
    Warn,
}

/// A data-quality rule: rows for which `sql` is not true are rejected.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    /// Name reported with each rejected row.
    pub name: String,
    /// A boolean SQL expression over the decoded columns.
    pub sql: String,
    /// Where failing rows go.
    pub severity: Severity,
}

/// Everything needed to build a [`Validate`] stage.
#[derive(Debug, Clone)]
pub struct ValidateSpec {
    /// The JSON Schema document.
    pub schema: serde_json::Value,
    /// Payloads larger than this are rejected unread.
    pub max_record_bytes: usize,
    /// Data-quality rules, in order.
    pub rules: Vec<RuleSpec>,
}

/// Why a validate stage cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// The schema is valid JSON Schema but uses something with no Arrow mapping.
    #[error("schema {pointer}: {message}", pointer = if pointer.is_empty() { "/" } else { pointer })]
    Unsupported {
        /// JSON pointer into the schema document.
        pointer: String,
        /// What is not supported.
        message: String,
    },
    /// The document is not a valid draft 2020-12 schema.
    #[error("not a valid JSON Schema: {0}")]
    MetaSchema(String),
    /// A rule's SQL does not compile against the decoded schema.
    #[error("rule {name:?}: {source}")]
    Rule {
        /// Position of the rule in the list.
        index: usize,
        /// The rule's name.
        name: String,
        /// The planning error.
        source: SqlError,
    },
}

struct Rule {
    spec: RuleSpec,
    compiled: CompiledExpr,
}

/// The validate stage. Build once with [`Validate::new`], apply to every batch.
pub struct Validate {
    compiled: schema::Compiled,
    /// The full validator, for schemas with keywords the decoder does not check.
    full: Option<jsonschema::Validator>,
    max_record_bytes: usize,
    rules: Vec<Rule>,
}

impl std::fmt::Debug for Validate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validate")
            .field("schema", &self.compiled.arrow)
            .field("full_validator", &self.full.is_some())
            .finish()
    }
}

impl Validate {
    /// Compiles the schema and rules.
    pub fn new(spec: ValidateSpec) -> Result<Self, ValidateError> {
        if let Err(e) = jsonschema::meta::validate(&spec.schema) {
            return Err(ValidateError::MetaSchema(format!(
                "{} at {}",
                e,
                e.instance_path()
            )));
        }
        let full = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&spec.schema)
            .map_err(|e| ValidateError::MetaSchema(e.to_string()))?;
        let compiled = schema::compile(&spec.schema)?;
        let full = if compiled.unhandled.is_empty() {
            None
        } else {
            tracing::warn!(
                keywords = ?compiled.unhandled,
                "schema uses keywords the fast decoder does not check; every record is also run through the full validator"
            );
            Some(full)
        };
        let mut rules = Vec::with_capacity(spec.rules.len());
        for (index, rule) in spec.rules.into_iter().enumerate() {
            let compiled_rule =
                expr::compile_predicate(&rule.sql, &compiled.arrow).map_err(|source| {
                    ValidateError::Rule {
                        index,
                        name: rule.name.clone(),
                        source,
                    }
                })?;
            rules.push(Rule {
                spec: rule,
                compiled: compiled_rule,
            });
        }
        Ok(Validate {
            compiled,
            full,
            max_record_bytes: spec.max_record_bytes,
            rules,
        })
    }

    /// The schema of the batches this stage emits.
    pub fn output_schema(&self) -> SchemaRef {
        self.compiled.arrow.clone()
    }

    fn check_full(&self, bytes: &[u8]) -> Result<(), Violation> {
        let Some(full) = &self.full else {
            return Ok(());
        };
        // Only reached for schemas with keywords the decoder cannot check; the
        // decoder has already proven the bytes are well-formed JSON.
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| Violation {
            pointer: String::new(),
            keyword: "json",
            message: e.to_string(),
        })?;
        match full.iter_errors(&value).next() {
            None => Ok(()),
            Some(e) => Err(Violation {
                pointer: e.instance_path().to_string(),
                keyword: "schema",
                message: e.to_string(),
            }),
        }
    }

    /// Decodes and checks a batch of raw payloads (one JSON document each).
    pub fn apply(&self, payloads: &BinaryArray) -> Result<StageOutput, StageError> {
        let fields = self.compiled.arrow.fields();
        let mut columns = RecordColumns::new(fields);
        let mut ctx = Ctx::default();
        let mut rejects = Vec::new();
        let mut decoded_rows = Vec::with_capacity(payloads.len());
        for row in 0..payloads.len() {
            let outcome = if payloads.is_null(row) {
                Err(Violation {
                    pointer: String::new(),
                    keyword: "json",
                    message: "empty payload".into(),
                })
            } else {
                let bytes = payloads.value(row);
                if bytes.len() > self.max_record_bytes {
                    Err(Violation {
                        pointer: String::new(),
                        keyword: "size",
                        message: format!(
                            "record is {} bytes, more than max_record_bytes ({})",
                            bytes.len(),
                            self.max_record_bytes
                        ),
                    })
                } else {
                    decode_record(&self.compiled.root, &mut columns, bytes, &mut ctx).and_then(
                        |()| {
                            self.check_full(bytes).inspect_err(|_| {
                                columns.rows -= 1;
                                columns.rollback();
                            })
                        },
                    )
                }
            };
            match outcome {
                Ok(()) => decoded_rows.push(row),
                Err(v) => rejects.push(Reject {
                    row,
                    route: Route::Dlq,
                    rule: v.keyword.to_string(),
                    reason: v.to_string(),
                }),
            }
        }
        let arrays = columns.finish(fields);
        let batch = RecordBatch::try_new(self.compiled.arrow.clone(), arrays)?;
        let batch = self.apply_rules(batch, &decoded_rows, &mut rejects)?;
        rejects.sort_by_key(|r| r.row);
        Ok(StageOutput { batch, rejects })
    }

    /// Runs the data-quality rules; `rows[i]` is the input row of decoded row `i`.
    fn apply_rules(
        &self,
        batch: RecordBatch,
        rows: &[usize],
        rejects: &mut Vec<Reject>,
    ) -> Result<RecordBatch, StageError> {
        if self.rules.is_empty() || batch.num_rows() == 0 {
            return Ok(batch);
        }
        let exprs: Vec<_> = self.rules.iter().map(|r| r.compiled.expr.clone()).collect();
        let evaluated = expr::evaluate(&exprs, &batch)?;
        let mut keep = vec![true; batch.num_rows()];
        for (row, message) in &evaluated.failed {
            keep[*row] = false;
            rejects.push(Reject {
                row: rows[*row],
                route: Route::Dlq,
                rule: "rules".into(),
                reason: format!("rules could not be evaluated: {message}"),
            });
        }
        let survivors: Vec<usize> = (0..batch.num_rows()).filter(|r| keep[*r]).collect();
        // For each surviving row, the first failing rule of the highest severity.
        let mut verdict: Vec<Option<&Rule>> = vec![None; survivors.len()];
        for (rule, column) in self.rules.iter().zip(&evaluated.columns) {
            let Some(mask) = column.as_any().downcast_ref::<BooleanArray>() else {
                return Err(StageError::Input(format!(
                    "rule {:?} did not yield booleans",
                    rule.spec.name
                )));
            };
            for j in expr::failing_rows(mask) {
                let worse = match verdict[j] {
                    None => true,
                    Some(prev) => {
                        prev.spec.severity == Severity::Warn
                            && rule.spec.severity == Severity::Error
                    }
                };
                if worse {
                    verdict[j] = Some(rule);
                }
            }
        }
        for (j, rule) in verdict.iter().enumerate() {
            let Some(rule) = rule else { continue };
            let row = survivors[j];
            keep[row] = false;
            rejects.push(Reject {
                row: rows[row],
                route: match rule.spec.severity {
                    Severity::Error => Route::Dlq,
                    Severity::Warn => Route::Review,
                },
                rule: rule.spec.name.clone(),
                reason: format!("rule {:?} failed: {}", rule.spec.name, rule.spec.sql.trim()),
            });
        }
        if keep.iter().all(|k| *k) {
            return Ok(batch);
        }
        Ok(filter_record_batch(&batch, &BooleanArray::from(keep))?)
    }
}

#[cfg(test)]
mod tests;
