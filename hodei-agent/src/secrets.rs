//! The byte strings a secret may appear as in a job's output.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;

/// Every form of `value` to mask: the value itself; its base64 encoding at
/// each of the three byte alignments it can have inside a longer encoded
/// text (only the characters it alone determines); its URL (percent)
/// encoding; and its JSON-escaped form. Encoded forms equal to the value,
/// or too short to mask safely, are left out.
pub fn secret_forms(value: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![value.to_vec()];
    let n = value.len();
    for k in 0..3usize {
        let mut padded = vec![0u8; k];
        padded.extend_from_slice(value);
        let enc = STANDARD_NO_PAD.encode(&padded).into_bytes();
        // Characters whose 6 bits all come from the value.
        let start = (8 * k).div_ceil(6);
        let end = (8 * (k + n)) / 6;
        if end > start {
            forms.push(enc[start..end.min(enc.len())].to_vec());
        }
    }
    let url: Vec<u8> = value
        .iter()
        .flat_map(|&b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                vec![b]
            } else {
                format!("%{b:02X}").into_bytes()
            }
        })
        .collect();
    forms.push(url);
    if let Ok(s) = std::str::from_utf8(value)
        && let Ok(json) = serde_json::to_string(s)
    {
        forms.push(json.as_bytes()[1..json.len() - 1].to_vec());
    }
    forms.retain(|f| f.len() >= hodei_core::MIN_SECRET_LEN.min(n).max(4));
    forms.sort();
    forms.dedup();
    forms
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use hodei_core::Masker;

    #[test]
    fn base64_at_any_alignment_is_masked() {
        let secret = b"s3cr3t-p@ss word";
        let m = Masker::new(secret_forms(secret)).unwrap();
        for prefix in [&b""[..], b"a", b"ab", b"abc"] {
            let mut text = prefix.to_vec();
            text.extend_from_slice(secret);
            text.extend_from_slice(b"tail");
            let encoded = STANDARD.encode(&text);
            let masked = m.mask(encoded.as_bytes());
            assert!(
                masked.windows(3).any(|w| w == b"***"),
                "prefix {prefix:?}: {encoded}"
            );
            // What remains cannot be decoded back to the secret.
            let rest = String::from_utf8_lossy(&masked).replace("***", "");
            assert!(!rest.contains(&STANDARD_NO_PAD.encode(secret)[2..12]));
        }
    }

    #[test]
    fn url_and_json_forms_are_masked() {
        let secret = "p@ss/word \"quoted\"";
        let m = Masker::new(secret_forms(secret.as_bytes())).unwrap();
        let url = "token=p%40ss%2Fword%20%22quoted%22&x=1";
        assert_eq!(m.mask(url.as_bytes()), b"token=***&x=1");
        let json = serde_json::json!({ "token": secret }).to_string();
        assert_eq!(m.mask(json.as_bytes()), br#"{"token":"***"}"#);
    }
}
