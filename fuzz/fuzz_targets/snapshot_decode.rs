//! The store-file checks `open` runs, on arbitrary bytes: they must never panic. Half the
//! inputs are wrapped in a valid header (magic, version, lengths and checksums fixed up),
//! so the fuzzer reaches the body decoder instead of stopping at the CRC.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((mode, body)) if mode & 1 == 1 => {
            let image = tokencache::__fuzz::frame_body(body);
            let _ = tokencache::__fuzz::check_snapshot(&image);
        }
        _ => {
            let _ = tokencache::__fuzz::check_snapshot(data);
        }
    }
});
