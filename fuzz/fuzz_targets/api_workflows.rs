//! A pipeline or a schedule submitted to the HTTP/JSON API, from untrusted
//! bytes and an untrusted content type, must never panic (cron patterns
//! and time zones included); one that passes is valid (its graph acyclic,
//! its cron finding a next tick), and a refusal names what is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: which call; then the content type's line, then the body.
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let (ct, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (String::from_utf8_lossy(&rest[..i]).into_owned(), &rest[i + 1..]),
        None => ("application/json".to_string(), rest),
    };
    if which % 2 == 0 {
        match hodei_hwp::server::parse_pipeline(&ct, body) {
            Ok((spec, graph)) => {
                assert!(spec.validate().is_ok(), "accepted an invalid pipeline");
                assert!(hodei_core::cycles(&graph.deps).is_empty(), "accepted a cycle");
            }
            Err(why) => assert!(!why.is_empty(), "a refusal without a reason"),
        }
    } else {
        match hodei_hwp::server::parse_schedule(&ct, body) {
            Ok((spec, cron)) => {
                assert!(spec.validate().is_ok(), "accepted an invalid schedule");
                assert!(
                    cron.next_after(hodei_core::Timestamp(1_800_000_000_000)).is_some(),
                    "a schedule that never ticks"
                );
            }
            Err(why) => assert!(!why.is_empty(), "a refusal without a reason"),
        }
    }
});
