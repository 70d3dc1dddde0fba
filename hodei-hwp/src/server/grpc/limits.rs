//! Limits per caller: a token bucket of requests and a count of open
//! streams (Watch, Logs) for each principal, so one client flooding
//! Submit or opening thousands of streams is answered RESOURCE_EXHAUSTED
//! while the others go on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tonic::Status;

/// What each caller may do.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct LimitConfig {
    /// Requests per second, sustained (0: no limit).
    pub rate: f64,
    /// Requests at once above the rate.
    pub burst: f64,
    /// Streams open at once (0: no limit).
    pub streams: usize,
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig {
            rate: 1000.0,
            burst: 2000.0,
            streams: 100,
        }
    }
}

impl LimitConfig {
    /// `rate` requests a second (burst twice that) and `streams` streams,
    /// per caller; 0 turns either off.
    pub fn new(rate: f64, streams: usize) -> Self {
        LimitConfig {
            rate,
            burst: (rate * 2.0).max(1.0),
            streams,
        }
    }
}

#[derive(Debug)]
struct Caller {
    tokens: f64,
    at: Instant,
    streams: usize,
}

/// Callers tracked at most; past it, those idle (a full bucket, no
/// stream) are forgotten.
const MAX_CALLERS: usize = 100_000;

/// The limits of every caller, by principal name.
#[derive(Debug)]
pub struct Limits {
    config: LimitConfig,
    callers: Mutex<HashMap<String, Caller>>,
}

/// An open stream; counts against its caller until dropped.
#[derive(Debug)]
pub struct StreamPermit {
    limits: Arc<Limits>,
    caller: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        if let Some(c) = self.limits.callers.lock().get_mut(&self.caller) {
            c.streams = c.streams.saturating_sub(1);
        }
    }
}

impl Limits {
    /// Limits as `config` says.
    pub fn new(config: LimitConfig) -> Arc<Self> {
        Arc::new(Limits {
            config,
            callers: Mutex::new(HashMap::new()),
        })
    }

    fn with<T>(&self, caller: &str, f: impl FnOnce(&mut Caller, &LimitConfig) -> T) -> T {
        let mut callers = self.callers.lock();
        if callers.len() >= MAX_CALLERS && !callers.contains_key(caller) {
            let (burst, now) = (self.config.burst, Instant::now());
            let rate = self.config.rate;
            callers.retain(|_, c| {
                let full = c.tokens + now.duration_since(c.at).as_secs_f64() * rate >= burst;
                c.streams > 0 || !full
            });
        }
        let c = callers.entry(caller.to_string()).or_insert_with(|| Caller {
            tokens: self.config.burst,
            at: Instant::now(),
            streams: 0,
        });
        f(c, &self.config)
    }

    /// Takes one request from `caller`'s bucket.
    ///
    /// # Errors
    ///
    /// RESOURCE_EXHAUSTED when the bucket is empty, saying when to retry.
    pub fn request(&self, caller: &str) -> Result<(), Status> {
        if self.config.rate <= 0.0 {
            return Ok(());
        }
        self.with(caller, |c, cfg| {
            let now = Instant::now();
            c.tokens =
                (c.tokens + now.duration_since(c.at).as_secs_f64() * cfg.rate).min(cfg.burst);
            c.at = now;
            if c.tokens >= 1.0 {
                c.tokens -= 1.0;
                Ok(())
            } else {
                let wait_ms = ((1.0 - c.tokens) / cfg.rate * 1000.0).ceil();
                Err(Status::resource_exhausted(format!(
                    "this caller's request rate is over {} a second; retry in {wait_ms} ms",
                    cfg.rate
                )))
            }
        })
    }

    /// Opens a stream for `caller` (the call that opens it is a request
    /// too: take that with [`request`](Self::request)).
    ///
    /// # Errors
    ///
    /// RESOURCE_EXHAUSTED when the caller has as many streams open as it
    /// may.
    pub fn stream(self: &Arc<Self>, caller: &str) -> Result<StreamPermit, Status> {
        let max = self.config.streams;
        self.with(caller, |c, _| {
            if max > 0 && c.streams >= max {
                return Err(Status::resource_exhausted(format!(
                    "this caller has {max} streams open, the most it may; close one first"
                )));
            }
            c.streams += 1;
            Ok(())
        })?;
        Ok(StreamPermit {
            limits: Arc::clone(self),
            caller: caller.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_over_its_rate_or_streams_is_refused_and_others_are_not() {
        let l = Limits::new(LimitConfig {
            rate: 10.0,
            burst: 5.0,
            streams: 2,
        });
        for _ in 0..5 {
            l.request("flood").unwrap();
        }
        let e = l.request("flood").unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        l.request("calm").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(150));
        l.request("flood").unwrap();

        let a = l.stream("s").unwrap();
        let _b = l.stream("s").unwrap();
        assert_eq!(
            l.stream("s").unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
        l.stream("t").unwrap();
        drop(a);
        l.stream("s").unwrap();

        let none = Limits::new(LimitConfig::new(0.0, 0));
        for _ in 0..10_000 {
            none.request("x").unwrap();
        }
    }
}
