//! The journal checks and replay `open` runs, on arbitrary bytes: they must never panic.
//! Half the inputs become the payload of one validly framed record (header, length,
//! sequence number and checksum fixed up), so the fuzzer reaches the change decoder and
//! the replay instead of stopping at the CRC.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((mode, payload)) if mode & 1 == 1 => {
            let image = tokencache::__fuzz::frame_journal_record(payload);
            let _ = tokencache::__fuzz::check_journal(&image);
        }
        _ => {
            let _ = tokencache::__fuzz::check_journal(data);
        }
    }
});
