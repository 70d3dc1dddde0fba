//! [`PipelineSpec`]: named steps, each a job, run as a directed acyclic
//! graph, and its validation.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::id::TenantId;
use crate::spec::{FieldError, JobSpec, SpecErrors};

/// Most steps in one pipeline.
pub const MAX_STEPS: usize = 20_000;

/// Most bytes of outputs one step may publish (keys, values and
/// separators of its outputs file); a larger file is refused whole.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// Most dependencies of one step.
const MAX_STEP_DEPENDENCIES: usize = 1024;

/// Longest step name.
const MAX_STEP_NAME: usize = 63;

/// When a step runs, given how its dependencies ended.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Every dependency succeeded.
    #[default]
    OnSuccess,
    /// Every dependency ended and at least one failed.
    OnFailure,
    /// Every dependency ended, however.
    Always,
}

impl Condition {
    /// The name used in specs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::OnSuccess => "on_success",
            Condition::OnFailure => "on_failure",
            Condition::Always => "always",
        }
    }
}

/// One step: a job and when it runs.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Unique within the pipeline: 1 to 63 of `A-Za-z0-9_-`, starting
    /// with a letter or digit.
    pub name: String,
    /// Steps that must end before this one is decided.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// When it runs, given how its dependencies ended.
    #[serde(default)]
    pub condition: Condition,
    /// The compensation (a name in [`PipelineSpec::compensations`]) run if
    /// this step succeeded and the pipeline then failed.
    #[serde(default)]
    pub compensate: Option<String>,
    /// What it runs. Its tenant is the pipeline's; it may not name job
    /// dependencies or an idempotency key (the pipeline sets both).
    pub job: JobSpec,
}

/// A job that undoes a step, run only when the pipeline fails.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompensationSpec {
    /// Unique among steps and compensations, named as a step is.
    pub name: String,
    /// What it runs, as a step's job.
    pub job: JobSpec,
}

/// A pipeline: steps with dependencies, conditions, outputs and
/// compensations.
///
/// Deserialises from JSON or TOML; call [`PipelineSpec::validate`] before
/// accepting one.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// A short human name (not unique).
    #[serde(default)]
    pub name: String,
    /// The tenant that owns the pipeline and every job of it.
    #[serde(default)]
    pub tenant: TenantId,
    /// On the first failed step, cancel the running steps and start no
    /// more `on_success` steps (the default); otherwise independent
    /// branches go on.
    #[serde(default = "yes")]
    pub fail_fast: bool,
    /// The steps.
    pub steps: Vec<StepSpec>,
    /// Compensations the steps name.
    #[serde(default)]
    pub compensations: Vec<CompensationSpec>,
}

fn yes() -> bool {
    true
}

/// A validated pipeline's graph: each step's dependencies as indices.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PipelineGraph {
    /// `deps[i]`: the steps step `i` depends on.
    pub deps: Vec<Vec<usize>>,
    /// `compensation[i]`: the compensation step `i` names, as an index
    /// into [`PipelineSpec::compensations`].
    pub compensation: Vec<Option<usize>>,
}

/// What is wrong with `s` as a step name, if anything.
fn step_name_problem(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > MAX_STEP_NAME {
        return Some(format!("must be 1 to {MAX_STEP_NAME} bytes"));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some("must start with a letter or digit".into());
    }
    s.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        .map(|c| format!("contains {c:?}; allowed: letters, digits, '-', '_'"))
}

/// The environment-variable prefix of a step's outputs: its name in upper
/// case with `-` as `_` (`build-image` gives `BUILD_IMAGE`).
pub fn output_prefix(step: &str) -> String {
    step.chars()
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect()
}

/// The environment variable a dependent step receives for output `key` of
/// step `step`: `BUILD_IMAGE_VERSION` for key `VERSION` of `build-image`.
pub fn output_variable(step: &str, key: &str) -> String {
    format!("{}_{key}", output_prefix(step))
}

/// Parses a step's outputs file: one `KEY=value` per line, keys
/// environment-variable names, blank lines and lines starting with `#`
/// ignored, a later key replacing an earlier one.
///
/// # Errors
///
/// A text naming the first bad line, or the size, when the file is over
/// [`MAX_OUTPUT_BYTES`] or not UTF-8.
pub fn parse_outputs(bytes: &[u8]) -> Result<BTreeMap<String, String>, String> {
    if bytes.len() > MAX_OUTPUT_BYTES {
        return Err(format!(
            "outputs file is {} bytes, over the limit of {MAX_OUTPUT_BYTES}",
            bytes.len()
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "outputs file is not UTF-8".to_string())?;
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("outputs file line {}: expected KEY=value", n + 1));
        };
        if !crate::spec::is_env_name(k) {
            return Err(format!(
                "outputs file line {}: {k:?} is not an environment variable name",
                n + 1
            ));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

impl PipelineSpec {
    /// Checks the pipeline and returns its graph: every problem found,
    /// each naming its field. Every unknown step is named, and every
    /// cycle, as the path of steps around it (`a -> b -> c -> a`).
    ///
    /// # Errors
    ///
    /// [`SpecErrors`] with every problem found.
    pub fn validate(&self) -> Result<PipelineGraph, SpecErrors> {
        let mut errs: Vec<FieldError> = Vec::new();
        let mut add = |field: String, message: String| errs.push(FieldError { field, message });
        if self.name.len() > 256 || self.name.chars().any(char::is_control) {
            add(
                "name".into(),
                "must be at most 256 bytes with no control characters".into(),
            );
        }
        if self.steps.is_empty() {
            add("steps".into(), "must name at least one step".into());
        }
        if self.steps.len() > MAX_STEPS {
            add(
                "steps".into(),
                format!("at most {MAX_STEPS} steps, got {}", self.steps.len()),
            );
        }
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(self.steps.len());
        let mut prefixes: HashMap<String, &str> = HashMap::with_capacity(self.steps.len());
        for (i, s) in self.steps.iter().enumerate() {
            if let Some(why) = step_name_problem(&s.name) {
                add(format!("steps[{i}].name"), why);
            } else if index.insert(&s.name, i).is_some() {
                add(
                    format!("steps[{i}].name"),
                    format!("{:?} is already a step", s.name),
                );
            } else if let Some(other) = prefixes.insert(output_prefix(&s.name), &s.name) {
                add(
                    format!("steps[{i}].name"),
                    format!(
                        "{:?} names the same outputs variables as step {other:?}",
                        s.name
                    ),
                );
            }
        }
        let mut comp_index: HashMap<&str, usize> = HashMap::new();
        for (i, c) in self.compensations.iter().enumerate() {
            if let Some(why) = step_name_problem(&c.name) {
                add(format!("compensations[{i}].name"), why);
            } else if index.contains_key(c.name.as_str()) || comp_index.insert(&c.name, i).is_some()
            {
                add(
                    format!("compensations[{i}].name"),
                    format!("{:?} is already a step or compensation", c.name),
                );
            }
            self.check_job(&c.job, &format!("compensations[{i}].job"), &mut add);
        }
        let mut graph = PipelineGraph {
            deps: Vec::with_capacity(self.steps.len()),
            compensation: Vec::with_capacity(self.steps.len()),
        };
        for (i, s) in self.steps.iter().enumerate() {
            let mut deps = Vec::with_capacity(s.depends_on.len());
            if s.depends_on.len() > MAX_STEP_DEPENDENCIES {
                add(
                    format!("steps[{i}].depends_on"),
                    format!("at most {MAX_STEP_DEPENDENCIES} dependencies"),
                );
            }
            for (j, d) in s.depends_on.iter().enumerate() {
                let field = format!("steps[{i}].depends_on[{j}]");
                match index.get(d.as_str()) {
                    None => add(field, format!("unknown step {d:?}")),
                    Some(&k) if k == i => add(field, "a step cannot depend on itself".into()),
                    Some(&k) if deps.contains(&k) => add(field, format!("{d:?} named twice")),
                    Some(&k) => deps.push(k),
                }
            }
            if s.condition != Condition::OnSuccess && s.depends_on.is_empty() {
                add(
                    format!("steps[{i}].condition"),
                    format!("{} needs depends_on", s.condition.as_str()),
                );
            }
            let comp = match &s.compensate {
                None => None,
                Some(c) => match comp_index.get(c.as_str()) {
                    Some(&k) => Some(k),
                    None => {
                        add(
                            format!("steps[{i}].compensate"),
                            format!("unknown compensation {c:?}"),
                        );
                        None
                    }
                },
            };
            self.check_job(&s.job, &format!("steps[{i}].job"), &mut add);
            graph.deps.push(deps);
            graph.compensation.push(comp);
        }
        for cycle in cycles(&graph.deps) {
            let path: Vec<&str> = cycle.iter().map(|&k| self.steps[k].name.as_str()).collect();
            add(
                format!("steps[{}].depends_on", cycle[0]),
                format!("cycle: {}", path.join(" -> ")),
            );
        }
        if errs.is_empty() {
            Ok(graph)
        } else {
            Err(SpecErrors(errs))
        }
    }

    fn check_job(&self, job: &JobSpec, field: &str, add: &mut impl FnMut(String, String)) {
        if !job.dependencies.is_empty() {
            add(
                format!("{field}.dependencies"),
                "a step's job names no job dependencies: use the step's depends_on".into(),
            );
        }
        if job.idempotency_key.is_some() {
            add(
                format!("{field}.idempotency_key"),
                "set by the pipeline for each of its jobs".into(),
            );
        }
        if job.tenant != TenantId::default() && job.tenant != self.tenant {
            add(
                format!("{field}.tenant"),
                format!(
                    "must be the pipeline's tenant {} (or unset), got {}",
                    self.tenant, job.tenant
                ),
            );
        }
        if let Err(e) = job.validate() {
            for fe in e.0 {
                add(format!("{field}.{}", fe.field), fe.message);
            }
        }
    }
}

/// One cycle in each group of steps that reach one another, as the path
/// around it, its first step repeated at the end. Linear in steps and
/// edges (Tarjan's components, then one walk inside each).
pub fn cycles(deps: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = deps.len();
    // Iterative Tarjan: a pipeline of thousands of steps in a chain must
    // not exhaust the stack.
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut comp = vec![usize::MAX; n];
    let mut comps: Vec<Vec<usize>> = Vec::new();
    let mut next = 0usize;
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work: Vec<(usize, usize)> = vec![(root, 0)];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut edge)) = work.last_mut() {
            if let Some(&w) = deps[v].get(*edge) {
                *edge += 1;
                if w >= n {
                    continue;
                }
                if index[w] == usize::MAX {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let id = comps.len();
                let mut members = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    comp[w] = id;
                    members.push(w);
                    if w == v {
                        break;
                    }
                }
                comps.push(members);
            }
        }
    }
    let mut out = Vec::new();
    for (id, members) in comps.iter().enumerate() {
        // Self-dependencies are refused before; a component of one is no
        // cycle.
        if members.len() < 2 {
            continue;
        }
        let start = members.iter().copied().min().unwrap_or(members[0]);
        // Walk inside the component until a step repeats: a cycle.
        let mut seen_at: HashMap<usize, usize> = HashMap::new();
        let mut path = Vec::new();
        let mut v = start;
        loop {
            if let Some(&at) = seen_at.get(&v) {
                let mut cycle = path[at..].to_vec();
                cycle.push(v);
                out.push(cycle);
                break;
            }
            seen_at.insert(v, path.len());
            path.push(v);
            match deps[v].iter().copied().find(|&w| w < n && comp[w] == id) {
                Some(w) => v = w,
                None => break,
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, deps: &[&str]) -> StepSpec {
        StepSpec {
            name: name.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            condition: Condition::OnSuccess,
            compensate: None,
            job: JobSpec::script("true"),
        }
    }

    fn pipeline(steps: Vec<StepSpec>) -> PipelineSpec {
        PipelineSpec {
            name: "p".into(),
            tenant: TenantId::default(),
            fail_fast: true,
            steps,
            compensations: Vec::new(),
        }
    }

    #[test]
    fn a_diamond_is_a_graph() {
        let p = pipeline(vec![
            step("a", &[]),
            step("b", &["a"]),
            step("c", &["a"]),
            step("d", &["b", "c"]),
        ]);
        let g = p.validate().unwrap();
        assert_eq!(g.deps, vec![vec![], vec![0], vec![0], vec![1, 2]]);
    }

    #[test]
    fn every_unknown_step_and_every_cycle_is_named() {
        let p = pipeline(vec![
            step("a", &["c"]),
            step("b", &["a", "nope"]),
            step("c", &["b"]),
            step("d", &["e"]),
            step("e", &["d", "ghost"]),
            step("f", &[]),
        ]);
        let e = p.validate().unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(r#"steps[1].depends_on[1]: unknown step "nope""#),
            "{text}"
        );
        assert!(
            text.contains(r#"steps[4].depends_on[1]: unknown step "ghost""#),
            "{text}"
        );
        assert!(text.contains("cycle: a -> c -> b -> a"), "{text}");
        assert!(text.contains("cycle: d -> e -> d"), "{text}");
        assert_eq!(
            e.0.iter()
                .filter(|f| f.message.starts_with("cycle"))
                .count(),
            2
        );
    }

    #[test]
    fn names_conditions_compensations_and_jobs_are_checked_by_field() {
        let mut p = pipeline(vec![step("a", &[]), step("a", &[]), step("b-c", &["a"])]);
        p.steps.push(step("b_c", &["a"]));
        p.steps.push(step("x y", &[]));
        p.steps[0].condition = Condition::Always;
        p.steps[2].compensate = Some("undo".into());
        p.steps[2].job.priority = 99;
        p.steps[2].job.idempotency_key = Some("k".into());
        p.compensations.push(CompensationSpec {
            name: "a".into(),
            job: JobSpec::script("true"),
        });
        let e = p.validate().unwrap_err();
        for field in [
            "steps[1].name",
            "steps[3].name",
            "steps[4].name",
            "steps[0].condition",
            "steps[2].compensate",
            "steps[2].job.priority",
            "steps[2].job.idempotency_key",
            "compensations[0].name",
        ] {
            assert!(e.concerns(field), "{field} not named in {e}");
        }
    }

    #[test]
    fn a_long_chain_validates_without_recursion() {
        let n = MAX_STEPS;
        let mut steps = vec![step("s0", &[])];
        for i in 1..n {
            steps.push(step(&format!("s{i}"), &[&format!("s{}", i - 1)]));
        }
        let mut p = pipeline(steps);
        assert!(p.validate().is_ok());
        // Closing the chain makes one cycle through every step.
        p.steps[0].depends_on.push(format!("s{}", n - 1));
        let e = p.validate().unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert!(e.0[0].message.contains("s0 -> s19999 -> s19998"));
    }

    #[test]
    fn outputs_files_parse_or_name_their_problem() {
        let o =
            parse_outputs(b"# comment\nVERSION=1.2\n\nURL=http://x/?a=b\r\nVERSION=1.3\n").unwrap();
        assert_eq!(o["VERSION"], "1.3");
        assert_eq!(o["URL"], "http://x/?a=b");
        assert!(parse_outputs(b"no equals").unwrap_err().contains("line 1"));
        assert!(
            parse_outputs(b"A=1\n1BAD=2")
                .unwrap_err()
                .contains("line 2")
        );
        assert!(parse_outputs(&[0xff]).is_err());
        assert!(parse_outputs(&vec![b'a'; MAX_OUTPUT_BYTES + 1]).is_err());
        assert_eq!(output_variable("build-image", "TAG"), "BUILD_IMAGE_TAG");
    }

    #[test]
    fn a_pipeline_reads_from_toml() {
        let p: PipelineSpec = toml::from_str(
            r#"
            name = "release"
            tenant = "acme"
            [[steps]]
            name = "build"
            compensate = "unbuild"
            job = { command = { script = "echo VERSION=1 >> $HODEI_OUTPUTS" } }
            [[steps]]
            name = "notify"
            depends_on = ["build"]
            condition = "always"
            job = { command = { argv = ["true"] } }
            [[compensations]]
            name = "unbuild"
            job = { command = { script = "echo undo" } }
            "#,
        )
        .unwrap();
        assert!(p.fail_fast);
        assert_eq!(p.steps[1].condition, Condition::Always);
        let g = p.validate().unwrap();
        assert_eq!(g.compensation, vec![Some(0), None]);
    }
}
