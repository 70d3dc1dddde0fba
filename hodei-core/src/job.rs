//! [`Job`] and its state machine.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::id::{JobId, WorkerId};
use crate::spec::JobSpec;

/// How a process ended.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// It could not be started at all (program not found, bad working
    /// directory, ...).
    NotStarted,
}

impl ExitStatus {
    /// True for `Code(0)`.
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Code(0))
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
            ExitStatus::NotStarted => f.write_str("not started"),
        }
    }
}

/// Where a job is in its life.
///
/// ```text
/// Pending -> Queued -> Assigned -> Running -> Succeeded
///              ^          |  \        |  \--> Failed | TimedOut | Lost
///              |          |   \-------+-----> Failed | Lost
///              +---- retry (attempts left) ---+
/// any state not final -> Cancelled
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its dependencies to succeed.
    Pending,
    /// Waiting for a worker.
    Queued,
    /// Sent to `worker` as attempt `attempt`; not yet started.
    Assigned {
        /// The worker.
        worker: WorkerId,
        /// The attempt number (1-based), a fencing token.
        attempt: u32,
    },
    /// Running on `worker` as attempt `attempt`.
    Running {
        /// The worker.
        worker: WorkerId,
        /// The attempt number (1-based), a fencing token.
        attempt: u32,
    },
    /// Finished with exit code 0.
    Succeeded,
    /// Finished otherwise.
    Failed {
        /// How the process ended.
        exit: ExitStatus,
    },
    /// Cancelled by a client or because a dependency cannot succeed.
    Cancelled,
    /// Ran past its timeout and was stopped.
    TimedOut,
    /// Its worker vanished while holding it.
    Lost,
}

impl JobState {
    /// A short lowercase name: `queued`, `running`, ...
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Queued => "queued",
            JobState::Assigned { .. } => "assigned",
            JobState::Running { .. } => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed { .. } => "failed",
            JobState::Cancelled => "cancelled",
            JobState::TimedOut => "timed_out",
            JobState::Lost => "lost",
        }
    }

    /// The worker holding the job, if any.
    pub fn worker(&self) -> Option<WorkerId> {
        match self {
            JobState::Assigned { worker, .. } | JobState::Running { worker, .. } => Some(*worker),
            _ => None,
        }
    }

    /// True for Failed, TimedOut and Lost: states a retry can leave.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            JobState::Failed { .. } | JobState::TimedOut | JobState::Lost
        )
    }

    /// True for Assigned and Running.
    pub fn is_active(&self) -> bool {
        matches!(self, JobState::Assigned { .. } | JobState::Running { .. })
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobState::Failed { exit } => write!(f, "failed ({exit})"),
            other => f.write_str(other.name()),
        }
    }
}

/// Something that happens to a job. `attempt` fields fence reports: one
/// that names another attempt than the current one is refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// All dependencies succeeded: Pending -> Queued.
    DependenciesMet,
    /// Queued -> Assigned to `worker`, as the job's current attempt.
    Assign {
        /// The chosen worker.
        worker: WorkerId,
    },
    /// Assigned -> Running.
    Start {
        /// The attempt the report is about.
        attempt: u32,
    },
    /// Running -> Succeeded.
    Succeed {
        /// The attempt the report is about.
        attempt: u32,
    },
    /// Assigned or Running -> Failed.
    Fail {
        /// The attempt the report is about.
        attempt: u32,
        /// How the process ended.
        exit: ExitStatus,
    },
    /// Assigned or Running -> TimedOut.
    TimeOut {
        /// The attempt the report is about.
        attempt: u32,
    },
    /// Assigned or Running -> Lost.
    Lose {
        /// The attempt the report is about.
        attempt: u32,
    },
    /// Assigned -> Queued, same attempt: the assignment never reached the
    /// worker (it reconnected without the job), so nothing ran and no
    /// attempt is spent.
    Requeue {
        /// The attempt the report is about.
        attempt: u32,
    },
    /// Any state that is not final -> Cancelled.
    Cancel,
    /// Failed, TimedOut or Lost with attempts left -> Queued, attempt + 1.
    Retry,
}

impl Transition {
    /// A short lowercase name.
    pub fn name(&self) -> &'static str {
        match self {
            Transition::DependenciesMet => "dependencies_met",
            Transition::Assign { .. } => "assign",
            Transition::Start { .. } => "start",
            Transition::Succeed { .. } => "succeed",
            Transition::Fail { .. } => "fail",
            Transition::TimeOut { .. } => "time_out",
            Transition::Lose { .. } => "lose",
            Transition::Requeue { .. } => "requeue",
            Transition::Cancel => "cancel",
            Transition::Retry => "retry",
        }
    }

    fn attempt(&self) -> Option<u32> {
        match self {
            Transition::Start { attempt }
            | Transition::Succeed { attempt }
            | Transition::Fail { attempt, .. }
            | Transition::TimeOut { attempt }
            | Transition::Lose { attempt }
            | Transition::Requeue { attempt } => Some(*attempt),
            _ => None,
        }
    }
}

/// Why a transition was refused. The job is left unchanged.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// The transition does not apply to the current state.
    #[error("job {job}: cannot {transition} from state {from}")]
    Illegal {
        /// The job.
        job: JobId,
        /// The state it is in.
        from: JobState,
        /// The transition refused.
        transition: &'static str,
    },
    /// The report is about another attempt than the current one.
    #[error("job {job}: report for attempt {got} refused, current attempt is {current}")]
    StaleAttempt {
        /// The job.
        job: JobId,
        /// The current attempt.
        current: u32,
        /// The attempt the report named.
        got: u32,
    },
    /// A retry was asked for but the retry policy has no attempts left.
    #[error("job {job}: no attempts left after attempt {attempt} of {max}")]
    NoAttemptsLeft {
        /// The job.
        job: JobId,
        /// The attempt that just ended.
        attempt: u32,
        /// The policy's maximum.
        max: u32,
    },
}

/// A job: its spec and where it is in its life.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Job {
    /// The job's id.
    pub id: JobId,
    /// What was asked.
    pub spec: JobSpec,
    /// The current state.
    pub state: JobState,
    /// The current attempt, 1-based: the one running, or the next to run.
    pub attempt: u32,
    /// When it was submitted.
    pub created_at: Timestamp,
    /// When its state last changed.
    pub updated_at: Timestamp,
}

impl Job {
    /// A new job: Pending if it has dependencies, else Queued; attempt 1.
    pub fn new(id: JobId, spec: JobSpec, now: Timestamp) -> Job {
        let life = Lifecycle::new(id, !spec.dependencies.is_empty(), spec.retry.max_attempts);
        Job {
            id,
            spec,
            state: life.state,
            attempt: life.attempt,
            created_at: now,
            updated_at: now,
        }
    }

    /// The state-machine view of this job.
    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle {
            id: self.id,
            state: self.state,
            attempt: self.attempt,
            max_attempts: self.spec.retry.max_attempts,
        }
    }

    /// True when nothing more can happen to the job: it succeeded, was
    /// cancelled, or failed / timed out / was lost with no attempts left.
    pub fn is_terminal(&self) -> bool {
        self.lifecycle().is_terminal()
    }

    /// True if the job failed, timed out or was lost and may run again.
    pub fn awaits_retry(&self) -> bool {
        self.lifecycle().awaits_retry()
    }

    /// Applies `t` at time `now`, returning the new state, or an error that
    /// leaves the job unchanged.
    ///
    /// # Errors
    ///
    /// [`TransitionError`] if the state machine does not allow `t` from the
    /// job's state or names another attempt; the job is left unchanged.
    pub fn transition(
        &mut self,
        t: Transition,
        now: Timestamp,
    ) -> Result<JobState, TransitionError> {
        let mut l = self.lifecycle();
        let next = l.transition(t)?;
        self.state = l.state;
        self.attempt = l.attempt;
        self.updated_at = now;
        Ok(next)
    }

    /// The state `t` would lead to, without applying it.
    ///
    /// # Errors
    ///
    /// [`TransitionError`] if the state machine does not allow `t` from the
    /// job's state or names another attempt.
    pub fn next_state(&self, t: Transition) -> Result<JobState, TransitionError> {
        self.lifecycle().next_state(t)
    }
}

/// The job state machine on its own: state, attempt and the retry budget.
///
/// [`Job`] uses it; so does the scheduler, which keeps only this much of
/// each job it tracks.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Lifecycle {
    /// The job, for error messages.
    pub id: JobId,
    /// The current state.
    pub state: JobState,
    /// The current attempt, 1-based.
    pub attempt: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
}

impl Lifecycle {
    /// A new job's lifecycle, Pending when it has dependencies.
    pub fn new(id: JobId, has_dependencies: bool, max_attempts: u32) -> Self {
        Lifecycle {
            id,
            state: if has_dependencies {
                JobState::Pending
            } else {
                JobState::Queued
            },
            attempt: 1,
            max_attempts,
        }
    }

    fn allows_another(&self) -> bool {
        self.attempt < self.max_attempts
    }

    /// See [`Job::is_terminal`].
    pub fn is_terminal(&self) -> bool {
        match self.state {
            JobState::Succeeded | JobState::Cancelled => true,
            s if s.is_retryable() => !self.allows_another(),
            _ => false,
        }
    }

    /// See [`Job::awaits_retry`].
    pub fn awaits_retry(&self) -> bool {
        self.state.is_retryable() && !self.is_terminal()
    }

    /// Applies `t`, or returns an error and changes nothing.
    ///
    /// # Errors
    ///
    /// [`TransitionError`] if the state machine does not allow `t` from this
    /// state or names another attempt; the lifecycle is left unchanged.
    pub fn transition(&mut self, t: Transition) -> Result<JobState, TransitionError> {
        let next = self.next_state(t)?;
        if t == Transition::Retry {
            self.attempt += 1;
        }
        self.state = next;
        Ok(next)
    }

    /// The state `t` would lead to, without applying it.
    ///
    /// # Errors
    ///
    /// [`TransitionError`] if the state machine does not allow `t` from this
    /// state or names another attempt.
    pub fn next_state(&self, t: Transition) -> Result<JobState, TransitionError> {
        let illegal = || TransitionError::Illegal {
            job: self.id,
            from: self.state,
            transition: t.name(),
        };
        if self.is_terminal() {
            return Err(illegal());
        }
        if let Some(got) = t.attempt()
            && self.state.is_active()
            && got != self.attempt
        {
            return Err(TransitionError::StaleAttempt {
                job: self.id,
                current: self.attempt,
                got,
            });
        }
        use JobState as S;
        use Transition as T;
        let next = match (self.state, t) {
            (S::Pending, T::DependenciesMet) => S::Queued,
            (S::Queued, T::Assign { worker }) => S::Assigned {
                worker,
                attempt: self.attempt,
            },
            (S::Assigned { worker, attempt }, T::Start { .. }) => S::Running { worker, attempt },
            (S::Running { .. }, T::Succeed { .. }) => S::Succeeded,
            (S::Assigned { .. } | S::Running { .. }, T::Fail { exit, .. }) => {
                if exit.success() {
                    return Err(illegal());
                }
                S::Failed { exit }
            }
            (S::Assigned { .. } | S::Running { .. }, T::TimeOut { .. }) => S::TimedOut,
            (S::Assigned { .. } | S::Running { .. }, T::Lose { .. }) => S::Lost,
            (S::Assigned { .. }, T::Requeue { .. }) => S::Queued,
            (_, T::Cancel) => S::Cancelled,
            (s, T::Retry) if s.is_retryable() => {
                // is_terminal() above already refused an exhausted policy;
                // keep the explicit error for callers of next_state.
                if !self.allows_another() {
                    return Err(TransitionError::NoAttemptsLeft {
                        job: self.id,
                        attempt: self.attempt,
                        max: self.max_attempts,
                    });
                }
                S::Queued
            }
            _ => return Err(illegal()),
        };
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn job(max_attempts: u32) -> Job {
        let mut spec = JobSpec::argv(["true"]);
        spec.retry.max_attempts = max_attempts;
        Job::new(JobId::new(), spec, Timestamp(0))
    }

    #[test]
    fn happy_path() {
        let w = WorkerId::new();
        let mut j = job(1);
        assert_eq!(j.state, JobState::Queued);
        j.transition(Transition::Assign { worker: w }, Timestamp(1))
            .unwrap();
        assert_eq!(
            j.state,
            JobState::Assigned {
                worker: w,
                attempt: 1
            }
        );
        j.transition(Transition::Start { attempt: 1 }, Timestamp(2))
            .unwrap();
        j.transition(Transition::Succeed { attempt: 1 }, Timestamp(3))
            .unwrap();
        assert!(j.is_terminal());
        assert_eq!(j.updated_at, Timestamp(3));
        assert!(j.transition(Transition::Cancel, Timestamp(4)).is_err());
    }

    #[test]
    fn retries_increase_the_attempt_until_the_policy_is_spent() {
        let w = WorkerId::new();
        let mut j = job(2);
        j.transition(Transition::Assign { worker: w }, Timestamp(1))
            .unwrap();
        j.transition(Transition::Lose { attempt: 1 }, Timestamp(2))
            .unwrap();
        assert!(j.awaits_retry());
        j.transition(Transition::Retry, Timestamp(3)).unwrap();
        assert_eq!((j.state, j.attempt), (JobState::Queued, 2));
        j.transition(Transition::Assign { worker: w }, Timestamp(4))
            .unwrap();
        // A late report about attempt 1 is fenced off.
        assert!(matches!(
            j.transition(Transition::Start { attempt: 1 }, Timestamp(5)),
            Err(TransitionError::StaleAttempt {
                current: 2,
                got: 1,
                ..
            })
        ));
        j.transition(Transition::Start { attempt: 2 }, Timestamp(5))
            .unwrap();
        j.transition(
            Transition::Fail {
                attempt: 2,
                exit: ExitStatus::Code(3),
            },
            Timestamp(6),
        )
        .unwrap();
        assert!(j.is_terminal());
        assert!(j.transition(Transition::Retry, Timestamp(7)).is_err());
    }

    #[test]
    fn dependencies_start_pending() {
        let mut spec = JobSpec::argv(["true"]);
        spec.dependencies.push(JobId::new());
        let mut j = Job::new(JobId::new(), spec, Timestamp(0));
        assert_eq!(j.state, JobState::Pending);
        assert!(
            j.transition(
                Transition::Assign {
                    worker: WorkerId::new()
                },
                Timestamp(0)
            )
            .is_err()
        );
        j.transition(Transition::DependenciesMet, Timestamp(1))
            .unwrap();
        assert_eq!(j.state, JobState::Queued);
    }

    #[test]
    fn fail_with_success_code_is_refused() {
        let mut j = job(1);
        j.transition(
            Transition::Assign {
                worker: WorkerId::new(),
            },
            Timestamp(1),
        )
        .unwrap();
        let err = j.transition(
            Transition::Fail {
                attempt: 1,
                exit: ExitStatus::Code(0),
            },
            Timestamp(2),
        );
        assert!(matches!(err, Err(TransitionError::Illegal { .. })));
    }

    /// The legal edges, written out independently of `next_state`.
    fn legal_edge(from: &JobState, to: &JobState) -> bool {
        use JobState as S;
        matches!(
            (from, to),
            (S::Pending, S::Queued)
                | (S::Queued, S::Assigned { .. })
                | (S::Assigned { .. }, S::Running { .. })
                | (S::Running { .. }, S::Succeeded)
                | (
                    S::Assigned { .. } | S::Running { .. },
                    S::Failed { .. } | S::TimedOut | S::Lost
                )
                | (S::Failed { .. } | S::TimedOut | S::Lost, S::Queued)
                | (S::Assigned { .. }, S::Queued)
                | (_, S::Cancelled)
        )
    }

    fn transition_strategy() -> impl Strategy<Value = Transition> {
        let w = WorkerId::from_u128(7);
        prop_oneof![
            Just(Transition::DependenciesMet),
            Just(Transition::Assign { worker: w }),
            (0u32..5).prop_map(|attempt| Transition::Start { attempt }),
            (0u32..5).prop_map(|attempt| Transition::Succeed { attempt }),
            (0u32..5, -2i32..3).prop_map(|(attempt, c)| Transition::Fail {
                attempt,
                exit: ExitStatus::Code(c)
            }),
            (0u32..5).prop_map(|attempt| Transition::TimeOut { attempt }),
            (0u32..5).prop_map(|attempt| Transition::Lose { attempt }),
            (0u32..5).prop_map(|attempt| Transition::Requeue { attempt }),
            Just(Transition::Cancel).prop_map(|t| t),
            Just(Transition::Retry),
            Just(Transition::Retry),
        ]
    }

    proptest! {
        #[test]
        fn random_events_never_leave_the_legal_graph(
            max_attempts in 1u32..4,
            deps in any::<bool>(),
            events in proptest::collection::vec(transition_strategy(), 0..60),
        ) {
            let mut spec = JobSpec::argv(["true"]);
            spec.retry.max_attempts = max_attempts;
            if deps { spec.dependencies.push(JobId::new()); }
            let mut j = Job::new(JobId::new(), spec, Timestamp(0));
            for (i, t) in events.into_iter().enumerate() {
                let before = j.clone();
                let result = j.transition(t, Timestamp(i as u64 + 1));
                match result {
                    Ok(to) => {
                        prop_assert!(!before.is_terminal(), "left terminal {:?} by {:?}", before.state, t);
                        prop_assert!(legal_edge(&before.state, &to), "{:?} -> {:?} by {:?}", before.state, to, t);
                        prop_assert_eq!(j.state, to);
                        if let Some(a) = t.attempt() {
                            prop_assert_eq!(a, before.attempt, "a stale report was accepted");
                        }
                        if let JobState::Assigned { attempt, .. } | JobState::Running { attempt, .. } = to {
                            prop_assert_eq!(attempt, j.attempt);
                        }
                    }
                    Err(_) => prop_assert_eq!(&j, &before, "a refused transition changed the job"),
                }
                prop_assert!(j.attempt >= before.attempt, "attempt went down");
                prop_assert!(j.attempt <= max_attempts);
            }
        }
    }
}
