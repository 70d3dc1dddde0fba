//! Shutdown: how far the agent is into stopping, and when it may return.

use hodei_hwp::proto::{self, agent_message::Msg as Out};
use tokio::time::Instant;

use super::connection::{Conn, msg};
use super::ledger::Ledger;

/// How far the agent is into shutting down. Each step includes the ones
/// before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Shutdown {
    /// Running normally.
    #[default]
    Run,
    /// Take no new jobs, let running ones finish within the drain grace,
    /// then cancel them; flush everything; return.
    Drain,
    /// Cancel running jobs now; still flush everything; return.
    Cancel,
    /// Return at once.
    Exit,
}

/// The agent's progress through shutting down.
pub(super) struct Stopping {
    pub(super) level: Shutdown,
    /// When running jobs are cancelled during a drain.
    drain_deadline: Option<Instant>,
    /// When the agent stops trying to deliver what it owes.
    flush_deadline: Option<Instant>,
}

impl Stopping {
    pub(super) fn new(level: Shutdown) -> Self {
        Stopping {
            level,
            drain_deadline: None,
            flush_deadline: None,
        }
    }

    /// Whether the agent may return: told to exit; or stopping with no
    /// attempt left; or stopping, every job ended, and the flush timeout
    /// passed.
    pub(super) fn may_return(&mut self, ledger: &Ledger) -> bool {
        if self.level == Shutdown::Exit {
            return true;
        }
        if self.level < Shutdown::Drain {
            return false;
        }
        if ledger.is_empty() {
            return true;
        }
        if ledger.running() == 0 {
            let d = *self
                .flush_deadline
                .get_or_insert_with(|| Instant::now() + ledger.config.flush_timeout);
            if Instant::now() >= d {
                tracing::error!("flush timeout: giving up on what the server has not acknowledged");
                return true;
            }
        }
        false
    }

    /// The agent is asked to go further (never back).
    pub(super) fn escalate(&mut self, asked: Shutdown, ledger: &mut Ledger, conn: Option<&Conn>) {
        if asked <= self.level {
            return;
        }
        self.level = asked;
        match asked {
            Shutdown::Drain => {
                tracing::info!(grace = ?ledger.config.drain_grace, "draining");
                ledger.draining = true;
                self.drain_deadline = Some(Instant::now() + ledger.config.drain_grace);
                if let Some(c) = conn {
                    let _ = c.tx.try_send(msg(Out::Draining(proto::Draining {})));
                }
            }
            Shutdown::Cancel => {
                tracing::info!("cancelling running jobs");
                ledger.draining = true;
                ledger.cancel_all();
            }
            Shutdown::Run | Shutdown::Exit => {}
        }
    }

    pub(super) fn drain_deadline(&self) -> Option<Instant> {
        self.drain_deadline
    }

    /// The drain grace is over: running jobs are cancelled.
    pub(super) fn drain_grace_over(&mut self, ledger: &mut Ledger) {
        tracing::warn!("drain grace over: cancelling running jobs");
        self.drain_deadline = None;
        ledger.cancel_all();
    }
}
