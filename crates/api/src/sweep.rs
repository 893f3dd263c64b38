//! The sweep spec users write (TOML), its conversion to the wire `SweepSpec`, its validation, and the one place
//! a trial's job is made from the template and a point of the search space ([`trial_spec`]).
//!
//! ```toml
//! name = "mnist-sweep"
//! [sweep]
//! metric = "val_accuracy"          # what the trials report
//! direction = "maximize"
//! searcher = "tpe"                 # tpe | random | grid
//! seed = 7
//! max_trials = 24
//! max_concurrent = 2
//! [sweep.pruner]
//! kind = "asha"                    # asha | hyperband | median | none
//! max_resource = 8                 # a trial's full budget (epochs)
//! mode = "stopping"                # asha/hyperband: stopping (prune as trials report) | promotion (pause at
//!                                  # each rung, resume the top 1/η from their checkpoints; train trials)
//! [sweep.params]
//! lr = { loguniform = [1e-4, 1e-2] }
//! batch_size = { choices = [32, 64, 128] }
//! width = { int = [64, 512], step = 64, when = "model=mlp" }
//! model = { choices = [{ name = "mlp", layers = [784, "${width}", 10] }, { name = "cnn", ... }] }
//! [trial]                          # a job spec: `${param}` is replaced by the parameter's value
//! kind = "train"
//! ...
//! ```
//!
//! Placeholders: a string that is exactly `"${p}"` becomes the parameter's value with its type (a number, or a
//! whole table for a table choice; placeholders inside it are replaced too); `${p}` inside a longer string, an
//! argument or an env value becomes its text. A process trial also gets `AIDOS_TRIAL_PARAMS` (the JSON object), and
//! `AIDOS_TRIAL_PARAMS_FILE`, the path of the same object as a file (written by the worker).
//! Limits: at most [`MAX_PARAMS`] parameters, [`MAX_CHOICES`] choices each, [`MAX_TRIALS`] trials.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::spec::{SpecError, SpecFile, validate};
use crate::v1::{
    JobKind, JobSpec, ParamCondition, ParamKind, ParamSpec, PrunerKind, PrunerSpec, SearcherKind, SweepSpec,
};

pub const MAX_PARAMS: usize = 64;
pub const MAX_CHOICES: usize = 256;
pub const MAX_TRIALS: u32 = 100_000;
pub const MAX_CONCURRENT: u32 = 1024;
/// Environment variable a process trial reads its parameters from (a JSON object).
pub const ENV_TRIAL_PARAMS: &str = "AIDOS_TRIAL_PARAMS";
/// Environment variable naming the same JSON object as a file: the worker writes [`TRIAL_PARAMS_FILE`] into the
/// attempt's working directory for every task that has [`ENV_TRIAL_PARAMS`].
pub const ENV_TRIAL_PARAMS_FILE: &str = "AIDOS_TRIAL_PARAMS_FILE";
pub const TRIAL_PARAMS_FILE: &str = "trial_params.json";
/// Labels a trial's job carries.
pub const LABEL_SWEEP: &str = "aidos.sweep";
pub const LABEL_TRIAL: &str = "aidos.trial";
pub const LABEL_PARAMS: &str = "aidos.params";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    pub name: Option<String>,
    pub sweep: SweepSection,
    pub trial: SpecFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSection {
    pub metric: String,
    pub direction: Option<String>,
    pub searcher: Option<String>,
    pub seed: Option<u64>,
    pub max_trials: Option<u32>,
    pub max_resource: Option<u64>,
    pub max_wall_secs: Option<u64>,
    pub max_concurrent: Option<u32>,
    pub startup_trials: Option<u32>,
    pub resource_unit: Option<String>,
    pub register_as: Option<String>,
    pub pruner: Option<PrunerFile>,
    #[serde(default)]
    pub params: BTreeMap<String, ParamFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrunerFile {
    pub kind: String,
    pub min_resource: Option<u64>,
    pub reduction_factor: Option<u32>,
    pub max_resource: Option<u64>,
    pub startup_trials: Option<u32>,
    pub warmup_steps: Option<u64>,
    /// `stopping` (default) or `promotion`.
    pub mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamFile {
    pub uniform: Option<[f64; 2]>,
    pub loguniform: Option<[f64; 2]>,
    pub int: Option<[i64; 2]>,
    pub step: Option<f64>,
    pub choices: Option<Vec<toml::Value>>,
    pub when: Option<String>,
    pub grid_points: Option<u32>,
}

/// Parses a TOML sweep spec and validates it.
pub fn parse_toml(text: &str) -> Result<SweepSpec, SpecError> {
    let file: SweepFile = toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| format!(" (at byte {})", s.start)).unwrap_or_default();
        SpecError::new("toml", format!("{}{at}", e.message()))
    })?;
    let spec = file.into_spec()?;
    validate_sweep(&spec)?;
    Ok(spec)
}

/// A choice's label: a string itself, a number's or bool's text, a table's `name` (else its JSON).
pub fn choice_label(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => match o.get("name") {
            Some(serde_json::Value::String(s)) => s.clone(),
            _ => v.to_string(),
        },
        other => other.to_string(),
    }
}

fn parse_when(field: &str, s: &str) -> Result<ParamCondition, SpecError> {
    let bad = || SpecError::new(field, format!("`{s}`: expected `param=value` or `param in (a, b)`"));
    let (param, values) = if let Some((p, rest)) = s.split_once(" in ") {
        let inner = rest.trim().strip_prefix('(').and_then(|r| r.strip_suffix(')')).ok_or_else(bad)?;
        (p, inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect::<Vec<_>>())
    } else if let Some((p, v)) = s.split_once('=') {
        (p, vec![v.trim().to_string()])
    } else {
        return Err(bad());
    };
    let param = param.trim().to_string();
    if param.is_empty() || values.is_empty() {
        return Err(bad());
    }
    Ok(ParamCondition { param, values })
}

impl ParamFile {
    fn into_spec(self, name: &str) -> Result<ParamSpec, SpecError> {
        let field = format!("sweep.params.{name}");
        let set = [self.uniform.is_some(), self.loguniform.is_some(), self.int.is_some(), self.choices.is_some()];
        if set.iter().filter(|b| **b).count() != 1 {
            return Err(SpecError::new(field, "give exactly one of uniform, loguniform, int or choices"));
        }
        let mut p =
            ParamSpec { name: name.to_string(), grid_points: self.grid_points.unwrap_or(0), ..Default::default() };
        if let Some([lo, hi]) = self.uniform {
            (p.kind, p.low, p.high) = (ParamKind::Uniform as i32, lo, hi);
        } else if let Some([lo, hi]) = self.loguniform {
            (p.kind, p.low, p.high) = (ParamKind::LogUniform as i32, lo, hi);
        } else if let Some([lo, hi]) = self.int {
            (p.kind, p.low, p.high) = (ParamKind::Int as i32, lo as f64, hi as f64);
            p.step = self.step.unwrap_or(1.0);
        } else if let Some(choices) = self.choices {
            p.kind = ParamKind::Categorical as i32;
            for (i, c) in choices.iter().enumerate() {
                let j = serde_json::to_value(c)
                    .map_err(|e| SpecError::new(format!("{field}.choices[{i}]"), format!("not representable: {e}")))?;
                p.labels.push(choice_label(&j));
                p.choices.push(j.to_string());
            }
        }
        if self.step.is_some() && p.kind != ParamKind::Int as i32 {
            return Err(SpecError::new(format!("{field}.step"), "only integer parameters take a step"));
        }
        if let Some(w) = &self.when {
            p.when = Some(parse_when(&format!("{field}.when"), w)?);
        }
        Ok(p)
    }
}

impl SweepFile {
    pub fn into_spec(self) -> Result<SweepSpec, SpecError> {
        let mut trial_file = self.trial;
        if trial_file.name.is_none() {
            trial_file.name = self.name.clone();
        }
        let trial = trial_file.into_spec().map_err(|e| SpecError::new(format!("trial.{}", e.field), e.reason))?;
        let s = self.sweep;
        let maximize = match s.direction.as_deref().unwrap_or("minimize") {
            "maximize" | "max" => true,
            "minimize" | "min" => false,
            o => return Err(SpecError::new("sweep.direction", format!("`{o}`: expected maximize or minimize"))),
        };
        let searcher = match s.searcher.as_deref().unwrap_or("tpe") {
            "tpe" => SearcherKind::Tpe,
            "random" => SearcherKind::Random,
            "grid" => SearcherKind::Grid,
            o => return Err(SpecError::new("sweep.searcher", format!("`{o}`: expected tpe, random or grid"))),
        };
        let pruner = match s.pruner {
            None => None,
            Some(p) => {
                let kind = match p.kind.as_str() {
                    "none" => PrunerKind::None,
                    "asha" => PrunerKind::Asha,
                    "hyperband" => PrunerKind::Hyperband,
                    "median" => PrunerKind::Median,
                    o => {
                        return Err(SpecError::new(
                            "sweep.pruner.kind",
                            format!("`{o}`: expected asha, hyperband, median or none"),
                        ));
                    }
                };
                let promotion = match p.mode.as_deref() {
                    None | Some("stopping") => false,
                    Some("promotion") => true,
                    Some(o) => {
                        return Err(SpecError::new(
                            "sweep.pruner.mode",
                            format!("`{o}`: expected stopping or promotion"),
                        ));
                    }
                };
                Some(PrunerSpec {
                    promotion,
                    kind: kind as i32,
                    min_resource: p.min_resource.unwrap_or(1),
                    reduction_factor: p.reduction_factor.unwrap_or(3),
                    max_resource: p.max_resource.unwrap_or(0),
                    startup_trials: p.startup_trials.unwrap_or(5),
                    warmup_steps: p.warmup_steps.unwrap_or(0),
                })
            }
        };
        let params = s.params.into_iter().map(|(n, p)| p.into_spec(&n)).collect::<Result<Vec<_>, _>>()?;
        let is_train = trial.kind == JobKind::Train as i32;
        Ok(SweepSpec {
            name: self.name.unwrap_or_default(),
            trial: Some(trial),
            params,
            metric: s.metric,
            maximize,
            max_trials: s.max_trials.unwrap_or(0),
            max_resource: s.max_resource.unwrap_or(0),
            max_wall_secs: s.max_wall_secs.unwrap_or(0),
            max_concurrent: s.max_concurrent.unwrap_or(1),
            searcher: searcher as i32,
            seed: s.seed.unwrap_or(0),
            pruner,
            startup_trials: s.startup_trials.unwrap_or(10),
            resource_unit: s.resource_unit.unwrap_or_else(|| if is_train { "epoch" } else { "step" }.into()),
            register_as: s.register_as.unwrap_or_default(),
        })
    }
}

/// `${name}` placeholders in `s`.
fn placeholders(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        let Some(j) = rest[i..].find('}') else { break };
        out.push(rest[i + 2..i + j].to_string());
        rest = &rest[i + j + 1..];
    }
    out
}

/// Checks a sweep spec; every error names its field. Run by the leader before anything is proposed.
pub fn validate_sweep(s: &SweepSpec) -> Result<(), SpecError> {
    if s.name.len() > 64 || s.name.contains('\0') {
        return Err(SpecError::new("name", "at most 64 bytes, no NUL"));
    }
    if s.metric.trim().is_empty() {
        return Err(SpecError::new("sweep.metric", "missing: name the metric the trials report (e.g. val_accuracy)"));
    }
    if s.max_trials == 0 {
        return Err(SpecError::new("sweep.max_trials", "0: a sweep needs a budget of at least 1 trial"));
    }
    if s.max_trials > MAX_TRIALS {
        return Err(SpecError::new("sweep.max_trials", format!("{}, at most {MAX_TRIALS}", s.max_trials)));
    }
    if s.max_concurrent == 0 || s.max_concurrent > MAX_CONCURRENT {
        return Err(SpecError::new(
            "sweep.max_concurrent",
            format!("{}: must be 1..={MAX_CONCURRENT}", s.max_concurrent),
        ));
    }
    if !matches!(s.resource_unit.as_str(), "epoch" | "step") {
        return Err(SpecError::new("sweep.resource_unit", format!("`{}`: expected epoch or step", s.resource_unit)));
    }
    SearcherKind::try_from(s.searcher).map_err(|_| SpecError::new("sweep.searcher", "unknown searcher"))?;
    let trial = s.trial.as_ref().ok_or_else(|| SpecError::new("trial", "missing"))?;
    match JobKind::try_from(trial.kind) {
        Ok(JobKind::Train | JobKind::Process) => {}
        _ => return Err(SpecError::new("trial.kind", "a trial is a `train` or a `process` job")),
    }
    validate(trial).map_err(|e| SpecError::new(format!("trial.{}", e.field), e.reason))?;
    if let Some(p) = &s.pruner {
        let kind = PrunerKind::try_from(p.kind).map_err(|_| SpecError::new("sweep.pruner.kind", "unknown pruner"))?;
        if matches!(kind, PrunerKind::Asha | PrunerKind::Hyperband) {
            if p.reduction_factor < 2 {
                return Err(SpecError::new(
                    "sweep.pruner.reduction_factor",
                    format!("{}: must be >= 2", p.reduction_factor),
                ));
            }
            if p.min_resource == 0 {
                return Err(SpecError::new("sweep.pruner.min_resource", "0: the first rung needs at least 1 unit"));
            }
            if p.max_resource == 0 {
                return Err(SpecError::new(
                    "sweep.pruner.max_resource",
                    "missing: a trial's full budget (e.g. its epochs)",
                ));
            }
            if p.max_resource < p.min_resource {
                return Err(SpecError::new(
                    "sweep.pruner.max_resource",
                    format!("{} is below min_resource {}", p.max_resource, p.min_resource),
                ));
            }
        }
        if p.promotion {
            if !matches!(kind, PrunerKind::Asha | PrunerKind::Hyperband) {
                return Err(SpecError::new("sweep.pruner.mode", "promotion is a mode of asha and hyperband"));
            }
            if trial.kind != JobKind::Train as i32 || s.resource_unit != "epoch" {
                return Err(SpecError::new(
                    "sweep.pruner.mode",
                    "promotion pauses a trial at each rung and resumes it from its checkpoint, which `train` \
                     trials (resource unit: epoch) do; a `process` trial can use the stopping mode",
                ));
            }
            if let Some(crate::v1::job_spec::Payload::Train(t)) = &trial.payload {
                let config: serde_json::Value = serde_json::from_str(&t.config_json).unwrap_or_default();
                check_promotion_epochs(s, config.get("epochs"))?;
            }
        }
    }
    if s.params.is_empty() {
        return Err(SpecError::new("sweep.params", "empty: give at least one parameter to search"));
    }
    if s.params.len() > MAX_PARAMS {
        return Err(SpecError::new("sweep.params", format!("{} parameters, at most {MAX_PARAMS}", s.params.len())));
    }
    let names: BTreeMap<&str, &ParamSpec> = s.params.iter().map(|p| (p.name.as_str(), p)).collect();
    for p in &s.params {
        let f = format!("sweep.params.{}", p.name);
        let ok_name = !p.name.is_empty() && p.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        if !ok_name {
            return Err(SpecError::new(&f, "a parameter name is 1+ of A-Z a-z 0-9 _ ."));
        }
        match ParamKind::try_from(p.kind).unwrap_or(ParamKind::Unspecified) {
            ParamKind::Uniform | ParamKind::LogUniform | ParamKind::Int => {
                let what = match ParamKind::try_from(p.kind) {
                    Ok(ParamKind::Uniform) => "uniform",
                    Ok(ParamKind::LogUniform) => "loguniform",
                    _ => "int",
                };
                if !(p.low.is_finite() && p.high.is_finite()) {
                    return Err(SpecError::new(format!("{f}.{what}"), "bounds must be finite numbers"));
                }
                if p.low >= p.high {
                    return Err(SpecError::new(
                        format!("{f}.{what}"),
                        format!("empty range [{}, {}]: low must be below high", p.low, p.high),
                    ));
                }
                if p.kind == ParamKind::LogUniform as i32 && p.low <= 0.0 {
                    return Err(SpecError::new(
                        format!("{f}.{what}"),
                        format!("bounds must be > 0 on a log scale, got [{}, {}]", p.low, p.high),
                    ));
                }
                if p.kind == ParamKind::Int as i32 && !(p.step >= 1.0 && p.step.fract() == 0.0) {
                    return Err(SpecError::new(
                        format!("{f}.step"),
                        format!("{}: must be a whole number >= 1", p.step),
                    ));
                }
            }
            ParamKind::Categorical => {
                if p.choices.is_empty() {
                    return Err(SpecError::new(format!("{f}.choices"), "empty: give at least one choice"));
                }
                if p.choices.len() > MAX_CHOICES || p.labels.len() != p.choices.len() {
                    return Err(SpecError::new(
                        format!("{f}.choices"),
                        format!("at most {MAX_CHOICES}, each labelled"),
                    ));
                }
                for (i, c) in p.choices.iter().enumerate() {
                    serde_json::from_str::<serde_json::Value>(c)
                        .map_err(|e| SpecError::new(format!("{f}.choices[{i}]"), format!("not JSON: {e}")))?;
                }
            }
            ParamKind::Unspecified => return Err(SpecError::new(&f, "missing kind")),
        }
        if let Some(w) = &p.when {
            let parent = names.get(w.param.as_str()).ok_or_else(|| {
                SpecError::new(format!("{f}.when"), format!("unknown parameter `{}` in the condition", w.param))
            })?;
            if parent.kind != ParamKind::Categorical as i32 {
                return Err(SpecError::new(
                    format!("{f}.when"),
                    format!("`{}` is not a categorical parameter: a condition names one of its choices", w.param),
                ));
            }
            for v in &w.values {
                if !parent.labels.contains(v) {
                    return Err(SpecError::new(
                        format!("{f}.when"),
                        format!("`{}` has no choice `{v}` (choices: {})", w.param, parent.labels.join(", ")),
                    ));
                }
            }
        }
    }
    // Conditions form a forest: following `when` from any parameter ends.
    order(&s.params).map_err(|p| SpecError::new(format!("sweep.params.{p}.when"), "conditions form a cycle"))?;
    // Every placeholder of the template names a parameter.
    let mut texts: Vec<String> = Vec::new();
    match &trial.payload {
        Some(crate::v1::job_spec::Payload::Train(t)) => texts.push(t.config_json.clone()),
        Some(crate::v1::job_spec::Payload::Process(p)) => {
            texts.extend(p.args.iter().cloned());
            texts.extend(p.env.values().cloned());
        }
        _ => {}
    }
    for c in s.params.iter().flat_map(|p| p.choices.iter()) {
        texts.push(c.clone());
    }
    for t in &texts {
        for ph in placeholders(t) {
            if !names.contains_key(ph.as_str()) {
                return Err(SpecError::new("trial", format!("`${{{ph}}}` names no parameter of sweep.params")));
            }
        }
    }
    Ok(())
}

/// The parameters in an order where every condition's parent comes before its children; `Err(name)` on a cycle.
pub fn order(params: &[ParamSpec]) -> Result<Vec<&ParamSpec>, String> {
    let mut out: Vec<&ParamSpec> = Vec::new();
    let mut placed = std::collections::BTreeSet::new();
    while out.len() < params.len() {
        let before = out.len();
        for p in params {
            if placed.contains(p.name.as_str()) {
                continue;
            }
            if p.when.as_ref().is_none_or(|w| placed.contains(w.param.as_str())) {
                placed.insert(p.name.as_str());
                out.push(p);
            }
        }
        if out.len() == before {
            let stuck = params.iter().find(|p| !placed.contains(p.name.as_str())).map(|p| p.name.clone());
            return Err(stuck.unwrap_or_default());
        }
    }
    Ok(out)
}

/// Is `p` active given the values already chosen (by label)?
pub fn is_active(p: &ParamSpec, labels: &BTreeMap<String, String>) -> bool {
    match &p.when {
        None => true,
        Some(w) => labels.get(&w.param).is_some_and(|l| w.values.contains(l)),
    }
}

fn text_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn substitute_text(s: &str, params: &BTreeMap<String, serde_json::Value>) -> String {
    let mut out = s.to_string();
    for (k, v) in params {
        out = out.replace(&format!("${{{k}}}"), &text_of(v));
    }
    out
}

fn substitute_json(
    v: &serde_json::Value,
    params: &BTreeMap<String, serde_json::Value>,
    depth: u32,
) -> Result<serde_json::Value, String> {
    if depth > 8 {
        return Err("placeholders nest deeper than 8".into());
    }
    Ok(match v {
        serde_json::Value::String(s) => {
            let whole = s.strip_prefix("${").and_then(|r| r.strip_suffix('}'));
            match whole {
                Some(name) if !name.contains('$') => match params.get(name) {
                    Some(val) => substitute_json(val, params, depth + 1)?,
                    None => return Err(format!("`${{{name}}}` is not active in this trial (see its `when`)")),
                },
                _ => serde_json::Value::String(substitute_text(s, params)),
            }
        }
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.iter().map(|x| substitute_json(x, params, depth)).collect::<Result<_, _>>()?)
        }
        serde_json::Value::Object(o) => serde_json::Value::Object(
            o.iter()
                .map(|(k, x)| Ok((k.clone(), substitute_json(x, params, depth)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// The job of trial `index` of sweep `sweep_id`: the template with the parameters in place, labelled with the
/// sweep, the trial and its parameters.
pub fn trial_spec(
    spec: &SweepSpec,
    sweep_id: &str,
    index: u32,
    params: &BTreeMap<String, serde_json::Value>,
) -> Result<JobSpec, String> {
    let mut job = spec.trial.clone().ok_or("the sweep has no trial template")?;
    let params_json = serde_json::to_string(params).map_err(|e| e.to_string())?;
    match &mut job.payload {
        Some(crate::v1::job_spec::Payload::Train(t)) => {
            let config: serde_json::Value =
                serde_json::from_str(&t.config_json).map_err(|e| format!("trial.train.config: {e}"))?;
            t.config_json = substitute_json(&config, params, 0)?.to_string();
            if t.register_as.is_empty() {
                t.register_as = if spec.register_as.is_empty() { spec.name.clone() } else { spec.register_as.clone() };
            }
        }
        Some(crate::v1::job_spec::Payload::Process(p)) => {
            p.args = p.args.iter().map(|a| substitute_text(a, params)).collect();
            for v in p.env.values_mut() {
                *v = substitute_text(v, params);
            }
            p.env.insert(ENV_TRIAL_PARAMS.into(), params_json.clone());
        }
        _ => return Err("a trial is a `train` or a `process` job".into()),
    }
    let base = if spec.name.is_empty() { sweep_id.to_string() } else { spec.name.clone() };
    job.name = format!("{base}-t{index}");
    job.labels.insert(LABEL_SWEEP.into(), sweep_id.into());
    job.labels.insert(LABEL_TRIAL.into(), index.to_string());
    job.labels.insert(LABEL_PARAMS.into(), params_json);
    Ok(job)
}

/// Promotion mode: the trial's `epochs` must be the pruner's `max_resource` (both are a trial's full budget; the
/// last rung's job trains up to `epochs`). A placeholder is checked once substituted.
fn check_promotion_epochs(spec: &SweepSpec, epochs: Option<&serde_json::Value>) -> Result<(), SpecError> {
    let max = spec.pruner.as_ref().map_or(0, |p| p.max_resource);
    match epochs.and_then(|e| e.as_u64()) {
        Some(e) if e != max => Err(SpecError::new(
            "trial.train.config.epochs",
            format!("{e}, but sweep.pruner.max_resource is {max}: in promotion mode both are a trial's full budget"),
        )),
        _ => Ok(()),
    }
}

/// The job that runs trial `index` of a promotion-mode sweep up to `stop_after` epochs (`None`: to the end),
/// resuming from the checkpoint of `resume_from` (the job of its previous rung; empty for the first). `rung` is the
/// number of rungs the trial passed.
pub fn rung_spec(
    spec: &SweepSpec,
    sweep_id: &str,
    index: u32,
    params: &BTreeMap<String, serde_json::Value>,
    rung: u32,
    stop_after: Option<u64>,
    resume_from: &str,
) -> Result<JobSpec, String> {
    let mut job = trial_spec(spec, sweep_id, index, params)?;
    let Some(crate::v1::job_spec::Payload::Train(t)) = &mut job.payload else {
        return Err("promotion runs `train` trials only".into());
    };
    let mut config: serde_json::Value =
        serde_json::from_str(&t.config_json).map_err(|e| format!("trial.train.config: {e}"))?;
    let obj = config.as_object_mut().ok_or("trial.train.config: not a table")?;
    check_promotion_epochs(spec, obj.get("epochs")).map_err(|e| format!("{}: {}", e.field, e.reason))?;
    match stop_after {
        Some(k) => obj.insert("stop_after_epochs".into(), k.into()),
        None => obj.remove("stop_after_epochs"),
    };
    t.config_json = config.to_string();
    t.resume_from_job = resume_from.to_string();
    if rung > 0 {
        job.name = format!("{}-r{rung}", job.name);
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
name = "s"
[sweep]
metric = "val_accuracy"
direction = "maximize"
max_trials = 4
[sweep.params]
lr = { loguniform = [1e-4, 1e-2] }
model = { choices = [{ name = "mlp", layers = [784, "${width}", 10] }, { name = "cnn", channels = "${ch}" }] }
width = { int = [64, 256], step = 64, when = "model=mlp" }
ch = { choices = [16, 32], when = "model=cnn" }
[trial]
kind = "train"
[trial.train]
dataset = "mnist"
[trial.train.config]
epochs = 2
model = "${model}"
optimizer = { name = "adam", lr = "${lr}" }
"#;

    fn err(text: &str) -> SpecError {
        parse_toml(text).expect_err("must be refused")
    }

    #[test]
    fn parses_and_substitutes_typed_values_and_nested_choices() {
        let s = parse_toml(BASE).unwrap();
        assert_eq!(s.params.len(), 4);
        let params: BTreeMap<String, serde_json::Value> = [
            ("lr".to_string(), serde_json::json!(0.001)),
            (
                "model".to_string(),
                serde_json::from_str(&s.params.iter().find(|p| p.name == "model").unwrap().choices[0]).unwrap(),
            ),
            ("width".to_string(), serde_json::json!(128)),
        ]
        .into();
        let job = trial_spec(&s, "sweep-1", 3, &params).unwrap();
        let Some(crate::v1::job_spec::Payload::Train(t)) = job.payload else { panic!() };
        let c: serde_json::Value = serde_json::from_str(&t.config_json).unwrap();
        assert_eq!(c["optimizer"]["lr"], serde_json::json!(0.001));
        assert_eq!(c["model"]["layers"], serde_json::json!([784, 128, 10]));
        assert_eq!(job.labels[LABEL_TRIAL], "3");
        assert_eq!(job.name, "s-t3");
        assert_eq!(t.register_as, "s");
    }

    #[test]
    fn bad_input_names_the_field() {
        let e = err(&BASE.replace("[1e-4, 1e-2]", "[0.0, 1e-2]"));
        assert_eq!(e.field, "sweep.params.lr.loguniform", "{e}");
        let e = err(&BASE.replace("[64, 256]", "[256, 256]"));
        assert!(e.field == "sweep.params.width.int" && e.reason.contains("empty range"), "{e}");
        let e = err(&BASE.replace("when = \"model=mlp\"", "when = \"modle=mlp\""));
        assert!(e.field == "sweep.params.width.when" && e.reason.contains("modle"), "{e}");
        let e = err(&BASE.replace("when = \"model=mlp\"", "when = \"model=resnet\""));
        assert!(e.reason.contains("resnet"), "{e}");
        let e = err(&BASE.replace("max_trials = 4", "max_trials = 0"));
        assert_eq!(e.field, "sweep.max_trials", "{e}");
        let e = err(&BASE.replace("\"${lr}\"", "\"${rate}\""));
        assert!(e.reason.contains("rate"), "{e}");
        let e = err(&BASE.replace("direction = \"maximize\"", "direction = \"up\""));
        assert_eq!(e.field, "sweep.direction");
        let e = err(&BASE.replace("[sweep.params]", "[sweep.pruner]\nkind = \"asha\"\n[sweep.params]"));
        assert_eq!(e.field, "sweep.pruner.max_resource", "{e}");
        let e = err(&BASE.replace("ch = { choices = [16, 32], when = \"model=cnn\" }", "ch = { choices = [] }"));
        assert_eq!(e.field, "sweep.params.ch.choices", "{e}");
        let asha = |extra: &str| {
            BASE.replace(
                "[sweep.params]",
                &format!("[sweep.pruner]\nkind = \"asha\"\nmax_resource = 2\n{extra}\n[sweep.params]"),
            )
        };
        parse_toml(&asha("mode = \"promotion\"")).expect("promotion over train trials of max_resource epochs");
        let e = err(&asha("mode = \"promotion\"").replace("epochs = 2", "epochs = 3"));
        assert!(e.field == "trial.train.config.epochs" && e.reason.contains("max_resource is 2"), "{e}");
        let e = err(&asha("mode = \"promote\""));
        assert!(e.field == "sweep.pruner.mode" && e.reason.contains("promote"), "{e}");
        let e = err(&asha("mode = \"promotion\"").replace("kind = \"asha\"", "kind = \"median\""));
        assert_eq!(e.field, "sweep.pruner.mode", "{e}");
        let process = asha("mode = \"promotion\"").replace("[trial]\nkind = \"train\"", "[trial]\nkind = \"process\"\nprocess = { executable = \"/bin/true\" }").replace("[trial.train]\ndataset = \"mnist\"", "").replace("[trial.train.config]\nepochs = 2\nmodel = \"${model}\"\noptimizer = { name = \"adam\", lr = \"${lr}\" }", "");
        let e = err(&process);
        assert!(e.field == "sweep.pruner.mode" && e.reason.contains("`process`"), "{e}");
    }

    #[test]
    fn order_puts_parents_first_and_finds_cycles() {
        let s = parse_toml(BASE).unwrap();
        let o: Vec<&str> = order(&s.params).unwrap().iter().map(|p| p.name.as_str()).collect();
        assert!(o.iter().position(|n| *n == "model") < o.iter().position(|n| *n == "width"));
        let mut p = s.params.clone();
        for x in &mut p {
            if x.name == "model" {
                x.when = Some(ParamCondition { param: "ch".into(), values: vec!["16".into()] });
            }
        }
        assert!(order(&p).is_err());
    }
}
