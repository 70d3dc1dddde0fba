//! The Watch and Logs streams: a job's events and output, from the
//! store and then live from the bus.

use std::sync::Arc;

use hodei_core::{Event, JobId, Lifecycle, RecvError, Subscriber};
use hodei_store::{LogCursor, Store};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{JobApi, LOG_PAGE, STREAM_DEPTH};
use crate::proto;
use crate::wire::{log_stream_to_wire, state_to_wire};

/// The next bus event for a stream's task, or `None` when the task should
/// end: its client went away, or the server is stopping (the client is told
/// so first).
pub(super) async fn next_event<T>(
    sub: &mut Subscriber<Event>,
    stopping: &mut watch::Receiver<bool>,
    tx: &mpsc::Sender<Result<T, Status>>,
) -> Option<Result<Arc<Event>, RecvError>> {
    let next = tokio::select! {
        r = sub.recv() => Some(r),
        _ = stopping.wait_for(|s| *s) => None,
        _ = tx.closed() => return None,
    };
    if next.is_none() {
        let _ = tx
            .send(Err(Status::unavailable("the server is shutting down")))
            .await;
    }
    next
}

pub(super) async fn watch<S: Store>(
    api: &JobApi<S>,
    request: Request<proto::WatchRequest>,
) -> Result<Response<ReceiverStream<Result<proto::JobEvent, Status>>>, Status> {
    let p = api.principal(&request, "read").await?;
    let permit = api.limits.stream(&p.name)?;
    let r = request.into_inner();
    // Subscribe before reading the current state, so nothing between
    // the two is missed.
    let mut sub = match r.from_seq {
        Some(seq) => api.engine.bus().subscribe_from(seq),
        None => api.engine.bus().subscribe(),
    };
    // Watching one job: the stream ends (OK) once it is final. Read
    // once, after subscribing, so nothing between the two is missed.
    let watched = if r.job_id.is_empty() {
        None
    } else {
        Some(api.visible(&p, "job_id", &r.job_id).await?)
    };
    let only: Option<(JobId, u32)> = watched.as_ref().map(|j| (j.id, j.spec.retry.max_attempts));
    let (tx, rx) = mpsc::channel(STREAM_DEPTH);
    if let Some(job) = watched {
        if r.include_current {
            let now = state_to_wire(&job.state);
            let _ = tx
                .send(Ok(proto::JobEvent {
                    job_id: job.id.to_string(),
                    from: Some(now.clone()),
                    to: Some(now),
                    attempt: job.attempt,
                    at_ms: job.updated_at.as_millis(),
                    seq: 0,
                }))
                .await;
        }
        if job.is_terminal() && r.from_seq.is_none() {
            return Ok(Response::new(ReceiverStream::new(rx)));
        }
    }
    let mut stopping = api.stopping.clone();
    tokio::spawn(async move {
        // Counted against its caller while the stream is open.
        let _permit = permit;
        loop {
            let Some(next) = next_event(&mut sub, &mut stopping, &tx).await else {
                return;
            };
            let (seq, event) = match next {
                Ok(e) => (sub.position() - 1, e),
                Err(RecvError::Lagged(n)) => {
                    let _ = tx
                        .send(Err(Status::data_loss(format!(
                            "watch fell {n} events behind; resume with Get and watch again"
                        ))))
                        .await;
                    return;
                }
                Err(RecvError::Closed) => return,
            };
            if let Event::JobChanged {
                job,
                tenant,
                from,
                to,
                attempt,
                at,
            } = &*event
                && only.is_none_or(|(o, _)| o == *job)
                && p.may_access(tenant)
            {
                let last = only.is_some_and(|(_, max_attempts)| {
                    Lifecycle {
                        id: *job,
                        state: *to,
                        attempt: *attempt,
                        max_attempts,
                    }
                    .is_terminal()
                });
                let e = proto::JobEvent {
                    job_id: job.to_string(),
                    from: Some(state_to_wire(from)),
                    to: Some(state_to_wire(to)),
                    attempt: *attempt,
                    at_ms: at.as_millis(),
                    seq,
                };
                // A full queue means a slow client: it waits, and the
                // bus tells us if it falls too far behind.
                if tx.send(Ok(e)).await.is_err() || last {
                    return;
                }
            }
        }
    });
    Ok(Response::new(ReceiverStream::new(rx)))
}

pub(super) async fn logs<S: Store>(
    api: &JobApi<S>,
    request: Request<proto::LogsRequest>,
) -> Result<Response<ReceiverStream<Result<proto::LogChunk, Status>>>, Status> {
    let p = api.principal(&request, "read").await?;
    let permit = api.limits.stream(&p.name)?;
    let r = request.into_inner();
    let mut sub = api.engine.bus().subscribe();
    let job = api.visible(&p, "job_id", &r.job_id).await?;
    let store = Arc::clone(api.engine.store());
    let (tx, rx) = mpsc::channel(STREAM_DEPTH);
    let mut stopping = api.stopping.clone();
    tokio::spawn(async move {
        // Counted against its caller while the stream is open.
        let _permit = permit;
        let id = job.id;
        let mut cursor = LogCursor {
            attempt: r.from_attempt,
            seq: r.from_seq,
        };
        loop {
            // Everything stored from the cursor on.
            loop {
                let page = match store.read_logs(id, cursor, LOG_PAGE).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                let n = page.entries.len();
                for e in page.entries {
                    cursor = LogCursor {
                        attempt: e.cursor.attempt,
                        seq: e.cursor.seq + 1,
                    };
                    let c = proto::LogChunk {
                        attempt: e.cursor.attempt,
                        seq: e.cursor.seq,
                        stream: log_stream_to_wire(e.chunk.stream),
                        at_ms: e.chunk.at.as_millis(),
                        data: e.chunk.data,
                        truncated_bytes: page.truncated_bytes,
                    };
                    if tx.send(Ok(c)).await.is_err() {
                        return;
                    }
                }
                if n < LOG_PAGE {
                    break;
                }
            }
            if !r.follow {
                return;
            }
            match store.get_job(id).await {
                Ok(Some(j)) if j.is_terminal() => {
                    // One more read catches batches stored after the
                    // last one above; then the log is complete.
                    if let Ok(page) = store.read_logs(id, cursor, 1).await
                        && page.entries.is_empty()
                    {
                        return;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(_) => return,
            }
            // Wait for this job's next batch or state change.
            loop {
                let Some(next) = next_event(&mut sub, &mut stopping, &tx).await else {
                    return;
                };
                match next {
                    Ok(e) => match &*e {
                        Event::LogAppended { job, .. } | Event::JobChanged { job, .. }
                            if *job == id =>
                        {
                            break;
                        }
                        _ => {}
                    },
                    // Missed events: the store is the truth; read again.
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return,
                }
            }
        }
    });
    Ok(Response::new(ReceiverStream::new(rx)))
}
