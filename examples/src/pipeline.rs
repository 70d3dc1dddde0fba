//! `hodei pipeline ...`: submit a pipeline file, show, list and cancel
//! pipelines.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use hodei_core::PipelineSpec;
use hodei_hwp::client::Client;
use hodei_hwp::{pipeline_to_wire, proto};
use serde_json::json;

use crate::cli::{Failure, Output, table};

/// What to do with pipelines.
#[derive(Debug, Subcommand)]
pub enum PipelineAction {
    /// Submits a pipeline from a TOML or JSON file (`-` for stdin, JSON).
    Submit {
        /// The file.
        file: PathBuf,
        /// Wait until it ends, showing its steps as they change; exits 1
        /// unless it succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// Shows a pipeline: its state and each step's.
    Status {
        /// The pipeline id.
        pipeline: String,
        /// Counts by state only, without the steps.
        #[arg(long)]
        summary: bool,
    },
    /// Lists pipelines, newest first.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Cancels a pipeline: its running steps are cancelled and the rest
    /// skipped.
    Cancel {
        /// The pipeline id.
        pipeline: String,
    },
}

/// Reads a pipeline file: TOML by its extension, JSON otherwise.
///
/// # Errors
///
/// The file cannot be read or parsed, or the pipeline is invalid (every
/// problem named by field).
pub fn read_pipeline(path: &Path) -> Result<PipelineSpec, Failure> {
    let spec: PipelineSpec = crate::cli::read_file(path)?;
    spec.validate().map_err(|e| crate::cli::invalid(&e))?;
    Ok(spec)
}

/// A pipeline's status as JSON.
pub fn status_json(s: &proto::PipelineStatus) -> serde_json::Value {
    json!({
        "pipeline_id": s.pipeline_id,
        "name": s.name,
        "tenant": s.tenant,
        "state": s.state,
        "continue_on_failure": s.continue_on_failure,
        "created_at_ms": s.created_at_ms,
        "step_count": s.step_count,
        "counts": s.counts,
        "steps": s.steps.iter().map(|t| json!({
            "name": t.name,
            "state": t.state,
            "job_id": t.job_id,
            "depends_on": t.depends_on,
            "condition": t.condition,
            "outputs": t.outputs,
            "error": t.error,
            "compensate": t.compensate,
        })).collect::<Vec<_>>(),
        "compensations": s.compensations.iter().map(|c| json!({
            "step": c.step,
            "compensation": c.compensation,
            "state": c.state,
            "job_id": c.job_id,
        })).collect::<Vec<_>>(),
    })
}

fn counts_text(s: &proto::PipelineStatus) -> String {
    let mut c: Vec<_> = s.counts.iter().collect();
    c.sort();
    c.iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints a pipeline's status: a table of its steps for people, JSON for
/// scripts.
pub fn print_status(out: Output, s: &proto::PipelineStatus) {
    if out.json {
        println!("{}", status_json(s));
        return;
    }
    println!(
        "pipeline {}  {}  tenant {}  {}  ({} steps: {})",
        s.pipeline_id,
        if s.name.is_empty() { "-" } else { &s.name },
        s.tenant,
        s.state,
        s.step_count,
        counts_text(s)
    );
    if !s.steps.is_empty() {
        let rows: Vec<Vec<String>> = s
            .steps
            .iter()
            .map(|t| {
                let mut outputs: Vec<String> =
                    t.outputs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                outputs.sort();
                vec![
                    t.name.clone(),
                    t.state.clone(),
                    if t.job_id.is_empty() {
                        "-".into()
                    } else {
                        t.job_id.clone()
                    },
                    if t.depends_on.is_empty() {
                        "-".into()
                    } else {
                        t.depends_on.join(",")
                    },
                    t.condition.clone(),
                    if t.error.is_empty() {
                        outputs.join(" ")
                    } else {
                        format!("error: {}", t.error)
                    },
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &["STEP", "STATE", "JOB", "DEPENDS ON", "WHEN", "OUTPUTS"],
                &rows
            )
        );
    }
    for c in &s.compensations {
        println!(
            "compensation {} of {}: {} (job {})",
            c.compensation, c.step, c.state, c.job_id
        );
    }
}

fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

/// Runs a pipeline command.
///
/// # Errors
///
/// Bad usage, or what the server refused.
pub async fn run(c: &mut Client, action: PipelineAction, out: Output) -> Result<ExitCode, Failure> {
    match action {
        PipelineAction::Submit { file, wait } => {
            let spec = read_pipeline(&file)?;
            let mut wire = pipeline_to_wire(&spec);
            if spec.tenant == hodei_core::TenantId::default() {
                // Empty: the server uses the token's own tenant.
                wire.tenant.clear();
            }
            let s = c
                .raw()
                .submit_pipeline(proto::SubmitPipelineRequest {
                    pipeline: Some(wire),
                })
                .await?
                .into_inner();
            if !wait {
                print_status(out, &s);
                return Ok(ExitCode::SUCCESS);
            }
            out.note(&format!("submitted pipeline {}; waiting", s.pipeline_id));
            let end = wait_end(c, &s.pipeline_id, out).await?;
            print_status(out, &end);
            Ok(if end.state == "succeeded" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        PipelineAction::Status { pipeline, summary } => {
            let s = c
                .raw()
                .get_pipeline(proto::GetPipelineRequest {
                    pipeline_id: pipeline,
                    summary,
                })
                .await?
                .into_inner();
            print_status(out, &s);
            Ok(ExitCode::SUCCESS)
        }
        PipelineAction::List { tenant } => {
            let r = c
                .raw()
                .list_pipelines(proto::ListPipelinesRequest {
                    tenant: tenant.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if out.json {
                for p in &r.pipelines {
                    println!("{}", status_json(p));
                }
            } else {
                let rows: Vec<Vec<String>> = r
                    .pipelines
                    .iter()
                    .map(|p| {
                        vec![
                            p.pipeline_id.clone(),
                            p.name.clone(),
                            p.tenant.clone(),
                            p.state.clone(),
                            p.step_count.to_string(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["PIPELINE", "NAME", "TENANT", "STATE", "STEPS"], &rows)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PipelineAction::Cancel { pipeline } => {
            let s = c
                .raw()
                .cancel_pipeline(proto::CancelPipelineRequest {
                    pipeline_id: pipeline,
                })
                .await?
                .into_inner();
            print_status(out, &s);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Polls a pipeline until it ends, telling each step's change (twice a
/// second: a pipeline's steps are jobs, whose own changes stream with
/// `hodei watch`).
///
/// # Errors
///
/// What the server refused.
pub async fn wait_end(
    c: &mut Client,
    id: &str,
    out: Output,
) -> Result<proto::PipelineStatus, Failure> {
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    loop {
        let s = c
            .raw()
            .get_pipeline(proto::GetPipelineRequest {
                pipeline_id: id.to_string(),
                summary: false,
            })
            .await?
            .into_inner();
        for t in &s.steps {
            if seen.get(&t.name) != Some(&t.state) {
                seen.insert(t.name.clone(), t.state.clone());
                if t.state != "waiting" {
                    out.note(&format!("  step {}: {}", t.name, t.state));
                }
            }
        }
        for c in &s.compensations {
            let key = format!("compensation of {}", c.step);
            if seen.get(&key) != Some(&c.state) {
                seen.insert(key.clone(), c.state.clone());
                out.note(&format!("  {key}: {}", c.state));
            }
        }
        if is_final(&s.state) {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TOML block of the README that starts with `# <name>`.
    fn readme_block(name: &str) -> String {
        let readme = include_str!("../../README.md");
        let start = readme
            .find(&format!("```toml\n# {name}\n"))
            .unwrap_or_else(|| panic!("no {name} in the README"));
        let body = &readme[start + "```toml\n".len()..];
        body[..body.find("```").unwrap()].to_string()
    }

    #[test]
    fn the_readme_s_pipeline_and_schedule_are_valid() {
        let p: PipelineSpec = toml::from_str(&readme_block("release.toml")).unwrap();
        p.validate().unwrap();
        assert_eq!(p.steps.len(), 4);
        let s: hodei_sched::ScheduleSpec = toml::from_str(&readme_block("nightly.toml")).unwrap();
        s.validate().unwrap();
    }
}
