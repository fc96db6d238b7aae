//! Pricing: a basket's catalogue prices, then the discounts and taxes of a
//! rules file whose conditions and amounts are CEL expressions, with an
//! explanation of every rule that fired. All amounts are integer minor
//! units.
//!
//! ```yaml
//! coupons: [WELCOME5]
//! rules:
//!   - name: bulk-10
//!     phase: line                 # line, order or tax
//!     when: line.qty >= 10
//!     amount: bp(line.amount, 1000)   # 10 %, rounded half to even
//!   - name: welcome-coupon
//!     phase: order
//!     when: order.coupon == "WELCOME5"
//!     amount: 500
//!   - name: vat-de
//!     phase: tax
//!     when: order.country == "DE"
//!     amount: bp(order.amount, 1900)
//! ```
//!
//! Phases run in order. `line` rules run for each line, in file order, and
//! discount that line; `order` rules discount the order; `tax` rules add to
//! it. Discounts never take an amount below zero (a larger result is cut
//! to what is left, and the explanation says so). A rule with `stop: true`
//! ends its phase (for its line) when it fires. Expressions see `customer`
//! (`id`, `segment`), `order` (`currency`, `channel`, `coupon`, `country`,
//! `items`, `subtotal`, and `amount`: what the phase works on so far),
//! `line` in the line phase (`sku`, `qty`, `unit_price`, `amount`), and
//! `now` (a timestamp). `bp(amount, basis_points)` is the integer share.
//!
//! The file is checked as a whole before it is used: its YAML, every
//! expression's syntax, the variables each phase may use, and a dry run of
//! every expression on a sample basket; every error names the file, line
//! and column.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};

use crate::money::{self, Currency};

/// Where a rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Each line: a discount of the line.
    Line,
    /// The order: a discount of the order.
    Order,
    /// The order: tax added to it.
    Tax,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    coupons: Vec<String>,
    #[serde(default)]
    rules: Vec<RuleEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    name: Spanned<String>,
    #[serde(default)]
    description: Option<String>,
    phase: Phase,
    when: Spanned<String>,
    amount: Spanned<String>,
    #[serde(default)]
    stop: bool,
}

/// A rules file that cannot be used; the message names file:line:column.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RulesError(pub String);

struct Rule {
    name: String,
    description: Option<String>,
    phase: Phase,
    when: cel::Program,
    amount: cel::Program,
    stop: bool,
}

/// A checked rules file.
pub struct RuleSet {
    rules: Vec<Rule>,
    coupons: BTreeSet<String>,
    digest: String,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules.len())
            .field("digest", &self.digest)
            .finish()
    }
}

/// A line to price.
#[derive(Debug, Clone)]
pub struct LineInput {
    /// The product.
    pub sku: String,
    /// How many.
    pub qty: i64,
    /// The catalogue's unit price in the order's currency.
    pub unit_price: i64,
}

/// An order to price.
#[derive(Debug, Clone)]
pub struct OrderInput {
    /// The customer's number (`C000042`).
    pub customer: String,
    /// The customer's segment.
    pub segment: String,
    /// The currency.
    pub currency: Currency,
    /// `web`, `mobile` or `store`.
    pub channel: String,
    /// The coupon, if any.
    pub coupon: Option<String>,
    /// The shipping country (ISO 3166 alpha-2), if any.
    pub country: Option<String>,
    /// The lines.
    pub lines: Vec<LineInput>,
}

/// One rule that fired, and what it changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Applied {
    /// The rule.
    pub rule: String,
    /// Its description from the rules file.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub description: Option<String>,
    /// Its phase.
    pub phase: Phase,
    /// The line it changed (0-based), for line rules.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub line: Option<usize>,
    /// The amount before.
    pub before: i64,
    /// The amount after.
    pub after: i64,
    /// What the expression asked for, when it was cut to keep the amount
    /// at zero or more.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub capped_from: Option<i64>,
}

/// A priced order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Priced {
    /// Each line's discount, in line order.
    pub line_discounts: Vec<i64>,
    /// Σ qty × unit price.
    pub subtotal: i64,
    /// Every discount, lines and order.
    pub discount: i64,
    /// Every tax.
    pub tax: i64,
    /// subtotal − discount + tax.
    pub total: i64,
    /// The rules that fired, in the order they did.
    pub applied: Vec<Applied>,
    /// The SHA-256 of the rules file they came from (`none` without one).
    pub rules: String,
}

/// Why an order could not be priced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// The coupon is not in the rules file's list.
    #[error("unknown coupon `{0}`")]
    UnknownCoupon(String),
    /// A rule failed on this order (a defect of the rules file).
    #[error("rule `{rule}` failed: {message}")]
    Rule {
        /// The rule.
        rule: String,
        /// Why.
        message: String,
    },
    /// The amounts overflow.
    #[error("the order's amounts overflow")]
    Overflow,
}

const LINE_VARIABLES: &[&str] = &["customer", "order", "line", "now"];
const ORDER_VARIABLES: &[&str] = &["customer", "order", "now"];

impl RuleSet {
    /// No rules: catalogue prices only.
    pub fn empty() -> Self {
        Self {
            rules: Vec::new(),
            coupons: BTreeSet::new(),
            digest: "none".into(),
        }
    }

    /// Reads and checks `file`.
    pub fn load(file: &Path) -> Result<Self, RulesError> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            RulesError(format!(
                "{}: cannot read the rules file: {e}",
                file.display()
            ))
        })?;
        Self::parse(&text, file)
    }

    /// Checks `text`, naming `file` in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, RulesError> {
        let shown = file.display();
        let parsed: RulesFile = serde_saphyr::from_str(text)
            .map_err(|e| RulesError(tributary_kit::config::located(file, &e)))?;
        let mut names = BTreeSet::new();
        let mut rules = Vec::with_capacity(parsed.rules.len());
        for (index, entry) in parsed.rules.into_iter().enumerate() {
            let at = |spanned: &Spanned<String>| {
                format!(
                    "{shown}:{}:{}",
                    spanned.referenced.line(),
                    spanned.referenced.column()
                )
            };
            let name = entry.name.value.trim().to_string();
            if name.is_empty() {
                return Err(RulesError(format!(
                    "{}: rules[{index}].name: is empty",
                    at(&entry.name)
                )));
            }
            if !names.insert(name.clone()) {
                return Err(RulesError(format!(
                    "{}: rules[{index}].name: `{name}` is used by an earlier rule",
                    at(&entry.name)
                )));
            }
            let allowed = if entry.phase == Phase::Line {
                LINE_VARIABLES
            } else {
                ORDER_VARIABLES
            };
            let compile = |field: &str, spanned: &Spanned<String>| {
                let program = cel::Program::compile(&spanned.value).map_err(|errors| {
                    let first = errors.errors.first();
                    let (line, column) = first.map_or((1, 1), |e| (e.pos.0.max(1), e.pos.1.max(0)));
                    let message = first.map_or_else(|| errors.to_string(), |e| e.msg.clone());
                    RulesError(format!(
                        "{shown}:{}:{}: rules[{index}].{field} (`{name}`): {message}",
                        spanned.referenced.line() as isize + line - 1,
                        spanned.referenced.column() as isize + column,
                    ))
                })?;
                let references = program.references();
                if let Some(unknown) = references
                    .variables()
                    .into_iter()
                    .find(|v| !allowed.contains(v))
                {
                    return Err(RulesError(format!(
                        "{}: rules[{index}].{field} (`{name}`): `{unknown}` is not known in the {} phase (it may use {})",
                        at(spanned),
                        phase_name(entry.phase),
                        allowed.join(", ")
                    )));
                }
                Ok(program)
            };
            let rule = Rule {
                when: compile("when", &entry.when)?,
                amount: compile("amount", &entry.amount)?,
                name: name.clone(),
                description: entry.description,
                phase: entry.phase,
                stop: entry.stop,
            };
            // A dry run on a sample basket catches type errors now rather
            // than on a customer's order.
            let sample = sample_order();
            let line = (rule.phase == Phase::Line).then(|| &sample.lines[0]);
            let context = Context::new(&sample, 0).map_err(RulesError)?;
            let scope = context.scope(line, 1000);
            if let Err(message) = truthy(&rule.when, &scope) {
                return Err(RulesError(format!(
                    "{}: rules[{index}].when (`{name}`): {message}",
                    at(&entry.when)
                )));
            }
            if let Err(message) = integer(&rule.amount, &scope) {
                return Err(RulesError(format!(
                    "{}: rules[{index}].amount (`{name}`): {message}",
                    at(&entry.amount)
                )));
            }
            rules.push(rule);
        }
        let digest = Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self {
            rules,
            coupons: parsed.coupons.into_iter().collect(),
            digest,
        })
    }

    /// The file's SHA-256, as orders record it.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Prices `order`.
    pub fn price(&self, order: &OrderInput) -> Result<Priced, PricingError> {
        if let Some(coupon) = &order.coupon
            && !self.coupons.contains(coupon)
        {
            return Err(PricingError::UnknownCoupon(coupon.clone()));
        }
        let mut line_amounts = Vec::with_capacity(order.lines.len());
        for line in &order.lines {
            line_amounts.push(
                line.qty
                    .checked_mul(line.unit_price)
                    .ok_or(PricingError::Overflow)?,
            );
        }
        let subtotal = line_amounts
            .iter()
            .try_fold(0i64, |sum, a| sum.checked_add(*a))
            .ok_or(PricingError::Overflow)?;
        let mut applied = Vec::new();
        let mut line_discounts = vec![0i64; order.lines.len()];
        let context = Context::new(order, subtotal).map_err(|message| PricingError::Rule {
            rule: "(context)".into(),
            message,
        })?;
        for (index, line) in order.lines.iter().enumerate() {
            let mut amount = line_amounts[index];
            for rule in self.rules.iter().filter(|r| r.phase == Phase::Line) {
                let scope = context.scope(Some(line), amount);
                if let Some(step) = rule.apply(&scope, amount, false)? {
                    line_discounts[index] += amount - step.after;
                    amount = step.after;
                    applied.push(Applied {
                        line: Some(index),
                        ..step
                    });
                    if rule.stop {
                        break;
                    }
                }
            }
        }
        let line_discount: i64 = line_discounts.iter().sum();
        let mut amount = subtotal - line_discount;
        for rule in self.rules.iter().filter(|r| r.phase == Phase::Order) {
            let scope = context.scope(None, amount);
            if let Some(step) = rule.apply(&scope, amount, false)? {
                amount = step.after;
                applied.push(step);
                if rule.stop {
                    break;
                }
            }
        }
        let discount = subtotal - amount;
        let taxable = amount;
        let mut tax = 0i64;
        for rule in self.rules.iter().filter(|r| r.phase == Phase::Tax) {
            let scope = context.scope(None, taxable);
            if let Some(step) = rule.apply(&scope, amount, true)? {
                tax = tax
                    .checked_add(step.after - step.before)
                    .ok_or(PricingError::Overflow)?;
                amount = step.after;
                applied.push(step);
                if rule.stop {
                    break;
                }
            }
        }
        Ok(Priced {
            line_discounts,
            subtotal,
            discount,
            tax,
            total: amount,
            applied,
            rules: self.digest.clone(),
        })
    }
}

impl Rule {
    /// Runs the rule on `amount`: `None` when it does not fire.
    fn apply(
        &self,
        scope: &cel::Context<'_, '_>,
        amount: i64,
        adds: bool,
    ) -> Result<Option<Applied>, PricingError> {
        let failed = |message: String| PricingError::Rule {
            rule: self.name.clone(),
            message,
        };
        if !truthy(&self.when, scope).map_err(failed)? {
            return Ok(None);
        }
        let asked = integer(&self.amount, scope).map_err(failed)?;
        let (after, capped_from) = if adds {
            if asked < 0 {
                return Err(failed(format!("a tax of {asked} is negative")));
            }
            (
                amount.checked_add(asked).ok_or(PricingError::Overflow)?,
                None,
            )
        } else if asked < 0 {
            return Err(failed(format!("a discount of {asked} is negative")));
        } else if asked > amount {
            (0, Some(asked))
        } else {
            (amount - asked, None)
        };
        Ok(Some(Applied {
            rule: self.name.clone(),
            description: self.description.clone(),
            phase: self.phase,
            line: None,
            before: amount,
            after,
            capped_from,
        }))
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Line => "line",
        Phase::Order => "order",
        Phase::Tax => "tax",
    }
}

fn truthy(program: &cel::Program, scope: &cel::Context<'_, '_>) -> Result<bool, String> {
    match program.execute(scope) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("must be true or false, is {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

fn integer(program: &cel::Program, scope: &cel::Context<'_, '_>) -> Result<i64, String> {
    match program.execute(scope) {
        Ok(cel::Value::Int(i)) => Ok(i),
        Ok(cel::Value::UInt(u)) => i64::try_from(u).map_err(|_| format!("{u} is too large")),
        Ok(other) => Err(format!(
            "must be an integer amount in minor units (use bp() for shares), is {other:?}"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// A CEL map of `fields` (integers stay integers: JSON would make them
/// unsigned, which CEL does not mix with signed ones).
fn record(fields: Vec<(&str, cel::Value)>) -> cel::Value {
    let map: std::collections::HashMap<String, cel::Value> = fields
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    cel::Value::from(map)
}

fn text(value: &str) -> cel::Value {
    cel::Value::String(Arc::new(value.to_string()))
}

/// The variables every expression of one order sees.
struct Context {
    root: cel::Context<'static, 'static>,
    order: Vec<(&'static str, cel::Value)>,
}

impl Context {
    fn new(order: &OrderInput, subtotal: i64) -> Result<Self, String> {
        let mut root = cel::Context::default();
        root.add_function("bp", |amount: i64, points: i64| {
            money::basis_points(amount, points)
                .ok_or_else(|| cel::ExecutionError::function_error("bp", "the amount overflows"))
        })
        .map_err(|e| e.to_string())?;
        root.add_variable_from_value(
            "customer",
            record(vec![
                ("id", text(&order.customer)),
                ("segment", text(&order.segment)),
            ]),
        );
        root.add_variable_from_value(
            "now",
            cel::Value::Timestamp(chrono::Utc::now().fixed_offset()),
        );
        let items: i64 = order.lines.iter().map(|l| l.qty).sum();
        let order = vec![
            ("currency", text(order.currency.code())),
            ("channel", text(&order.channel)),
            ("coupon", text(order.coupon.as_deref().unwrap_or(""))),
            ("country", text(order.country.as_deref().unwrap_or(""))),
            ("items", cel::Value::Int(items)),
            ("subtotal", cel::Value::Int(subtotal)),
        ];
        Ok(Self { root, order })
    }

    /// A scope with `order.amount` = `amount` and, for line rules, `line`.
    fn scope(&self, line: Option<&LineInput>, amount: i64) -> cel::Context<'_, 'static> {
        let mut scope = self.root.new_inner_scope();
        let mut order = self.order.clone();
        order.push(("amount", cel::Value::Int(amount)));
        scope.add_variable_from_value("order", record(order));
        if let Some(line) = line {
            scope.add_variable_from_value(
                "line",
                record(vec![
                    ("sku", text(&line.sku)),
                    ("qty", cel::Value::Int(line.qty)),
                    ("unit_price", cel::Value::Int(line.unit_price)),
                    ("amount", cel::Value::Int(amount)),
                ]),
            );
        }
        scope
    }
}

fn sample_order() -> OrderInput {
    OrderInput {
        customer: "C000001".into(),
        segment: "standard".into(),
        currency: Currency::Usd,
        channel: "web".into(),
        coupon: None,
        country: Some("US".into()),
        lines: vec![LineInput {
            sku: "SKU-00001".into(),
            qty: 1,
            unit_price: 1000,
        }],
    }
}

/// The rules in force, replaced whole when the file changes.
#[derive(Debug, Clone)]
pub struct Pricing {
    current: Arc<RwLock<Arc<RuleSet>>>,
    file: Option<PathBuf>,
}

impl Pricing {
    /// Loads `file` (no rules without one).
    pub fn load(file: Option<&Path>) -> Result<Self, RulesError> {
        let rules = match file {
            Some(file) => RuleSet::load(file)?,
            None => RuleSet::empty(),
        };
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(rules))),
            file: file.map(Path::to_path_buf),
        })
    }

    /// The rules in force now; an order keeps the set it started with.
    pub fn current(&self) -> Arc<RuleSet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reloads the file if its content changed. A file that does not check
    /// is refused and the rules in force stay.
    pub fn reload(&self) -> Result<bool, RulesError> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let text = std::fs::read_to_string(file).map_err(|e| {
            RulesError(format!(
                "{}: cannot read the rules file: {e}",
                file.display()
            ))
        })?;
        let digest: String = Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if digest == self.current().digest {
            return Ok(false);
        }
        let rules = RuleSet::parse(&text, file)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
        Ok(true)
    }

    /// Checks the file every `every` and swaps in a changed one that checks.
    pub fn watch(
        &self,
        every: std::time::Duration,
        failures: prometheus_client::metrics::counter::Counter,
    ) -> tokio::task::JoinHandle<()> {
        let pricing = self.clone();
        tokio::spawn(async move {
            let mut last_error = None;
            loop {
                tokio::time::sleep(every).await;
                match pricing.reload() {
                    Ok(true) => {
                        last_error = None;
                        tracing::info!(digest = %pricing.current().digest(), "pricing rules reloaded");
                    }
                    Ok(false) => last_error = None,
                    Err(error) => {
                        if last_error.as_ref() != Some(&error) {
                            failures.inc();
                            tracing::error!(%error, "the changed pricing rules are refused; the previous rules stay in force");
                        }
                        last_error = Some(error);
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(lines: &[(&str, i64, i64)]) -> OrderInput {
        OrderInput {
            customer: "C000007".into(),
            segment: "gold".into(),
            currency: Currency::Eur,
            channel: "web".into(),
            coupon: Some("WELCOME5".into()),
            country: Some("DE".into()),
            lines: lines
                .iter()
                .map(|(sku, qty, price)| LineInput {
                    sku: (*sku).into(),
                    qty: *qty,
                    unit_price: *price,
                })
                .collect(),
        }
    }

    const RULES: &str = "\
coupons: [WELCOME5]
rules:
  - name: bulk-10
    description: 10 % off a line of 10 or more
    phase: line
    when: line.qty >= 10
    amount: bp(line.amount, 1000)
  - name: gold
    phase: order
    when: customer.segment == 'gold'
    amount: bp(order.amount, 500)
  - name: welcome
    phase: order
    when: order.coupon == 'WELCOME5'
    amount: 500
  - name: vat-de
    phase: tax
    when: order.country == 'DE'
    amount: bp(order.amount, 1900)
";

    #[test]
    fn rules_fire_in_phases_and_explain_themselves() {
        let rules = RuleSet::parse(RULES, Path::new("rules.yaml")).unwrap();
        let priced = rules
            .price(&order(&[("SKU-00001", 10, 1000), ("SKU-00002", 1, 2500)]))
            .unwrap();
        // 10 000 + 2 500; line 0 −1 000; gold 5 % of 11 500 = 575; coupon −500;
        // VAT 19 % of 10 425 = 1 980.75 → 1 981.
        assert_eq!(priced.subtotal, 12_500);
        assert_eq!(priced.line_discounts, vec![1000, 0]);
        assert_eq!(priced.discount, 2_075);
        assert_eq!(priced.tax, 1_981);
        assert_eq!(priced.total, 12_406);
        let fired: Vec<_> = priced.applied.iter().map(|a| a.rule.as_str()).collect();
        assert_eq!(fired, ["bulk-10", "gold", "welcome", "vat-de"]);
        assert_eq!(priced.applied[0].line, Some(0));
        assert_eq!(
            (priced.applied[3].before, priced.applied[3].after),
            (10_425, 12_406)
        );
    }

    #[test]
    fn a_discount_larger_than_the_amount_is_cut_and_says_so() {
        let text =
            "rules:\n  - name: all\n    phase: order\n    when: 'true'\n    amount: 999999\n";
        let priced = RuleSet::parse(text, Path::new("r.yaml"))
            .unwrap()
            .price(&OrderInput {
                coupon: None,
                ..order(&[("SKU-00001", 1, 100)])
            })
            .unwrap();
        assert_eq!(priced.total, 0);
        assert_eq!(priced.applied[0].capped_from, Some(999_999));
    }

    #[test]
    fn an_unknown_coupon_is_refused() {
        let rules = RuleSet::parse("coupons: [A]\n", Path::new("r.yaml")).unwrap();
        let error = rules
            .price(&OrderInput {
                coupon: Some("B".into()),
                ..order(&[("SKU-00001", 1, 100)])
            })
            .unwrap_err();
        assert_eq!(error, PricingError::UnknownCoupon("B".into()));
    }

    #[test]
    fn errors_name_the_file_line_and_rule() {
        let cases = [
            // A syntax error in the fourth line's expression.
            (
                "rules:\n  - name: a\n    phase: order\n    when: order.amount >\n    amount: 1\n",
                "r.yaml:4:",
            ),
            // The line is unknown outside the line phase.
            (
                "rules:\n  - name: a\n    phase: order\n    when: line.qty > 1\n    amount: 1\n",
                "r.yaml:4:11: rules[0].when (`a`): `line` is not known in the order phase",
            ),
            // A condition that is not a boolean, found by the dry run.
            (
                "rules:\n  - name: a\n    phase: order\n    when: order.amount\n    amount: 1\n",
                "r.yaml:4:11: rules[0].when (`a`): must be true or false",
            ),
            // An amount that is a string.
            (
                "rules:\n  - name: a\n    phase: tax\n    when: 'true'\n    amount: order.country\n",
                "r.yaml:5:13: rules[0].amount (`a`): must be an integer",
            ),
            // A type error: an int compared with a string.
            (
                "rules:\n  - name: a\n    phase: line\n    when: line.qty > 'x'\n    amount: 1\n",
                "r.yaml:4:11: rules[0].when (`a`)",
            ),
            // A duplicate name.
            (
                "rules:\n  - {name: a, phase: tax, when: 'true', amount: 1}\n  - {name: a, phase: tax, when: 'true', amount: 1}\n",
                "r.yaml:3:",
            ),
            // An unknown key, found by the YAML reader.
            (
                "rules:\n  - name: a\n    phase: tax\n    when: 'true'\n    amount: 1\n    amout: 2\n",
                "r.yaml:6:",
            ),
            // An unknown phase.
            (
                "rules:\n  - name: a\n    phase: shipping\n    when: 'true'\n    amount: 1\n",
                "r.yaml:3:",
            ),
        ];
        for (text, expected) in cases {
            let error = RuleSet::parse(text, Path::new("r.yaml")).unwrap_err().0;
            assert!(
                error.starts_with(expected),
                "{expected:?} not at the start of {error:?}"
            );
        }
    }
}
