//! What agents and clients present as credentials, from untrusted bytes:
//! certificate signing requests (PEM, as Join and Renew carry them), client
//! certificates (DER, as a TLS handshake hands them over after checking
//! their signature), join tokens and fingerprints. Nothing may panic; a
//! request the CA signs yields a certificate naming the worker it was
//! signed for.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use hodei_core::WorkerId;
use hodei_hwp::server::security::pki::{Pki, peer_cert};
use hodei_hwp::tls::{Fingerprint, JoinToken, certs_from_pem};
use libfuzzer_sys::fuzz_target;

fn pki() -> &'static Pki {
    static PKI: OnceLock<(tempfile::TempDir, Pki)> = OnceLock::new();
    &PKI.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (pki, _) = Pki::load_or_create(dir.path()).expect("a CA");
        (dir, pki)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(bytes);
    match kind % 4 {
        0 => {
            let worker = WorkerId::from_u128(7);
            if let Ok(issued) = pki().sign_agent(&text, worker, Duration::from_secs(60)) {
                let chain = certs_from_pem("chain", issued.chain_pem.as_bytes())
                    .expect("a signed chain parses");
                let peer = peer_cert(&chain[0]).expect("a signed certificate names its worker");
                assert_eq!(peer.worker, worker);
            }
        }
        1 => {
            let _ = peer_cert(bytes);
        }
        2 => {
            if let Ok(t) = text.parse::<JoinToken>() {
                let again: JoinToken = t.to_string().parse().expect("a token round-trips");
                assert_eq!(again, t);
            }
        }
        _ => {
            let _ = text.parse::<Fingerprint>();
            let _ = certs_from_pem("pem", bytes);
        }
    }
});
