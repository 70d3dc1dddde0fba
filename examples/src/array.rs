//! `hodei array ...` and `hodei submit --array N`: job arrays.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use hodei_hwp::client::Client;
use hodei_hwp::proto;
use serde_json::json;

use crate::cli::{Failure, Output};

/// What to do with an array.
#[derive(Debug, Subcommand)]
pub enum ArrayAction {
    /// Shows how many of an array's tasks are queued, running, succeeded,
    /// failed and cancelled.
    Status {
        /// The array id.
        array: String,
        /// Wait until every task has ended; exits 1 unless all succeeded.
        #[arg(long)]
        wait: bool,
    },
    /// Cancels every task of an array not ended yet.
    Cancel {
        /// The array id.
        array: String,
    },
}

/// An array's status as JSON.
pub fn status_json(s: &proto::ArrayStatus) -> serde_json::Value {
    json!({
        "array_id": s.array_id,
        "name": s.name,
        "tenant": s.tenant,
        "count": s.count,
        "concurrency": (s.concurrency > 0).then_some(s.concurrency),
        "queued": s.queued,
        "running": s.running,
        "succeeded": s.succeeded,
        "failed": s.failed,
        "cancelled": s.cancelled,
        "state": s.state,
        "created_at_ms": s.created_at_ms,
    })
}

/// Prints an array's status.
pub fn print(out: Output, s: &proto::ArrayStatus) {
    if out.json {
        println!("{}", status_json(s));
    } else {
        let limit = if s.concurrency > 0 {
            format!(", at most {} at once", s.concurrency)
        } else {
            String::new()
        };
        println!(
            "array {}  {}  tenant {}  {}  ({} tasks{limit}: {} queued, {} running, {} succeeded, {} failed, {} cancelled)",
            s.array_id,
            if s.name.is_empty() { "-" } else { &s.name },
            s.tenant,
            s.state,
            s.count,
            s.queued,
            s.running,
            s.succeeded,
            s.failed,
            s.cancelled
        );
    }
}

fn code(s: &proto::ArrayStatus) -> ExitCode {
    if s.state == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Polls an array until every task has ended (twice a second).
///
/// # Errors
///
/// What the server refused.
pub async fn wait_end(c: &mut Client, id: &str) -> Result<proto::ArrayStatus, Failure> {
    loop {
        let s = c
            .raw()
            .get_array(proto::GetArrayRequest {
                array_id: id.to_string(),
            })
            .await?
            .into_inner();
        if s.state != "running" {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs an array command.
///
/// # Errors
///
/// What the server refused.
pub async fn run(c: &mut Client, action: ArrayAction, out: Output) -> Result<ExitCode, Failure> {
    match action {
        ArrayAction::Status { array, wait } => {
            let s = if wait {
                wait_end(c, &array).await?
            } else {
                c.raw()
                    .get_array(proto::GetArrayRequest { array_id: array })
                    .await?
                    .into_inner()
            };
            print(out, &s);
            Ok(if wait { code(&s) } else { ExitCode::SUCCESS })
        }
        ArrayAction::Cancel { array } => {
            let s = c
                .raw()
                .cancel_array(proto::CancelArrayRequest { array_id: array })
                .await?
                .into_inner();
            print(out, &s);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Submits `count` tasks of `wire` as an array; with `wait`, waits for
/// them all and exits 1 unless all succeeded.
///
/// # Errors
///
/// What the server refused.
pub async fn submit(
    c: &mut Client,
    wire: proto::JobSpec,
    count: u32,
    limit: Option<u32>,
    wait: bool,
    out: Output,
) -> Result<ExitCode, Failure> {
    let s = c
        .raw()
        .submit_array(proto::SubmitArrayRequest {
            spec: Some(wire),
            count,
            concurrency: limit.unwrap_or(0),
        })
        .await?
        .into_inner();
    if !wait {
        print(out, &s);
        return Ok(ExitCode::SUCCESS);
    }
    out.note(&format!("submitted array {}; waiting", s.array_id));
    let end = wait_end(c, &s.array_id).await?;
    print(out, &end);
    Ok(code(&end))
}
