//! Roles, revocable tokens, JSON Web Tokens and the audit trail, over real
//! TLS on 127.0.0.1 with a real redb file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use hodei_agent::Shutdown;
use hodei_core::JobId;
use hodei_hwp::client::Client;
use hodei_hwp::proto::{self, JobStateKind};
use hodei_hwp::server::grpc::limits::LimitConfig;
use hodei_hwp::server::security::jwt::JwtConfig;
use tonic::Code;

async fn token(admin: &mut Client, role: &str, tenants: &[&str], ttl: u64) -> (String, String) {
    let r = admin
        .admin()
        .create_token(proto::CreateTokenRequest {
            role: role.into(),
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
            name: format!("{role} for tests"),
            ttl_seconds: ttl,
        })
        .await
        .unwrap()
        .into_inner();
    (r.info.unwrap().id, r.token)
}

fn job_for(tenant: &str, script: &str) -> hodei_core::JobSpec {
    let mut s = hodei_core::JobSpec::script(script);
    s.tenant = tenant.parse().unwrap();
    s
}

async fn count_jobs(admin: &mut Client) -> usize {
    admin
        .list(proto::ListRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .jobs
        .len()
}

#[test]
fn roles_allow_what_they_say_and_refusals_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let cl = Cluster::start(dir.path(), Duration::from_secs(3600)).await;
        let mut admin = cl.client(ADMIN).await;
        let agent = cl.agent("a1", cl.join_token());
        let worker = ready_workers(&mut admin, 1).await[0].id.clone();
        let (_, viewer) = token(&mut admin, "viewer", &["acme"], 0).await;
        let (sub_id, submitter) = token(&mut admin, "submitter", &["acme"], 0).await;
        let (_, operator) = token(&mut admin, "operator", &["acme", "globex"], 0).await;
        let (_, short) = token(&mut admin, "submitter", &["acme"], 1).await;

        // Two jobs to act on: acme's and globex's, sleeping.
        let (a, _) = admin.submit(&job_for("acme", "sleep 30")).await.unwrap();
        let (g, _) = admin.submit(&job_for("globex", "sleep 30")).await.unwrap();
        let (a, g): (JobId, JobId) = (a.id.parse().unwrap(), g.id.parse().unwrap());
        let before = count_jobs(&mut admin).await;

        // viewer: reads its tenant; submits, cancels, drains nothing.
        let mut v = cl.client(&viewer).await;
        assert!(v.get(a).await.is_ok());
        assert_eq!(v.get(g).await.unwrap_err().code(), Code::NotFound);
        let s = v.submit(&job_for("acme", "echo no")).await.unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
        assert_eq!(
            v.cancel(a).await.unwrap_err().code(),
            Code::PermissionDenied
        );
        let w: hodei_core::WorkerId = worker.parse().unwrap();
        assert_eq!(v.drain(w).await.unwrap_err().code(), Code::PermissionDenied);
        let s = v
            .admin()
            .list_tokens(proto::ListTokensRequest {})
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied);

        // submitter: its tenant only; cannot drain.
        let mut s = cl.client(&submitter).await;
        let (mine, _) = s.submit(&job_for("acme", "echo mine")).await.unwrap();
        assert_eq!(
            s.submit(&job_for("globex", "echo theirs"))
                .await
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        assert_eq!(s.cancel(g).await.unwrap_err().code(), Code::NotFound);
        assert_eq!(s.drain(w).await.unwrap_err().code(), Code::PermissionDenied);
        let mine: JobId = mine.id.parse().unwrap();
        wait_final(&mut admin, mine).await;

        // operator: cancels across its tenants, lists one at a time, drains;
        // submits nothing.
        let mut o = cl.client(&operator).await;
        assert_eq!(
            o.submit(&job_for("acme", "echo no"))
                .await
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        let all = o.list(proto::ListRequest::default()).await.unwrap_err();
        assert_eq!(all.code(), Code::InvalidArgument, "{all:?}");
        let globex = o
            .list(proto::ListRequest {
                tenant: "globex".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(globex.jobs.len(), 1);
        let other = o
            .list(proto::ListRequest {
                tenant: "initech".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(other.code(), Code::PermissionDenied);
        o.cancel(g).await.unwrap();
        assert_eq!(
            kind(&wait_final(&mut admin, g).await),
            JobStateKind::Cancelled
        );

        // Nothing the refusals asked for happened.
        assert_eq!(count_jobs(&mut admin).await, before + 1);

        // Revocation takes effect at once; expiry too.
        admin
            .admin()
            .revoke_token(proto::RevokeTokenRequest { id: sub_id })
            .await
            .unwrap();
        let e = s.get(mine).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(e.message().contains("revoked"), "{e:?}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let e = cl.client(&short).await.get(a).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(e.message().contains("expired"), "{e:?}");

        o.drain(w).await.unwrap();
        admin.cancel(a).await.unwrap();
        agent.stop(Shutdown::Drain).await;
        cl.stop().await;
        // Tokens are stored hashed: none of them is in the store's file.
        let file = std::fs::read(dir.path().join("hodei.redb")).unwrap();
        for t in [&viewer, &submitter, &operator] {
            assert!(
                !file.windows(t.len()).any(|w| w == t.as_bytes()),
                "a token is in the store in the clear"
            );
        }
    });
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(
    iss: &str,
    aud: &str,
    exp: u64,
    role: &str,
    tenant: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "sub": "alice@example.com", "iss": iss, "aud": aud, "exp": exp,
        "role": role, "tenant": tenant,
    })
}

fn sign(
    alg: jsonwebtoken::Algorithm,
    kid: Option<&str>,
    key: &jsonwebtoken::EncodingKey,
    c: &serde_json::Value,
) -> String {
    let mut h = jsonwebtoken::Header::new(alg);
    h.kid = kid.map(String::from);
    jsonwebtoken::encode(&h, c, key).unwrap()
}

/// Each algorithm with its key form: ES256 (PEM public key), EdDSA (PEM
/// public key), RS256 (a JWKS file). A good token maps to its role and
/// tenant; a wrong issuer, audience, expiry, signer or claim is refused.
#[test]
fn json_web_tokens_are_checked_and_mapped_to_a_role_and_tenant() {
    use jsonwebtoken::{Algorithm, EncodingKey};
    let dir = tempfile::tempdir().unwrap();
    let ec = rcgen::KeyPair::generate().unwrap();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    std::fs::write(dir.path().join("ec.pub"), ec.public_key_pem()).unwrap();
    std::fs::write(dir.path().join("ed.pub"), ed.public_key_pem()).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let rsa_priv = std::fs::read(fixtures.join("jwt-rsa-test-key.pem")).unwrap();
    let cases: Vec<(
        &str,
        Algorithm,
        Option<&str>,
        EncodingKey,
        std::path::PathBuf,
    )> = vec![
        (
            "es256",
            Algorithm::ES256,
            None,
            EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap(),
            dir.path().join("ec.pub"),
        ),
        (
            "eddsa",
            Algorithm::EdDSA,
            None,
            EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap(),
            dir.path().join("ed.pub"),
        ),
        (
            "rs256",
            Algorithm::RS256,
            Some("idp-rsa-1"),
            EncodingKey::from_rsa_pem(&rsa_priv).unwrap(),
            fixtures.join("jwt-rsa-test.jwks.json"),
        ),
    ];
    let stranger = rcgen::KeyPair::generate().unwrap();
    let stranger = EncodingKey::from_ec_pem(stranger.serialize_pem().as_bytes()).unwrap();
    for (name, alg, kid, key, public) in cases {
        let sub = dir.path().join(name);
        rt().block_on(async {
            let jwt =
                JwtConfig::from_file(&public, "https://idp.example", "hodei", "tenant", "role")
                    .unwrap();
            let cl = Cluster::start_jwt(&sub, jwt).await;
            let exp = now_s() + 600;
            let good = sign(
                alg,
                kid,
                &key,
                &claims(
                    "https://idp.example",
                    "hodei",
                    exp,
                    "submitter",
                    "acme".into(),
                ),
            );
            let mut c = cl.client(&good).await;
            let (j, _) = c.submit(&job_for("acme", "echo jwt")).await.unwrap();
            assert_eq!(j.spec.unwrap().tenant, "acme", "{name}");
            assert_eq!(
                c.submit(&job_for("globex", "echo no"))
                    .await
                    .unwrap_err()
                    .code(),
                Code::PermissionDenied,
                "{name}"
            );
            let viewer = sign(
                alg,
                kid,
                &key,
                &claims(
                    "https://idp.example",
                    "hodei",
                    exp,
                    "viewer",
                    serde_json::json!(["acme", "globex"]),
                ),
            );
            let e = cl
                .client(&viewer)
                .await
                .submit(&job_for("acme", "echo no"))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::PermissionDenied, "{name}");
            let refused = [
                (
                    "issuer",
                    sign(
                        alg,
                        kid,
                        &key,
                        &claims("https://evil.example", "hodei", exp, "admin", "*".into()),
                    ),
                ),
                (
                    "audience",
                    sign(
                        alg,
                        kid,
                        &key,
                        &claims("https://idp.example", "other", exp, "admin", "*".into()),
                    ),
                ),
                (
                    "expired",
                    sign(
                        alg,
                        kid,
                        &key,
                        &claims(
                            "https://idp.example",
                            "hodei",
                            now_s() - 600,
                            "admin",
                            "*".into(),
                        ),
                    ),
                ),
                (
                    "signer",
                    sign(
                        Algorithm::ES256,
                        kid,
                        &stranger,
                        &claims("https://idp.example", "hodei", exp, "admin", "*".into()),
                    ),
                ),
                (
                    "role",
                    sign(
                        alg,
                        kid,
                        &key,
                        &claims("https://idp.example", "hodei", exp, "root", "*".into()),
                    ),
                ),
            ];
            for (why, t) in refused {
                let e = cl
                    .client(&t)
                    .await
                    .get(j.id.parse().unwrap())
                    .await
                    .unwrap_err();
                assert_eq!(e.code(), Code::Unauthenticated, "{name} {why}: {e:?}");
            }
            cl.stop().await;
        });
    }
}

/// Every mutating call lands in the audit trail with who, what, to what,
/// the outcome and the peer; `hodei audit --verify` finds the chain
/// intact, then finds a record edited in the store file, and a record cut
/// from it.
#[test]
fn the_audit_trail_records_every_mutating_call_and_tampering_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let cl_url = rt().block_on(async {
        let cl = Cluster::start(dir.path(), Duration::from_secs(3600)).await;
        let url = cl.url.clone();
        let mut admin = cl.client(ADMIN).await;
        let agent = cl.agent("a1", cl.join_token());
        let worker = ready_workers(&mut admin, 1).await[0].id.clone();
        let (j, _) = admin.submit(&job_for("acme", "sleep 30")).await.unwrap();
        let job: JobId = j.id.parse().unwrap();
        admin.cancel(job).await.unwrap();
        admin.drain(worker.parse().unwrap()).await.unwrap();
        let (tid, _) = token(&mut admin, "viewer", &["acme"], 0).await;
        admin
            .admin()
            .revoke_token(proto::RevokeTokenRequest { id: tid.clone() })
            .await
            .unwrap();
        let _ = cl.client("not-a-token").await.get(job).await.unwrap_err();
        let (_, viewer) = token(&mut admin, "viewer", &["acme"], 0).await;
        let _ = cl.client(&viewer).await.cancel(job).await.unwrap_err();
        agent.stop(Shutdown::Drain).await;
        // Recorded with the next round: give it a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let recs = admin
            .admin()
            .list_audit(proto::ListAuditRequest {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .records;
        let find = |action: &str, target: &str, outcome: &str| {
            recs.iter()
                .find(|r| {
                    r.action == action
                        && r.target.contains(target)
                        && r.outcome.starts_with(outcome)
                })
                .unwrap_or_else(|| panic!("no {action} {target} {outcome} in {recs:#?}"))
                .clone()
        };
        let joined = find("worker join", &worker, "ok");
        assert!(joined.actor.starts_with("join-token:"), "{joined:?}");
        let submit = find("submit", &job.to_string(), "ok");
        assert_eq!(submit.actor, "admin (admin)");
        assert!(submit.peer.starts_with("127.0.0.1:"), "{submit:?}");
        find("cancel", &job.to_string(), "ok");
        find("drain", &worker, "ok");
        find("create token", &tid, "ok");
        find("revoke token", &tid, "ok");
        let refused = find("read", "", "refused");
        assert_eq!(refused.actor, "unauthenticated");
        let denied = find("cancel", &job.to_string(), "refused");
        assert!(denied.actor.contains("viewer"), "{denied:?}");
        // Times only grow; --since finds the first at or after a time.
        assert!(recs.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        let since = admin
            .admin()
            .list_audit(proto::ListAuditRequest {
                since_ms: submit.at_ms,
                limit: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(since.records[0].index <= submit.index);
        assert!(since.records[0].at_ms >= submit.at_ms);
        cl.stop().await;
        url
    });

    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_hodei"))
            .args(["--server", &cl_url, "--ca-file"])
            .arg(dir.path().join("tls/ca.crt"))
            .args(["--token", ADMIN])
            .args(args)
            .output()
            .unwrap()
    };
    let verify = |dir: &Path| -> (bool, String) {
        rt().block_on(async {
            let listener = tokio::net::TcpListener::bind(cl_url.trim_start_matches("https://"))
                .await
                .unwrap();
            let cl = Cluster::start_on(dir, Duration::from_secs(3600), listener).await;
            // Blocking here is fine: the server runs on the runtime's workers.
            let (v, list) = (cli(&["audit", "--verify"]), cli(&["audit", "--limit", "3"]));
            cl.stop().await;
            assert!(list.status.success(), "{list:?}");
            (
                v.status.success(),
                String::from_utf8_lossy(&v.stdout).into_owned(),
            )
        })
    };
    let (ok, text) = verify(dir.path());
    assert!(ok && text.contains("intact"), "{text}");

    // Edit one record in the file: its actor, same length, still valid.
    let db = dir.path().join("hodei.redb");
    edit_audit(&db, |records| {
        let (k, v) = records
            .iter()
            .find(|(_, v)| contains(v, b"admin (admin)"))
            .unwrap()
            .clone();
        let at = v.windows(13).position(|w| w == b"admin (admin)").unwrap();
        let mut v = v.clone();
        v[at..at + 5].copy_from_slice(b"eve  ");
        vec![(k, Some(v))]
    });
    let (ok, text) = verify(dir.path());
    assert!(!ok && text.contains("BROKEN"), "{text}");

    // Fresh copy of the trail, then cut its last record.
    let dir2 = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), dir2.path());
    edit_audit(&dir2.path().join("hodei.redb"), |records| {
        // Undo the edit above so only the cut shows.
        let mut out = Vec::new();
        if let Some((k, v)) = records.iter().find(|(_, v)| contains(v, b"eve   (admin)")) {
            let at = v.windows(13).position(|w| w == b"eve   (admin)").unwrap();
            let mut v = v.clone();
            v[at..at + 5].copy_from_slice(b"admin");
            out.push((k.clone(), Some(v)));
        }
        let last = records.last().unwrap().0.clone();
        out.push((last, None));
        out
    });
    let (ok, text) = verify(dir2.path());
    assert!(!ok && text.contains("BROKEN"), "{text}");
}

fn contains(v: &[u8], needle: &[u8]) -> bool {
    v.windows(needle.len()).any(|w| w == needle)
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// Changes the audit table of a stopped server's store directly, as an
/// intruder with the file would: `f` sees every record and says which to
/// replace (`Some`) or remove (`None`).
fn edit_audit(db: &Path, f: impl FnOnce(&Records) -> Vec<(Vec<u8>, Option<Vec<u8>>)>) {
    use redb::{ReadableTable, TableDefinition};
    let def: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("audit");
    let db = redb::Database::open(db).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(def).unwrap();
        let records: Records = t
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value().to_vec(), v.value().to_vec())
            })
            .collect();
        for (k, v) in f(&records) {
            match v {
                Some(v) => {
                    t.insert(k.as_slice(), v.as_slice()).unwrap();
                }
                None => {
                    t.remove(k.as_slice()).unwrap();
                }
            }
        }
    }
    txn.commit().unwrap();
}

/// One client flooding Submit, or opening more Watch and Logs streams than
/// it may, is answered RESOURCE_EXHAUSTED; another client is served all
/// the while. An agent holds one connection at a time: a second one with
/// the same certificate takes over and the first is closed.
#[test]
fn limits_per_caller_keep_a_flooding_client_from_starving_the_others() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let cl = Cluster::start_limited(dir.path(), LimitConfig::new(20.0, 5)).await;
        let mut admin = cl.client(ADMIN).await;
        let (_, flood) = token(&mut admin, "submitter", &["acme"], 0).await;
        let (_, calm) = token(&mut admin, "submitter", &["acme"], 0).await;
        let mut f = cl.client(&flood).await;
        let mut exhausted = 0;
        let mut accepted = 0;
        for i in 0..200 {
            match f.submit(&job_for("acme", &format!("echo {i}"))).await {
                Ok(_) => accepted += 1,
                Err(e) => {
                    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                    assert!(e.message().contains("retry in"), "{e:?}");
                    exhausted += 1;
                }
            }
        }
        assert!(
            exhausted > 100 && accepted >= 40,
            "{accepted} accepted, {exhausted} refused"
        );
        let mut c = cl.client(&calm).await;
        let (j, _) = c.submit(&job_for("acme", "echo calm")).await.unwrap();
        let id: JobId = j.id.parse().unwrap();

        // Streams: five at once for the flooding client, then refused.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut open = Vec::new();
        for _ in 0..5 {
            open.push(f.watch(None, false).await.unwrap());
        }
        let e = f.watch(None, false).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        let e = f.logs(id, true).await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        // The other client still opens its own.
        let _mine = c.watch(Some(id), true).await.unwrap();
        // Closing one frees its place.
        drop(open.pop());
        let mut reopened = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if f.watch(None, false).await.is_ok() {
                reopened = true;
                break;
            }
        }
        assert!(reopened, "a closed stream's place was not freed");

        // One connection per agent.
        let agent = cl.agent("a1", cl.join_token());
        ready_workers(&mut admin, 1).await;
        let id = hodei_agent::Identity::load(&cl.url, "", &dir.path().join("a1"), "a1").unwrap();
        let (tls, _) = id.credentials().await.unwrap();
        let (tx, mut inbound) = register_by_hand(&cl.url, &tls, "", "a1-again")
            .await
            .unwrap();
        let welcome = inbound.message().await.unwrap().unwrap();
        assert!(matches!(
            welcome.msg,
            Some(proto::server_message::Msg::Welcome(_))
        ));
        // The server now sees the newer connection's name.
        let mut took_over = false;
        for _ in 0..100 {
            let w = admin.workers().await.unwrap();
            if w.iter().any(|w| w.name == "a1-again") {
                took_over = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(took_over);
        drop(tx);
        agent.stop(Shutdown::Exit).await;
        cl.stop().await;
    });
}
