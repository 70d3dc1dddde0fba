//! The byte strings a secret may appear as in a job's output.
//!
//! Line breaks need no forms of their own: the masker ignores them, so a
//! form is found however a terminal (`\r\n`) or a wrapping encoder (base64
//! at 64 or 76 columns) breaks it.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// Every form of `value` to mask:
///
/// - the value itself;
/// - base64, standard and URL-safe alphabets, at each of the three byte
///   alignments it can have inside a longer encoded text (only the
///   characters it alone determines);
/// - percent-encoding as real tools write it: RFC 3986 (everything but
///   `A-Za-z0-9-._~`), with `/` left as is (Python's `quote`), as
///   `encodeURIComponent` (also leaving `!'()*`), and form encoding
///   (`application/x-www-form-urlencoded`, space as `+`); each with upper-
///   and lowercase hex, and space as `%20` or `+`;
/// - JSON string escapes as real encoders write them: control characters
///   short (`\n`) or as `\u000a`; non-ASCII raw or as `\uXXXX` (surrogate
///   pairs beyond the BMP); `/` raw or as `\/`; `<`, `>`, `&`, U+2028
///   and U+2029 raw or escaped (Go's HTML-safe default); hex upper or lower.
///
/// Encoded forms too short to mask safely are left out.
pub fn secret_forms(value: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![value.to_vec()];
    let n = value.len();
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for k in 0..3usize {
            let mut padded = vec![0u8; k];
            padded.extend_from_slice(value);
            let enc = engine.encode(&padded).into_bytes();
            // Characters whose 6 bits all come from the value.
            let start = (8 * k).div_ceil(6);
            let end = (8 * (k + n)) / 6;
            if end > start {
                forms.push(enc[start..end.min(enc.len())].to_vec());
            }
        }
    }
    for keep in [RFC3986, RFC3986_SLASH, URI_COMPONENT, FORM] {
        for plus in [false, true] {
            for upper in [true, false] {
                forms.push(percent(value, keep, plus, upper));
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(value) {
        for flags in 0..32u8 {
            forms.push(json(s, JsonStyle::from_bits(flags)).into_bytes());
        }
    }
    forms.retain(|f| f.len() >= hodei_core::MIN_SECRET_LEN.min(n).max(4));
    forms.sort();
    forms.dedup();
    forms
}

/// Punctuation each percent-encoding style leaves as is (besides ASCII
/// letters and digits).
const RFC3986: &[u8] = b"-._~";
const RFC3986_SLASH: &[u8] = b"-._~/";
const URI_COMPONENT: &[u8] = b"-._~!'()*";
const FORM: &[u8] = b"-._*";

fn percent(value: &[u8], keep: &[u8], plus: bool, upper: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() * 3);
    for &b in value {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b);
        } else if b == b' ' && plus {
            out.push(b'+');
        } else if upper {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.extend_from_slice(format!("%{b:02x}").as_bytes());
        }
    }
    out
}

#[derive(Clone, Copy)]
struct JsonStyle {
    short_controls: bool,
    ascii_only: bool,
    slash: bool,
    html: bool,
    upper: bool,
}

impl JsonStyle {
    fn from_bits(b: u8) -> Self {
        JsonStyle {
            short_controls: b & 1 != 0,
            ascii_only: b & 2 != 0,
            slash: b & 4 != 0,
            html: b & 8 != 0,
            upper: b & 16 != 0,
        }
    }
}

/// `s` as the inside of a JSON string written in `style`.
fn json(s: &str, style: JsonStyle) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let hex = |out: &mut String, u: u16| {
        if style.upper {
            out.push_str(&format!("\\u{u:04X}"));
        } else {
            out.push_str(&format!("\\u{u:04x}"));
        }
    };
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' if style.slash => out.push_str("\\/"),
            '\n' if style.short_controls => out.push_str("\\n"),
            '\r' if style.short_controls => out.push_str("\\r"),
            '\t' if style.short_controls => out.push_str("\\t"),
            '\u{8}' if style.short_controls => out.push_str("\\b"),
            '\u{c}' if style.short_controls => out.push_str("\\f"),
            c if (c as u32) < 0x20 => hex(&mut out, c as u16),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' if style.html => {
                hex(&mut out, c as u16);
            }
            c if !c.is_ascii() && style.ascii_only => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    hex(&mut out, *u);
                }
            }
            c => out.push(c),
        }
    }
    out
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

    /// What real encoders print for one secret (Python's json.dumps, quote,
    /// quote_plus and urlsafe_b64encode, base64(1) wrapping at 76 columns,
    /// Go's HTML-safe JSON, PHP's json_encode, JavaScript's
    /// encodeURIComponent), each masked whole.
    #[test]
    fn forms_real_encoders_print_are_masked() {
        let secret = "pä ss/wörd+k=1<2>&'ok' 🔑";
        let m = Masker::new(secret_forms(secret.as_bytes())).unwrap();
        let whole = [
            // Python json.dumps (ensure_ascii, lowercase hex, surrogates).
            r#""p\u00e4 ss/w\u00f6rd+k=1<2>&'ok' \ud83d\udd11""#,
            // Go encoding/json (HTML-safe).
            r#""pä ss/wörd+k=1\u003c2\u003e\u0026'ok' 🔑""#,
            // PHP json_encode.
            r#""p\u00e4 ss\/w\u00f6rd+k=1<2>&'ok' \ud83d\udd11""#,
            // Jackson-style uppercase hex.
            r#""p\u00E4 ss/w\u00F6rd+k=1<2>&'ok' \uD83D\uDD11""#,
        ];
        for text in whole {
            assert_eq!(m.mask(text.as_bytes()), b"\"***\"", "{text}");
        }
        let bare = [
            // Python quote (keeps /).
            "p%C3%A4%20ss/w%C3%B6rd%2Bk%3D1%3C2%3E%26%27ok%27%20%F0%9F%94%91",
            // Python quote_plus: form encoding.
            "p%C3%A4+ss%2Fw%C3%B6rd%2Bk%3D1%3C2%3E%26%27ok%27+%F0%9F%94%91",
            // Lowercase hex.
            "p%c3%a4%20ss/w%c3%b6rd%2bk%3d1%3c2%3e%26%27ok%27%20%f0%9f%94%91",
            // encodeURIComponent.
            "p%C3%A4%20ss%2Fw%C3%B6rd%2Bk%3D1%3C2%3E%26'ok'%20%F0%9F%94%91",
        ];
        for text in bare {
            assert_eq!(m.mask(text.as_bytes()), b"***", "{text}");
        }
        // URL-safe base64 of "xy" + secret.
        let url_safe = m.mask(b"eHlww6Qgc3Mvd8O2cmQraz0xPDI-Jidvaycg8J-UkQ==");
        assert!(
            url_safe.starts_with(b"eHl") && url_safe.len() < 12,
            "{url_safe:?}"
        );
        // base64(1) wraps at 76 columns; under a terminal each break is \r\n.
        let wrapped = "aGVhZGVyIGhlYWRlciBoZWFkZXIgaGVhZGVyIGhlYWRlciBoZWFkZXIgaGVhZGVyIGhlYWRlciBo\nZWFkZXIgaGVhZGVyIGhlYWRlciBoZWFkZXIgaGVhZGVyIGhlYWRlciBoZWFkZXIgaGVhZGVyIGhl\nYWRlciBoZWFkZXIgaGVhZGVyIGhlYWRlciBww6Qgc3Mvd8O2cmQraz0xPDI+Jidvaycg8J+UkSB0\ncmFpbGVyIHRyYWlsZXIgdHJhaWxlciB0cmFpbGVyIHRyYWlsZXIgdHJhaWxlciB0cmFpbGVyIHRy\n";
        for text in [wrapped.to_string(), wrapped.replace('\n', "\r\n")] {
            let masked = String::from_utf8(m.mask(text.as_bytes())).unwrap();
            assert!(masked.contains("***"), "{masked}");
            for piece in ["w6Qgc3Mvd8O2", "Qraz0xPDI", "Jidvaycg8J"] {
                assert!(!masked.contains(piece), "{piece} in {masked}");
            }
        }
    }
}
