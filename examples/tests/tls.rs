//! TLS and agent identity over real TCP on 127.0.0.1: a server with its own
//! CA, agents that join with a pinned token and connect with their own
//! certificates, renewal, revocation, join-token rotation, certificate
//! replacement, and clients that trust the wrong CA or none.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use hodei_agent::{Identity, Shutdown};
use hodei_core::{JobId, WorkerId};
use hodei_hwp::client::{Client, connect_agent};
use hodei_hwp::proto::{self, JobStateKind};
use hodei_hwp::server::security::pki::Pki;
use hodei_hwp::tls::{ClientTls, Fingerprint, JoinToken};
use tonic::Code;

#[test]
fn clients_without_tls_or_trusting_another_ca_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let cl = Cluster::start(dir.path(), Duration::from_secs(3600)).await;
        let mut admin = cl.client(ADMIN).await;

        // Plaintext HTTP/2 to the TLS port.
        let plain = format!("http://{}", cl.addr);
        let refused = match Client::connect(&plain, &ClientTls::Plaintext, ADMIN).await {
            Err(e) => e.to_string(),
            Ok(mut c) => text(c.submit(&acme("echo plaintext")).await),
        };
        assert!(!refused.is_empty());

        // A CA of its own: the server's certificate does not chain to it.
        let other = tempfile::tempdir().unwrap();
        let (stranger, _) = Pki::load_or_create(other.path()).unwrap();
        let wrong = ClientTls::ca_file(&stranger.ca_path()).unwrap();
        let e = match Client::connect(&cl.url, &wrong, ADMIN).await {
            Err(e) => e.to_string(),
            Ok(mut c) => text(c.submit(&acme("echo wrong ca")).await),
        };
        assert!(e.contains("certificate") || e.contains("issuer"), "{e}");

        // https:// without a CA to trust, and a pin for the wrong CA.
        assert!(
            Client::connect(&cl.url, &ClientTls::Plaintext, ADMIN)
                .await
                .is_err()
        );
        let e = text(
            connect_agent(
                &cl.url,
                &ClientTls::Pinned(Fingerprint::of(b"some other ca")),
                Some(JOIN),
            )
            .await,
        );
        assert!(e.contains("issuer") || e.contains("certificate"), "{e}");

        let jobs = admin.list(proto::ListRequest::default()).await.unwrap();
        assert!(jobs.jobs.is_empty(), "a refused client submitted a job");
        cl.stop().await;
    });
}

#[test]
fn an_agent_joins_with_a_pinned_token_and_is_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let cl = Cluster::start(dir.path(), Duration::from_secs(3600)).await;
        let mut admin = cl.client(ADMIN).await;

        // A join token whose fingerprint is not the server's CA: refused
        // before the token is ever sent.
        let forged = JoinToken {
            ca: Fingerprint::of(b"attacker"),
            secret: JOIN.into(),
        };
        let id = Identity::load(&cl.url, &forged.to_string(), &dir.path().join("x"), "x").unwrap();
        assert!(id.credentials().await.is_err());
        assert!(!dir.path().join("x").join("identity.json").exists());
        // A wrong secret with the right pin: UNAUTHENTICATED.
        let bad = JoinToken {
            ca: cl.tls.fingerprint(),
            secret: "wrong".into(),
        };
        let id = Identity::load(&cl.url, &bad.to_string(), &dir.path().join("y"), "y").unwrap();
        let e = id.credentials().await.unwrap_err().to_string();
        assert!(
            e.contains("Unauthenticated") || e.contains("unknown token"),
            "{e}"
        );

        let agent = cl.agent("a1", cl.join_token());
        let w = ready_workers(&mut admin, 1).await;
        let file = dir.path().join("a1/identity.json");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let id = Identity::load(&cl.url, "", &dir.path().join("a1"), "a1").unwrap();
        assert_eq!(id.worker().as_deref(), Some(w[0].id.as_str()));

        // A job runs through the mutual-TLS connection.
        let (j, _) = admin.submit(&acme("echo over mutual tls")).await.unwrap();
        let id_job: JobId = j.id.parse().unwrap();
        let done = wait_final(&mut admin, id_job).await;
        assert_eq!(kind(&done), JobStateKind::Succeeded);
        assert_eq!(output(&mut admin, id_job).await, "over mutual tls\n");

        // The worker id is the certificate's: claiming another is refused.
        let (tls, _) = id.credentials().await.unwrap();
        let s = register_by_hand(&cl.url, &tls, &WorkerId::new().to_string(), "impostor")
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

        // Without a certificate, Connect is refused even with the join token.
        let mut nocert = connect_agent(&cl.url, &cl.trust(), Some(JOIN))
            .await
            .unwrap();
        let (_tx, rx) = tokio::sync::mpsc::channel(4);
        let s = nocert
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");

        assert!(agent.stop(Shutdown::Drain).await.is_clean());
        cl.stop().await;
    });
}

#[test]
fn expired_certificates_revoked_workers_and_wrong_roles_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let cl = Cluster::start(dir.path(), Duration::from_secs(3600)).await;
        let mut admin = cl.client(ADMIN).await;
        let pki = Pki::load_or_create(&dir.path().join("tls")).unwrap().0;

        // A certificate signed by the right CA but expired an hour ago.
        let w = WorkerId::new();
        let hour = Duration::from_secs(3600);
        let (chain, key) = pki
            .sign_agent_window(w, SystemTime::now() - 2 * hour, SystemTime::now() - hour)
            .unwrap();
        let expired = ClientTls::Ca {
            roots: pki.ca_pem().as_bytes().to_vec(),
            identity: Some((chain.into_bytes(), key.into_bytes())),
        };
        let refused = match connect_agent(&cl.url, &expired, None).await {
            Err(e) => e.to_string(),
            Ok(mut c) => text(
                c.renew(proto::RenewRequest {
                    csr_pem: String::new(),
                })
                .await,
            ),
        };
        assert!(!refused.is_empty());
        assert!(admin.workers().await.unwrap().is_empty());

        // A running agent, revoked: disconnected at once, refused after.
        let agent = cl.agent("a1", cl.join_token());
        let worker = ready_workers(&mut admin, 1).await[0].id.clone();
        // A tenant token may not revoke.
        let s = cl
            .client(ACME)
            .await
            .admin()
            .revoke_worker(proto::RevokeWorkerRequest {
                worker_id: worker.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied);
        // An unknown token is not even authenticated.
        let s = cl
            .client("not-a-token")
            .await
            .admin()
            .list_join_tokens(proto::ListJoinTokensRequest {})
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
        assert_eq!(ready_workers(&mut admin, 1).await.len(), 1);

        let r = admin
            .admin()
            .revoke_worker(proto::RevokeWorkerRequest {
                worker_id: worker.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.disconnected);
        // Its stream ended: no longer ready, and it stays that way.
        let mut gone = false;
        for _ in 0..100 {
            let ws = admin.workers().await.unwrap();
            if ws.iter().all(|w| w.id != worker || w.status != "ready") {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(gone, "the revoked worker is still ready");
        let id = Identity::load(&cl.url, "", &dir.path().join("a1"), "a1").unwrap();
        let (tls, _) = id.credentials().await.unwrap();
        let s = connect_agent(&cl.url, &tls, None)
            .await
            .unwrap()
            .renew(proto::RenewRequest {
                csr_pem: hodei_hwp::tls::new_key_and_request("a1").unwrap().1,
            })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let ws = admin.workers().await.unwrap();
        assert!(ws.iter().all(|w| w.id != worker || w.status != "ready"));
        agent.stop(Shutdown::Exit).await;
        cl.stop().await;
    });
}

#[test]
fn join_tokens_rotate_and_revoke_without_touching_joined_agents() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let cl = Cluster::start(dir.path(), Duration::from_secs(3600)).await;
        let mut admin = cl.client(ADMIN).await;
        let first = cl.agent("a1", cl.join_token());
        ready_workers(&mut admin, 1).await;

        let created = admin
            .admin()
            .create_join_token(proto::CreateJoinTokenRequest {
                ttl_seconds: 0,
                rotate: true,
            })
            .await
            .unwrap()
            .into_inner();
        let new = created.token.clone();
        assert!(new.starts_with(&format!("hodei-join.{}.", cl.tls.fingerprint())));
        // The token file holds the new one.
        let file = std::fs::read_to_string(dir.path().join("join.token")).unwrap();
        assert_eq!(file.trim(), new);
        let listed = admin
            .admin()
            .list_join_tokens(proto::ListJoinTokensRequest {})
            .await
            .unwrap()
            .into_inner()
            .tokens;
        assert_eq!(listed.len(), 2);
        assert_eq!(listed.iter().filter(|t| t.revoked_at_ms == 0).count(), 1);
        let text = format!("{listed:?}");
        assert!(!text.contains(JOIN) && !text.contains(new.rsplit('.').next().unwrap()));

        // The old token no longer joins; the new one does.
        let old = Identity::load(&cl.url, &cl.join_token(), &dir.path().join("x"), "x").unwrap();
        let e = old.credentials().await.unwrap_err().to_string();
        assert!(
            e.contains("Unauthenticated") || e.contains("unknown"),
            "{e}"
        );
        let second = cl.agent("a2", new);
        ready_workers(&mut admin, 2).await;

        // The agent that joined with the old token reconnects with its
        // certificate after a restart of its own.
        let report = first.stop(Shutdown::Drain).await;
        assert!(report.is_clean());
        let again = cl.agent("a1", String::new());
        ready_workers(&mut admin, 2).await;

        // Revoking the new token stops new joins with it.
        let id = created.info.unwrap().id;
        admin
            .admin()
            .revoke_join_token(proto::RevokeJoinTokenRequest { id: id.clone() })
            .await
            .unwrap();
        let s = admin
            .admin()
            .revoke_join_token(proto::RevokeJoinTokenRequest { id: "nope".into() })
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::NotFound);
        let tok = std::fs::read_to_string(dir.path().join("join.token")).unwrap();
        let late = Identity::load(&cl.url, tok.trim(), &dir.path().join("z"), "z").unwrap();
        assert!(late.credentials().await.is_err());

        again.stop(Shutdown::Drain).await;
        second.stop(Shutdown::Drain).await;
        cl.stop().await;
    });
}

/// A certificate valid for 10 s, renewed at two thirds of it while a
/// 13-second job runs: the job's output and result arrive whole, the old
/// certificate expires under the open connection, and the new one is
/// accepted by the server.
#[test]
fn an_agent_renews_its_certificate_during_a_running_job() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let cl = Cluster::start(dir.path(), Duration::from_secs(10)).await;
        let mut admin = cl.client(ADMIN).await;
        let agent = cl.agent("a1", cl.join_token());
        ready_workers(&mut admin, 1).await;
        let id = Identity::load(&cl.url, "", &dir.path().join("a1"), "a1").unwrap();
        let before = id.certificate_fingerprint().unwrap();
        let (j, _) = admin
            .submit(&acme(
                "for i in $(seq 1 26); do echo tick-$i; sleep 0.5; done",
            ))
            .await
            .unwrap();
        let job: JobId = j.id.parse().unwrap();
        let done = wait_final(&mut admin, job).await;
        assert_eq!(kind(&done), JobStateKind::Succeeded);
        let want: String = (1..=26).map(|i| format!("tick-{i}\n")).collect();
        assert_eq!(output(&mut admin, job).await, want);
        // Renewed (at least once) while the job ran.
        let now = Identity::load(&cl.url, "", &dir.path().join("a1"), "a1").unwrap();
        assert_ne!(now.certificate_fingerprint().unwrap(), before);
        // The new certificate is the worker's and the server takes it.
        assert_eq!(now.worker(), id.worker());
        let (tls, _) = now.credentials().await.unwrap();
        connect_agent(&cl.url, &tls, None)
            .await
            .unwrap()
            .renew(proto::RenewRequest {
                csr_pem: hodei_hwp::tls::new_key_and_request("a1").unwrap().1,
            })
            .await
            .unwrap();
        assert!(agent.stop(Shutdown::Drain).await.is_clean());
        cl.stop().await;
    });
}

/// The server's certificate is made again and reloaded while jobs are
/// submitted and run: every job succeeds, and new connections see the new
/// certificate.
#[test]
fn the_server_certificate_is_replaced_under_load_with_no_job_lost() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let cl = Cluster::start(dir.path(), Duration::from_secs(3600)).await;
        let mut admin = cl.client(ADMIN).await;
        let agent = cl.agent("a1", cl.join_token());
        ready_workers(&mut admin, 1).await;
        let leaf = |dir: &Path| {
            let pem = std::fs::read(dir.join("tls/server.crt")).unwrap();
            Fingerprint::of(&hodei_hwp::tls::certs_from_pem("server.crt", &pem).unwrap()[0])
        };
        let old_leaf = leaf(dir.path());

        let submitter = {
            let mut c = cl.client(ADMIN).await;
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..150 {
                    let (j, _) = c.submit(&acme(&format!("echo job-{i}"))).await.unwrap();
                    ids.push(j.id.parse::<JobId>().unwrap());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                ids
            })
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        // A new certificate from the same CA (naming one more address),
        // picked up by the server without a restart.
        let pki = Pki::load_or_create(&dir.path().join("tls")).unwrap().0;
        assert!(
            pki.ensure_server_cert(&["127.0.0.1".into(), "localhost".into(), "10.9.9.9".into()])
                .unwrap()
        );
        assert!(cl.tls.reload(true).unwrap());
        assert_ne!(leaf(dir.path()), old_leaf);
        let ids = submitter.await.unwrap();
        // A new connection sees (and trusts) the new certificate.
        let mut fresh = cl.client(ADMIN).await;
        for id in ids {
            let j = wait_final(&mut fresh, id).await;
            assert_eq!(kind(&j), JobStateKind::Succeeded, "{id}");
        }
        assert!(agent.stop(Shutdown::Drain).await.is_clean());
        cl.stop().await;
    });
}

/// curl (OpenSSL and nghttp2, no code of ours) calls gRPC health over
/// HTTP/2 and TLS trusting the CA file, and is refused without it.
#[test]
fn a_standard_grpc_client_connects_with_the_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let cl = Cluster::start(dir.path(), Duration::from_secs(3600)).await;
        let ca = dir.path().join("tls/ca.crt");
        let url = format!("{}/grpc.health.v1.Health/Check", cl.url);
        let body = dir.path().join("req.bin");
        // A gRPC frame: uncompressed, length 0 (an empty HealthCheckRequest).
        std::fs::write(&body, [0u8; 5]).unwrap();
        // Blocking here is fine: the server runs on the runtime's workers.
        let curl = |extra: &[&str]| {
            let mut c = std::process::Command::new("curl");
            c.args(["-sS", "--http2", "--max-time", "10", "-X", "POST"])
                .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
                .arg("--data-binary")
                .arg(format!("@{}", body.display()))
                .args(extra)
                .arg(&url);
            c.output().expect("curl is installed (.ci/run installs it)")
        };
        let out = curl(&["--cacert", ca.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // One frame: flag 0, length 2, HealthCheckResponse{status: SERVING}.
        assert_eq!(out.stdout, [0, 0, 0, 0, 2, 0x08, 0x01]);
        let refused = curl(&[]);
        // 60: the peer's certificate cannot be verified.
        assert_eq!(refused.status.code(), Some(60), "{refused:?}");
        cl.stop().await;
    });
}

/// An issuing CA of "your own PKI", made with rcgen.
struct Ca {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let cert = p.self_signed(&key).unwrap();
        Ca { key, cert }
    }

    /// A certificate for `cn` (a server's when `server`), and its key.
    fn issue(&self, cn: &str, server: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let sans = if server {
            vec!["127.0.0.1".to_string()]
        } else {
            vec![]
        };
        let mut p = rcgen::CertificateParams::new(sans).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![if server {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        }];
        let issuer = rcgen::Issuer::from_ca_cert_der(self.cert.der(), &self.key).unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        (
            format!("{}{}", cert.pem(), self.cert.pem()),
            key.serialize_pem(),
        )
    }
}

/// --tls-cert, --tls-key and --tls-client-ca: a server certificate from
/// another CA (the one clients trust and join tokens pin), agents with
/// certificates from a third, connecting with no join at all; the
/// certificate files replaced on disk are picked up without a restart,
/// and the connected agent carries on.
#[test]
fn an_existing_pki_is_used_and_its_files_are_reloaded_when_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let corp = Ca::new("Corp server CA");
    let fleet = Ca::new("Corp agent CA");
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let client_ca = dir.path().join("agents-ca.pem");
    let (chain, k) = corp.issue("scheduler", true);
    std::fs::write(&cert, chain).unwrap();
    std::fs::write(&key, k).unwrap();
    std::fs::write(&client_ca, fleet.cert.pem()).unwrap();
    std::fs::write(dir.path().join("corp-ca.pem"), corp.cert.pem()).unwrap();
    rt().block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let source = hodei_hwp::server::security::tls::TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        };
        let cl = Cluster::start_tls(
            dir.path(),
            Duration::from_secs(3600),
            listener,
            None,
            hodei_hwp::server::grpc::limits::LimitConfig::default(),
            source,
            Some(client_ca.clone()),
        )
        .await;
        // Join tokens pin the CA the chain ends with.
        assert_eq!(cl.tls.fingerprint(), Fingerprint::of(corp.cert.der()));
        let trust = ClientTls::ca_file(&dir.path().join("corp-ca.pem")).unwrap();
        let mut admin = Client::connect(&cl.url, &trust, ADMIN).await.unwrap();
        // The server's own CA's file is not what this server presents.
        assert!(match Client::connect(&cl.url, &cl.trust(), ADMIN).await {
            Err(_) => true,
            Ok(mut c) => c.workers().await.is_err(),
        });

        // An agent with a certificate from the fleet CA, no join: its
        // worker id is its common name.
        let w = WorkerId::new();
        let (chain, k) = fleet.issue(&w.to_string(), false);
        let state = dir.path().join("fleet-agent");
        std::fs::create_dir_all(&state).unwrap();
        let identity = serde_json::json!({
            "worker_id": w.to_string(), "cert_pem": chain, "key_pem": k,
            "ca_pem": corp.cert.pem(), "issued_at_ms": 0u64,
            "expires_at_ms": u64::MAX / 2,
        });
        hodei_hwp::tls::write_atomic(
            &state.join("identity.json"),
            identity.to_string().as_bytes(),
            true,
        )
        .unwrap();
        let agent = cl.agent("fleet-agent", String::new());
        let ready = ready_workers(&mut admin, 1).await;
        assert_eq!(ready[0].id, w.to_string());

        // Replace the server's certificate on disk: picked up (checked
        // every 2 s), no restart, the agent still connected.
        let before = cl.tls.certificate_fingerprint();
        let (chain, k) = corp.issue("scheduler-renewed", true);
        hodei_hwp::tls::write_atomic(&key, k.as_bytes(), true).unwrap();
        hodei_hwp::tls::write_atomic(&cert, chain.as_bytes(), false).unwrap();
        let mut reloaded = false;
        for _ in 0..100 {
            if cl.tls.certificate_fingerprint() != before {
                reloaded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(reloaded, "the replaced certificate was not picked up");
        let mut fresh = Client::connect(&cl.url, &trust, ADMIN).await.unwrap();
        let (j, _) = fresh.submit(&acme("echo after reload")).await.unwrap();
        let done = wait_final(&mut fresh, j.id.parse().unwrap()).await;
        assert_eq!(kind(&done), JobStateKind::Succeeded);
        assert_eq!(ready_workers(&mut admin, 1).await[0].id, w.to_string());
        assert!(agent.stop(Shutdown::Drain).await.is_clean());
        cl.stop().await;
    });
}
