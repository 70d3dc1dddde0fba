//! The connection: opening it (register, then Welcome first), and the
//! backoff between attempts.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use hodei_hwp::client::connect_agent;
use hodei_hwp::proto::{self, agent_message::Msg as Out, server_message::Msg as In};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::identity::Identity;

/// One live connection: the outbound queue and the server's stream.
pub(super) struct Conn {
    pub(super) tx: mpsc::Sender<proto::AgentMessage>,
    pub(super) inbound: tonic::Streaming<proto::ServerMessage>,
}

/// Messages queued toward the server at most; the window bounds bytes,
/// this bounds messages. Full: sending pauses until the next pump.
const OUTBOUND: usize = 1024;

/// A connection being opened.
pub(super) type Connecting =
    Pin<Box<dyn Future<Output = Result<(Conn, proto::Welcome), String>> + Send>>;

/// An agent message with `m` in it.
pub(super) fn msg(m: Out) -> proto::AgentMessage {
    proto::AgentMessage { msg: Some(m) }
}

/// Full jitter: a delay drawn uniformly below an exponentially growing cap,
/// so many agents cut off together do not come back together.
pub(super) fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let cap = min
        .saturating_mul(1u32 << failures.min(20))
        .min(max)
        .max(Duration::from_millis(1));
    cap.mul_f64(rand::random::<f64>())
}

/// Connects (joining first if the agent has no certificate yet),
/// registers, and waits for the Welcome.
pub(super) async fn open(
    server: String,
    identity: Identity,
    register: proto::Register,
) -> Result<(Conn, proto::Welcome), String> {
    let (tls, token) = identity.credentials().await.map_err(|e| e.to_string())?;
    let mut client = connect_agent(&server, &tls, token.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(OUTBOUND);
    tx.send(msg(Out::Register(register)))
        .await
        .map_err(|_| "stream closed".to_string())?;
    let mut inbound = client
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    match inbound.message().await {
        Ok(Some(proto::ServerMessage {
            msg: Some(In::Welcome(w)),
        })) => Ok((Conn { tx, inbound }, w)),
        Ok(_) => Err("the server did not send Welcome first".into()),
        Err(s) => Err(format!("{}: {}", s.code(), s.message())),
    }
}
