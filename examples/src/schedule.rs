//! `hodei schedule ...`: periodic jobs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use hodei_hwp::client::Client;
use hodei_hwp::proto;
use hodei_hwp::wire::schedule_to_wire;
use hodei_sched::ScheduleSpec;
use serde_json::json;

use crate::cli::{Failure, Output, table};

/// What to do with schedules.
#[derive(Debug, Subcommand)]
pub enum ScheduleAction {
    /// Creates a schedule from a TOML or JSON file (`-` for stdin, JSON).
    Create {
        /// The file.
        file: PathBuf,
    },
    /// Lists schedules with their next run.
    List {
        /// Only this tenant's.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Shows a schedule: its next ticks and latest runs.
    Status {
        /// The schedule id.
        schedule: String,
    },
    /// Pauses a schedule: no tick runs until resumed.
    Pause {
        /// The schedule id.
        schedule: String,
    },
    /// Resumes a schedule from now (ticks that fell while paused do not
    /// run).
    Resume {
        /// The schedule id.
        schedule: String,
    },
    /// Deletes a schedule; its runs stay, as jobs.
    Delete {
        /// The schedule id.
        schedule: String,
    },
}

fn read(path: &Path) -> Result<ScheduleSpec, Failure> {
    let spec: ScheduleSpec = crate::cli::read_file(path)?;
    spec.validate().map_err(|e| crate::cli::invalid(&e))?;
    Ok(spec)
}

fn overlap(v: i32) -> &'static str {
    match proto::Overlap::try_from(v) {
        Ok(proto::Overlap::Skip) => "skip",
        Ok(proto::Overlap::CancelPrevious) => "cancel_previous",
        _ => "allow",
    }
}

/// A schedule's status as JSON.
pub fn status_json(s: &proto::ScheduleStatus) -> serde_json::Value {
    json!({
        "schedule_id": s.schedule_id,
        "name": s.name,
        "tenant": s.tenant,
        "cron": s.cron,
        "description": s.description,
        "timezone": s.timezone,
        "overlap": overlap(s.overlap),
        "catch_up": s.catch_up,
        "paused": s.paused,
        "created_at_ms": s.created_at_ms,
        "last_tick_ms": (s.last_tick_ms > 0).then_some(s.last_tick_ms),
        "next_runs_ms": s.next_runs_ms,
        "recent_runs": s.recent_runs.iter().map(|r| json!({"tick_ms": r.tick_ms, "job_id": r.job_id})).collect::<Vec<_>>(),
        "skipped": s.skipped,
        "deleted": s.deleted,
    })
}

fn when(ms: u64) -> String {
    hodei_sched::rfc3339(hodei_core::Timestamp(ms))
}

fn print(out: Output, s: &proto::ScheduleStatus) {
    if out.json {
        println!("{}", status_json(s));
        return;
    }
    println!(
        "schedule {}  {}  tenant {}  \"{}\" {} ({})  overlap {}  catch-up {}{}{}",
        s.schedule_id,
        if s.name.is_empty() { "-" } else { &s.name },
        s.tenant,
        s.cron,
        s.timezone,
        s.description,
        overlap(s.overlap),
        s.catch_up,
        if s.paused { "  PAUSED" } else { "" },
        if s.deleted { "  deleted" } else { "" },
    );
    for t in &s.next_runs_ms {
        println!("  next   {}", when(*t));
    }
    for r in &s.recent_runs {
        println!("  ran    {}  job {}", when(r.tick_ms), r.job_id);
    }
    if s.skipped > 0 {
        println!(
            "  {} ticks not run (overlap, or missed beyond the catch-up)",
            s.skipped
        );
    }
}

/// Runs a schedule command.
///
/// # Errors
///
/// Bad usage, or what the server refused.
pub async fn run(c: &mut Client, action: ScheduleAction, out: Output) -> Result<ExitCode, Failure> {
    let req = |id: String| proto::ScheduleRequest { schedule_id: id };
    let s = match action {
        ScheduleAction::Create { file } => {
            let spec = read(&file)?;
            let mut wire = schedule_to_wire(&spec);
            if spec.tenant == hodei_core::TenantId::default() {
                wire.tenant.clear();
            }
            c.raw()
                .create_schedule(proto::CreateScheduleRequest {
                    schedule: Some(wire),
                })
                .await?
                .into_inner()
        }
        ScheduleAction::List { tenant } => {
            let r = c
                .raw()
                .list_schedules(proto::ListSchedulesRequest {
                    tenant: tenant.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if out.json {
                for s in &r.schedules {
                    println!("{}", status_json(s));
                }
            } else {
                let rows: Vec<Vec<String>> = r
                    .schedules
                    .iter()
                    .map(|s| {
                        vec![
                            s.schedule_id.clone(),
                            s.name.clone(),
                            s.tenant.clone(),
                            format!("{} {}", s.cron, s.timezone),
                            if s.paused {
                                "paused".into()
                            } else {
                                s.next_runs_ms.first().map_or("-".into(), |t| when(*t))
                            },
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["SCHEDULE", "NAME", "TENANT", "CRON", "NEXT"], &rows)
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        ScheduleAction::Status { schedule } => {
            c.raw().get_schedule(req(schedule)).await?.into_inner()
        }
        ScheduleAction::Pause { schedule } => {
            c.raw().pause_schedule(req(schedule)).await?.into_inner()
        }
        ScheduleAction::Resume { schedule } => {
            c.raw().resume_schedule(req(schedule)).await?.into_inner()
        }
        ScheduleAction::Delete { schedule } => {
            c.raw().delete_schedule(req(schedule)).await?.into_inner()
        }
    };
    print(out, &s);
    Ok(ExitCode::SUCCESS)
}
