//! Child processes of the end-to-end tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::process::Child;
use std::time::{Duration, Instant};

/// An HTTP answer's status code (0 if none) and body.
pub fn status_and_body(resp: &str) -> (u16, String) {
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The first file under `dir` whose bytes contain `needle`.
pub fn any_file_holds(dir: &std::path::Path, needle: &[u8]) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            if let Some(hit) = any_file_holds(&p, needle) {
                return Some(hit);
            }
        } else if let Ok(bytes) = std::fs::read(&p)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            return Some(p);
        }
    }
    None
}

/// A port free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill only sends a signal to our own child.
        unsafe {
            libc::kill(self.0.id() as i32, sig);
        }
    }

    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < end, "process did not exit in {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
