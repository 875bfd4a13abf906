//! Fuzz target: see `tandem_proto::check::check_message_roundtrip`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_proto::check::check_message_roundtrip(data));
