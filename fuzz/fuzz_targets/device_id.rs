//! Fuzz target: see `tandem_proto::check::check_device_id`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tandem_proto::check::check_device_id(data));
