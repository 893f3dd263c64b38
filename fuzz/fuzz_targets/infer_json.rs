#![no_main]
// Generated shape: every target is `aidos_fuzz_targets::TARGETS`' `infer_json` (crates/fuzz/src/lib.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| (aidos_fuzz_targets::target("infer_json").expect("a target").run)(data));
