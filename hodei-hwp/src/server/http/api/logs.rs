//! A job's output (pages of history, followed live) and the job events,
//! as JSON and Server-Sent Events.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt as _};
use hodei_core::JobId;
use hodei_store::{LogCursor, LogEntry, Store};
use serde::Deserialize;
use tonic::Status;
use utoipa::IntoParams;

use super::types::*;
use super::{Api, ApiResult, Caller, MAX_LOG_PAGE, MAX_LOG_PAGE_BYTES, Problem, Problems, query};
use crate::proto;
use crate::proto::job_service_server::JobService as _;

/// Where to read a job's output.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogParams {
    /// Chunks from this position on (`attempt:seq`, inclusive).
    from: Option<String>,
    /// Chunks before this position (`attempt:seq`, exclusive): loading
    /// earlier output.
    before: Option<String>,
    /// The last chunks of the output (ignored with `from` or `before`).
    tail: Option<bool>,
    /// Chunks per page, 1 to 1000 (default 200); a page also stops at
    /// 1 MiB.
    limit: Option<u32>,
}

pub(super) fn parse_cursor(field: &str, s: &str) -> ApiResult<LogCursor> {
    let bad = || Problem::invalid(field, format!("{s:?} is not attempt:seq"));
    let (a, q) = s.split_once(':').ok_or_else(bad)?;
    Ok(LogCursor {
        attempt: a.parse().map_err(|_| bad())?,
        seq: q.parse().map_err(|_| bad())?,
    })
}

pub(super) fn cursor_text(c: LogCursor) -> String {
    format!("{}:{}", c.attempt, c.seq)
}

pub(super) fn key(c: LogCursor) -> u128 {
    (u128::from(c.attempt) << 64) | u128::from(c.seq)
}

pub(super) fn unkey(k: u128) -> LogCursor {
    LogCursor {
        attempt: (k >> 64) as u32,
        seq: k as u64,
    }
}

pub(super) fn stream_name(s: hodei_core::LogStream) -> &'static str {
    match s {
        hodei_core::LogStream::Stdout => "stdout",
        hodei_core::LogStream::Stderr => "stderr",
        hodei_core::LogStream::System => "system",
    }
}

pub(super) fn chunk_json(e: LogEntry) -> LogChunkJson {
    LogChunkJson {
        attempt: e.cursor.attempt,
        seq: e.cursor.seq,
        stream: stream_name(e.chunk.stream).into(),
        at_ms: e.chunk.at.as_millis(),
        text: String::from_utf8_lossy(&e.chunk.data).into_owned(),
    }
}

/// How many of `entries`, taken in order, fit in one page's bytes (at
/// least one).
pub(super) fn fitting<'a>(entries: impl Iterator<Item = &'a LogEntry>) -> usize {
    let mut bytes = 0;
    let mut n = 0;
    for e in entries {
        bytes += e.chunk.data.len();
        if bytes > MAX_LOG_PAGE_BYTES && n > 0 {
            break;
        }
        n += 1;
    }
    n
}

/// The last stored position before `bound`, found by bisection over
/// forward reads (each finds the first chunk at or after a position), so
/// a long log opens at its end without being read from the start.
pub(super) async fn last_before<S: Store>(
    store: &S,
    job: JobId,
    bound: u128,
) -> ApiResult<Option<u128>> {
    // Past the last (attempt, seq) there is nothing; beyond it a key
    // would not survive the trip through a cursor.
    let bound = bound.min(1 << 96);
    let first_at = |k: u128| async move {
        let page = store
            .read_logs(job, unkey(k), 1)
            .await
            .map_err(|e| Problem::from(Status::internal(e.to_string())))?;
        Ok::<_, Problem>(
            page.entries
                .first()
                .map(|e| key(e.cursor))
                .filter(|&f| f < bound),
        )
    };
    let Some(mut lo) = first_at(0).await? else {
        return Ok(None);
    };
    // `lo` exists and is below `bound`; nothing exists in [hi, bound).
    let mut hi = bound;
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        match first_at(mid).await? {
            Some(found) => lo = found,
            None => hi = mid,
        }
    }
    Ok(Some(lo))
}

/// Read a job's output: from a position on, before a position, or its
/// tail.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/logs", tag = "jobs",
    params(("id" = String, Path, description = "The job's id"), LogParams),
    responses((status = 200, description = "A page of output", body = LogPageJson), Problems))]
pub(super) async fn logs<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<LogParams>, QueryRejection>,
) -> ApiResult<Json<LogPageJson>> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(200) as usize;
    if limit == 0 || limit > MAX_LOG_PAGE {
        return Err(Problem::invalid(
            "limit",
            format!("from 1 to {MAX_LOG_PAGE}"),
        ));
    }
    let from = q
        .from
        .as_deref()
        .map(|s| parse_cursor("from", s))
        .transpose()?;
    let before = q
        .before
        .as_deref()
        .map(|s| parse_cursor("before", s))
        .transpose()?;
    let c = caller.on(&api);
    let job = c.job(&id).await?;
    let id: JobId = job.id.parse().map_err(|e| Problem::invalid("id", e))?;
    let store = api.jobs.engine().store();
    let read = |from: LogCursor, n: usize| async move {
        store
            .read_logs(id, from, n)
            .await
            .map_err(|e| Problem::from(Status::internal(e.to_string())))
    };
    let backwards = before.is_some() || (from.is_none() && q.tail.unwrap_or(false));
    let (mut entries, truncated) = if backwards {
        let bound = before.map_or(u128::MAX, key);
        match last_before(&**store, id, bound).await? {
            None => (
                Vec::new(),
                read(LogCursor::default(), 1).await?.truncated_bytes,
            ),
            Some(last) => {
                let last = unkey(last);
                let start = LogCursor {
                    attempt: last.attempt,
                    seq: last.seq.saturating_sub(limit as u64 - 1),
                };
                let page = read(start, limit).await?;
                let mut es: Vec<LogEntry> = page
                    .entries
                    .into_iter()
                    .filter(|e| key(e.cursor) < bound)
                    .collect();
                // The newest chunks win when the page is too large.
                let fit = fitting(es.iter().rev());
                es.drain(..es.len() - fit);
                (es, page.truncated_bytes)
            }
        }
    } else {
        let page = read(from.unwrap_or_default(), limit).await?;
        let mut es = page.entries;
        es.truncate(fitting(es.iter()));
        (es, page.truncated_bytes)
    };
    let next = match entries.last() {
        Some(e) => LogCursor {
            attempt: e.cursor.attempt,
            seq: e.cursor.seq + 1,
        },
        None if backwards => before.unwrap_or_default(),
        None => from.unwrap_or_default(),
    };
    // Something earlier exists unless this page starts at the very first
    // chunk.
    let previous = match entries.first() {
        Some(e) => {
            let first = read(LogCursor::default(), 1).await?;
            let at_start = first.entries.first().is_none_or(|f| f.cursor == e.cursor);
            (!at_start).then(|| cursor_text(e.cursor))
        }
        None => None,
    };
    Ok(Json(LogPageJson {
        chunks: entries.drain(..).map(chunk_json).collect(),
        next: cursor_text(next),
        previous,
        truncated_bytes: truncated,
    }))
}

/// Where a followed log starts.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct FollowParams {
    /// From this position (`attempt:seq`, inclusive); `Last-Event-ID`
    /// (the last chunk seen) takes precedence.
    from: Option<String>,
}

pub(super) fn last_event_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

pub(super) fn problem_event(s: Status) -> Event {
    let p = Problem::from(s);
    Event::default()
        .event("error")
        .json_data(&p.1)
        .unwrap_or_else(|_| Event::default().event("error"))
}

pub(super) fn sse<St>(stream: St) -> Response
where
    St: Stream<Item = Event> + Send + 'static,
{
    let mut r = Sse::new(stream.map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Proxies must not hold events back.
    r.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// Follow a job's output as Server-Sent Events: `log` events (data: a
/// chunk, id: `attempt:seq`) until the job ends and its output is
/// complete (`end`), or `error` (problem details).
#[utoipa::path(get, path = "/api/v1/jobs/{id}/logs/stream", tag = "jobs",
    params(("id" = String, Path, description = "The job's id"), FollowParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this chunk (`attempt:seq`)")),
    responses((status = 200, description = "An event stream of chunks", body = String, content_type = "text/event-stream"), Problems))]
pub(super) async fn follow_logs<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<FollowParams>, QueryRejection>,
) -> ApiResult<Response> {
    let q = query(q)?;
    let from = match last_event_id(&caller.headers) {
        Some(last) => {
            let c = parse_cursor("Last-Event-ID", last)?;
            LogCursor {
                attempt: c.attempt,
                seq: c.seq + 1,
            }
        }
        None => q
            .from
            .as_deref()
            .map(|s| parse_cursor("from", s))
            .transpose()?
            .unwrap_or_default(),
    };
    let c = caller.on(&api);
    let chunks = c
        .api
        .jobs
        .logs(c.req(proto::LogsRequest {
            job_id: id,
            from_attempt: from.attempt,
            from_seq: from.seq,
            follow: true,
        })?)
        .await?
        .into_inner();
    let events = chunks
        .map(|r| match r {
            Ok(ch) => {
                let j = LogChunkJson {
                    attempt: ch.attempt,
                    seq: ch.seq,
                    stream: match proto::LogStream::try_from(ch.stream) {
                        Ok(proto::LogStream::Stderr) => "stderr",
                        Ok(proto::LogStream::System) => "system",
                        _ => "stdout",
                    }
                    .into(),
                    at_ms: ch.at_ms,
                    text: String::from_utf8_lossy(&ch.data).into_owned(),
                };
                Event::default()
                    .event("log")
                    .id(format!("{}:{}", ch.attempt, ch.seq))
                    .json_data(&j)
                    .unwrap_or_else(|_| Event::default().event("log"))
            }
            Err(s) => problem_event(s),
        })
        .chain(futures::stream::once(async {
            Event::default().event("end").data("")
        }));
    Ok(sse(events))
}

/// What to watch.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct WatchParams {
    /// Only this job's changes; the stream ends once it is final.
    job_id: Option<String>,
    /// With `job_id`: send its current state first.
    include_current: Option<bool>,
}

/// Watch jobs change state, as Server-Sent Events: `job` events (data: the
/// change, id: its place on the bus; reconnect with `Last-Event-ID` to
/// resume after it), `error` (problem details; `410`-like data loss
/// when the watcher fell too far behind).
#[utoipa::path(get, path = "/api/v1/events", tag = "jobs", params(WatchParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event")),
    responses((status = 200, description = "An event stream of state changes", body = String, content_type = "text/event-stream"), Problems))]
pub(super) async fn watch<S: Store>(
    State(api): State<Arc<Api<S>>>,
    caller: Caller,
    q: Result<Query<WatchParams>, QueryRejection>,
) -> ApiResult<Response> {
    let q = query(q)?;
    let from_seq = match last_event_id(&caller.headers) {
        Some(last) => Some(
            last.parse::<u64>().map_err(|_| {
                Problem::invalid("Last-Event-ID", format!("{last:?} is not an event id"))
            })? + 1,
        ),
        None => None,
    };
    let c = caller.on(&api);
    let changes = c
        .api
        .jobs
        .watch(c.req(proto::WatchRequest {
            job_id: q.job_id.unwrap_or_default(),
            include_current: q.include_current.unwrap_or(false),
            from_seq,
        })?)
        .await?
        .into_inner();
    let events = changes.map(|r| match r {
        Ok(e) => {
            let seq = e.seq;
            let current = e.seq == 0 && e.from == e.to;
            let j: JobEventJson = e.into();
            let ev = Event::default().event("job");
            // The current state sent first is no place on the bus.
            let ev = if current { ev } else { ev.id(seq.to_string()) };
            ev.json_data(&j)
                .unwrap_or_else(|_| Event::default().event("job"))
        }
        Err(s) => problem_event(s),
    });
    Ok(sse(events))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_order_as_the_store_does() {
        let a = LogCursor {
            attempt: 1,
            seq: u64::MAX,
        };
        let b = LogCursor { attempt: 2, seq: 0 };
        assert!(key(a) < key(b));
        assert_eq!(unkey(key(a)), a);
        assert_eq!(
            parse_cursor("from", "2:17").unwrap(),
            LogCursor {
                attempt: 2,
                seq: 17
            }
        );
        assert!(parse_cursor("from", "2-17").is_err());
        assert!(parse_cursor("from", "x:1").is_err());
    }
}
