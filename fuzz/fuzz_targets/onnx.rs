#![no_main]
// Generated shape: every target is `aidos_fuzz_targets::TARGETS`' `onnx` (crates/fuzz/src/lib.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| (aidos_fuzz_targets::target("onnx").expect("a target").run)(data));
