//! Fuzz target: see `tandem_proto::check::check_rel_path`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_proto::check::check_rel_path(data));
