//! [`PipelineRun`]: what a pipeline does next, given how its steps ended.
//!
//! It does no I/O and knows no job: its host turns each [`Decision`] into
//! jobs (start a step, cancel one, run a compensation) and reports back
//! how each ended. Every call is linear in the edges it touches, so a
//! pipeline of ten thousand steps costs what its graph costs.

use hodei_core::{Condition, PipelineGraph};

/// How a step (or a compensation) ended, as its host saw its job end.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum StepOutcome {
    /// Its job succeeded.
    Succeeded,
    /// Its job failed, timed out or was lost for good.
    Failed,
    /// Its job was cancelled.
    Cancelled,
}

/// Where one step stands.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum StepState {
    /// Some dependency has not ended yet.
    Waiting,
    /// Started: its job exists and has not ended.
    Running,
    /// Ended as its job did.
    Ended(StepOutcome),
    /// Never ran: its condition was not met, the pipeline failed fast, or
    /// it was cancelled.
    Skipped,
}

impl StepState {
    /// True once the step will not change any more.
    pub fn is_final(self) -> bool {
        matches!(self, StepState::Ended(_) | StepState::Skipped)
    }

    /// The name used in status.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Waiting => "waiting",
            StepState::Running => "running",
            StepState::Ended(StepOutcome::Succeeded) => "succeeded",
            StepState::Ended(StepOutcome::Failed) => "failed",
            StepState::Ended(StepOutcome::Cancelled) => "cancelled",
            StepState::Skipped => "skipped",
        }
    }
}

/// Where the pipeline stands.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PipelineState {
    /// Steps are waiting or running.
    Running,
    /// A step failed and every step has ended; the compensations of the
    /// steps that succeeded run, one at a time, latest first.
    Compensating,
    /// Every step ended and none failed.
    Succeeded,
    /// A step failed (or was cancelled); compensations, if any, have run.
    Failed,
    /// Cancelled by a client.
    Cancelled,
}

impl PipelineState {
    /// True once the pipeline will not change any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            PipelineState::Succeeded | PipelineState::Failed | PipelineState::Cancelled
        )
    }

    /// The name used in status.
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineState::Running => "running",
            PipelineState::Compensating => "compensating",
            PipelineState::Succeeded => "succeeded",
            PipelineState::Failed => "failed",
            PipelineState::Cancelled => "cancelled",
        }
    }
}

/// What the host does next.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Decision {
    /// Start step `i` (create its job, with its dependencies' outputs).
    Start(usize),
    /// Cancel step `i`'s job; report its end as usual.
    Cancel(usize),
    /// Run the compensation of step `i` (which succeeded); report its end
    /// with [`PipelineRun::compensation_ended`].
    Compensate(usize),
    /// Cancel the compensation of step `i`, which is running.
    CancelCompensation(usize),
    /// The pipeline reached a final state.
    Ended(PipelineState),
}

/// One pipeline's progress.
#[derive(Clone, Debug)]
pub struct PipelineRun {
    dependents: Vec<Vec<usize>>,
    deps: Vec<Vec<usize>>,
    condition: Vec<Condition>,
    compensable: Vec<bool>,
    fail_fast: bool,
    steps: Vec<StepState>,
    /// Dependencies of each step not ended yet.
    open: Vec<u32>,
    /// Steps not final yet.
    unfinished: usize,
    failed: bool,
    cancelled: bool,
    started: bool,
    /// Steps that succeeded and have a compensation, in the order they
    /// ended.
    succeeded: Vec<usize>,
    /// Compensations run so far (latest-succeeded first) and how each
    /// ended; `None` while running.
    compensations: Vec<(usize, Option<StepOutcome>)>,
    state: PipelineState,
}

impl PipelineRun {
    /// A pipeline over `graph`, every step waiting. `conditions[i]` is step
    /// `i`'s condition.
    ///
    /// # Panics
    ///
    /// If `conditions` and the graph differ in length (a host bug).
    pub fn new(graph: &PipelineGraph, conditions: &[Condition], fail_fast: bool) -> Self {
        let n = graph.deps.len();
        assert_eq!(conditions.len(), n, "one condition per step");
        let mut dependents = vec![Vec::new(); n];
        for (i, deps) in graph.deps.iter().enumerate() {
            for &d in deps {
                dependents[d].push(i);
            }
        }
        PipelineRun {
            open: graph.deps.iter().map(|d| d.len() as u32).collect(),
            deps: graph.deps.clone(),
            dependents,
            condition: conditions.to_vec(),
            compensable: graph.compensation.iter().map(Option::is_some).collect(),
            fail_fast,
            steps: vec![StepState::Waiting; n],
            unfinished: n,
            failed: false,
            cancelled: false,
            started: false,
            succeeded: Vec::new(),
            compensations: Vec::new(),
            state: PipelineState::Running,
        }
    }

    /// The pipeline's state.
    pub fn state(&self) -> PipelineState {
        self.state
    }

    /// Step `i`'s state.
    pub fn step(&self, i: usize) -> Option<StepState> {
        self.steps.get(i).copied()
    }

    /// Every step's state, by index.
    pub fn steps(&self) -> &[StepState] {
        &self.steps
    }

    /// The compensations started so far, in the order they ran, with how
    /// each ended (`None`: running).
    pub fn compensations(&self) -> &[(usize, Option<StepOutcome>)] {
        &self.compensations
    }

    /// Starts the pipeline: the steps with no dependencies. Later calls
    /// decide nothing.
    pub fn start(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
        if self.started {
            return out;
        }
        self.started = true;
        let roots: Vec<usize> = (0..self.steps.len())
            .filter(|&i| self.open[i] == 0)
            .collect();
        for i in roots {
            self.decide(i, &mut out);
        }
        self.maybe_finish(&mut out);
        out
    }

    /// Step `i`'s job ended as `outcome`. A report for a step that is not
    /// running changes nothing (a host replaying its store may report
    /// twice).
    pub fn step_ended(&mut self, i: usize, outcome: StepOutcome) -> Vec<Decision> {
        let mut out = Vec::new();
        if self.steps.get(i) != Some(&StepState::Running) {
            return out;
        }
        if outcome != StepOutcome::Succeeded {
            let first = !self.failed;
            self.failed = true;
            // Failing fast stops the steps that only run on success;
            // cleanups (`always`, `on_failure`) already running go on.
            if first && self.fail_fast && !self.cancelled {
                for (k, s) in self.steps.iter().enumerate() {
                    if *s == StepState::Running
                        && k != i
                        && self.condition[k] == Condition::OnSuccess
                    {
                        out.push(Decision::Cancel(k));
                    }
                }
            }
        }
        self.end(i, StepState::Ended(outcome), &mut out);
        self.maybe_finish(&mut out);
        out
    }

    /// The compensation of step `i` ended (however: a failed compensation
    /// does not stop the others).
    pub fn compensation_ended(&mut self, i: usize, outcome: StepOutcome) -> Vec<Decision> {
        let mut out = Vec::new();
        let Some(pos) = self
            .compensations
            .iter()
            .position(|&(s, o)| s == i && o.is_none())
        else {
            return out;
        };
        self.compensations[pos].1 = Some(outcome);
        if self.state == PipelineState::Compensating {
            self.next_compensation(&mut out);
        }
        out
    }

    /// Cancels the pipeline: running steps (or the running compensation)
    /// are cancelled, and nothing else starts; it ends Cancelled once they
    /// have ended. A final pipeline stays as it is.
    pub fn cancel(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
        if self.state.is_final() || self.cancelled {
            return out;
        }
        self.cancelled = true;
        for (k, s) in self.steps.iter().enumerate() {
            if *s == StepState::Running {
                out.push(Decision::Cancel(k));
            }
        }
        if let Some(&(s, None)) = self.compensations.last() {
            out.push(Decision::CancelCompensation(s));
        }
        // Waiting steps whose dependencies are all final would wait for
        // nothing: skip them now; the rest are skipped as their
        // dependencies end.
        let waiting: Vec<usize> = (0..self.steps.len())
            .filter(|&k| self.steps[k] == StepState::Waiting && self.open[k] == 0)
            .collect();
        for k in waiting {
            self.end(k, StepState::Skipped, &mut out);
        }
        if self.unfinished == 0 && self.state == PipelineState::Running {
            self.state = PipelineState::Cancelled;
            out.push(Decision::Ended(PipelineState::Cancelled));
        }
        out
    }

    /// Ends step `i` in `state` and decides each dependent left with no
    /// open dependency.
    fn end(&mut self, i: usize, state: StepState, out: &mut Vec<Decision>) {
        // A worklist, not recursion: skips can cascade down a long chain.
        let mut work = vec![(i, state)];
        while let Some((k, st)) = work.pop() {
            if self.steps[k].is_final() {
                continue;
            }
            self.steps[k] = st;
            self.unfinished -= 1;
            if st == StepState::Ended(StepOutcome::Succeeded) && self.compensable[k] {
                self.succeeded.push(k);
            }
            for idx in 0..self.dependents[k].len() {
                let d = self.dependents[k][idx];
                self.open[d] -= 1;
                if self.open[d] == 0 {
                    if let Some(skip) = self.verdict(d) {
                        work.push((d, skip));
                    } else {
                        self.steps[d] = StepState::Running;
                        out.push(Decision::Start(d));
                    }
                }
            }
        }
    }

    /// Decides a step whose dependencies have all ended: `None` to run
    /// it, or the state to end it in.
    fn verdict(&self, i: usize) -> Option<StepState> {
        if self.cancelled {
            return Some(StepState::Skipped);
        }
        let deps = &self.deps[i];
        let run = match self.condition[i] {
            Condition::OnSuccess => {
                !(self.failed && self.fail_fast)
                    && deps
                        .iter()
                        .all(|&d| self.steps[d] == StepState::Ended(StepOutcome::Succeeded))
            }
            Condition::OnFailure => deps.iter().any(|&d| {
                matches!(
                    self.steps[d],
                    StepState::Ended(StepOutcome::Failed | StepOutcome::Cancelled)
                )
            }),
            Condition::Always => true,
        };
        if run { None } else { Some(StepState::Skipped) }
    }

    fn decide(&mut self, i: usize, out: &mut Vec<Decision>) {
        match self.verdict(i) {
            None => {
                self.steps[i] = StepState::Running;
                out.push(Decision::Start(i));
            }
            Some(s) => self.end(i, s, out),
        }
    }

    fn maybe_finish(&mut self, out: &mut Vec<Decision>) {
        if self.unfinished > 0 || self.state != PipelineState::Running {
            return;
        }
        if self.cancelled {
            self.state = PipelineState::Cancelled;
            out.push(Decision::Ended(PipelineState::Cancelled));
        } else if self.failed {
            self.state = PipelineState::Compensating;
            self.next_compensation(out);
        } else {
            self.state = PipelineState::Succeeded;
            out.push(Decision::Ended(PipelineState::Succeeded));
        }
    }

    /// Starts the compensation of the latest step that succeeded and has
    /// not been compensated, or ends the pipeline.
    fn next_compensation(&mut self, out: &mut Vec<Decision>) {
        if self.cancelled {
            self.state = PipelineState::Cancelled;
            out.push(Decision::Ended(PipelineState::Cancelled));
            return;
        }
        if matches!(self.compensations.last(), Some((_, None))) {
            return;
        }
        match self.succeeded.pop() {
            Some(s) => {
                self.compensations.push((s, None));
                out.push(Decision::Compensate(s));
            }
            None => {
                self.state = PipelineState::Failed;
                out.push(Decision::Ended(PipelineState::Failed));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(deps: Vec<Vec<usize>>, comp: Vec<bool>) -> PipelineGraph {
        PipelineGraph {
            compensation: comp.iter().map(|&c| c.then_some(0)).collect(),
            deps,
        }
    }

    #[test]
    fn a_diamond_runs_in_order_and_succeeds() {
        let g = graph(vec![vec![], vec![0], vec![0], vec![1, 2]], vec![false; 4]);
        let mut r = PipelineRun::new(&g, &[Condition::OnSuccess; 4], true);
        assert_eq!(r.start(), vec![Decision::Start(0)]);
        assert_eq!(
            r.step_ended(0, StepOutcome::Succeeded),
            vec![Decision::Start(1), Decision::Start(2)]
        );
        assert_eq!(r.step_ended(1, StepOutcome::Succeeded), vec![]);
        assert_eq!(
            r.step_ended(2, StepOutcome::Succeeded),
            vec![Decision::Start(3)]
        );
        assert_eq!(
            r.step_ended(3, StepOutcome::Succeeded),
            vec![Decision::Ended(PipelineState::Succeeded)]
        );
        // A second report changes nothing.
        assert_eq!(r.step_ended(3, StepOutcome::Failed), vec![]);
    }

    #[test]
    fn a_failure_fails_fast_then_compensates_latest_first() {
        // 0 -> 1 -> 3 (on_success), 0 -> 2 (running when 1 fails),
        // 4 always after 3.
        let g = graph(
            vec![vec![], vec![0], vec![0], vec![1], vec![3]],
            vec![true, true, true, false, false],
        );
        let conds = [
            Condition::OnSuccess,
            Condition::OnSuccess,
            Condition::OnSuccess,
            Condition::OnSuccess,
            Condition::Always,
        ];
        let mut r = PipelineRun::new(&g, &conds, true);
        r.start();
        r.step_ended(0, StepOutcome::Succeeded);
        // 1 fails while 2 runs: 2 is cancelled, 3 skipped, 4 still runs.
        assert_eq!(
            r.step_ended(1, StepOutcome::Failed),
            vec![Decision::Cancel(2), Decision::Start(4)]
        );
        assert_eq!(r.step(3), Some(StepState::Skipped));
        assert_eq!(r.step_ended(2, StepOutcome::Cancelled), vec![]);
        // Once all ended, only 0 succeeded: its compensation runs.
        assert_eq!(
            r.step_ended(4, StepOutcome::Succeeded),
            vec![Decision::Compensate(0)]
        );
        assert_eq!(r.state(), PipelineState::Compensating);
        assert_eq!(
            r.compensation_ended(0, StepOutcome::Succeeded),
            vec![Decision::Ended(PipelineState::Failed)]
        );
    }

    #[test]
    fn cancel_stops_running_steps_and_skips_the_rest() {
        let g = graph(vec![vec![], vec![0], vec![1]], vec![false; 3]);
        let conds = [
            Condition::OnSuccess,
            Condition::OnSuccess,
            Condition::Always,
        ];
        let mut r = PipelineRun::new(&g, &conds, true);
        r.start();
        r.step_ended(0, StepOutcome::Succeeded);
        assert_eq!(r.cancel(), vec![Decision::Cancel(1)]);
        assert_eq!(
            r.step_ended(1, StepOutcome::Cancelled),
            vec![Decision::Ended(PipelineState::Cancelled)]
        );
        assert_eq!(r.step(2), Some(StepState::Skipped));
    }

    #[test]
    fn a_long_chain_of_skips_does_not_recurse() {
        let n = 50_000;
        let deps: Vec<Vec<usize>> = (0..n)
            .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
            .collect();
        let g = graph(deps, vec![false; n]);
        let mut r = PipelineRun::new(&g, &vec![Condition::OnSuccess; n], false);
        r.start();
        assert_eq!(
            r.step_ended(0, StepOutcome::Failed),
            vec![Decision::Ended(PipelineState::Failed)]
        );
        assert!(r.steps()[1..].iter().all(|s| *s == StepState::Skipped));
    }
}
