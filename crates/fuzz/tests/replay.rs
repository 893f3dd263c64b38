//! The fuzz targets on stable, in CI:
//! - every seed and every kept regression input (`crates/fuzz/regressions/<target>/*`: the crashes libFuzzer found,
//!   kept after their fix) runs through its target;
//! - a seeded mutation loop runs a few thousand inputs per target (deterministic: a failure names the target, the
//!   iteration and the input, and reproduces);
//! - every target has its cargo-fuzz binary (`fuzz/fuzz_targets/<name>.rs`) and no binary lacks a target.

use std::path::{Path, PathBuf};

use aidos_fuzz_targets::mutate::{Rng, mutate};
use aidos_fuzz_targets::{TARGETS, target};

/// Mutated inputs per target (a few seconds in all in a debug build).
const ITERATIONS: usize = 3000;
const MAX_LEN: usize = 16 << 10;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

#[test]
fn seeds_and_kept_regressions_pass() {
    for t in TARGETS {
        let seeds = (t.seeds)();
        assert!(!seeds.is_empty(), "{}: no seeds", t.name);
        for s in &seeds {
            (t.run)(s);
        }
        let dir = root().join("regressions").join(t.name);
        for e in std::fs::read_dir(&dir).into_iter().flatten() {
            let p = e.unwrap().path();
            eprintln!("{}: replaying {}", t.name, p.display());
            (t.run)(&std::fs::read(&p).unwrap());
        }
    }
    for d in std::fs::read_dir(root().join("regressions")).unwrap() {
        let name = d.unwrap().file_name().into_string().unwrap();
        if name.starts_with('.') {
            continue;
        }
        assert!(target(&name).is_some(), "regressions/{name}: no such target");
    }
}

#[test]
fn seeded_mutations_pass() {
    for (k, t) in TARGETS.iter().enumerate() {
        let seeds = (t.seeds)();
        let mut rng = Rng::new(0xA1D0 + k as u64);
        let mut pool = seeds.clone();
        for i in 0..ITERATIONS {
            let a = &pool[rng.below(pool.len())];
            let b = &pool[rng.below(pool.len())];
            let input = mutate(&mut rng, a, b, MAX_LEN);
            let r = std::panic::catch_unwind(|| (t.run)(&input));
            if r.is_err() {
                panic!("{}: mutation {i} panicked on input {:?}", t.name, String::from_utf8_lossy(&input));
            }
            // Keep some mutants as parents, so mutations stack (a bounded pool).
            if pool.len() < 256 && i % 8 == 0 {
                pool.push(input);
            }
        }
    }
}

#[test]
fn every_target_has_a_cargo_fuzz_binary() {
    let dir = root().join("../../fuzz/fuzz_targets");
    let mut bins: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    bins.sort();
    let mut names: Vec<String> = TARGETS.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(bins, names, "fuzz/fuzz_targets/ and aidos_fuzz_targets::TARGETS differ");
    let manifest = std::fs::read_to_string(root().join("../../fuzz/Cargo.toml")).unwrap();
    for n in &names {
        assert!(manifest.contains(&format!("name = \"{n}\"")), "fuzz/Cargo.toml has no [[bin]] {n}");
    }
}

/// The seeds meant to be valid are: mutations then start inside each format's grammar, not at its first check.
#[test]
fn valid_seeds_are_accepted() {
    let seeds = |n: &str| (target(n).unwrap().seeds)();
    let (_d, a, b) = {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        (d, a, b)
    };
    for s in &seeds("job_spec")[..3] {
        aidos_api::spec::parse_toml(std::str::from_utf8(s).unwrap()).unwrap();
    }
    for s in &seeds("sweep_spec")[..2] {
        aidos_api::sweep::parse_toml(std::str::from_utf8(s).unwrap()).unwrap();
    }
    for s in seeds("idx") {
        let (x, y) = aidos_fuzz_targets::split2(&s);
        std::fs::write(&a, x).unwrap();
        std::fs::write(&b, y).unwrap();
        aidos_datasets::read_idx(&a, &b).unwrap();
    }
    // (the second is Fortran-ordered: refused by design)
    for s in seeds("npy").iter().step_by(2) {
        let (x, y) = aidos_fuzz_targets::split2(s);
        std::fs::write(&a, x).unwrap();
        std::fs::write(&b, y).unwrap();
        aidos_datasets::read_npy(&a, &b).unwrap();
    }
    std::fs::write(&a, &seeds("csv")[0]).unwrap();
    aidos_datasets::read_csv(&a, None).unwrap();
    let m = aidos_runtime::load_onnx(aidos_runtime::RuntimeKind::Tract, "seed", &seeds("onnx")[0]).unwrap();
    let out = m.instance().unwrap().run(&[aidos_runtime::Tensor::new(vec![2, 4], vec![0.5; 8]).unwrap()]).unwrap();
    assert_eq!(out[0].shape, vec![2, 3]);
    for s in &seeds("infer_json")[..2] {
        assert_eq!(aidos_fuzz_targets::infer::post(s, None), 200, "{}", String::from_utf8_lossy(s));
    }
    assert_eq!(aidos_fuzz_targets::infer::binary_status(&seeds("infer_binary")[0]), 200);
}

/// The first crash libFuzzer found (tract's graph builder indexed a map by a graph output that nothing produces,
/// and panicked): refused now, naming the output.
#[test]
fn an_onnx_graph_output_that_names_nothing_is_refused_by_name() {
    let bytes = std::fs::read(root().join("regressions/onnx/graph-output-names-nothing")).unwrap();
    let e =
        aidos_runtime::load_onnx(aidos_runtime::RuntimeKind::Tract, "m", &bytes).err().expect("refused").to_string();
    assert!(e.contains("is produced by no node, input or initializer"), "{e}");
}
