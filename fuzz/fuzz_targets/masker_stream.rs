//! The streaming masker, fed random chunkings, must produce exactly what the
//! one-shot masker does, and no secret may survive outside a mask. Line
//! breaks are ignored in matching, so the check reads the output and each
//! secret without them.
#![no_main]

use hodei_core::{MASK, Masker};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Layout: n_secrets, then per secret a length byte and bytes, then a
    // byte of chunk size, then the input.
    let mut rest = data;
    let Some((&n, tail)) = rest.split_first() else {
        return;
    };
    rest = tail;
    let mut secrets = Vec::new();
    for _ in 0..(n % 8) {
        let Some((&len, tail)) = rest.split_first() else {
            return;
        };
        let len = (len as usize % 16).min(tail.len());
        secrets.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    let Some((&chunk, input)) = rest.split_first() else {
        return;
    };
    let chunk = chunk as usize % 17 + 1;
    let masker = Masker::new(&secrets).expect("any byte strings build a masker");
    let one_shot = masker.mask(input);
    let mut stream = masker.stream();
    let mut out = Vec::new();
    for c in input.chunks(chunk) {
        stream.push(c, &mut out);
    }
    stream.finish(&mut out);
    assert_eq!(out, one_shot);
    let flat = without_breaks(&one_shot);
    for s in secrets
        .iter()
        .map(|s| without_breaks(s))
        .filter(|s| !s.is_empty())
    {
        for (i, w) in flat.windows(s.len()).enumerate() {
            if w == &s[..] {
                let lo = i.saturating_sub(MASK.len() - 1);
                let hi = (i + s.len() + MASK.len() - 1).min(flat.len());
                assert!(flat[lo..hi].windows(MASK.len()).any(|x| x == MASK));
            }
        }
    }
});

fn without_breaks(b: &[u8]) -> Vec<u8> {
    b.iter()
        .copied()
        .filter(|&c| c != b'\n' && c != b'\r')
        .collect()
}
