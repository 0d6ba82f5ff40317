//! `decode_message` against prost, one frame per input (byte 0: tag; bytes 4..: payload).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| boundary_log_proxy_fuzz::check_message(data));
