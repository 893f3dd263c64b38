//! Batch-1 latency of tract on the zoo's MNIST CNN shape (conv 1->32 3x3, relu, pool 2; conv 32->64 3x3, relu,
//! pool 2; dense 3136->128, relu; dense 128->10), with our operators (`aidos_runtime::tract_ops`) and with tract's
//! own, one thread, in process. Weights are random: latency does not depend on them.
//!
//!   cargo bench -p aidos-runtime --bench tract_latency [-- ITERS] [ours|avx2|portable|plain]   (one only, e.g. to profile)
//!
//! `ours` uses the best kernels this CPU runs (AVX-512 here), `avx2` and `portable` those of CPUs with AVX2 + FMA
//! only or with neither.
//!
//! Python onnxruntime on the same graph is the yardstick; `benches/edge_footprint.sh` measures it on the
//! trained model.

#[path = "../tests/support/graph.rs"]
mod graph;

use aidos_runtime::tract::TractModel;
use aidos_runtime::{ModelRuntime, Tensor};
use graph::{Graph, values};

fn cnn() -> Vec<u8> {
    let mut g = Graph::default();
    let x = g.conv("x", 1, 32, [3, 3], [1, 1, 1, 1]);
    let x = g.relu(&x);
    let x = g.pool(&x, [2, 2], [2, 2]);
    let x = g.conv(&x, 32, 64, [3, 3], [1, 1, 1, 1]);
    let x = g.relu(&x);
    let x = g.pool(&x, [2, 2], [2, 2]);
    let x = g.node("Flatten", &[x], vec![]);
    let x = g.dense(&x, 3136, 128);
    let x = g.relu(&x);
    g.dense(&x, 128, 10);
    g.onnx([1, 28, 28])
}

fn measure(m: &TractModel, iters: usize) -> (f64, f64) {
    let mut inst = m.instance().unwrap();
    let x = Tensor::new(vec![1, 1, 28, 28], values(784, 7)).unwrap();
    for _ in 0..iters / 10 {
        inst.run(std::slice::from_ref(&x)).unwrap();
    }
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let s = std::time::Instant::now();
            inst.run(std::slice::from_ref(&x)).unwrap();
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[iters / 2], t[iters * 99 / 100])
}

fn main() {
    let iters = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(3000usize);
    let onnx = cnn();
    let ours = TractModel::load("cnn", &onnx).unwrap();
    let avx2 = TractModel::load_isa("cnn", &onnx, aidos_runtime::tract_ops::Isa::Avx2).ok();
    let portable = TractModel::load_isa("cnn", &onnx, aidos_runtime::tract_ops::Isa::Portable).unwrap();
    let plain = TractModel::load_plain("cnn", &onnx).unwrap();
    let only = std::env::args().skip(1).find(|a| ["ours", "avx2", "portable", "plain"].contains(&a.as_str()));
    let mut runs = vec![("ours", "tract + aidos ops", &ours)];
    if let Some(m) = &avx2 {
        runs.push(("avx2", "  AVX2 kernels", m));
    }
    runs.extend([("portable", "  portable only", &portable), ("plain", "tract alone", &plain)]);
    for (key, name, m) in runs {
        if only.as_deref().is_some_and(|o| o != key) {
            continue;
        }
        let (p50, p99) = measure(m, iters);
        println!(
            "{name:18} batch 1, {iters} inferences: p50 {p50:7.1} us  p99 {p99:7.1} us  ({} own nodes)",
            m.own_ops()
        );
    }
}
