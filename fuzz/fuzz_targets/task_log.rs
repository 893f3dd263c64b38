#![no_main]
// Generated shape: every target is `aidos_fuzz_targets::TARGETS`' `task_log` (crates/fuzz/src/lib.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| (aidos_fuzz_targets::target("task_log").expect("a target").run)(data));
