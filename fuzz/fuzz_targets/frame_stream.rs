//! The incremental frame decoder under arbitrary chunking, against a reference
//! framer; every frame it cuts is then decoded against prost.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| boundary_log_proxy_fuzz::check_stream(data));
