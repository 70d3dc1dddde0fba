//! What the engine says to agents, in domain terms; the worker service
//! puts it on the wire.

use std::time::Duration;

use hodei_core::{JobId, JobSpec, WorkerId};
use tokio::sync::mpsc;

/// A message from the engine to one agent.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ToAgent {
    /// The answer to a registration; always first on a connection.
    Welcome(Welcome),
    /// Run this attempt of a job.
    Assign {
        /// The job.
        job: JobId,
        /// The attempt: the fencing token every report must echo.
        attempt: u32,
        /// What to run, secrets included.
        spec: Box<JobSpec>,
    },
    /// Stop this attempt: SIGTERM, then SIGKILL after `grace`.
    Cancel {
        /// The job.
        job: JobId,
        /// The attempt.
        attempt: u32,
        /// Time between SIGTERM and SIGKILL.
        grace: Duration,
    },
    /// Take no new jobs; finish the ones running.
    Drain,
    /// The server is stopping: the connection ends, and the agent should
    /// reconnect (to this server or the next) and re-attach its jobs.
    Close,
}

/// What a connecting agent is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// Its worker id.
    pub worker: WorkerId,
    /// How often to heartbeat.
    pub heartbeat_interval: Duration,
    /// Jobs it reported holding that the server does not know (finished,
    /// or now another attempt): it should stop them.
    pub abandoned: Vec<JobId>,
}

/// Where the engine sends one agent's messages.
///
/// The engine never waits on an agent: `try_send` either queues the
/// message or reports that the agent is gone or too far behind, and the
/// engine then treats the agent as lost.
pub trait AgentLink: Send + Sync + 'static {
    /// Queues `m` for the agent; false if it cannot take it now.
    fn try_send(&self, m: ToAgent) -> bool;
}

/// For hosts and tests that read the domain messages directly.
impl AgentLink for mpsc::Sender<ToAgent> {
    fn try_send(&self, m: ToAgent) -> bool {
        mpsc::Sender::try_send(self, m).is_ok()
    }
}
