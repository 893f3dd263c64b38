//! Writes every target's seeds to `DIR/<target>/seed-<i>` (the starting corpus of `benches/fuzz.sh`), and prints
//! the targets, one per line as `name<TAB>what`.

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: fuzz-seeds DIR");
        std::process::exit(2);
    };
    for t in aidos_fuzz_targets::TARGETS {
        let d = std::path::Path::new(&dir).join(t.name);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for (i, s) in (t.seeds)().iter().enumerate() {
            std::fs::write(d.join(format!("seed-{i}")), s).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        }
        println!("{}\t{}", t.name, t.what);
    }
}
