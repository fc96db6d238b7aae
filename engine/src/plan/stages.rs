//! `stages:`: validate, then transforms and enrich stages in order. Validate
//! is compiled when the plan is built (its schema is a local file); the
//! stages after it are compiled by [`compile`], each against the schema the
//! previous one emits, once the lookups before them are reached.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use tributary_connectors::kafka::KafkaConnection;
use tributary_connectors::kafka::meta as kafka_meta;
use tributary_connectors::lookup::cache::CachedLookup;
use tributary_stages::Stage;
use tributary_stages::enrich::{Enrich, EnrichError, EnrichSpec};
use tributary_stages::transform::{MappingSpec, Transform, TransformSpec};
use tributary_stages::validate::{RuleSpec, Validate, ValidateError, ValidateSpec};

use super::context::Cx;
use super::lookups::{LookupPlan, PlannedLookup, Reach};
use crate::config::{
    ConfigError, EnrichConfig, Loaded, Span, StageConfig, TransformConfig, ValidateConfig,
};

/// A stage after validate, as the pipeline file gives it.
#[derive(Clone)]
pub enum StagePlan {
    /// SQL or a mapping.
    Transform(TransformPlan),
    /// A lookup join and derived fields.
    Enrich(Box<EnrichPlan>),
}

/// A transform, not yet compiled.
#[derive(Clone)]
pub struct TransformPlan {
    spec: TransformSpec,
    /// `stages[i].transform.sql` or `.mapping`.
    key: String,
    span: Span,
}

/// An enrich stage, not yet compiled.
#[derive(Clone)]
pub struct EnrichPlan {
    /// Its lookup.
    pub lookup: LookupPlan,
    spec: EnrichSpec,
    /// `stages[i].enrich`.
    key: String,
    /// Where each derived field's SQL is written.
    derive_spans: Vec<Span>,
}

impl StagePlan {
    /// `transform` or `enrich`.
    pub fn kind(&self) -> &'static str {
        match self {
            StagePlan::Transform(_) => "transform",
            StagePlan::Enrich(_) => "enrich",
        }
    }
}

/// A stage after validate, ready to run.
#[derive(Clone)]
pub struct PlannedStage {
    /// `transform` or `enrich`.
    pub kind: &'static str,
    /// The stage.
    pub stage: Arc<dyn Stage>,
    /// For an enrich stage looking up on demand: what to ask before each batch.
    pub keyed: Option<KeyedEnrich>,
}

/// An enrich stage whose table is fetched per batch, for the batch's keys.
#[derive(Clone)]
pub struct KeyedEnrich {
    /// The stage (the same one as [`PlannedStage::stage`]).
    pub enrich: Arc<Enrich>,
    /// The cached source.
    pub lookup: Arc<CachedLookup>,
    /// The key column of the batches entering the stage.
    pub key_column: String,
}

/// `stages:`: the compiled validate stage and the plans of the others.
pub(super) fn stages(
    cx: Cx,
    loaded: &Loaded,
    kafka: Option<&KafkaConnection>,
) -> Result<(Arc<Validate>, Vec<StagePlan>), ConfigError> {
    let p = &loaded.pipeline;
    let Some(StageConfig::Validate(first)) = p.stages.first().map(|s| &s.value) else {
        return Err(cx.at(
            p.stages.first().map(|s| &s.span),
            "stages[0]",
            "the first stage must be `validate`: it turns raw JSON into typed columns",
        ));
    };
    let validate = Arc::new(validate(cx, loaded, first)?);
    let mut plans = Vec::new();
    for (i, located) in p.stages.iter().enumerate().skip(1) {
        let key = format!("stages[{i}].{}", located.value.kind());
        plans.push(match &located.value {
            StageConfig::Validate(_) => {
                return Err(cx.at(
                    Some(&located.span),
                    key,
                    "validate may only be the first stage",
                ));
            }
            StageConfig::Transform(t) => StagePlan::Transform(transform(t, &key, &located.span)),
            StageConfig::Enrich(e) => {
                let lookup = super::lookups::lookup(cx, loaded, &e.lookup, &key, kafka)?;
                StagePlan::Enrich(Box::new(EnrichPlan {
                    spec: enrich_spec(e, &lookup.name),
                    lookup,
                    derive_spans: e.derive.iter().map(|d| d.sql.span.clone()).collect(),
                    key,
                }))
            }
        });
    }
    Ok((validate, plans))
}

/// The schema leaving validate: the validated columns, then Kafka's metadata
/// columns when the source is Kafka.
pub(super) fn validated_schema(validate: &Validate, kafka: bool) -> SchemaRef {
    let schema = validate.output_schema();
    if kafka {
        kafka_meta::extend_schema(&schema)
    } else {
        schema
    }
}

/// The stages after validate, compiled.
pub(super) struct Compiled {
    pub(super) stages: Vec<PlannedStage>,
    pub(super) lookups: Vec<PlannedLookup>,
    /// The schema leaving the last stage.
    pub(super) schema: SchemaRef,
}

/// Compiles `plans` in order from `input`, reaching each lookup as `reach`
/// allows. `Err(Ok(key))`: the stage at `key` needs a lookup `reach` may not
/// ask, so neither it nor the stages after it are compiled; the schema so far
/// comes with it.
pub(super) fn compile(
    cx: Cx,
    plans: &[StagePlan],
    mut schema: SchemaRef,
    reach: Reach,
) -> Result<Result<Compiled, (String, SchemaRef)>, ConfigError> {
    let mut stages = Vec::with_capacity(plans.len());
    let mut lookups = Vec::new();
    for plan in plans {
        let (stage, keyed): (Arc<dyn Stage>, _) = match plan {
            StagePlan::Transform(t) => {
                let transform = Transform::new(&t.spec, &schema).map_err(|e| {
                    cx.at(
                        Some(&t.span),
                        t.key.clone(),
                        format!("{e}\n  input columns: {}", super::describe_schema(&schema)),
                    )
                })?;
                (Arc::new(transform), None)
            }
            StagePlan::Enrich(e) => {
                let Some(lookup) = e.lookup.open(cx, &schema, reach)? else {
                    return Ok(Err((e.key.clone(), schema)));
                };
                let enrich = Arc::new(e.compile(cx, &lookup, &schema)?);
                let keyed = lookup.cache.clone().map(|cache| KeyedEnrich {
                    enrich: enrich.clone(),
                    lookup: cache,
                    key_column: lookup.keys[0].clone(),
                });
                lookups.push(lookup);
                (enrich, keyed)
            }
        };
        schema = stage.output_schema();
        stages.push(PlannedStage {
            kind: plan.kind(),
            stage,
            keyed,
        });
    }
    Ok(Ok(Compiled {
        stages,
        lookups,
        schema,
    }))
}

impl EnrichPlan {
    fn compile(
        &self,
        cx: Cx,
        lookup: &PlannedLookup,
        input: &SchemaRef,
    ) -> Result<Enrich, ConfigError> {
        Enrich::new(self.spec.clone(), lookup.table.clone(), input).map_err(|e| {
            let (span, sub) = match &e {
                EnrichError::Derive { name, .. } => {
                    let i = self
                        .spec
                        .derive
                        .iter()
                        .position(|(d, _)| d == name)
                        .unwrap_or(0);
                    (self.derive_spans.get(i), format!("derive[{i}].sql"))
                }
                _ => (None, "lookup".to_string()),
            };
            cx.at(
                span,
                format!("{}.{sub}", self.key),
                format!("{e}\n  input columns: {}", super::describe_schema(input)),
            )
        })
    }
}

fn enrich_spec(config: &EnrichConfig, name: &str) -> EnrichSpec {
    let l = &config.lookup;
    EnrichSpec {
        name: name.to_string(),
        keys: l
            .key
            .iter()
            .into_iter()
            .map(|k| (k.clone(), k.clone()))
            .collect(),
        columns: l.columns.clone(),
        on_miss: config.on_miss.into(),
        on_error: config.on_error.into(),
        derive: config
            .derive
            .iter()
            .map(|d| (d.name.clone(), d.sql.value.clone()))
            .collect(),
    }
}

fn validate(cx: Cx, loaded: &Loaded, config: &ValidateConfig) -> Result<Validate, ConfigError> {
    let key = "stages[0].validate";
    let schema_path = loaded.resolve(config.schema.as_str());
    let at_schema =
        |message: String| cx.at(Some(&config.schema.span), format!("{key}.schema"), message);
    let raw = std::fs::read_to_string(&schema_path)
        .map_err(|e| at_schema(format!("cannot read schema file {schema_path}: {e}")))?;
    let document: serde_json::Value = serde_json::from_str(&raw).map_err(|e| {
        at_schema(format!(
            "{schema_path}:{}:{}: not JSON: {e}",
            e.line(),
            e.column()
        ))
    })?;
    let rules = config
        .rules
        .iter()
        .map(|r| RuleSpec {
            name: r.name.clone(),
            sql: r.sql.value.clone(),
            severity: r.severity.into(),
        })
        .collect();
    let spec = ValidateSpec {
        schema: document,
        max_record_bytes: config.max_record_bytes.as_usize(),
        rules,
    };
    Validate::new(spec).map_err(|e| match &e {
        ValidateError::Rule { index, .. } => {
            let rule = &config.rules[*index];
            cx.at(
                Some(&rule.sql.span),
                format!("{key}.rules[{index}].sql"),
                e.to_string(),
            )
        }
        _ => at_schema(format!("{schema_path}: {e}")),
    })
}

fn transform(config: &TransformConfig, key: &str, stage_span: &Span) -> TransformPlan {
    let (spec, span, sub) = match config {
        TransformConfig::Sql(sql) => (TransformSpec::Sql(sql.value.clone()), &sql.span, "sql"),
        TransformConfig::Mapping(m) => (
            TransformSpec::Mapping(MappingSpec {
                flatten: m.flatten.clone(),
                defaults: m.defaults.clone().into_iter().collect(),
                cast: m.cast.clone().into_iter().collect(),
                rename: m.rename.clone().into_iter().collect(),
                drop: m.drop.clone(),
            }),
            stage_span,
            "mapping",
        ),
    };
    TransformPlan {
        spec,
        key: format!("{key}.{sub}"),
        span: span.clone(),
    }
}
