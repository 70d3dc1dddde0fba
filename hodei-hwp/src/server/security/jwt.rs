//! JSON Web Tokens from an external identity provider: checked against its
//! public key (PEM) or key set (JWKS file), for RS256, ES256 or EdDSA;
//! expiry, issuer and audience checked; two claims name the tenant(s) and
//! the role.

use std::path::Path;

use hodei_core::TenantId;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::server::security::auth::{AuthError, Principal, Role, Scope};
use crate::tls::TlsError;

/// One key the provider signs with.
#[derive(Clone)]
struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// How JSON Web Tokens are checked and mapped to a principal.
#[derive(Clone)]
pub struct JwtConfig {
    keys: Vec<Key>,
    issuer: String,
    audience: String,
    tenant_claim: String,
    role_claim: String,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("tenant_claim", &self.tenant_claim)
            .field("role_claim", &self.role_claim)
            .finish()
    }
}

fn bad(what: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::invalid(what.display().to_string(), e)
}

impl JwtConfig {
    /// Tokens signed by the key in `path`: a PEM public key (RSA, EC P-256
    /// or Ed25519), or a JWKS document (JSON, `{"keys": [...]}`).
    /// `issuer` and `audience` must match the tokens' `iss` and `aud`;
    /// `tenant_claim` (a string, a list, or `*` for all tenants) and
    /// `role_claim` (admin, operator, submitter, viewer) say who it is.
    ///
    /// # Errors
    ///
    /// The file cannot be read or holds no usable key (named).
    pub fn from_file(
        path: &Path,
        issuer: &str,
        audience: &str,
        tenant_claim: &str,
        role_claim: &str,
    ) -> Result<Self, TlsError> {
        let bytes = crate::tls::read(path)?;
        let keys = if bytes.trim_ascii_start().starts_with(b"{") {
            let set: JwkSet = serde_json::from_slice(&bytes).map_err(|e| bad(path, e))?;
            let mut keys = Vec::new();
            for jwk in &set.keys {
                let algorithm = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                    // Shared secrets are not a provider's public key.
                    AlgorithmParameters::OctetKey(_) => continue,
                };
                keys.push(Key {
                    kid: jwk.common.key_id.clone(),
                    algorithm,
                    key: DecodingKey::from_jwk(jwk).map_err(|e| bad(path, e))?,
                });
            }
            keys
        } else {
            let (algorithm, key) = if let Ok(k) = DecodingKey::from_rsa_pem(&bytes) {
                (Algorithm::RS256, k)
            } else if let Ok(k) = DecodingKey::from_ec_pem(&bytes) {
                (Algorithm::ES256, k)
            } else if let Ok(k) = DecodingKey::from_ed_pem(&bytes) {
                (Algorithm::EdDSA, k)
            } else {
                return Err(bad(
                    path,
                    "not an RSA, EC P-256 or Ed25519 public key (PEM) nor a JWKS document",
                ));
            };
            vec![Key {
                kid: None,
                algorithm,
                key,
            }]
        };
        if keys.is_empty() {
            return Err(bad(path, "no RSA, EC or Ed25519 key in the key set"));
        }
        Ok(JwtConfig {
            keys,
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            tenant_claim: tenant_claim.to_string(),
            role_claim: role_claim.to_string(),
        })
    }

    /// Whether `token` looks like a JSON Web Token (three base64url parts,
    /// a JSON header).
    pub fn looks_like_jwt(token: &str) -> bool {
        token.starts_with("eyJ") && token.bytes().filter(|b| *b == b'.').count() == 2
    }

    /// Checks `token` and says who it is.
    ///
    /// # Errors
    ///
    /// [`AuthError::Jwt`] naming what failed: the signature, the algorithm,
    /// expiry, issuer, audience, or a missing or unknown claim.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let refuse = |m: String| AuthError::Jwt(m);
        let header = jsonwebtoken::decode_header(token).map_err(|e| refuse(e.to_string()))?;
        let candidates = self.keys.iter().filter(|k| {
            k.algorithm == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        });
        let mut last = format!("no key for algorithm {:?}", header.alg);
        for k in candidates {
            let mut v = Validation::new(k.algorithm);
            v.set_issuer(&[&self.issuer]);
            v.set_audience(&[&self.audience]);
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            v.leeway = 30;
            match jsonwebtoken::decode::<serde_json::Value>(token, &k.key, &v) {
                Ok(data) => return self.principal(&data.claims),
                Err(e) => last = e.to_string(),
            }
        }
        Err(refuse(last))
    }

    fn principal(&self, claims: &serde_json::Value) -> Result<Principal, AuthError> {
        let refuse = |m: String| AuthError::Jwt(m);
        let role: Role = claims
            .get(&self.role_claim)
            .and_then(|r| r.as_str())
            .ok_or_else(|| refuse(format!("claim {:?}: missing", self.role_claim)))?
            .parse()
            .map_err(|e| refuse(format!("claim {:?}: {e}", self.role_claim)))?;
        let names: Vec<&str> = match claims.get(&self.tenant_claim) {
            Some(serde_json::Value::String(s)) => vec![s.as_str()],
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
            _ if role == Role::Admin => Vec::new(),
            _ => {
                return Err(refuse(format!(
                    "claim {:?}: missing (a tenant, a list, or \"*\")",
                    self.tenant_claim
                )));
            }
        };
        let scope = if names.contains(&"*") {
            Scope::All
        } else {
            let mut ts = Vec::with_capacity(names.len());
            for n in names {
                ts.push(
                    n.parse::<TenantId>()
                        .map_err(|e| refuse(format!("claim {:?}: {e}", self.tenant_claim)))?,
                );
            }
            Scope::Tenants(ts)
        };
        let subject = claims.get("sub").and_then(|s| s.as_str()).unwrap_or("?");
        Ok(Principal::new(role, scope, format!("jwt:{subject}")))
    }
}
