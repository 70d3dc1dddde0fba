//! A JobSpec parsed from untrusted JSON or TOML and validated must never
//! panic, and a spec that validates must survive a JSON round trip.
#![no_main]

use hodei_core::JobSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = serde_json::from_str::<JobSpec>(text)
        .ok()
        .or_else(|| toml::from_str::<JobSpec>(text).ok());
    if let Some(spec) = parsed {
        if spec.validate().is_ok() {
            let json = serde_json::to_string(&spec).expect("a valid spec serialises");
            let back: JobSpec = serde_json::from_str(&json).expect("and parses back");
            assert!(back.validate().is_ok());
        }
    }
});
