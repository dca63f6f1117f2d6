//! The token parser (`validate`'s first step) on arbitrary strings: it must never panic,
//! and anything it accepts must be exactly a token's length and start with the prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(candidate) = std::str::from_utf8(data) else {
        return;
    };
    if tokencache::__fuzz::parse_token(candidate).is_some() {
        assert_eq!(candidate.len(), tokencache::TOKEN_LEN);
        assert!(candidate.starts_with(tokencache::PREFIX));
    }
});
