//! Placement throughput: decisions per second of the pure `schedule` with 10,000 pending tasks over 1,000
//! simulated workers (mixed sizes, labels, constraints, gangs). Run: `cargo bench --bench placement`.

use std::collections::BTreeMap;
use std::time::Instant;

use aidos_api::spec::parse_constraint;
use aidos_api::v1::Resources;
use aidos_scheduler::placement::{ClusterView, PendingJob, Strategy, WorkerView, schedule};

fn lcg(x: &mut u64) -> u64 {
    *x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    *x >> 33
}

fn workers(n: usize, seed: &mut u64) -> Vec<WorkerView> {
    (0..n)
        .map(|i| {
            let cpus = [8u64, 16, 32, 64][(lcg(seed) % 4) as usize];
            let gpus = [0u32, 0, 1, 8][(lcg(seed) % 4) as usize];
            let cap = Resources { cpu_millis: cpus * 1000, memory_bytes: cpus * (4 << 30), gpus };
            let labels = BTreeMap::from([("zone".to_string(), format!("z{}", i % 4))]);
            WorkerView {
                id: format!("w{i}"),
                capacity: cap,
                free: cap,
                labels,
                tasks: 0,
                max_tasks: 0,
                groups: BTreeMap::new(),
            }
        })
        .collect()
}

fn pending(n: usize, seed: &mut u64) -> Vec<PendingJob> {
    let zone = parse_constraint("zone in (z0,z1)").unwrap();
    (0..n)
        .map(|i| {
            let r = lcg(seed) % 100;
            let replicas = if r < 5 { 4 } else { 1 };
            PendingJob {
                id: format!("job-{i}"),
                priority: (lcg(seed) % 3) as i32,
                seq: i as u64,
                replicas,
                min_ranks: replicas,
                resources: Resources {
                    cpu_millis: 500 * (1 + lcg(seed) % 8),
                    memory_bytes: (1 + lcg(seed) % 8) << 30,
                    gpus: if r < 10 { 1 } else { 0 },
                },
                constraints: if r.is_multiple_of(7) { vec![zone.clone()] } else { vec![] },
                strategy: None,
                group: None,
            }
        })
        .collect()
}

fn main() {
    let mut seed = 42;
    let ws = workers(1000, &mut seed);
    let jobs = pending(10_000, &mut seed);
    let tasks: u32 = jobs.iter().map(|j| j.replicas).sum();
    for strategy in [Strategy::BinPack, Strategy::Spread] {
        let view = ClusterView { workers: ws.clone(), default_strategy: strategy };
        let _ = schedule(&jobs, &view); // warm-up
        let runs = 5;
        let t = Instant::now();
        let mut placed = 0;
        for _ in 0..runs {
            placed = schedule(&jobs, &view).assignments.len();
        }
        let per = t.elapsed().as_secs_f64() / runs as f64;
        println!(
            "placement {strategy:?}: {} pending jobs ({tasks} tasks) over {} workers: {:.1} ms per round, {:.0} job decisions/s, {placed} placed",
            jobs.len(),
            ws.len(),
            per * 1e3,
            jobs.len() as f64 / per
        );
    }
}
