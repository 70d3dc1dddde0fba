//! What an agent certificate costs: the agent's key and signing request,
//! and the server's signature on it (a join or a renewal is one of each),
//! beside the floor: one raw ECDSA P-256 signature.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use hodei_core::WorkerId;
use hodei_hwp::server::security::pki::Pki;
use hodei_hwp::tls::new_key_and_request;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};

fn renewal(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (pki, _) = Pki::load_or_create(dir.path()).unwrap();
    let (_, csr) = new_key_and_request("agent").unwrap();
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();

    let mut g = c.benchmark_group("renewal");
    g.bench_function("baseline_ecdsa_p256_sign", |b| {
        b.iter(|| {
            key.sign(&rng, black_box(b"a certificate's to-be-signed bytes"))
                .unwrap()
        })
    });
    g.bench_function("agent_key_and_request", |b| {
        b.iter(|| new_key_and_request(black_box("agent")).unwrap())
    });
    g.bench_function("server_signs_request", |b| {
        b.iter(|| {
            pki.sign_agent(
                black_box(&csr),
                WorkerId::from_u128(7),
                Duration::from_secs(86_400),
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, renewal);
criterion_main!(benches);
