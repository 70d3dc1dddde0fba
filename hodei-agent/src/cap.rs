//! Keeping the head and the tail of an output that grew past its cap.

use std::collections::VecDeque;

use hodei_core::{Clock, SystemClock};
use tokio::sync::mpsc;

use hodei_core::LogStream;

use crate::exec::Output;

/// Passes `input` to `output` until `limit` bytes have gone through, half
/// of it as the head; past that, only the last `limit / 2` bytes are kept
/// (in memory, so the tail is bounded too) and, when `input` closes, they
/// follow a system note saying how many bytes were cut. A `limit` of 0
/// passes everything. Returns the number of bytes cut.
pub async fn cap(
    mut input: mpsc::Receiver<Output>,
    output: mpsc::Sender<Output>,
    limit: u64,
) -> u64 {
    if limit == 0 {
        while let Some(o) = input.recv().await {
            if output.send(o).await.is_err() {
                return 0;
            }
        }
        return 0;
    }
    let head_limit = limit - limit / 2;
    let tail_limit = limit / 2;
    let mut head = 0u64;
    let mut tail: VecDeque<Output> = VecDeque::new();
    let mut tail_bytes = 0u64;
    let mut cut = 0u64;
    while let Some(mut o) = input.recv().await {
        if head < head_limit {
            let room = head_limit - head;
            if (o.data.len() as u64) <= room {
                head += o.data.len() as u64;
                if output.send(o).await.is_err() {
                    return cut;
                }
                continue;
            }
            let rest = o.data.split_off(room as usize);
            head = head_limit;
            let at = o.at;
            let stream = o.stream;
            if output.send(o).await.is_err() {
                return cut;
            }
            o = Output {
                stream,
                at,
                data: rest,
            };
        }
        tail_bytes += o.data.len() as u64;
        tail.push_back(o);
        while tail_bytes > tail_limit {
            let Some(front) = tail.front_mut() else { break };
            let excess = tail_bytes - tail_limit;
            if (front.data.len() as u64) <= excess {
                tail_bytes -= front.data.len() as u64;
                cut += front.data.len() as u64;
                tail.pop_front();
            } else {
                front.data.drain(..excess as usize);
                tail_bytes -= excess;
                cut += excess;
            }
        }
    }
    if cut > 0 {
        let at = tail.front().map_or_else(|| SystemClock.now(), |o| o.at);
        let note = Output {
            stream: LogStream::System,
            at,
            data: format!(
                "\n[hodei: {cut} bytes of output cut here; the log keeps its head and tail]\n"
            )
            .into_bytes(),
        };
        if output.send(note).await.is_err() {
            return cut;
        }
    }
    for o in tail {
        if output.send(o).await.is_err() {
            break;
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use hodei_core::Timestamp;

    fn out(data: &[u8]) -> Output {
        Output {
            stream: LogStream::Stdout,
            at: Timestamp(1),
            data: data.to_vec(),
        }
    }

    async fn through(chunks: &[&[u8]], limit: u64) -> (Vec<u8>, Vec<u8>, u64) {
        let (itx, irx) = mpsc::channel(4);
        let (otx, mut orx) = mpsc::channel(4);
        let task = tokio::spawn(cap(irx, otx, limit));
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        tokio::spawn(async move {
            for c in chunks {
                itx.send(out(&c)).await.unwrap();
            }
        });
        let (mut data, mut system) = (Vec::new(), Vec::new());
        while let Some(o) = orx.recv().await {
            if o.stream == LogStream::System {
                system.extend(o.data);
            } else {
                data.extend(o.data);
            }
        }
        (data, system, task.await.unwrap())
    }

    #[tokio::test]
    async fn under_the_cap_everything_passes() {
        let (data, system, cut) = through(&[b"abc", b"def"], 100).await;
        assert_eq!(data, b"abcdef");
        assert!(system.is_empty());
        assert_eq!(cut, 0);
    }

    #[tokio::test]
    async fn over_the_cap_head_and_tail_are_kept() {
        let input: Vec<u8> = (0..100u8).collect();
        let chunks: Vec<&[u8]> = input.chunks(7).collect();
        let (data, system, cut) = through(&chunks, 20).await;
        assert_eq!(cut, 80);
        let mut want: Vec<u8> = (0..10).collect();
        want.extend(90..100u8);
        assert_eq!(data, want);
        assert!(String::from_utf8_lossy(&system).contains("80 bytes of output cut"));
    }

    #[tokio::test]
    async fn zero_means_no_cap() {
        let big = vec![b'x'; 10_000];
        let (data, _, cut) = through(&[&big], 0).await;
        assert_eq!(data.len(), 10_000);
        assert_eq!(cut, 0);
    }
}
