#![no_main]
// Generated shape: every target is `aidos_fuzz_targets::TARGETS`' `blob_upload` (crates/fuzz/src/lib.rs).
libfuzzer_sys::fuzz_target!(|data: &[u8]| (aidos_fuzz_targets::target("blob_upload").expect("a target").run)(data));
