//! `AdminService`: join tokens and worker revocation, for admin tokens.

use std::sync::Arc;
use std::time::Duration;

use hodei_core::WorkerId;
use hodei_store::Store;
use tonic::{Request, Response, Status};

use super::auth::{Principal, Tokens};
use super::security::{JoinTokenInfo, Security, SecurityError};
use crate::proto;

/// The admin service.
#[derive(Debug)]
pub struct AdminApi<S> {
    tokens: Arc<Tokens>,
    security: Arc<Security<S>>,
}

impl<S> AdminApi<S> {
    /// The service over `security`, for callers with an admin token.
    pub fn new(tokens: Arc<Tokens>, security: Arc<Security<S>>) -> Self {
        AdminApi { tokens, security }
    }
}

fn to_wire(i: JoinTokenInfo) -> proto::JoinTokenInfo {
    proto::JoinTokenInfo {
        id: i.id,
        created_at_ms: i.created_ms,
        expires_at_ms: i.expires_ms.unwrap_or(0),
        revoked_at_ms: i.revoked_ms.unwrap_or(0),
    }
}

fn status(e: SecurityError) -> Status {
    match e {
        SecurityError::UnknownJoinToken(_) => Status::not_found(e.to_string()),
        SecurityError::NoTls => Status::failed_precondition(e.to_string()),
        _ => Status::unavailable(e.to_string()),
    }
}

impl<S> AdminApi<S> {
    fn admin<T>(&self, r: &Request<T>, what: &str) -> Result<(), Status> {
        match self.tokens.authenticate_client(r.metadata())? {
            Principal::Admin => Ok(()),
            _ => Err(Status::permission_denied(format!(
                "{what} needs an admin token"
            ))),
        }
    }
}

#[tonic::async_trait]
impl<S: Store> proto::admin_service_server::AdminService for AdminApi<S> {
    async fn create_join_token(
        &self,
        request: Request<proto::CreateJoinTokenRequest>,
    ) -> Result<Response<proto::CreatedJoinToken>, Status> {
        self.admin(&request, "creating a join token")?;
        let r = request.into_inner();
        let ttl = (r.ttl_seconds > 0).then(|| Duration::from_secs(r.ttl_seconds));
        let (info, token) = self
            .security
            .create_join(ttl, r.rotate)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::CreatedJoinToken {
            info: Some(to_wire(info)),
            token,
        }))
    }

    async fn list_join_tokens(
        &self,
        request: Request<proto::ListJoinTokensRequest>,
    ) -> Result<Response<proto::ListJoinTokensResponse>, Status> {
        self.admin(&request, "listing join tokens")?;
        Ok(Response::new(proto::ListJoinTokensResponse {
            tokens: self.security.list_join().into_iter().map(to_wire).collect(),
        }))
    }

    async fn revoke_join_token(
        &self,
        request: Request<proto::RevokeJoinTokenRequest>,
    ) -> Result<Response<proto::JoinTokenInfo>, Status> {
        self.admin(&request, "revoking a join token")?;
        let id = request.into_inner().id;
        let info = self.security.revoke_join(&id).await.map_err(status)?;
        Ok(Response::new(to_wire(info)))
    }

    async fn revoke_worker(
        &self,
        request: Request<proto::RevokeWorkerRequest>,
    ) -> Result<Response<proto::RevokeWorkerResponse>, Status> {
        self.admin(&request, "revoking a worker")?;
        let id = request.into_inner().worker_id;
        let worker: WorkerId = id
            .parse()
            .map_err(|e| Status::invalid_argument(format!("worker_id: {e}")))?;
        let disconnected = self.security.revoke_worker(worker).await.map_err(status)?;
        Ok(Response::new(proto::RevokeWorkerResponse {
            worker_id: worker.to_string(),
            disconnected,
        }))
    }
}
