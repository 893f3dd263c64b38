//! Placement: a pure function from pending jobs and a view of the cluster to assignments. No I/O, no clocks:
//! the leader's placement loop builds the inputs from applied state and leader memory, calls [`schedule`], and
//! proposes the result as one command.
//!
//! Policy:
//! - Queue order is priority (higher first), then age (lower submission seq first).
//! - Greedy with backfill: a job that does not fit now is skipped and later jobs may still be placed.
//! - A gang (replicas > 1) is placed all at once or not at all: ranks are placed on a scratch copy of the
//!   free resources, and the copy is kept only if every rank found a worker. An elastic gang being restarted
//!   (`min_ranks` < `replicas`) takes as many ranks as fit, from `replicas` down to `min_ranks`.
//! - Filter: ready workers whose labels satisfy every constraint and whose free resources hold the request.
//!   Score: bin-pack picks the feasible worker left fullest after placing (fewer, fuller machines); spread picks
//!   the emptiest (and the fewest tasks), which also spreads a gang's ranks across machines.
//! - Anti-affinity: a job of a spread group (the replicas of one deployment generation) goes to a feasible worker holding the
//!   fewest tasks of its group before any other score, so replicas land on different workers while the cluster
//!   has room, and share one only when no other worker can hold them (soft: never left pending for it).
//! - A job that no worker could hold even when idle is reported unschedulable with a reason; it stays pending.

use std::collections::BTreeMap;

use aidos_api::spec::constraint_matches;
use aidos_api::v1::{Constraint, Resources};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    #[default]
    BinPack,
    Spread,
}

/// A worker as placement sees it.
#[derive(Debug, Clone)]
pub struct WorkerView {
    pub id: String,
    pub capacity: Resources,
    pub free: Resources,
    pub labels: BTreeMap<String, String>,
    pub tasks: u32,
    /// Most tasks the worker runs at once, whatever they request (0: no limit). Many tiny jobs would otherwise
    /// start thousands of processes at once on a worker whose cores they barely claim, starving its heartbeats.
    pub max_tasks: u32,
    /// Tasks of each spread group running on this worker.
    pub groups: BTreeMap<String, u32>,
}

/// A job waiting for placement.
#[derive(Debug, Clone)]
pub struct PendingJob {
    pub id: String,
    pub priority: i32,
    pub seq: u64,
    pub replicas: u32,
    /// Fewest ranks the gang may run with now (= `replicas` unless it is an elastic gang being restarted).
    pub min_ranks: u32,
    pub resources: Resources,
    pub constraints: Vec<Constraint>,
    pub strategy: Option<Strategy>,
    /// Spread group (anti-affinity): the deployment of a serving replica.
    pub group: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub workers: Vec<WorkerView>,
    pub default_strategy: Strategy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub job_id: String,
    /// The worker of each rank, in rank order.
    pub workers: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    pub assignments: Vec<Assignment>,
    /// Jobs no worker could ever hold, with the reason (`unschedulable: ...`).
    pub unschedulable: Vec<(String, String)>,
}

fn fits(free: &Resources, need: &Resources) -> bool {
    free.cpu_millis >= need.cpu_millis && free.memory_bytes >= need.memory_bytes && free.gpus >= need.gpus
}

/// Whether the worker has a task slot left.
fn has_slot(w: &WorkerView) -> bool {
    w.max_tasks == 0 || w.tasks < w.max_tasks
}

fn sub(a: &mut Resources, b: &Resources) {
    a.cpu_millis -= b.cpu_millis;
    a.memory_bytes -= b.memory_bytes;
    a.gpus -= b.gpus;
}

/// Fraction of the worker in use after placing `need`, averaged over the dimensions it has.
fn utilization_after(w: &WorkerView, need: &Resources) -> f64 {
    let dims = [
        (w.capacity.cpu_millis, w.free.cpu_millis.saturating_sub(need.cpu_millis)),
        (w.capacity.memory_bytes, w.free.memory_bytes.saturating_sub(need.memory_bytes)),
        (w.capacity.gpus as u64, (w.free.gpus.saturating_sub(need.gpus)) as u64),
    ];
    let (mut sum, mut n) = (0.0, 0.0);
    for (cap, free) in dims {
        if cap > 0 {
            sum += 1.0 - free as f64 / cap as f64;
            n += 1.0;
        }
    }
    if n == 0.0 { 1.0 } else { sum / n }
}

fn matches(w: &WorkerView, cs: &[Constraint]) -> bool {
    cs.iter().all(|c| constraint_matches(c, &w.labels))
}

/// Places what fits. Pure: same inputs, same output.
pub fn schedule(pending: &[PendingJob], cluster: &ClusterView) -> Schedule {
    let mut order: Vec<&PendingJob> = pending.iter().collect();
    order.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.seq.cmp(&b.seq)));
    let mut workers = cluster.workers.clone();
    let mut out = Schedule::default();
    for job in order {
        if let Some(reason) = unschedulable_reason(job, &cluster.workers) {
            out.unschedulable.push((job.id.clone(), reason));
            continue;
        }
        let strategy = job.strategy.unwrap_or(cluster.default_strategy);
        // Place rank by rank on the live free resources; undo every rank if the gang does not complete.
        let mut chosen: Vec<usize> = Vec::with_capacity(job.replicas as usize);
        for _ in 0..job.replicas.max(1) {
            let best = workers
                .iter()
                .enumerate()
                .filter(|(_, w)| has_slot(w) && fits(&w.free, &job.resources) && matches(w, &job.constraints))
                .map(|(i, w)| (i, utilization_after(w, &job.resources), w.tasks))
                .min_by(|a, b| {
                    let peers = |i: usize| job.group.as_ref().and_then(|g| workers[i].groups.get(g)).copied();
                    let apart = peers(a.0).unwrap_or(0).cmp(&peers(b.0).unwrap_or(0));
                    let (ua, ub) = match strategy {
                        Strategy::BinPack => (-a.1, -b.1),
                        Strategy::Spread => (a.1, b.1),
                    };
                    let tie = match strategy {
                        Strategy::BinPack => b.2.cmp(&a.2),
                        Strategy::Spread => a.2.cmp(&b.2),
                    };
                    apart.then(ua.total_cmp(&ub)).then(tie).then(a.0.cmp(&b.0))
                });
            let Some((i, _, _)) = best else { break };
            sub(&mut workers[i].free, &job.resources);
            workers[i].tasks += 1;
            if let Some(g) = &job.group {
                *workers[i].groups.entry(g.clone()).or_default() += 1;
            }
            chosen.push(i);
        }
        if chosen.len() >= job.min_ranks.clamp(1, job.replicas.max(1)) as usize {
            let ids = chosen.iter().map(|&i| workers[i].id.clone()).collect();
            out.assignments.push(Assignment { job_id: job.id.clone(), workers: ids });
        } else {
            for i in chosen {
                crate::state::add(&mut workers[i].free, &job.resources);
                workers[i].tasks -= 1;
                if let Some(n) = job.group.as_ref().and_then(|g| workers[i].groups.get_mut(g)) {
                    *n -= 1;
                }
            }
        }
    }
    out
}

fn fmt_bytes(b: u64) -> String {
    const GI: u64 = 1 << 30;
    const MI: u64 = 1 << 20;
    if b >= GI { format!("{:.1}Gi", b as f64 / GI as f64) } else { format!("{}Mi", b.div_ceil(MI)) }
}

/// Why no worker could hold this job even with nothing else running, or None if some could.
pub fn unschedulable_reason(job: &PendingJob, workers: &[WorkerView]) -> Option<String> {
    if workers.is_empty() {
        return Some("unschedulable: no ready workers in the cluster".into());
    }
    let eligible: Vec<&WorkerView> = workers.iter().filter(|w| matches(w, &job.constraints)).collect();
    if eligible.is_empty() {
        let cs: Vec<String> = job.constraints.iter().map(|c| format!("{}{:?}", c.key, c.values)).collect();
        return Some(format!("unschedulable: no ready worker matches the constraints [{}]", cs.join(", ")));
    }
    let need = &job.resources;
    let max = |f: fn(&Resources) -> u64| eligible.iter().map(|w| f(&w.capacity)).max().unwrap_or(0);
    if need.gpus as u64 > max(|r| r.gpus as u64) {
        return Some(format!(
            "unschedulable: needs {} GPU(s) per replica, the largest worker has {}",
            need.gpus,
            max(|r| r.gpus as u64)
        ));
    }
    if need.cpu_millis > max(|r| r.cpu_millis) {
        return Some(format!(
            "unschedulable: needs {} CPU millicores per replica, the largest worker has {}",
            need.cpu_millis,
            max(|r| r.cpu_millis)
        ));
    }
    if need.memory_bytes > max(|r| r.memory_bytes) {
        return Some(format!(
            "unschedulable: needs {} memory per replica, the largest worker has {}",
            fmt_bytes(need.memory_bytes),
            fmt_bytes(max(|r| r.memory_bytes))
        ));
    }
    // How many replicas would the whole idle cluster hold?
    let per_worker = |w: &&WorkerView| -> u64 {
        let c = &w.capacity;
        let d = |have: u64, want: u64| have.checked_div(want).unwrap_or(u64::MAX);
        d(c.cpu_millis, need.cpu_millis)
            .min(d(c.memory_bytes, need.memory_bytes))
            .min(d(c.gpus as u64, need.gpus as u64))
            .min(if w.max_tasks == 0 { u64::MAX } else { w.max_tasks as u64 })
    };
    let total: u64 = eligible.iter().map(per_worker).fold(0u64, |a, b| a.saturating_add(b));
    let least = job.min_ranks.clamp(1, job.replicas.max(1));
    if total < least as u64 {
        return Some(format!(
            "unschedulable: a gang of {least} replicas does not fit; the whole cluster holds at most {total}"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use aidos_api::spec::parse_constraint;

    fn w(id: &str, cpus: u64, gpus: u32, free_cpus: u64) -> WorkerView {
        WorkerView {
            id: id.into(),
            capacity: Resources { cpu_millis: cpus * 1000, memory_bytes: 16 << 30, gpus },
            free: Resources { cpu_millis: free_cpus * 1000, memory_bytes: 16 << 30, gpus },
            labels: BTreeMap::new(),
            tasks: 0,
            max_tasks: 0,
            groups: BTreeMap::new(),
        }
    }
    fn job(id: &str, seq: u64, prio: i32, replicas: u32, cpus: u64) -> PendingJob {
        PendingJob {
            id: id.into(),
            priority: prio,
            seq,
            replicas,
            min_ranks: replicas,
            resources: Resources { cpu_millis: cpus * 1000, memory_bytes: 1 << 20, gpus: 0 },
            constraints: vec![],
            strategy: None,
            group: None,
        }
    }
    fn view(workers: Vec<WorkerView>, s: Strategy) -> ClusterView {
        ClusterView { workers, default_strategy: s }
    }

    #[test]
    fn binpack_fills_the_fullest_worker_first() {
        let c = view(vec![w("a", 8, 0, 8), w("b", 8, 0, 3)], Strategy::BinPack);
        let s = schedule(&[job("j1", 1, 0, 1, 1), job("j2", 2, 0, 1, 1)], &c);
        assert_eq!(s.assignments[0].workers, vec!["b"]);
        assert_eq!(s.assignments[1].workers, vec!["b"]);
    }

    #[test]
    fn spread_prefers_the_emptiest_and_spreads_gangs() {
        let c = view(vec![w("a", 8, 0, 8), w("b", 8, 0, 3)], Strategy::Spread);
        let s = schedule(&[job("j1", 1, 0, 1, 1)], &c);
        assert_eq!(s.assignments[0].workers, vec!["a"]);
        let c = view(vec![w("a", 8, 0, 8), w("b", 8, 0, 8), w("c", 8, 0, 8)], Strategy::Spread);
        let s = schedule(&[job("g", 1, 0, 3, 1)], &c);
        let mut ws = s.assignments[0].workers.clone();
        ws.sort();
        assert_eq!(ws, vec!["a", "b", "c"]);
        // The per-job strategy overrides the default.
        let mut j = job("j", 1, 0, 1, 1);
        j.strategy = Some(Strategy::BinPack);
        let c = view(vec![w("a", 8, 0, 8), w("b", 8, 0, 3)], Strategy::Spread);
        assert_eq!(schedule(&[j], &c).assignments[0].workers, vec!["b"]);
    }

    #[test]
    fn an_elastic_restart_takes_as_many_ranks_as_fit_down_to_its_minimum() {
        // 4 ranks of 2 cores, room for 3 now.
        let c = view(vec![w("a", 4, 0, 4), w("b", 4, 0, 2)], Strategy::Spread);
        let mut g = job("g", 1, 0, 4, 2);
        g.min_ranks = 2;
        assert_eq!(schedule(std::slice::from_ref(&g), &c).assignments[0].workers.len(), 3);
        g.min_ranks = 4;
        assert!(schedule(std::slice::from_ref(&g), &c).assignments.is_empty());
        // Unschedulable only when even the minimum can never fit.
        let small = view(vec![w("a", 4, 0, 4)], Strategy::Spread);
        g.min_ranks = 2;
        assert!(schedule(std::slice::from_ref(&g), &small).unschedulable.is_empty());
        g.min_ranks = 3;
        let s = schedule(&[g], &small);
        assert!(s.unschedulable[0].1.contains("gang of 3"), "{:?}", s.unschedulable);
    }

    #[test]
    fn replicas_of_one_deployment_go_to_different_workers_while_there_is_room() {
        let replica = |id: &str, seq| PendingJob { group: Some("mlp".into()), ..job(id, seq, 0, 1, 1) };
        // Bin-packing would put both on the fuller worker; anti-affinity puts the second elsewhere.
        let mut busy = w("a", 8, 0, 6);
        busy.groups.insert("mlp".into(), 1);
        let s = schedule(&[replica("r2", 1)], &view(vec![busy.clone(), w("b", 8, 0, 8)], Strategy::BinPack));
        assert_eq!(s.assignments[0].workers, ["b"]);
        // Two placed in one round spread too, and a third shares a worker only when no other has room.
        let s = schedule(
            &[replica("r1", 1), replica("r2", 2), replica("r3", 3)],
            &view(vec![w("a", 8, 0, 8), w("b", 8, 0, 8)], Strategy::BinPack),
        );
        let on: Vec<_> = s.assignments.iter().map(|a| a.workers[0].as_str()).collect();
        assert_eq!(&on[..2], ["a", "b"]);
        assert_eq!(on.len(), 3, "soft: the third is placed, not left pending");
        // Other groups and ungrouped jobs are not affected.
        let mut other = w("a", 8, 0, 6);
        other.groups.insert("other".into(), 1);
        let s = schedule(&[replica("r1", 1)], &view(vec![other, w("b", 8, 0, 8)], Strategy::BinPack));
        assert_eq!(s.assignments[0].workers, ["a"]);
        let s = schedule(&[job("j", 1, 0, 1, 1)], &view(vec![busy, w("b", 8, 0, 8)], Strategy::BinPack));
        assert_eq!(s.assignments[0].workers, ["a"]);
    }

    #[test]
    fn gang_is_all_or_nothing() {
        // 3 replicas of 2 cores; free: 2 + 2 cores -> only 2 fit, so none is placed.
        let c = view(vec![w("a", 4, 0, 2), w("b", 4, 0, 2)], Strategy::BinPack);
        let s = schedule(&[job("g", 1, 0, 3, 2), job("small", 2, 0, 1, 2)], &c);
        assert_eq!(s.assignments, vec![Assignment { job_id: "small".into(), workers: vec!["a".into()] }]);
        assert!(s.unschedulable.is_empty(), "it fits an idle cluster: it waits, it is not unschedulable");
        // With room for all three, all three are placed together.
        let c = view(vec![w("a", 4, 0, 4), w("b", 4, 0, 2)], Strategy::BinPack);
        let s = schedule(&[job("g", 1, 0, 3, 2)], &c);
        assert_eq!(s.assignments[0].workers.len(), 3);
    }

    #[test]
    fn priority_then_age() {
        let c = view(vec![w("a", 2, 0, 2)], Strategy::BinPack);
        let s = schedule(&[job("old-low", 1, 0, 1, 2), job("new-high", 3, 5, 1, 2), job("old-high", 2, 5, 1, 2)], &c);
        assert_eq!(s.assignments.len(), 1);
        assert_eq!(s.assignments[0].job_id, "old-high");
        let c = view(vec![w("a", 2, 0, 2), w("b", 2, 0, 2), w("c", 2, 0, 2)], Strategy::BinPack);
        let s = schedule(&[job("x", 2, 0, 1, 2), job("y", 1, 0, 1, 2), job("z", 3, 1, 1, 2)], &c);
        let ids: Vec<_> = s.assignments.iter().map(|a| a.job_id.as_str()).collect();
        assert_eq!(ids, vec!["z", "y", "x"]);
    }

    #[test]
    fn unschedulable_reasons_name_the_problem() {
        let c = view(vec![w("a", 8, 1, 8)], Strategy::BinPack);
        let mut g = job("gpu8", 1, 0, 1, 1);
        g.resources.gpus = 8;
        let s = schedule(&[g], &c);
        assert!(s.assignments.is_empty());
        assert_eq!(s.unschedulable[0].1, "unschedulable: needs 8 GPU(s) per replica, the largest worker has 1");
        let s = schedule(&[job("big", 1, 0, 1, 64)], &c);
        assert!(s.unschedulable[0].1.contains("CPU millicores"), "{:?}", s.unschedulable);
        let mut cj = job("zone", 1, 0, 1, 1);
        cj.constraints = vec![parse_constraint("zone=eu").unwrap()];
        let s = schedule(&[cj], &c);
        assert!(s.unschedulable[0].1.contains("constraints"), "{:?}", s.unschedulable);
        let s = schedule(&[job("gang", 1, 0, 9, 1)], &c);
        assert!(s.unschedulable[0].1.contains("gang of 9"), "{:?}", s.unschedulable);
        let s = schedule(&[job("x", 1, 0, 1, 1)], &view(vec![], Strategy::BinPack));
        assert!(s.unschedulable[0].1.contains("no ready workers"));
    }

    #[test]
    fn a_worker_takes_no_more_tasks_than_its_slots() {
        let mut a = w("a", 64, 0, 64);
        a.max_tasks = 3;
        a.tasks = 1;
        let mut b = w("b", 64, 0, 64);
        b.max_tasks = 1;
        let tiny = |i: u64| PendingJob {
            resources: Resources { cpu_millis: 1, memory_bytes: 1, gpus: 0 },
            ..job(&format!("j{i}"), i, 0, 1, 0)
        };
        let s = schedule(&(1..=5).map(tiny).collect::<Vec<_>>(), &view(vec![a.clone(), b.clone()], Strategy::Spread));
        let placed: Vec<&str> = s.assignments.iter().map(|x| x.workers[0].as_str()).collect();
        assert_eq!(placed.iter().filter(|w| **w == "a").count(), 2, "{placed:?}");
        assert_eq!(placed.iter().filter(|w| **w == "b").count(), 1, "{placed:?}");
        assert!(s.unschedulable.is_empty(), "full slots are a wait, not unschedulable");
        // A gang needs as many slots as ranks in the idle cluster.
        let mut gang = tiny(9);
        gang.replicas = 5;
        gang.min_ranks = 5;
        let why = unschedulable_reason(&gang, &[a, b]).expect("5 ranks on 3 + 1 slots");
        assert!(why.contains("holds at most 4"), "{why}");
    }

    #[test]
    fn constraints_filter_workers() {
        let mut a = w("a", 8, 0, 8);
        a.labels.insert("zone".into(), "eu".into());
        let b = w("b", 8, 0, 8);
        let mut j = job("j", 1, 0, 1, 1);
        j.constraints = vec![parse_constraint("zone=eu").unwrap()];
        let s = schedule(&[j], &view(vec![b, a], Strategy::BinPack));
        assert_eq!(s.assignments[0].workers, vec!["a"]);
    }
}
