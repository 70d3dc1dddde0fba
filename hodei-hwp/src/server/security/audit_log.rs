//! What the services record in the audit chain: every mutating call and
//! every refused authentication, with who, what, to what, the outcome and
//! the peer's address.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use hodei_core::{Clock, SystemClock};
use hodei_store::{AuditEntry, Store};
use parking_lot::Mutex;
use tonic::Status;

use crate::server::engine::EngineHandle;
use crate::server::security::auth::{AuthError, Principal};

/// Refused authentications recorded per second at most; past it they are
/// counted (`hodei_audit_refusals_suppressed_total`), not recorded, so a
/// client hammering with bad tokens cannot fill the disk.
const REFUSALS_PER_SECOND: u32 = 50;

/// The services' way into the audit chain.
#[derive(Debug)]
pub struct AuditLog<S> {
    engine: EngineHandle<S>,
    window: Mutex<(Instant, u32)>,
}

/// `ok`, or `refused: <code>: <message>`.
pub(crate) fn outcome<T>(r: &Result<T, Status>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(s) => format!("refused: {:?}: {}", s.code(), s.message()),
    }
}

impl<S: Store> AuditLog<S> {
    /// Records through `engine`: with the next round's commit.
    pub fn new(engine: EngineHandle<S>) -> Self {
        AuditLog {
            engine,
            window: Mutex::new((Instant::now(), 0)),
        }
    }

    /// An entry stamped now.
    pub fn entry(
        actor: &str,
        action: &str,
        target: impl ToString,
        peer: Option<SocketAddr>,
    ) -> AuditEntry {
        AuditEntry {
            at: SystemClock.now(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            outcome: String::new(),
            peer: peer.map(|p| p.to_string()).unwrap_or_default(),
            detail: String::new(),
        }
    }

    /// Records a call `p` made and its outcome.
    pub async fn call<T>(
        &self,
        p: &Principal,
        action: &str,
        target: impl ToString,
        peer: Option<SocketAddr>,
        result: &Result<T, Status>,
    ) {
        let mut e = Self::entry(&p.audit_name(), action, target, peer);
        e.outcome = outcome(result);
        self.engine.audit(e).await;
    }

    /// Records `entry` as it is.
    pub async fn record(&self, entry: AuditEntry) {
        self.engine.audit(entry).await;
    }

    /// Records a refused authentication (at most 50 a second; past it,
    /// counted in `hodei_audit_refusals_suppressed_total`).
    pub async fn refused(&self, action: &str, peer: Option<SocketAddr>, why: &AuthError) {
        {
            let mut w = self.window.lock();
            if w.0.elapsed() >= Duration::from_secs(1) {
                *w = (Instant::now(), 0);
            }
            if w.1 >= REFUSALS_PER_SECOND {
                self.engine
                    .metrics()
                    .audit_refusals_suppressed
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            w.1 += 1;
        }
        let mut e = Self::entry("unauthenticated", action, "", peer);
        e.outcome = format!("refused: {why}");
        self.engine.audit(e).await;
    }
}
