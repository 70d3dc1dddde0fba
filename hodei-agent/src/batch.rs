//! Cutting a job's output into sequence-numbered batches.

use std::time::Duration;

use hodei_core::Timestamp;
use tokio::sync::mpsc;
use tokio::time::Instant;

use hodei_core::LogStream;

use crate::exec::Output;

/// When a batch is cut.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct BatchConfig {
    /// Cut once a batch holds this many bytes (longer output is split).
    pub max_bytes: usize,
    /// Cut once a batch holds this many newlines.
    pub max_lines: usize,
    /// Cut this long after a batch's first byte, however small it is.
    pub max_delay: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_bytes: 64 * 1024,
            max_lines: 1000,
            max_delay: Duration::from_millis(100),
        }
    }
}

/// One batch of one stream's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Its number within the attempt, from 0, with no gaps across streams.
    pub seq: u64,
    /// The stream.
    pub stream: LogStream,
    /// When its first byte was read.
    pub at: Timestamp,
    /// The bytes.
    pub data: Vec<u8>,
}

struct Open {
    stream: LogStream,
    at: Timestamp,
    since: Instant,
    data: Vec<u8>,
    lines: usize,
}

/// Reads masked output from `input` and sends batches on `output` until
/// `input` closes, then sends what remains. Output of one stream is never
/// reordered; a batch holds one stream only. A full `output` makes this
/// wait, which fills `input`, which slows the job: backpressure end to end.
/// Returns the number of batches sent.
pub async fn batch(
    mut input: mpsc::Receiver<Output>,
    output: mpsc::Sender<Batch>,
    config: BatchConfig,
) -> u64 {
    let max_bytes = config.max_bytes.max(1);
    let max_lines = config.max_lines.max(1);
    let mut seq = 0u64;
    let mut open: Option<Open> = None;
    let send = |o: Open, seq: &mut u64| {
        let b = Batch {
            seq: *seq,
            stream: o.stream,
            at: o.at,
            data: o.data,
        };
        *seq += 1;
        b
    };
    loop {
        let deadline = open.as_ref().map(|o| o.since + config.max_delay);
        let next = tokio::select! {
            o = input.recv() => o,
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                if let Some(o) = open.take()
                    && output.send(send(o, &mut seq)).await.is_err()
                {
                    return seq;
                }
                continue;
            }
        };
        let Some(out) = next else { break };
        let mut rest: &[u8] = &out.data;
        while !rest.is_empty() {
            // A different stream closes the open batch first.
            if open.as_ref().is_some_and(|o| o.stream != out.stream)
                && let Some(o) = open.take()
                && output.send(send(o, &mut seq)).await.is_err()
            {
                return seq;
            }
            let o = open.get_or_insert_with(|| Open {
                stream: out.stream,
                at: out.at,
                since: Instant::now(),
                data: Vec::new(),
                lines: 0,
            });
            // Take bytes up to the size limit or the line limit.
            let room = max_bytes - o.data.len();
            let mut take = rest.len().min(room);
            let mut newlines = 0;
            for (i, b) in rest[..take].iter().enumerate() {
                if *b == b'\n' {
                    newlines += 1;
                    if o.lines + newlines >= max_lines {
                        take = i + 1;
                        break;
                    }
                }
            }
            o.data.extend_from_slice(&rest[..take]);
            o.lines += newlines;
            rest = &rest[take..];
            if (o.data.len() >= max_bytes || o.lines >= max_lines)
                && let Some(o) = open.take()
                && output.send(send(o, &mut seq)).await.is_err()
            {
                return seq;
            }
        }
    }
    if let Some(o) = open.take() {
        let _ = output.send(send(o, &mut seq)).await;
    }
    seq
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn out(stream: LogStream, data: &[u8]) -> Output {
        Output {
            stream,
            at: Timestamp(7),
            data: data.to_vec(),
        }
    }

    async fn run(outputs: Vec<Output>, config: BatchConfig) -> Vec<Batch> {
        let (in_tx, in_rx) = mpsc::channel(8);
        let (out_tx, mut out_rx) = mpsc::channel(8);
        let task = tokio::spawn(batch(in_rx, out_tx, config));
        let feeder = tokio::spawn(async move {
            for o in outputs {
                in_tx.send(o).await.unwrap();
            }
        });
        let mut got = Vec::new();
        while let Some(b) = out_rx.recv().await {
            got.push(b);
        }
        feeder.await.unwrap();
        assert_eq!(task.await.unwrap(), got.len() as u64);
        got
    }

    #[test]
    fn ten_thousand_short_lines_make_at_most_a_hundred_batches() {
        let lines: Vec<Output> = (0..10_000)
            .map(|i| out(LogStream::Stdout, format!("line {i}\n").as_bytes()))
            .collect();
        let want: Vec<u8> = lines.iter().flat_map(|o| o.data.clone()).collect();
        let got = rt().block_on(run(lines, BatchConfig::default()));
        assert!(got.len() <= 100, "{} batches", got.len());
        assert!(got.iter().enumerate().all(|(i, b)| b.seq == i as u64));
        let all: Vec<u8> = got.iter().flat_map(|b| b.data.clone()).collect();
        assert_eq!(all, want);
    }

    #[test]
    fn big_output_is_split_at_the_size_limit_and_streams_stay_apart() {
        let config = BatchConfig {
            max_bytes: 1000,
            ..BatchConfig::default()
        };
        let got = rt().block_on(run(
            vec![
                out(LogStream::Stdout, &[b'a'; 2500]),
                out(LogStream::Stderr, b"err\n"),
                out(LogStream::Stdout, b"tail"),
            ],
            config,
        ));
        let sizes: Vec<(LogStream, usize)> = got.iter().map(|b| (b.stream, b.data.len())).collect();
        assert_eq!(
            sizes,
            vec![
                (LogStream::Stdout, 1000),
                (LogStream::Stdout, 1000),
                (LogStream::Stdout, 500),
                (LogStream::Stderr, 4),
                (LogStream::Stdout, 4)
            ]
        );
    }

    #[test]
    fn a_quiet_job_s_output_leaves_after_the_delay() {
        rt().block_on(async {
            let (in_tx, in_rx) = mpsc::channel(8);
            let (out_tx, mut out_rx) = mpsc::channel(8);
            let config = BatchConfig {
                max_delay: Duration::from_millis(50),
                ..BatchConfig::default()
            };
            let task = tokio::spawn(batch(in_rx, out_tx, config));
            in_tx
                .send(out(LogStream::Stdout, b"one line\n"))
                .await
                .unwrap();
            // The input stays open: only the delay can release the batch.
            let b = tokio::time::timeout(Duration::from_secs(5), out_rx.recv())
                .await
                .expect("the batch was held")
                .unwrap();
            assert_eq!((b.seq, b.data), (0, b"one line\n".to_vec()));
            drop(in_tx);
            assert_eq!(task.await.unwrap(), 1);
        });
    }
}
