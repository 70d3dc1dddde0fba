//! A client of the Hodei API, for the CLI, agents and programs.

use hodei_core::{JobId, JobSpec, WorkerId};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};

use crate::proto;
use crate::proto::job_service_client::JobServiceClient;
use crate::proto::worker_service_client::WorkerServiceClient;
use crate::tls::{ClientTls, TlsError};
use crate::wire::spec_to_wire;

/// Why a client could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The endpoint is not a valid URI (`http://host:port`).
    #[error("endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// What was given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token cannot travel as metadata (it must be printable ASCII).
    #[error("token: must be printable ASCII")]
    Token,
    /// The TLS settings do not fit the endpoint, or cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Connecting failed.
    #[error("connect: {}", chain(.0))]
    Connect(#[from] tonic::transport::Error),
    /// None of the servers given leads (or answers): each one's reason.
    #[error("no leading server: {0}")]
    NoLeader(String),
}

/// The error and its causes on one line: a TLS refusal is in the causes.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Adds `authorization: Bearer <token>` to every call (or nothing, for
/// callers identified by their certificate).
#[derive(Clone, Debug)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// The interceptor for `token`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Token`] if the token is not printable ASCII.
    pub fn new(token: &str) -> Result<Self, ClientError> {
        MetadataValue::try_from(format!("Bearer {token}"))
            .map(|v| BearerToken(Some(v)))
            .map_err(|_| ClientError::Token)
    }

    /// No token: the caller is identified by its client certificate.
    pub fn none() -> Self {
        BearerToken(None)
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The generated job client with the token attached.
pub type JobClient = JobServiceClient<InterceptedService<Channel, BearerToken>>;
/// The generated worker client (with the join token attached on a
/// plaintext connection).
pub type AgentClient = WorkerServiceClient<InterceptedService<Channel, BearerToken>>;

/// How often a connection is pinged, and how long a ping may go
/// unanswered before the connection counts as lost.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(4);

/// The metadata a standby server answers with: where the leader serves.
pub const LEADER_HINT: &str = "hodei-leader";

/// The endpoints in a comma-separated list (`--server a,b,c`), trimmed,
/// empty ones left out.
pub fn endpoints(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(String::from)
        .collect()
}

/// Where the leader is, if `status` came from a standby that knows.
pub fn leader_hint(status: &Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_HINT)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(String::from)
}

/// Connects to whichever of `endpoints` leads: each is asked the gRPC
/// health of the server as a whole; a standby answers UNAVAILABLE naming
/// the leader, which is tried next. Returns the channel and the endpoint.
///
/// # Errors
///
/// The last endpoint's error when none leads or answers (every
/// endpoint's reason is in it).
pub async fn leader_channel(
    endpoints: &[String],
    tls: &ClientTls,
) -> Result<(Channel, String), ClientError> {
    use futures::StreamExt as _;
    // All at once: a server that hangs (a stopped process) costs no more
    // than the answer of the others.
    let mut probes: futures::stream::FuturesUnordered<_> =
        endpoints.iter().map(|ep| probe(ep.clone(), tls)).collect();
    let mut asked: Vec<String> = endpoints.to_vec();
    let mut reasons: Vec<String> = Vec::new();
    while let Some((ep, outcome)) = probes.next().await {
        match outcome {
            Ok(ch) => return Ok((ch, ep)),
            Err((reason, hint)) => {
                reasons.push(format!("{ep}: {reason}"));
                if let Some(h) = hint.filter(|h| !asked.contains(h)) {
                    asked.push(h.clone());
                    probes.push(probe(h, tls));
                }
            }
        }
    }
    Err(ClientError::NoLeader(reasons.join("; ")))
}

/// How long one server may take to say whether it leads.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Asks `ep` whether it leads: its channel if so, else why not and the
/// leader it names.
async fn probe(ep: String, tls: &ClientTls) -> (String, Result<Channel, (String, Option<String>)>) {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    let ask = async {
        let ch = channel(&ep, tls).await.map_err(|e| (e.to_string(), None))?;
        let mut health = HealthClient::new(ch.clone());
        let r = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|s| (s.message().to_string(), leader_hint(&s)))?;
        if r.get_ref().status == ServingStatus::Serving as i32 {
            Ok(ch)
        } else {
            Err(("not serving (shutting down)".to_string(), None))
        }
    };
    let outcome = tokio::time::timeout(PROBE_TIMEOUT, ask)
        .await
        .unwrap_or_else(|_| Err((format!("no answer in {PROBE_TIMEOUT:?}"), None)));
    (ep, outcome)
}

/// A channel to `endpoint` secured by `tls`.
///
/// # Errors
///
/// [`ClientError`]: a bad endpoint, TLS settings that do not fit it, or no
/// connection (a refused handshake names its cause).
pub async fn channel(endpoint: &str, tls: &ClientTls) -> Result<Channel, ClientError> {
    let ep = Endpoint::from_shared(endpoint.to_string()).map_err(|e| ClientError::Endpoint {
        endpoint: endpoint.to_string(),
        reason: e.to_string(),
    })?;
    Ok(tls
        .apply(ep)?
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        // A server that stops answering (a stopped process, a cut
        // network) is noticed within seconds, so agents and watchers move
        // to the next server instead of waiting on a dead stream.
        .http2_keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE)
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await?)
}

/// Connects an agent (to the leader, when `endpoint` lists several
/// servers, comma-separated): with a bearer token (its join token, to join or on a
/// plaintext connection) or, with `None`, identified by the client
/// certificate in `tls`.
///
/// # Errors
///
/// [`ClientError`]: a bad endpoint, a bad token, or no connection.
pub async fn connect_agent(
    endpoint: &str,
    tls: &ClientTls,
    token: Option<&str>,
) -> Result<AgentClient, ClientError> {
    let token = match token {
        Some(t) => BearerToken::new(t)?,
        None => BearerToken::none(),
    };
    let list = endpoints(endpoint);
    let channel = if list.len() > 1 {
        leader_channel(&list, tls).await?.0
    } else {
        channel(endpoint, tls).await?
    };
    Ok(WorkerServiceClient::with_interceptor(channel, token))
}

/// The generated admin client with the token attached.
pub type AdminClient = crate::proto::admin_service_client::AdminServiceClient<
    InterceptedService<Channel, BearerToken>,
>;

/// The job API, with typed helpers over the generated client.
#[derive(Clone, Debug)]
pub struct Client {
    inner: JobClient,
    admin: AdminClient,
}

impl Client {
    /// Connects to `endpoint` (`https://host:port`, or `http://` for a
    /// plaintext server) with a client token. `endpoint` may list several
    /// servers, comma-separated: the one that leads is used (see
    /// [`leader_channel`]).
    ///
    /// # Errors
    ///
    /// [`ClientError`]: a bad endpoint, TLS settings that do not fit it, a
    /// bad token, or no connection (to a leader, given several).
    pub async fn connect(
        endpoint: &str,
        tls: &ClientTls,
        token: &str,
    ) -> Result<Self, ClientError> {
        let token = BearerToken::new(token)?;
        let list = endpoints(endpoint);
        let channel = if list.len() > 1 {
            leader_channel(&list, tls).await?.0
        } else {
            channel(endpoint, tls).await?
        };
        Ok(Client {
            inner: JobServiceClient::with_interceptor(channel.clone(), token.clone()),
            admin: crate::proto::admin_service_client::AdminServiceClient::with_interceptor(
                channel, token,
            ),
        })
    }

    /// The admin API (join tokens, worker revocation) on the same
    /// connection and token.
    pub fn admin(&mut self) -> &mut AdminClient {
        &mut self.admin
    }

    /// The generated client, for calls the helpers do not cover.
    pub fn raw(&mut self) -> &mut JobClient {
        &mut self.inner
    }

    /// Submits a job; returns it and whether it is new (false when an
    /// earlier submission with the same idempotency key is returned).
    ///
    /// # Errors
    ///
    /// The server's status: INVALID_ARGUMENT naming the field, UNAUTHENTICATED,
    /// PERMISSION_DENIED, UNAVAILABLE while it stops.
    pub async fn submit(&mut self, spec: &JobSpec) -> Result<(proto::Job, bool), Status> {
        let r = self
            .inner
            .submit(proto::SubmitRequest {
                spec: Some(spec_to_wire(spec, true)),
            })
            .await?
            .into_inner();
        let job = r
            .job
            .ok_or_else(|| Status::internal("submit: no job in the response"))?;
        Ok((job, r.created))
    }

    /// A job.
    ///
    /// # Errors
    ///
    /// NOT_FOUND for an unknown job or another tenant's; the server's status
    /// otherwise.
    pub async fn get(&mut self, job: JobId) -> Result<proto::Job, Status> {
        Ok(self
            .inner
            .get(proto::GetRequest {
                job_id: job.to_string(),
            })
            .await?
            .into_inner())
    }

    /// A page of jobs.
    ///
    /// # Errors
    ///
    /// INVALID_ARGUMENT for a bad filter or page token; the server's status
    /// otherwise.
    pub async fn list(&mut self, req: proto::ListRequest) -> Result<proto::ListResponse, Status> {
        Ok(self.inner.list(req).await?.into_inner())
    }

    /// Cancels a job; returns it as it is now.
    ///
    /// # Errors
    ///
    /// NOT_FOUND for an unknown job or another tenant's; FAILED_PRECONDITION
    /// for a job already final; the server's status otherwise.
    pub async fn cancel(&mut self, job: JobId) -> Result<proto::Job, Status> {
        Ok(self
            .inner
            .cancel(proto::CancelRequest {
                job_id: job.to_string(),
            })
            .await?
            .into_inner())
    }

    /// State changes of one job (or all the caller may see).
    ///
    /// # Errors
    ///
    /// The server's status when the stream cannot start; errors on the stream
    /// itself come from the stream.
    pub async fn watch(
        &mut self,
        job: Option<JobId>,
        include_current: bool,
    ) -> Result<Streaming<proto::JobEvent>, Status> {
        Ok(self
            .inner
            .watch(proto::WatchRequest {
                job_id: job.map(|j| j.to_string()).unwrap_or_default(),
                include_current,
                from_seq: None,
            })
            .await?
            .into_inner())
    }

    /// A job's stored output, then (with `follow`) its output as it comes,
    /// until the job ends.
    ///
    /// # Errors
    ///
    /// NOT_FOUND for an unknown job or another tenant's; the server's status
    /// otherwise.
    pub async fn logs(
        &mut self,
        job: JobId,
        follow: bool,
    ) -> Result<Streaming<proto::LogChunk>, Status> {
        Ok(self
            .inner
            .logs(proto::LogsRequest {
                job_id: job.to_string(),
                from_attempt: 0,
                from_seq: 0,
                follow,
            })
            .await?
            .into_inner())
    }

    /// The cluster's workers.
    ///
    /// # Errors
    ///
    /// The server's status (UNAUTHENTICATED, UNAVAILABLE).
    pub async fn workers(&mut self) -> Result<Vec<proto::Worker>, Status> {
        Ok(self
            .inner
            .list_workers(proto::ListWorkersRequest {})
            .await?
            .into_inner()
            .workers)
    }

    /// Stops placing new jobs on a worker (admin tokens).
    ///
    /// # Errors
    ///
    /// PERMISSION_DENIED for a token that is not the admin's; NOT_FOUND for an
    /// unknown worker.
    pub async fn drain(&mut self, worker: WorkerId) -> Result<proto::Worker, Status> {
        Ok(self
            .inner
            .drain_worker(proto::DrainWorkerRequest {
                worker_id: worker.to_string(),
            })
            .await?
            .into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_lists_are_trimmed_and_empty_ones_dropped() {
        assert_eq!(
            endpoints(" https://a:1, https://b:2 ,,https://c:3,"),
            ["https://a:1", "https://b:2", "https://c:3"]
        );
        assert_eq!(endpoints("https://a:1"), ["https://a:1"]);
        assert!(endpoints(" , ").is_empty());
    }

    #[test]
    fn a_standby_s_hint_is_read_from_its_metadata() {
        let mut s = Status::unavailable("standby");
        assert_eq!(leader_hint(&s), None);
        s.metadata_mut()
            .insert(LEADER_HINT, "https://10.0.0.2:7070".parse().unwrap());
        assert_eq!(leader_hint(&s).as_deref(), Some("https://10.0.0.2:7070"));
    }
}
