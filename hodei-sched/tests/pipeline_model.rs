//! `PipelineRun` against a model: random DAGs, conditions, outcomes,
//! cancels. Every step starts at most once and only after its
//! dependencies ended as its condition requires; the pipeline always ends,
//! once, in the state its steps call for; compensations run for exactly
//! the steps that succeeded, latest first, one at a time.

use std::collections::BTreeSet;

use hodei_core::{Condition, PipelineGraph};
use hodei_sched::{Decision, PipelineRun, PipelineState, StepOutcome, StepState};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Case {
    deps: Vec<Vec<usize>>,
    conditions: Vec<Condition>,
    compensable: Vec<bool>,
    fail_fast: bool,
    /// Choices driving the run: which running thing ends next, and how.
    choices: Vec<(u16, u8)>,
    /// Cancel the pipeline after this many events, if set.
    cancel_at: Option<usize>,
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..30).prop_flat_map(|n| {
        let steps = proptest::collection::vec(
            (
                proptest::collection::vec(any::<proptest::sample::Index>(), 0..4),
                0u8..6,
                any::<bool>(),
            ),
            n,
        );
        (
            steps,
            any::<bool>(),
            proptest::collection::vec((any::<u16>(), any::<u8>()), 200),
            proptest::option::of(0usize..40),
        )
            .prop_map(move |(steps, fail_fast, choices, cancel_at)| {
                let mut deps = Vec::new();
                let mut conditions = Vec::new();
                let mut compensable = Vec::new();
                for (i, (ds, c, comp)) in steps.into_iter().enumerate() {
                    let mut d: Vec<usize> = if i == 0 {
                        Vec::new()
                    } else {
                        ds.iter().map(|x| x.index(i)).collect()
                    };
                    d.sort_unstable();
                    d.dedup();
                    let cond = match (d.is_empty(), c) {
                        (true, _) => Condition::OnSuccess,
                        (false, 0) => Condition::OnFailure,
                        (false, 1) => Condition::Always,
                        _ => Condition::OnSuccess,
                    };
                    deps.push(d);
                    conditions.push(cond);
                    compensable.push(comp);
                }
                Case {
                    deps,
                    conditions,
                    compensable,
                    fail_fast,
                    choices,
                    cancel_at,
                }
            })
    })
}

/// The outcome a decision applies to, as the host would see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Running {
    Step(usize),
    Compensation(usize),
}

fn run(c: Case) -> Result<(), TestCaseError> {
    let n = c.deps.len();
    let graph = PipelineGraph {
        deps: c.deps.clone(),
        compensation: c.compensable.iter().map(|&x| x.then_some(0)).collect(),
    };
    let mut r = PipelineRun::new(&graph, &c.conditions, c.fail_fast);
    let mut started = vec![false; n];
    let mut outcome: Vec<Option<StepOutcome>> = vec![None; n];
    let mut running: BTreeSet<Running> = BTreeSet::new();
    let mut to_cancel: BTreeSet<Running> = BTreeSet::new();
    let mut succeeded_order: Vec<usize> = Vec::new();
    let mut compensated: Vec<usize> = Vec::new();
    let mut ended: Vec<PipelineState> = Vec::new();
    let mut failed = false;
    let mut cancelled = false;
    let mut events = 0usize;

    let apply = |ds: Vec<Decision>,
                 started: &mut Vec<bool>,
                 outcome: &Vec<Option<StepOutcome>>,
                 running: &mut BTreeSet<Running>,
                 to_cancel: &mut BTreeSet<Running>,
                 compensated: &mut Vec<usize>,
                 ended: &mut Vec<PipelineState>,
                 failed: bool,
                 cancelled: bool|
     -> Result<(), TestCaseError> {
        for d in ds {
            match d {
                Decision::Start(i) => {
                    prop_assert!(!started[i], "step {i} started twice");
                    prop_assert!(!cancelled, "step {i} started after cancel");
                    started[i] = true;
                    for &dep in &c.deps[i] {
                        prop_assert!(
                            r_final(outcome, started, dep),
                            "step {i} started before dependency {dep} ended"
                        );
                    }
                    let ok = |d: &usize| outcome[*d] == Some(StepOutcome::Succeeded);
                    let bad = |d: &usize| {
                        matches!(
                            outcome[*d],
                            Some(StepOutcome::Failed | StepOutcome::Cancelled)
                        )
                    };
                    match c.conditions[i] {
                        Condition::OnSuccess => {
                            prop_assert!(
                                c.deps[i].iter().all(ok),
                                "step {i}: a dependency did not succeed"
                            );
                            prop_assert!(
                                !(failed && c.fail_fast),
                                "step {i} started after failing fast"
                            );
                        }
                        Condition::OnFailure => {
                            prop_assert!(
                                c.deps[i].iter().any(bad),
                                "step {i}: no dependency failed"
                            )
                        }
                        Condition::Always => {}
                    }
                    running.insert(Running::Step(i));
                }
                Decision::Cancel(i) => {
                    prop_assert!(
                        running.contains(&Running::Step(i)),
                        "cancel of step {i}, not running"
                    );
                    to_cancel.insert(Running::Step(i));
                }
                Decision::Compensate(i) => {
                    prop_assert!(outcome[i] == Some(StepOutcome::Succeeded));
                    prop_assert!(c.compensable[i]);
                    prop_assert!(
                        !running
                            .iter()
                            .any(|x| matches!(x, Running::Compensation(_))),
                        "two compensations at once"
                    );
                    compensated.push(i);
                    running.insert(Running::Compensation(i));
                }
                Decision::CancelCompensation(i) => {
                    prop_assert!(running.contains(&Running::Compensation(i)));
                    to_cancel.insert(Running::Compensation(i));
                }
                Decision::Ended(s) => {
                    prop_assert!(s.is_final());
                    ended.push(s);
                }
            }
        }
        Ok(())
    };

    fn r_final(outcome: &[Option<StepOutcome>], started: &[bool], d: usize) -> bool {
        // Ended, or never started (skipped): either way final. A started
        // step with no outcome is still running.
        outcome[d].is_some() || !started[d]
    }

    let ds = r.start();
    apply(
        ds,
        &mut started,
        &outcome,
        &mut running,
        &mut to_cancel,
        &mut compensated,
        &mut ended,
        failed,
        cancelled,
    )?;
    for &(pick, how) in &c.choices {
        if !ended.is_empty() {
            break;
        }
        if c.cancel_at == Some(events) && !cancelled {
            cancelled = true;
            let ds = r.cancel();
            apply(
                ds,
                &mut started,
                &outcome,
                &mut running,
                &mut to_cancel,
                &mut compensated,
                &mut ended,
                failed,
                cancelled,
            )?;
            events += 1;
            continue;
        }
        events += 1;
        let Some(&next) = running.iter().nth(pick as usize % running.len().max(1)) else {
            break;
        };
        running.remove(&next);
        let o = if to_cancel.remove(&next) {
            StepOutcome::Cancelled
        } else if how % 3 == 0 {
            StepOutcome::Failed
        } else {
            StepOutcome::Succeeded
        };
        let ds = match next {
            Running::Step(i) => {
                outcome[i] = Some(o);
                if o == StepOutcome::Succeeded && c.compensable[i] {
                    succeeded_order.push(i);
                }
                if o != StepOutcome::Succeeded {
                    failed = true;
                }
                r.step_ended(i, o)
            }
            Running::Compensation(i) => r.compensation_ended(i, o),
        };
        apply(
            ds,
            &mut started,
            &outcome,
            &mut running,
            &mut to_cancel,
            &mut compensated,
            &mut ended,
            failed,
            cancelled,
        )?;
    }
    // 200 choices end every step and compensation of a pipeline of under
    // 30 steps: one not ended by then is stuck.
    prop_assert_eq!(ended.len(), 1, "the pipeline ends once: {:?}", ended);
    let state = ended[0];
    prop_assert_eq!(r.state(), state);
    for (i, (&s, &began)) in r.steps().iter().zip(&started).enumerate() {
        prop_assert!(s.is_final(), "step {} not final: {:?}", i, s);
        prop_assert_eq!(began, s != StepState::Skipped);
    }
    if cancelled {
        prop_assert_eq!(state, PipelineState::Cancelled);
    }
    if !cancelled {
        if failed {
            prop_assert_eq!(state, PipelineState::Failed);
            // Every compensable step that succeeded, latest first.
            let mut want = succeeded_order.clone();
            want.reverse();
            prop_assert_eq!(&compensated, &want);
        } else {
            prop_assert_eq!(state, PipelineState::Succeeded);
            prop_assert!(compensated.is_empty());
        }
        // A skipped step's condition was not met by how its
        // dependencies ended, or it only runs on success after a failure
        // with fail-fast.
        for (i, _) in started.iter().enumerate().filter(|(_, s)| !**s) {
            let deps = &c.deps[i];
            let met = match c.conditions[i] {
                Condition::OnSuccess => deps
                    .iter()
                    .all(|d| outcome[*d] == Some(StepOutcome::Succeeded)),
                Condition::OnFailure => deps.iter().any(|d| {
                    matches!(
                        outcome[*d],
                        Some(StepOutcome::Failed | StepOutcome::Cancelled)
                    )
                }),
                Condition::Always => true,
            };
            prop_assert!(
                !met || (c.conditions[i] == Condition::OnSuccess && failed && c.fail_fast),
                "step {} skipped though its condition held",
                i
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn pipelines_follow_their_graph_and_conditions(c in case()) {
        run(c)?;
    }
}
