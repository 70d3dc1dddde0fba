//! `AdminService`: join tokens, client tokens, worker revocation and the
//! audit trail, for admin tokens. Every change is recorded in the audit
//! trail.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hodei_core::{TenantId, WorkerId};
use hodei_store::{AuditRecord, ChainCheck, Store};
use tonic::{Request, Response, Status};

use crate::proto;
use crate::server::security::audit_log::AuditLog;
use crate::server::security::auth::{Principal, Role, Scope};
use crate::server::security::{ClientTokenInfo, JoinTokenInfo, Security, SecurityError};

/// The admin service.
#[derive(Debug)]
pub struct AdminApi<S: Store> {
    security: Arc<Security<S>>,
    audit: Arc<AuditLog<S>>,
    store: Arc<S>,
}

impl<S: Store> AdminApi<S> {
    /// The service over `security` and the audit trail in `store`, for
    /// callers with an admin token; what it changes is recorded in
    /// `audit`.
    pub fn new(security: Arc<Security<S>>, audit: Arc<AuditLog<S>>, store: Arc<S>) -> Self {
        AdminApi {
            security,
            audit,
            store,
        }
    }
}

fn join_wire(i: JoinTokenInfo) -> proto::JoinTokenInfo {
    proto::JoinTokenInfo {
        id: i.id,
        created_at_ms: i.created_ms,
        expires_at_ms: i.expires_ms.unwrap_or(0),
        revoked_at_ms: i.revoked_ms.unwrap_or(0),
    }
}

fn token_wire(i: ClientTokenInfo) -> proto::TokenInfo {
    proto::TokenInfo {
        id: i.id,
        role: i.role.to_string(),
        tenants: match i.scope {
            Scope::All => vec!["*".into()],
            Scope::Tenants(ts) => ts.iter().map(|t| t.as_str().to_string()).collect(),
        },
        name: i.name,
        created_at_ms: i.created_ms,
        expires_at_ms: i.expires_ms.unwrap_or(0),
        revoked_at_ms: i.revoked_ms.unwrap_or(0),
    }
}

fn audit_wire(r: AuditRecord) -> proto::AuditRecord {
    proto::AuditRecord {
        index: r.index,
        at_ms: r.entry.at.as_millis(),
        actor: r.entry.actor,
        action: r.entry.action,
        target: r.entry.target,
        outcome: r.entry.outcome,
        peer: r.entry.peer,
        detail: r.entry.detail,
        hash: r.hash.to_vec(),
    }
}

fn status(e: SecurityError) -> Status {
    match e {
        SecurityError::UnknownJoinToken(_) | SecurityError::UnknownToken(_) => {
            Status::not_found(e.to_string())
        }
        SecurityError::Invalid(..) => Status::invalid_argument(e.to_string()),
        SecurityError::NoTls => Status::failed_precondition(e.to_string()),
        _ => Status::unavailable(e.to_string()),
    }
}

fn store_status(e: hodei_store::StoreError) -> Status {
    Status::unavailable(e.to_string())
}

impl<S: Store> AdminApi<S> {
    /// The caller, if it is an admin; refusals are recorded.
    async fn admin<T>(&self, r: &Request<T>, action: &str) -> Result<Principal, Status> {
        let peer = r.remote_addr();
        match self.security.authenticate_client(r.metadata()) {
            Ok(p) if p.is_admin() => Ok(p),
            Ok(p) => {
                let refused = Status::permission_denied(format!(
                    "{action} needs an admin token; this one is {}",
                    p.role
                ));
                let r = Err::<(), _>(refused.clone());
                self.audit.call(&p, action, "", peer, &r).await;
                Err(refused)
            }
            Err(e) => {
                self.audit.refused(action, peer, &e).await;
                Err(e.into())
            }
        }
    }

    async fn done<T>(
        &self,
        p: &Principal,
        action: &str,
        target: &str,
        peer: Option<SocketAddr>,
        r: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        self.audit.call(p, action, target, peer, &r).await;
        r.map(Response::new)
    }

    /// The index of the first record at or after `since_ms`: the chain is
    /// in append order, so its times only grow (to the clock's accuracy).
    async fn first_since(&self, since_ms: u64) -> Result<u64, Status> {
        let (mut lo, mut hi) = (0u64, self.audit_len().await?);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let r = self
                .store
                .audit_records(mid, 1)
                .await
                .map_err(store_status)?;
            match r.first() {
                Some(r) if r.entry.at.as_millis() < since_ms => lo = mid + 1,
                _ => hi = mid,
            }
        }
        Ok(lo)
    }

    async fn audit_len(&self) -> Result<u64, Status> {
        // Doubling, then halving, on indexes: a few reads for any length.
        let (mut lo, mut hi) = (0u64, 1u64);
        while !self
            .store
            .audit_records(hi - 1, 1)
            .await
            .map_err(store_status)?
            .is_empty()
        {
            lo = hi;
            hi = hi.saturating_mul(2);
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self
                .store
                .audit_records(mid, 1)
                .await
                .map_err(store_status)?
                .is_empty()
            {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }
}

/// The longest lifetime a token may be given: ten years.
const MAX_TTL_SECONDS: u64 = 10 * 366 * 24 * 3600;

/// A token's lifetime from `ttl_seconds` (0: none).
fn ttl_of(ttl_seconds: u64) -> Result<Option<Duration>, Status> {
    if ttl_seconds > MAX_TTL_SECONDS {
        return Err(Status::invalid_argument(format!(
            "ttl_seconds: at most {MAX_TTL_SECONDS} (ten years), got {ttl_seconds}"
        )));
    }
    Ok((ttl_seconds > 0).then(|| Duration::from_secs(ttl_seconds)))
}

#[tonic::async_trait]
impl<S: Store> proto::admin_service_server::AdminService for AdminApi<S> {
    async fn create_join_token(
        &self,
        request: Request<proto::CreateJoinTokenRequest>,
    ) -> Result<Response<proto::CreatedJoinToken>, Status> {
        let p = self.admin(&request, "create join token").await?;
        let peer = request.remote_addr();
        let r = request.into_inner();
        let ttl = match ttl_of(r.ttl_seconds) {
            Ok(t) => t,
            Err(e) => return self.done(&p, "create join token", "", peer, Err(e)).await,
        };
        let made = self
            .security
            .create_join(ttl, r.rotate)
            .await
            .map_err(status);
        let target = made.as_ref().map(|(i, _)| i.id.clone()).unwrap_or_default();
        let action = if r.rotate {
            "rotate join tokens"
        } else {
            "create join token"
        };
        let out = made.map(|(info, token)| proto::CreatedJoinToken {
            info: Some(join_wire(info)),
            token,
        });
        self.done(&p, action, &target, peer, out).await
    }

    async fn list_join_tokens(
        &self,
        request: Request<proto::ListJoinTokensRequest>,
    ) -> Result<Response<proto::ListJoinTokensResponse>, Status> {
        self.admin(&request, "list join tokens").await?;
        Ok(Response::new(proto::ListJoinTokensResponse {
            tokens: self
                .security
                .list_join()
                .into_iter()
                .map(join_wire)
                .collect(),
        }))
    }

    async fn revoke_join_token(
        &self,
        request: Request<proto::RevokeJoinTokenRequest>,
    ) -> Result<Response<proto::JoinTokenInfo>, Status> {
        let p = self.admin(&request, "revoke join token").await?;
        let peer = request.remote_addr();
        let id = request.into_inner().id;
        let r = self
            .security
            .revoke_join(&id)
            .await
            .map(join_wire)
            .map_err(status);
        self.done(&p, "revoke join token", &id, peer, r).await
    }

    async fn revoke_worker(
        &self,
        request: Request<proto::RevokeWorkerRequest>,
    ) -> Result<Response<proto::RevokeWorkerResponse>, Status> {
        let p = self.admin(&request, "revoke worker").await?;
        let peer = request.remote_addr();
        let id = request.into_inner().worker_id;
        let r = async {
            let worker: WorkerId = id
                .parse()
                .map_err(|e| Status::invalid_argument(format!("worker_id: {e}")))?;
            let disconnected = self.security.revoke_worker(worker).await.map_err(status)?;
            Ok(proto::RevokeWorkerResponse {
                worker_id: worker.to_string(),
                disconnected,
            })
        }
        .await;
        self.done(&p, "revoke worker", &id, peer, r).await
    }

    async fn create_token(
        &self,
        request: Request<proto::CreateTokenRequest>,
    ) -> Result<Response<proto::CreatedToken>, Status> {
        let p = self.admin(&request, "create token").await?;
        let peer = request.remote_addr();
        let r = request.into_inner();
        let made = async {
            let role: Role = r
                .role
                .parse()
                .map_err(|e: String| Status::invalid_argument(format!("role: {e}")))?;
            let scope = if r.tenants.iter().any(|t| t == "*") {
                Scope::All
            } else {
                let mut ts = Vec::with_capacity(r.tenants.len());
                for t in &r.tenants {
                    ts.push(
                        t.parse::<TenantId>()
                            .map_err(|e| Status::invalid_argument(format!("tenants: {e}")))?,
                    );
                }
                Scope::Tenants(ts)
            };
            let ttl = ttl_of(r.ttl_seconds)?;
            let (info, token) = self
                .security
                .create_token(role, scope, &r.name, ttl)
                .await
                .map_err(status)?;
            Ok(proto::CreatedToken {
                info: Some(token_wire(info)),
                token,
            })
        }
        .await;
        let target = made
            .as_ref()
            .ok()
            .and_then(|m| m.info.as_ref())
            .map(|i| format!("token:{} ({})", i.id, i.role))
            .unwrap_or_default();
        self.done(&p, "create token", &target, peer, made).await
    }

    async fn list_tokens(
        &self,
        request: Request<proto::ListTokensRequest>,
    ) -> Result<Response<proto::ListTokensResponse>, Status> {
        self.admin(&request, "list tokens").await?;
        Ok(Response::new(proto::ListTokensResponse {
            tokens: self
                .security
                .list_tokens()
                .into_iter()
                .map(token_wire)
                .collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<proto::RevokeTokenRequest>,
    ) -> Result<Response<proto::TokenInfo>, Status> {
        let p = self.admin(&request, "revoke token").await?;
        let peer = request.remote_addr();
        let id = request.into_inner().id;
        let r = self
            .security
            .revoke_token(&id)
            .await
            .map(token_wire)
            .map_err(status);
        self.done(&p, "revoke token", &format!("token:{id}"), peer, r)
            .await
    }

    async fn list_audit(
        &self,
        request: Request<proto::ListAuditRequest>,
    ) -> Result<Response<proto::ListAuditResponse>, Status> {
        self.admin(&request, "read audit").await?;
        let r = request.into_inner();
        if r.limit > 1000 {
            return Err(Status::invalid_argument("limit: at most 1000"));
        }
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        let from = if r.since_ms > 0 {
            self.first_since(r.since_ms).await?
        } else {
            r.from_index
        };
        let records = self
            .store
            .audit_records(from, limit)
            .await
            .map_err(store_status)?;
        let next = records.last().map(|l| l.index + 1).unwrap_or(from);
        Ok(Response::new(proto::ListAuditResponse {
            records: records.into_iter().map(audit_wire).collect(),
            next_index: next,
        }))
    }

    async fn verify_audit(
        &self,
        request: Request<proto::VerifyAuditRequest>,
    ) -> Result<Response<proto::VerifyAuditResponse>, Status> {
        self.admin(&request, "verify audit").await?;
        let check = self.store.verify_audit().await.map_err(store_status)?;
        Ok(Response::new(match check {
            ChainCheck::Intact { records } => proto::VerifyAuditResponse {
                intact: true,
                records,
                broken_at: 0,
                reason: String::new(),
            },
            ChainCheck::Broken { index, reason } => proto::VerifyAuditResponse {
                intact: false,
                records: 0,
                broken_at: index,
                reason,
            },
        }))
    }
}
