//! The job spec users write (TOML), its conversion to the wire `JobSpec`, and validation.
//!
//! Every outside spec passes through [`validate`] on the leader before anything is proposed, so a malformed
//! spec is refused with an error that names the field and changes nothing. Limits below bound what one spec
//! may carry.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::v1::{self, Constraint, JobKind, JobSpec, PlacementStrategy, ProcessSpec, Resources, TrainSpec};

/// Most replicas one gang may ask for.
pub const MAX_REPLICAS: u32 = 1024;
/// Most arguments, env vars, labels or constraints in one spec.
pub const MAX_ITEMS: usize = 256;
/// Longest string (name, argument, label, env value) in one spec, in bytes.
pub const MAX_STRING: usize = 16 * 1024;
/// Most retries a job may ask for.
pub const MAX_RETRIES: u32 = 100;
/// Largest encoded spec accepted over the wire, in bytes.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;

/// A spec refused: `field` names where, `reason` says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job spec: {field}: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// The TOML form of a job spec. Unknown keys are refused so that a typo never silently does nothing.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    pub name: Option<String>,
    pub kind: Option<String>,
    #[serde(default)]
    pub resources: ResourcesFile,
    pub replicas: Option<u32>,
    /// A data-parallel gang may restart with fewer ranks, down to this many (default: exactly `replicas`).
    pub min_replicas: Option<u32>,
    pub priority: Option<i32>,
    pub max_retries: Option<u32>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `key=value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key`, `!key`.
    #[serde(default)]
    pub constraints: Vec<String>,
    pub placement: Option<String>,
    pub timeout_secs: Option<u64>,
    pub process: Option<ProcessFile>,
    pub train: Option<TrainFile>,
    pub export: Option<ExportFile>,
}

/// `[export]`: export a registry model version to ONNX on a worker.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ExportFile {
    pub model: String,
    pub quantize: Option<String>,
}

/// `[train]`: the built-in trainer on a dataset version. `config` is the trainer's own configuration (model,
/// optimizer, schedule, epochs, batch size, seed, ...), validated by the trainer (and by the CLI before sending).
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TrainFile {
    pub dataset: String,
    pub register_as: Option<String>,
    pub train_split: Option<String>,
    pub eval_split: Option<String>,
    /// Continue this job's training: start from its newest checkpoint (the config must match it).
    pub resume_from_job: Option<String>,
    pub config: Option<toml::Table>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ResourcesFile {
    /// Cores: `1`, `0.5`, or `"500m"`.
    pub cpu: Option<toml::Value>,
    /// Bytes: `1073741824`, `"512Mi"`, `"2Gi"`, `"100M"`.
    pub memory: Option<toml::Value>,
    pub gpus: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProcessFile {
    pub executable: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Parses a TOML spec and validates it.
pub fn parse_toml(text: &str) -> Result<JobSpec, SpecError> {
    let file: SpecFile = toml::from_str(text).map_err(|e| {
        let what = e.message().to_string();
        let at = e.span().map(|s| format!(" (at byte {})", s.start)).unwrap_or_default();
        SpecError::new("toml", format!("{what}{at}"))
    })?;
    let spec = file.into_spec()?;
    validate(&spec)?;
    Ok(spec)
}

impl SpecFile {
    pub fn into_spec(self) -> Result<JobSpec, SpecError> {
        if self.replicas == Some(0) {
            return Err(SpecError::new("replicas", "0: a job needs at least 1 replica (omit it for 1)"));
        }
        if self.min_replicas == Some(0) {
            return Err(SpecError::new("min_replicas", "0: at least 1 rank must run (omit it to keep every rank)"));
        }
        let default_kind = if self.train.is_some() {
            "train"
        } else if self.export.is_some() {
            "export"
        } else {
            "process"
        };
        let kind = match self.kind.as_deref().unwrap_or(default_kind) {
            "process" => JobKind::Process,
            "train" => JobKind::Train,
            "serve" => {
                return Err(SpecError::new(
                    "kind",
                    "`serve` replicas are created by deployments: use `aidos serve deploy`",
                ));
            }
            "export" => JobKind::Export,
            "sweep" => {
                return Err(SpecError::new(
                    "kind",
                    "a sweep is not a job: write a sweep spec ([sweep] and [trial]) and use `aidos sweep submit`",
                ));
            }
            other => {
                return Err(SpecError::new(
                    "kind",
                    format!("unknown kind `{other}` (expected `process`, `train` or `export`)"),
                ));
            }
        };
        let cpu_millis = match &self.resources.cpu {
            None => 1000,
            Some(v) => parse_cpu(v).map_err(|r| SpecError::new("resources.cpu", r))?,
        };
        let memory_bytes = match &self.resources.memory {
            None => 256 << 20,
            Some(v) => parse_bytes(v).map_err(|r| SpecError::new("resources.memory", r))?,
        };
        let placement = match self.placement.as_deref() {
            None => PlacementStrategy::Unspecified,
            Some("binpack") | Some("bin-pack") => PlacementStrategy::Binpack,
            Some("spread") => PlacementStrategy::Spread,
            Some(o) => return Err(SpecError::new("placement", format!("unknown strategy `{o}` (binpack|spread)"))),
        };
        let constraints = self
            .constraints
            .iter()
            .enumerate()
            .map(|(i, c)| parse_constraint(c).map_err(|r| SpecError::new(format!("constraints[{i}]"), r)))
            .collect::<Result<Vec<_>, _>>()?;
        let export = self.export;
        let payload = match (kind, self.process, self.train) {
            (JobKind::Export, _, _) => export.map(|e| {
                v1::job_spec::Payload::Export(v1::ExportSpec {
                    model: e.model,
                    quantize: e.quantize.unwrap_or_default(),
                })
            }),
            (JobKind::Process, Some(p), _) => {
                Some(v1::job_spec::Payload::Process(ProcessSpec { executable: p.executable, args: p.args, env: p.env }))
            }
            (JobKind::Train, _, Some(t)) => {
                let config = t.config.unwrap_or_default();
                let config_json = serde_json::to_string(&config)
                    .map_err(|e| SpecError::new("train.config", format!("not representable as JSON: {e}")))?;
                Some(v1::job_spec::Payload::Train(TrainSpec {
                    dataset: t.dataset,
                    config_json,
                    register_as: t.register_as.unwrap_or_default(),
                    train_split: t.train_split.unwrap_or_default(),
                    eval_split: t.eval_split.unwrap_or_default(),
                    resume_from_job: t.resume_from_job.unwrap_or_default(),
                }))
            }
            _ => None,
        };
        Ok(JobSpec {
            name: self.name.unwrap_or_default(),
            kind: kind as i32,
            resources: Some(Resources { cpu_millis, memory_bytes, gpus: self.resources.gpus.unwrap_or(0) }),
            replicas: self.replicas.unwrap_or(1),
            min_replicas: self.min_replicas.unwrap_or(0),
            priority: self.priority.unwrap_or(0),
            max_retries: self.max_retries.unwrap_or(0),
            labels: self.labels,
            constraints,
            placement: placement as i32,
            timeout_secs: self.timeout_secs.unwrap_or(0),
            // Set by the scheduler from the submitter's call (`--project`), not by the file.
            project: String::new(),
            payload,
        })
    }
}

/// Cores as a TOML number (`2`, `0.5`) or a string (`"500m"`, `"2"`), to millicores.
pub fn parse_cpu(v: &toml::Value) -> Result<u64, String> {
    let millis = match v {
        toml::Value::Integer(i) if *i >= 0 => (*i as u64).saturating_mul(1000),
        toml::Value::Float(f) if *f >= 0.0 && f.is_finite() => (f * 1000.0).round() as u64,
        toml::Value::String(s) => parse_cpu_str(s)?,
        other => return Err(format!("expected cores (e.g. 2, 0.5 or \"500m\"), got {other}")),
    };
    Ok(millis)
}

/// `"500m"` or `"1.5"` to millicores.
pub fn parse_cpu_str(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Some(m) = s.strip_suffix('m') {
        return m.parse::<u64>().map_err(|_| format!("`{s}` is not a millicore count like \"500m\""));
    }
    match s.parse::<f64>() {
        Ok(f) if f >= 0.0 && f.is_finite() => Ok((f * 1000.0).round() as u64),
        _ => Err(format!("`{s}` is not a core count like \"2\", \"0.5\" or \"500m\"")),
    }
}

/// Bytes as a TOML integer or a string with a unit (`Ki Mi Gi Ti`, `K M G T`, `B`).
pub fn parse_bytes(v: &toml::Value) -> Result<u64, String> {
    match v {
        toml::Value::Integer(i) if *i >= 0 => Ok(*i as u64),
        toml::Value::String(s) => parse_bytes_str(s),
        other => Err(format!("expected bytes (e.g. 1073741824 or \"512Mi\"), got {other}")),
    }
}

/// `"512Mi"`, `"2G"`, `"1024"` to bytes.
pub fn parse_bytes_str(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" => 1000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "T" | "TB" => 1_000_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        u => return Err(format!("unknown unit `{u}` in `{s}` (use Ki, Mi, Gi, Ti, K, M, G, T)")),
    };
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a size like \"512Mi\""))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("`{s}` is not a size like \"512Mi\""));
    }
    Ok((n * mult as f64).round() as u64)
}

/// Parses one constraint: `k=v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`.
pub fn parse_constraint(s: &str) -> Result<Constraint, String> {
    use v1::constraint::Op;
    let t = s.trim();
    let mk = |key: &str, op: Op, values: Vec<String>| {
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("`{s}` has no label key"));
        }
        Ok(Constraint { key: key.to_string(), op: op as i32, values })
    };
    let list = |rest: &str| -> Result<Vec<String>, String> {
        let r = rest.trim();
        let inner = r
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| format!("`{s}`: expected a list like (a,b)"))?;
        Ok(inner.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect())
    };
    if let Some((k, v)) = t.split_once("!=") {
        return mk(k, Op::NotIn, vec![v.trim().to_string()]);
    }
    if let Some((k, v)) = t.split_once('=') {
        return mk(k, Op::In, vec![v.trim().to_string()]);
    }
    if let Some((k, rest)) = t.split_once(" notin ") {
        return mk(k, Op::NotIn, list(rest)?);
    }
    if let Some((k, rest)) = t.split_once(" in ") {
        return mk(k, Op::In, list(rest)?);
    }
    if let Some(k) = t.strip_prefix('!') {
        return mk(k, Op::NotExists, vec![]);
    }
    if t.contains(char::is_whitespace) {
        return Err(format!("`{s}` is not a constraint (k=v, k!=v, k in (a,b), k notin (a,b), k, !k)"));
    }
    mk(t, Op::Exists, vec![])
}

/// Does a worker's label set satisfy this constraint?
pub fn constraint_matches(c: &Constraint, labels: &BTreeMap<String, String>) -> bool {
    use v1::constraint::Op;
    let v = labels.get(&c.key);
    match Op::try_from(c.op).unwrap_or(Op::Unspecified) {
        Op::In => v.is_some_and(|v| c.values.iter().any(|x| x == v)),
        Op::NotIn => v.is_none_or(|v| !c.values.iter().any(|x| x == v)),
        Op::Exists => v.is_some(),
        Op::NotExists => v.is_none(),
        Op::Unspecified => false,
    }
}

fn check_str(field: &str, s: &str) -> Result<(), SpecError> {
    if s.len() > MAX_STRING {
        return Err(SpecError::new(field, format!("longer than {MAX_STRING} bytes")));
    }
    if s.contains('\0') {
        return Err(SpecError::new(field, "contains a NUL byte"));
    }
    Ok(())
}

fn check_count(field: &str, n: usize) -> Result<(), SpecError> {
    if n > MAX_ITEMS {
        return Err(SpecError::new(field, format!("{n} items, at most {MAX_ITEMS}")));
    }
    Ok(())
}

/// Validates a wire spec. The leader calls this before proposing; clients call it to fail early.
pub fn validate(spec: &JobSpec) -> Result<(), SpecError> {
    check_str("name", &spec.name)?;
    let kind =
        JobKind::try_from(spec.kind).map_err(|_| SpecError::new("kind", format!("unknown kind {}", spec.kind)))?;
    match kind {
        JobKind::Process | JobKind::Train | JobKind::Export => {}
        JobKind::Unspecified => return Err(SpecError::new("kind", "missing (expected `process` or `train`)")),
        JobKind::Serve => {
            return Err(SpecError::new(
                "kind",
                "`serve` replicas are created by deployments: use `aidos serve deploy`",
            ));
        }
        other => {
            return Err(SpecError::new(
                "kind",
                format!("`{}` jobs are not supported by this version yet", other.as_str_name()),
            ));
        }
    }
    let r = spec.resources.as_ref().ok_or_else(|| SpecError::new("resources", "missing"))?;
    if r.cpu_millis == 0 && r.memory_bytes == 0 && r.gpus == 0 {
        return Err(SpecError::new("resources", "asks for nothing: set cpu, memory or gpus"));
    }
    if r.gpus > 64 {
        return Err(SpecError::new("resources.gpus", format!("{} GPUs per replica, at most 64", r.gpus)));
    }
    if spec.replicas > MAX_REPLICAS {
        return Err(SpecError::new("replicas", format!("{} replicas, at most {MAX_REPLICAS}", spec.replicas)));
    }
    if spec.min_replicas > spec.replicas.max(1) {
        return Err(SpecError::new(
            "min_replicas",
            format!("{} is more than replicas ({})", spec.min_replicas, spec.replicas.max(1)),
        ));
    }
    if spec.max_retries > MAX_RETRIES {
        return Err(SpecError::new("max_retries", format!("{}, at most {MAX_RETRIES}", spec.max_retries)));
    }
    if PlacementStrategy::try_from(spec.placement).is_err() {
        return Err(SpecError::new("placement", format!("unknown strategy {}", spec.placement)));
    }
    check_count("labels", spec.labels.len())?;
    for (k, v) in &spec.labels {
        if k.is_empty() {
            return Err(SpecError::new("labels", "empty label key"));
        }
        check_str(&format!("labels.{k}"), k)?;
        check_str(&format!("labels.{k}"), v)?;
    }
    check_count("constraints", spec.constraints.len())?;
    for (i, c) in spec.constraints.iter().enumerate() {
        let f = format!("constraints[{i}]");
        if c.key.is_empty() {
            return Err(SpecError::new(f, "empty label key"));
        }
        check_str(&f, &c.key)?;
        if v1::constraint::Op::try_from(c.op).unwrap_or(v1::constraint::Op::Unspecified)
            == v1::constraint::Op::Unspecified
        {
            return Err(SpecError::new(f, "missing operator"));
        }
    }
    match &spec.payload {
        Some(v1::job_spec::Payload::Process(_)) if kind != JobKind::Process => {
            return Err(SpecError::new("process", format!("a `{}` job takes no [process] table", kind.as_str_name())));
        }
        Some(v1::job_spec::Payload::Train(_)) if kind != JobKind::Train => {
            return Err(SpecError::new("train", "only a `train` job takes a [train] table"));
        }
        Some(v1::job_spec::Payload::Train(t)) => {
            if t.dataset.trim().is_empty() {
                return Err(SpecError::new("train.dataset", "empty (expected NAME@vN)"));
            }
            check_str("train.dataset", &t.dataset)?;
            check_str("train.register_as", &t.register_as)?;
            if t.config_json.len() > MAX_SPEC_BYTES {
                return Err(SpecError::new("train.config", format!("longer than {MAX_SPEC_BYTES} bytes")));
            }
            match serde_json::from_str::<serde_json::Value>(&t.config_json) {
                Ok(serde_json::Value::Object(_)) => {}
                _ => return Err(SpecError::new("train.config", "must be a table")),
            }
        }
        None if kind == JobKind::Train => {
            return Err(SpecError::new("train", "a `train` job needs a [train] table with a dataset"));
        }
        Some(v1::job_spec::Payload::Export(_)) if kind != JobKind::Export => {
            return Err(SpecError::new("export", "only an `export` job takes an [export] table"));
        }
        Some(v1::job_spec::Payload::Export(e)) => {
            if e.model.trim().is_empty() {
                return Err(SpecError::new("export.model", "empty (expected NAME, NAME:VERSION or NAME@ALIAS)"));
            }
            check_str("export.model", &e.model)?;
            if !matches!(e.quantize.as_str(), "" | "none" | "int8") {
                return Err(SpecError::new("export.quantize", format!("`{}` (expected none or int8)", e.quantize)));
            }
        }
        None if kind == JobKind::Export => {
            return Err(SpecError::new("export", "an `export` job needs an [export] table with a model"));
        }
        Some(v1::job_spec::Payload::Serve(_)) => {
            return Err(SpecError::new("serve", "serve replicas are created by deployments: use `aidos serve deploy`"));
        }
        Some(v1::job_spec::Payload::Process(p)) => {
            if p.executable.trim().is_empty() {
                return Err(SpecError::new("process.executable", "empty"));
            }
            check_str("process.executable", &p.executable)?;
            check_count("process.args", p.args.len())?;
            for (i, a) in p.args.iter().enumerate() {
                check_str(&format!("process.args[{i}]"), a)?;
            }
            check_count("process.env", p.env.len())?;
            for (k, v) in &p.env {
                if k.is_empty() || k.contains('=') {
                    return Err(SpecError::new(format!("process.env.{k}"), "not a valid variable name"));
                }
                check_str(&format!("process.env.{k}"), v)?;
            }
        }
        None => return Err(SpecError::new("process", "a `process` job needs a [process] table with an executable")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_jobs_name_a_model_and_a_known_quantization() {
        let spec = parse_toml("[export]\nmodel = \"mnist@production\"\nquantize = \"int8\"\n").unwrap();
        assert_eq!(spec.kind, JobKind::Export as i32);
        let e = parse_toml("kind = \"export\"\n[export]\nmodel = \"m\"\nquantize = \"int4\"\n").unwrap_err();
        assert_eq!(e.field, "export.quantize");
        let e = parse_toml("kind = \"export\"\n").unwrap_err();
        assert_eq!(e.field, "export");
    }

    #[test]
    fn parses_a_full_spec() {
        let spec = parse_toml(
            r#"
name = "hello"
replicas = 2
priority = 5
max_retries = 1
placement = "spread"
constraints = ["zone in (a, b)", "gpu", "!spot", "os=linux"]
[resources]
cpu = "500m"
memory = "1Gi"
[labels]
team = "ml"
[process]
executable = "sh"
args = ["-c", "echo hi"]
env = { A = "1" }
"#,
        )
        .unwrap();
        assert_eq!(spec.replicas, 2);
        assert_eq!(spec.resources.unwrap().cpu_millis, 500);
        assert_eq!(spec.resources.unwrap().memory_bytes, 1 << 30);
        assert_eq!(spec.constraints.len(), 4);
        assert_eq!(spec.placement, PlacementStrategy::Spread as i32);
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse_toml("[process]\nexecutable = \"\"\n").unwrap_err();
        assert_eq!(e.field, "process.executable");
        let e = parse_toml("replicas = 5000\n[process]\nexecutable = \"x\"\n").unwrap_err();
        assert_eq!(e.field, "replicas");
        let e = parse_toml("[resources]\nmemory = \"12Qi\"\n[process]\nexecutable = \"x\"\n").unwrap_err();
        assert_eq!(e.field, "resources.memory");
        let e = parse_toml("replicaz = 1\n").unwrap_err();
        assert_eq!(e.field, "toml");
        assert!(e.reason.contains("replicaz"), "{e}");
        let e = parse_toml("kind = \"bogus\"\n").unwrap_err();
        assert_eq!(e.field, "kind");
        let e = parse_toml("name = \"x\"\n").unwrap_err();
        assert_eq!(e.field, "process");
    }

    #[test]
    fn constraints_match_labels() {
        let labels: BTreeMap<_, _> = [("zone".to_string(), "a".to_string())].into();
        assert!(constraint_matches(&parse_constraint("zone in (a,b)").unwrap(), &labels));
        assert!(!constraint_matches(&parse_constraint("zone=b").unwrap(), &labels));
        assert!(constraint_matches(&parse_constraint("zone!=b").unwrap(), &labels));
        assert!(constraint_matches(&parse_constraint("!gpu").unwrap(), &labels));
        assert!(!constraint_matches(&parse_constraint("gpu").unwrap(), &labels));
    }
}
