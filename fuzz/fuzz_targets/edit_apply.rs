//! Fuzz target: see `tandem_proto::check::check_edit_apply`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_proto::check::check_edit_apply(data));
