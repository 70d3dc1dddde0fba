//! [`Masker`]: hides secret values in log output.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};

/// What a masked run of bytes is replaced with.
pub const MASK: &[u8] = b"***";

/// Beyond this many held-back bytes a stream emits a masked run early
/// (keeping track that it is open), so a never-ending chain of overlapping
/// secrets cannot make it buffer without bound.
const MAX_HELD: usize = 64 * 1024;

/// Past this many pattern bytes the automaton is a contiguous NFA: a DFA
/// for a 64 KiB secret and its encodings takes seconds to build and
/// hundreds of megabytes.
const DFA_MAX_PATTERN_BYTES: usize = 16 * 1024;

/// Bytes matching ignores: a terminal turns `\n` into `\r\n`, encoders
/// wrap base64 at 64 or 76 columns, and a job may print a multi-line secret
/// line by line; none of that must let a secret through.
fn is_break(b: u8) -> bool {
    matches!(b, b'\n' | b'\r')
}

/// Why a masker could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build masker: {0}")]
pub struct MaskerError(#[from] aho_corasick::BuildError);

/// Replaces every occurrence of a set of secret values in bytes with
/// [`MASK`].
///
/// Every byte covered by any occurrence of any secret is hidden, including
/// occurrences that overlap one another; each maximal run of hidden bytes
/// (overlapping or touching occurrences) becomes a single `***`. Input is
/// arbitrary bytes; nothing assumes UTF-8.
///
/// **Line breaks are ignored** inside an occurrence, in the secret and in
/// the output alike: `\r` and `\n` are skipped when matching, so a secret
/// is found however it is broken across lines (a PEM key under a terminal,
/// which prints `\r\n`; base64 wrapped at any width) and the breaks inside
/// it are hidden with it.
///
/// [`Masker::mask`] works on a whole buffer; [`Masker::stream`] gives a
/// [`MaskStream`] that accepts output in chunks cut anywhere, even inside a
/// secret, and produces exactly what `mask` would on the concatenation.
///
/// Cloning is cheap: the automaton is shared.
///
/// ```
/// use hodei_core::Masker;
/// let m = Masker::new(["hunter22"]).unwrap();
/// assert_eq!(m.mask(b"pw=hunter22!"), b"pw=***!");
///
/// let mut s = m.stream();
/// let mut out = Vec::new();
/// s.push(b"pw=hun", &mut out);
/// s.push(b"ter22!", &mut out);
/// s.finish(&mut out);
/// assert_eq!(out, b"pw=***!");
/// ```
#[derive(Clone)]
pub struct Masker {
    inner: Option<Arc<AhoCorasick>>,
    max_len: usize,
    /// Every proper prefix of every secret, as (length, hash): a stream
    /// holds back only a tail that could begin a secret. `None` past
    /// [`DFA_MAX_PATTERN_BYTES`] of secrets, where a stream holds back the
    /// last `longest - 1` bytes whatever they are.
    prefixes: Option<Arc<HashSet<(usize, u64)>>>,
}

/// The multiplier of the prefix hash. A collision only makes a stream hold
/// back bytes it could have released: never unsafe.
const HASH_BASE: u64 = 0x100_0000_01b3;

fn prefix_hashes(patterns: &[Vec<u8>]) -> HashSet<(usize, u64)> {
    let mut set = HashSet::new();
    for p in patterns {
        let mut h = 0u64;
        for (k, &b) in p.iter().enumerate().take(p.len().saturating_sub(1)) {
            h = h.wrapping_mul(HASH_BASE).wrapping_add(u64::from(b) + 1);
            set.insert((k + 1, h));
        }
    }
    set
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the values themselves.
        f.debug_struct("Masker")
            .field(
                "patterns",
                &self.inner.as_ref().map_or(0, |ac| ac.patterns_len()),
            )
            .field("max_len", &self.max_len)
            .finish()
    }
}

impl Masker {
    /// A masker for these secret values. Empty values are ignored.
    ///
    /// # Errors
    ///
    /// [`MaskerError`] when the matcher cannot be built from the secrets.
    pub fn new<I, P>(secrets: I) -> Result<Self, MaskerError>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        let mut patterns: Vec<Vec<u8>> = secrets
            .into_iter()
            .map(|s| {
                s.as_ref()
                    .iter()
                    .copied()
                    .filter(|&b| !is_break(b))
                    .collect()
            })
            .filter(|s: &Vec<u8>| !s.is_empty())
            .collect();
        patterns.sort_unstable();
        patterns.dedup();
        if patterns.is_empty() {
            return Ok(Masker::none());
        }
        let max_len = patterns.iter().map(Vec::len).max().unwrap_or(0);
        let total: usize = patterns.iter().map(Vec::len).sum();
        let kind = (total > DFA_MAX_PATTERN_BYTES).then_some(AhoCorasickKind::ContiguousNFA);
        let ac = AhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .kind(kind)
            .build(&patterns)?;
        let prefixes = (total <= DFA_MAX_PATTERN_BYTES).then(|| Arc::new(prefix_hashes(&patterns)));
        Ok(Masker {
            inner: Some(Arc::new(ac)),
            max_len,
            prefixes,
        })
    }

    /// A masker that hides nothing.
    pub fn none() -> Self {
        Masker {
            inner: None,
            max_len: 0,
            prefixes: None,
        }
    }

    /// True if there is nothing to hide.
    pub fn is_empty(&self) -> bool {
        self.inner.is_none()
    }

    /// `input` with every secret hidden.
    pub fn mask(&self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len());
        if self.is_empty() {
            out.extend_from_slice(input);
            return out;
        }
        let mut intervals = Vec::new();
        self.intervals(input, 0, &mut Scratch::default(), &mut intervals);
        let mut pos = 0;
        for (s, e) in intervals {
            out.extend_from_slice(&input[pos..s]);
            out.extend_from_slice(MASK);
            pos = e;
        }
        out.extend_from_slice(&input[pos..]);
        out
    }

    /// A stream that masks output arriving in chunks.
    pub fn stream(&self) -> MaskStream {
        MaskStream {
            masker: self.clone(),
            held: Vec::new(),
            covered: 0,
            run_open: false,
            intervals: Vec::new(),
            scratch: Scratch::default(),
        }
    }

    /// Appends the covered intervals of `buf` (sorted, merged when they
    /// overlap or touch) to `out`.
    fn intervals(
        &self,
        buf: &[u8],
        covered_prefix: usize,
        scratch: &mut Scratch,
        out: &mut Vec<(usize, usize)>,
    ) {
        out.clear();
        if covered_prefix > 0 {
            out.push((0, covered_prefix.min(buf.len())));
        }
        if let Some(ac) = &self.inner {
            if memchr::memchr2(b'\n', b'\r', buf).is_some() {
                // Match on the text without line breaks, then map each match
                // back: from its first byte to its last, breaks inside it
                // included.
                scratch.text.clear();
                scratch.breaks.clear();
                let mut from = 0;
                for at in memchr::memchr2_iter(b'\n', b'\r', buf) {
                    scratch.text.extend_from_slice(&buf[from..at]);
                    // Where the break would sit in the text without breaks.
                    scratch.breaks.push(scratch.text.len());
                    from = at + 1;
                }
                scratch.text.extend_from_slice(&buf[from..]);
                let breaks = &scratch.breaks;
                // A byte at `f` in the text without breaks stood after every
                // break placed at or before `f`.
                let original = |f: usize| f + breaks.partition_point(|&b| b <= f);
                out.extend(
                    ac.find_overlapping_iter(&scratch.text)
                        .map(|m| (original(m.start()), original(m.end() - 1) + 1)),
                );
            } else {
                out.extend(ac.find_overlapping_iter(buf).map(|m| (m.start(), m.end())));
            }
        }
        // Overlapping matches are reported by end position; merging wants
        // them by start.
        out.sort_unstable();
        let mut w = 0;
        for r in 0..out.len() {
            let (s, e) = out[r];
            if w > 0 && s <= out[w - 1].1 {
                out[w - 1].1 = out[w - 1].1.max(e);
            } else {
                out[w] = (s, e);
                w += 1;
            }
        }
        out.truncate(w);
    }
}

/// Buffers reused across calls: the text without line breaks, and where
/// in it each break stood.
#[derive(Default)]
struct Scratch {
    text: Vec<u8>,
    breaks: Vec<usize>,
}

/// Masks a byte stream arriving in chunks; made by [`Masker::stream`].
///
/// It holds back the longest tail of what it has seen that could begin a
/// secret the next chunk completes (line breaks ignored), so output that
/// cannot be part of a secret goes out at once: at most `longest secret -
/// 1` bytes (more only while a run of secrets continues up to the end of
/// what it has seen, and never more than 64 KiB plus that). [`finish`](MaskStream::finish) releases them.
pub struct MaskStream {
    masker: Masker,
    held: Vec<u8>,
    /// Leading bytes of `held` already known to be inside a secret.
    covered: usize,
    /// The output ended with a mask whose run touches `held[0]`.
    run_open: bool,
    intervals: Vec<(usize, usize)>,
    scratch: Scratch,
}

impl fmt::Debug for MaskStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaskStream")
            .field("held", &self.held.len())
            .finish()
    }
}

impl MaskStream {
    /// Feeds `chunk`, appending to `out` whatever is now certain.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        if self.masker.is_empty() && self.held.is_empty() {
            out.extend_from_slice(chunk);
            return;
        }
        self.held.extend_from_slice(chunk);
        self.process(out, false);
    }

    /// Ends the stream, appending everything still held back.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.process(out, true);
        self.covered = 0;
        self.run_open = false;
    }

    /// Bytes held back waiting for more input.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Where in `held` the earliest secret a later chunk may complete can
    /// start: before the last `longest - 1` bytes that are not line breaks,
    /// and never holding back more than the bound allows.
    fn safe_point(&self) -> usize {
        let len = self.held.len();
        let floor = len.saturating_sub(MAX_HELD + self.masker.max_len);
        if let Some(prefixes) = &self.masker.prefixes {
            // Walk back over the tail, hashing it as it grows at the front;
            // the earliest start of a tail that is a secret's prefix wins.
            let (mut h, mut pow, mut k) = (0u64, 1u64, 0usize);
            let mut keep = len;
            let mut i = len;
            while i > 0 && k + 1 < self.masker.max_len {
                i -= 1;
                let b = self.held[i];
                if is_break(b) {
                    continue;
                }
                h = h.wrapping_add((u64::from(b) + 1).wrapping_mul(pow));
                pow = pow.wrapping_mul(HASH_BASE);
                k += 1;
                if prefixes.contains(&(k, h)) {
                    keep = i;
                }
            }
            return keep.max(floor);
        }
        let mut need = self.masker.max_len.saturating_sub(1);
        let mut i = len;
        while need > 0 && i > 0 {
            i -= 1;
            if !is_break(self.held[i]) {
                need -= 1;
            }
        }
        i.max(floor)
    }

    fn process(&mut self, out: &mut Vec<u8>, last: bool) {
        let len = self.held.len();
        let mut intervals = std::mem::take(&mut self.intervals);
        self.masker
            .intervals(&self.held, self.covered, &mut self.scratch, &mut intervals);
        let cut = if last {
            len
        } else {
            // A secret completed by a later chunk starts at or after `safe`:
            // among the last `longest - 1` bytes that are not line breaks.
            let safe = self.safe_point();
            // A run reaching `safe` may still grow: hold it back whole...
            let cut = intervals
                .iter()
                .find(|&&(_, e)| e >= safe)
                .map_or(safe, |&(s, _)| s.min(safe));
            // ...unless that would hold back too much.
            if len - cut > MAX_HELD + self.masker.max_len {
                safe
            } else {
                cut
            }
        };
        if cut == 0 {
            // Nothing is certain yet; the open run and its coverage carry on.
            self.intervals = intervals;
            return;
        }
        let mut pos = 0;
        let mut straddle_end = None;
        for &(s, e) in &intervals {
            if s >= cut {
                break;
            }
            out.extend_from_slice(&self.held[pos..s]);
            if !(s == 0 && self.run_open) {
                out.extend_from_slice(MASK);
            }
            if e >= cut {
                straddle_end = Some(e);
                pos = cut;
                break;
            }
            pos = e;
        }
        out.extend_from_slice(&self.held[pos..cut]);
        self.run_open = straddle_end.is_some();
        self.covered = straddle_end.map_or(0, |e| e - cut);
        self.held.drain(..cut);
        self.intervals = intervals;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn streamed(m: &Masker, input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut s = m.stream();
        let mut out = Vec::new();
        let mut prev = 0;
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.sort_unstable();
        for c in points {
            s.push(&input[prev..c], &mut out);
            prev = c;
        }
        s.push(&input[prev..], &mut out);
        s.finish(&mut out);
        out
    }

    #[test]
    fn masks_every_occurrence() {
        let m = Masker::new(["s3cr3t-token", "p@ssw0rd"]).unwrap();
        assert_eq!(
            m.mask(b"a s3cr3t-token b p@ssw0rd c s3cr3t-token"),
            b"a *** b *** c ***"
        );
    }

    #[test]
    fn overlapping_and_touching_secrets_become_one_run() {
        let m = Masker::new(["abcdef", "defghi", "xyz"]).unwrap();
        assert_eq!(m.mask(b"..abcdefghi.."), b"..***..");
        assert_eq!(m.mask(b"abcdefxyz!"), b"***!");
        let m = Masker::new(["aaaa"]).unwrap();
        assert_eq!(m.mask(b"aaaaaaaaa b aaa"), b"*** b aaa");
    }

    #[test]
    fn non_utf8_bytes_pass_through() {
        let m = Masker::new([&b"\xff\xfesecret\x00"[..]]).unwrap();
        assert_eq!(m.mask(b"\x80\xff\xfesecret\x00\xc3"), b"\x80***\xc3");
    }

    #[test]
    fn a_secret_split_across_every_boundary_is_masked() {
        let m = Masker::new(["0123456789"]).unwrap();
        let input = b"xx0123456789yy";
        for cut in 0..=input.len() {
            assert_eq!(streamed(&m, input, &[cut]), b"xx***yy", "cut at {cut}");
        }
        // One byte at a time.
        let cuts: Vec<usize> = (0..input.len()).collect();
        assert_eq!(streamed(&m, input, &cuts), b"xx***yy");
    }

    #[test]
    fn a_stream_holds_back_only_a_possible_secret_prefix() {
        let m = Masker::new(["0123456789"]).unwrap();
        let mut s = m.stream();
        let mut out = Vec::new();
        // Nothing here can begin the secret: all of it goes out at once.
        s.push(b"hello world", &mut out);
        assert_eq!(out, b"hello world");
        assert_eq!(s.held(), 0);
        // A tail that may: held back, and only it.
        s.push(b" 0123", &mut out);
        assert_eq!(out, b"hello world ");
        assert_eq!(s.held(), 4);
        // Across a line break, as matching ignores breaks.
        s.push(b"45\r\n6", &mut out);
        assert_eq!(out, b"hello world ");
        s.push(b"789!", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"hello world ***!");
    }

    #[test]
    fn an_endless_run_of_secrets_is_emitted_with_bounded_memory() {
        let m = Masker::new(["aaaa"]).unwrap();
        let mut s = m.stream();
        let mut out = Vec::new();
        for _ in 0..100 {
            s.push(&[b'a'; 4096], &mut out);
            assert!(s.held() <= MAX_HELD + 8, "held {}", s.held());
        }
        s.push(b"!", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"***!");
    }

    #[test]
    fn an_empty_masker_copies() {
        let m = Masker::new(Vec::<String>::new()).unwrap();
        assert!(m.is_empty());
        assert_eq!(streamed(&m, b"abc", &[1, 2]), b"abc");
    }

    fn secret() -> impl Strategy<Value = Vec<u8>> {
        // A small alphabet makes overlaps and near-misses common. A secret
        // of nothing but line breaks is ignored, so none is made.
        proptest::collection::vec(
            prop_oneof![Just(b'a'), Just(b'b'), Just(b'c'), Just(b'\n'), any::<u8>()],
            1..12,
        )
        .prop_filter("not only line breaks", |s| s.iter().any(|&b| !is_break(b)))
    }

    fn without_breaks(b: &[u8]) -> Vec<u8> {
        b.iter().copied().filter(|&b| !is_break(b)).collect()
    }

    #[test]
    fn a_secret_broken_across_lines_is_masked_with_its_breaks() {
        let key = "-----BEGIN KEY-----\nMIIEabc\nMIIEdef\n-----END KEY-----";
        let m = Masker::new([key]).unwrap();
        // As a terminal prints it.
        let tty = key.replace('\n', "\r\n");
        assert_eq!(
            m.mask(format!("key: {tty}\r\nok").as_bytes()),
            b"key: ***\r\nok"
        );
        // Line by line, in chunks cut between the \r and the \n.
        let text = format!("x{tty}y");
        let cuts: Vec<usize> = (0..text.len()).step_by(3).collect();
        assert_eq!(streamed(&m, text.as_bytes(), &cuts), b"x***y");
        // Wrapped at any width.
        let m = Masker::new(["0123456789abcdef"]).unwrap();
        assert_eq!(m.mask(b"01234\n56789\nabcdef\n!"), b"***\n!");
    }

    #[test]
    fn a_run_of_line_breaks_is_not_held_without_bound() {
        let m = Masker::new(["secret-value"]).unwrap();
        let mut s = m.stream();
        let mut out = Vec::new();
        s.push(b"s", &mut out);
        for _ in 0..100 {
            s.push(&[b'\n'; 4096], &mut out);
            assert!(s.held() <= MAX_HELD + 12, "held {}", s.held());
        }
        s.finish(&mut out);
        assert_eq!(out.len(), 1 + 100 * 4096);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Output that cannot begin a secret is never held back: a job's
        /// progress lines reach its log as they are written.
        #[test]
        fn nothing_that_cannot_begin_a_secret_is_held(
            secrets in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'c')], 1..20), 1..5),
            chunks in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![Just(b'x'), Just(b'y'), Just(b'\n'), Just(b'a')], 0..30),
                1..10,
            ),
        ) {
            let m = Masker::new(&secrets).unwrap();
            let mut s = m.stream();
            let mut out = Vec::new();
            let mut seen: Vec<u8> = Vec::new();
            for c in &chunks {
                s.push(c, &mut out);
                seen.extend_from_slice(c);
                // Only a tail of `a`s (and breaks) can begin or continue a
                // secret.
                if seen.last().is_none_or(|&b| b != b'a' && b != b'\n') {
                    prop_assert_eq!(s.held(), 0);
                }
            }
        }

        #[test]
        fn streaming_equals_one_shot_and_no_secret_survives(
            secrets in proptest::collection::vec(secret(), 1..6),
            chunks in proptest::collection::vec(
                proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'c'), Just(b'*'), any::<u8>()], 0..40),
                0..20,
            ),
            sprinkle in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<prop::sample::Index>(), 0usize..3), 0..6),
        ) {
            // Build the input from chunks, with whole secrets inserted at
            // random places so they straddle chunk boundaries, some broken
            // by a line break as a terminal or a wrapping encoder would.
            let mut input: Vec<u8> = chunks.concat();
            for (at, which, split, brk) in &sprinkle {
                let mut s = which.get(&secrets).clone();
                let split = split.index(s.len() + 1);
                let brk: &[u8] = [&b""[..], b"\n", b"\r\n"][*brk];
                s.splice(split..split, brk.iter().copied());
                let at = at.index(input.len() + 1);
                input.splice(at..at, s.iter().copied());
            }
            let mut cuts = Vec::new();
            let mut acc = 0;
            for c in &chunks { acc += c.len(); cuts.push(acc); }
            let m = Masker::new(&secrets).unwrap();
            let one_shot = m.mask(&input);
            prop_assert_eq!(&streamed(&m, &input, &cuts), &one_shot);
            // Output is the input with covered runs replaced by markers, so
            // an occurrence of a secret in the output that overlaps no
            // marker would be an uncovered occurrence in the input.
            // Line breaks are ignored, so the check is on the output
            // without them.
            let flat = without_breaks(&one_shot);
            for s in &secrets {
                prop_assert!(every_occurrence_overlaps_a_mask(&flat, &without_breaks(s)), "secret {:?} survived in {:?}", s, one_shot);
            }
        }
    }

    fn every_occurrence_overlaps_a_mask(out: &[u8], s: &[u8]) -> bool {
        out.windows(s.len()).enumerate().all(|(i, w)| {
            w != s || {
                let lo = i.saturating_sub(MASK.len() - 1);
                let hi = (i + s.len() + MASK.len() - 1).min(out.len());
                out[lo..hi].windows(MASK.len()).any(|x| x == MASK)
            }
        })
    }
}
