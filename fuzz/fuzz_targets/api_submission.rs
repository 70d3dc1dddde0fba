//! A submission to the HTTP/JSON API, from untrusted bytes and an
//! untrusted content type, must never panic; a body that passes is a spec
//! that validates, and a refusal names what is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first line is the content type, the rest the body.
    let (ct, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (String::from_utf8_lossy(&data[..i]).into_owned(), &data[i + 1..]),
        None => ("application/json".to_string(), data),
    };
    match hodei_hwp::server::parse_submission(&ct, body) {
        Ok(spec) => assert!(spec.validate().is_ok(), "accepted an invalid spec"),
        Err(why) => assert!(!why.is_empty(), "a refusal without a reason"),
    }
});
