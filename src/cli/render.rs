//! Output: aligned tables for people, and proto messages converted by hand to JSON (prost types have no serde).

use aidos_api::{
    Attempt, ClusterStatus, Constraint, Job, JobSpec, JobState, PlacementStrategy, Resources, Task, TaskState, Worker,
    WorkerState, constraint, job_spec,
};
use serde_json::{Value, json};

// ---- names ----

pub fn job_state(v: i32) -> &'static str {
    JobState::try_from(v).map(|s| s.as_str_name().trim_start_matches("JOB_STATE_")).unwrap_or("UNKNOWN")
}

pub fn task_state(v: i32) -> &'static str {
    TaskState::try_from(v).map(|s| s.as_str_name().trim_start_matches("TASK_STATE_")).unwrap_or("UNKNOWN")
}

pub fn sweep_state(v: i32) -> &'static str {
    aidos_api::SweepState::try_from(v).map(|s| s.as_str_name().trim_start_matches("SWEEP_STATE_")).unwrap_or("UNKNOWN")
}

pub fn trial_state(v: i32) -> &'static str {
    aidos_api::TrialState::try_from(v).map(|s| s.as_str_name().trim_start_matches("TRIAL_STATE_")).unwrap_or("UNKNOWN")
}

pub fn worker_state(v: i32) -> &'static str {
    WorkerState::try_from(v).map(|s| s.as_str_name().trim_start_matches("WORKER_STATE_")).unwrap_or("UNKNOWN")
}

pub fn placement(v: i32) -> &'static str {
    match PlacementStrategy::try_from(v) {
        Ok(PlacementStrategy::Binpack) => "binpack",
        Ok(PlacementStrategy::Spread) => "spread",
        Ok(PlacementStrategy::Unspecified) => "default",
        Err(_) => "unknown",
    }
}

/// A constraint written back the way a user types it.
pub fn constraint(c: &Constraint) -> String {
    use constraint::Op;
    let list = c.values.join(",");
    match Op::try_from(c.op).unwrap_or(Op::Unspecified) {
        Op::In if c.values.len() == 1 => format!("{}={}", c.key, list),
        Op::In => format!("{} in ({list})", c.key),
        Op::NotIn if c.values.len() == 1 => format!("{}!={}", c.key, list),
        Op::NotIn => format!("{} notin ({list})", c.key),
        Op::Exists => c.key.clone(),
        Op::NotExists => format!("!{}", c.key),
        Op::Unspecified => format!("{} ?", c.key),
    }
}

// ---- human formatting ----

pub fn cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) { (millis / 1000).to_string() } else { format!("{millis}m") }
}

pub fn bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
    for (name, size) in UNITS {
        if b >= size {
            return if b.is_multiple_of(size) {
                format!("{}{name}", b / size)
            } else {
                format!("{:.1}{name}", b as f64 / size as f64)
            };
        }
    }
    format!("{b}B")
}

pub fn resources(r: Option<&Resources>) -> String {
    let r = r.copied().unwrap_or_default();
    let mut s = format!("cpu {}, mem {}", cpu(r.cpu_millis), bytes(r.memory_bytes));
    if r.gpus > 0 {
        s.push_str(&format!(", gpu {}", r.gpus));
    }
    s
}

/// Time since `ms` (Unix millis), like `5s`, `3m`, `2h`, `4d`.
pub fn age(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let s = ((aidos_api::now_ms() - ms).max(0) / 1000) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

pub fn truncate(s: &str, max: usize) -> String {
    let s = s.replace('\n', " ");
    if s.chars().count() <= max {
        return s;
    }
    let mut t: String = s.chars().take(max.saturating_sub(3)).collect();
    t.push_str("...");
    t
}

/// Shell-style quoting for showing a command line.
pub fn shell_words(exe: &str, args: &[String]) -> String {
    std::iter::once(exe)
        .chain(args.iter().map(String::as_str))
        .map(|w| {
            if !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c)) {
                w.to_string()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn kv_list(m: &std::collections::BTreeMap<String, String>) -> String {
    m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Prints rows as left-aligned columns separated by two spaces.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut out = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                out.push_str(c);
            } else {
                out.push_str(c);
                out.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

// ---- JSON ----

pub fn resources_json(r: Option<&Resources>) -> Value {
    let r = r.copied().unwrap_or_default();
    json!({ "cpu_millis": r.cpu_millis, "memory_bytes": r.memory_bytes, "gpus": r.gpus })
}

pub fn spec_json(s: &JobSpec) -> Value {
    let payload = match &s.payload {
        Some(job_spec::Payload::Process(p)) => {
            json!({ "process": { "executable": p.executable, "args": p.args, "env": p.env } })
        }
        Some(job_spec::Payload::Train(t)) => json!({ "train": {
            "dataset": t.dataset, "register_as": t.register_as, "train_split": t.train_split, "eval_split": t.eval_split,
            "config": serde_json::from_str::<Value>(&t.config_json).unwrap_or(Value::Null),
        } }),
        Some(job_spec::Payload::Serve(v)) => json!({ "serve": {
            "deployment": v.deployment, "model": v.model, "version": v.version, "runtime": v.runtime,
            "generation": v.generation, "max_batch": v.max_batch, "max_delay_us": v.max_delay_us,
        } }),
        Some(job_spec::Payload::Export(e)) => json!({ "export": { "model": e.model, "quantize": e.quantize } }),
        None => Value::Null,
    };
    json!({
        "name": s.name,
        "kind": aidos_api::JobKind::try_from(s.kind).map(|k| k.as_str_name().trim_start_matches("JOB_KIND_").to_ascii_lowercase()).unwrap_or_else(|_| s.kind.to_string()),
        "resources": resources_json(s.resources.as_ref()),
        "replicas": s.replicas,
        "priority": s.priority,
        "max_retries": s.max_retries,
        "labels": s.labels,
        "constraints": s.constraints.iter().map(constraint).collect::<Vec<_>>(),
        "placement": placement(s.placement),
        "timeout_secs": s.timeout_secs,
        "payload": payload,
    })
}

pub fn attempt_json(a: &Attempt) -> Value {
    json!({
        "attempt": a.attempt,
        "fencing_token": a.fencing_token,
        "worker_id": a.worker_id,
        "state": task_state(a.state),
        "exit_code": a.exit_code,
        "message": a.message,
        "assigned_at_ms": a.assigned_at_ms,
        "started_at_ms": a.started_at_ms,
        "finished_at_ms": a.finished_at_ms,
    })
}

pub fn task_json(t: &Task) -> Value {
    json!({
        "rank": t.rank,
        "state": task_state(t.state),
        "attempts": t.attempts.iter().map(attempt_json).collect::<Vec<_>>(),
    })
}

pub fn job_json(j: &Job) -> Value {
    json!({
        "id": j.id,
        "state": job_state(j.state),
        "reason": j.reason,
        "spec": j.spec.as_ref().map(spec_json).unwrap_or(Value::Null),
        "created_at_ms": j.created_at_ms,
        "updated_at_ms": j.updated_at_ms,
        "attempt": j.attempt,
        "seq": j.seq,
        "request_id": j.request_id,
        "tasks": j.tasks.iter().map(task_json).collect::<Vec<_>>(),
    })
}

pub fn worker_json(w: &Worker) -> Value {
    json!({
        "id": w.id,
        "hostname": w.hostname,
        "state": worker_state(w.state),
        "capacity": resources_json(w.capacity.as_ref()),
        "allocated": resources_json(w.allocated.as_ref()),
        "labels": w.labels,
        "gpu_names": w.gpu_names,
        "max_tasks": w.max_tasks,
        "registered_at_ms": w.registered_at_ms,
        "state_changed_at_ms": w.state_changed_at_ms,
    })
}

pub fn cluster_status_json(s: &ClusterStatus) -> Value {
    json!({
        "node_id": s.node_id,
        "state": s.state,
        "leader_id": s.leader_id,
        "leader_addr": s.leader_addr,
        "term": s.term,
        "last_log_index": s.last_log_index,
        "last_applied": s.last_applied,
        "members": s.members.iter().map(|m| json!({ "id": m.id, "addr": m.addr, "voter": m.voter })).collect::<Vec<_>>(),
        "workers_ready": s.workers_ready,
        "workers_lost": s.workers_lost,
        "jobs_total": s.jobs_total,
        "jobs_active": s.jobs_active,
    })
}
