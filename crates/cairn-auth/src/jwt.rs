//! etcd's `jwt` tokens (`--auth-token jwt,pub-key=P,priv-key=K,sign-method=M,ttl=T`).
//!
//! A JWT names its user and the auth revision it was issued at
//! (`{"username", "revision", "exp"}`, etcd's claims) and is signed with
//! the configured private key, so any member holding the public key checks
//! it without asking anyone: nothing is registered, nothing is lost on a
//! restart. As in etcd, a token issued before the auth store last changed
//! is refused with `AuthOldRevision` (clients authenticate again), and an
//! expired or forged one with `InvalidAuthToken`. A member given only the
//! public key verifies tokens but cannot issue them.
//!
//! Signing methods: RS256/384/512, PS256/384/512 (RSA keys), ES256/384
//! (ECDSA P-256/P-384), EdDSA (Ed25519) — PEM files.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::AuthError;

/// etcd's default JWT lifetime.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// The keys and method of this member's JWTs.
pub struct JwtKeys {
    alg: Algorithm,
    sign: Option<EncodingKey>,
    verify: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("alg", &self.alg)
            .field("signs", &self.sign.is_some())
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// `--auth-token`'s value, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenOption {
    /// `simple`.
    Simple,
    /// `jwt,...`: file paths as given, the method, the lifetime.
    Jwt {
        /// `pub-key`.
        public_key: String,
        /// `priv-key` (absent: verify only).
        private_key: Option<String>,
        /// `sign-method`.
        method: String,
        /// `ttl`.
        ttl: Duration,
    },
}

fn duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("bad ttl {s:?}"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "ms" => return Ok(Duration::from_millis(n)),
        _ => return Err(format!("bad ttl {s:?}")),
    };
    Ok(Duration::from_secs(secs))
}

/// Parses etcd's `--auth-token` value.
pub fn parse_option(s: &str) -> Result<TokenOption, String> {
    let mut parts = s.split(',');
    match parts.next() {
        Some("simple") => Ok(TokenOption::Simple),
        Some("jwt") => {
            let (mut public_key, mut private_key, mut method, mut ttl) =
                (None, None, None, DEFAULT_TTL);
            for p in parts {
                let (k, v) = p
                    .split_once('=')
                    .ok_or_else(|| format!("--auth-token: {p:?} is not key=value"))?;
                match k {
                    "pub-key" => public_key = Some(v.to_string()),
                    "priv-key" => private_key = Some(v.to_string()),
                    "sign-method" => method = Some(v.to_string()),
                    "ttl" => ttl = duration(v)?,
                    other => return Err(format!("--auth-token: unknown jwt option {other:?}")),
                }
            }
            Ok(TokenOption::Jwt {
                public_key: public_key.ok_or("--auth-token jwt needs pub-key=")?,
                private_key,
                method: method.ok_or("--auth-token jwt needs sign-method=")?,
                ttl,
            })
        }
        _ => Err(format!("--auth-token {s:?}: want simple or jwt,...")),
    }
}

impl JwtKeys {
    /// Keys for `method` from PEM bytes (`private` absent: verify only).
    pub fn new(
        method: &str,
        public: &[u8],
        private: Option<&[u8]>,
        ttl: Duration,
    ) -> Result<Self, String> {
        let alg: Algorithm = method
            .parse()
            .map_err(|_| format!("unknown JWT sign-method {method:?}"))?;
        let bad = |e: jsonwebtoken::errors::Error| format!("JWT {method} key: {e}");
        let (verify, sign) = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => (
                DecodingKey::from_rsa_pem(public).map_err(bad)?,
                private
                    .map(EncodingKey::from_rsa_pem)
                    .transpose()
                    .map_err(bad)?,
            ),
            Algorithm::ES256 | Algorithm::ES384 => (
                DecodingKey::from_ec_pem(public).map_err(bad)?,
                private
                    .map(EncodingKey::from_ec_pem)
                    .transpose()
                    .map_err(bad)?,
            ),
            Algorithm::EdDSA => (
                DecodingKey::from_ed_pem(public).map_err(bad)?,
                private
                    .map(EncodingKey::from_ed_pem)
                    .transpose()
                    .map_err(bad)?,
            ),
            _ => {
                return Err(format!(
                    "JWT sign-method {method} needs a key pair (HMAC is not offered)"
                ))
            }
        };
        let keys = Self {
            alg,
            sign,
            verify,
            ttl,
        };
        // A private key that does not match the public one fails now, not
        // at the first login.
        if keys.sign.is_some() {
            let probe = keys.sign_token("probe", 0, 0).map_err(|e| e.to_string())?;
            keys.verify_at(&probe, 0).map_err(|_| {
                format!("JWT {method}: the private key does not match the public key")
            })?;
        }
        Ok(keys)
    }

    fn sign_token(&self, user: &str, revision: u64, now: u64) -> Result<String, AuthError> {
        let key = self.sign.as_ref().ok_or(AuthError::AuthFailed)?;
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp: now + self.ttl.as_secs().max(1),
        };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, key)
            .map_err(|_| AuthError::AuthFailed)
    }

    /// A token for `user` at auth `revision`, issued at `now` (Unix seconds).
    pub fn sign(&self, user: &str, revision: u64, now: u64) -> Result<String, AuthError> {
        self.sign_token(user, revision, now)
    }

    fn verify_at(&self, token: &str, now: u64) -> Result<(String, u64), AuthError> {
        let mut v = Validation::new(self.alg);
        v.leeway = 0;
        v.validate_exp = false; // checked below against `now`
        v.required_spec_claims = ["exp".to_string()].into_iter().collect();
        let data = jsonwebtoken::decode::<Claims>(token, &self.verify, &v)
            .map_err(|_| AuthError::InvalidAuthToken)?;
        if data.claims.exp <= now {
            return Err(AuthError::InvalidAuthToken);
        }
        Ok((data.claims.username, data.claims.revision))
    }

    /// The user and auth revision of a valid, unexpired token at `now`.
    pub fn verify(&self, token: &str, now: u64) -> Result<(String, u64), AuthError> {
        self.verify_at(token, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ec_pair() -> (String, String) {
        let k = rcgen::KeyPair::generate().unwrap();
        (k.public_key_pem(), k.serialize_pem())
    }

    #[test]
    fn tokens_name_user_and_revision_and_expire() {
        let (public, private) = ec_pair();
        let keys = JwtKeys::new(
            "ES256",
            public.as_bytes(),
            Some(private.as_bytes()),
            Duration::from_secs(60),
        )
        .unwrap();
        let t = keys.sign("alice", 7, 1_000).unwrap();
        assert_eq!(keys.verify(&t, 1_030).unwrap(), ("alice".to_string(), 7));
        assert_eq!(
            keys.verify(&t, 1_060),
            Err(AuthError::InvalidAuthToken),
            "expired"
        );
        let mut forged = t.clone();
        forged.replace_range(t.len() - 4.., "AAAA");
        assert_eq!(
            keys.verify(&forged, 1_030),
            Err(AuthError::InvalidAuthToken)
        );
        // Another key pair's token is refused; a verify-only member cannot issue.
        let (p2, k2) = ec_pair();
        let other = JwtKeys::new(
            "ES256",
            p2.as_bytes(),
            Some(k2.as_bytes()),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(
            keys.verify(&other.sign("alice", 7, 1_000).unwrap(), 1_030),
            Err(AuthError::InvalidAuthToken)
        );
        let verify_only =
            JwtKeys::new("ES256", public.as_bytes(), None, Duration::from_secs(60)).unwrap();
        assert!(verify_only.sign("alice", 7, 1_000).is_err());
        assert_eq!(verify_only.verify(&t, 1_030).unwrap().0, "alice");
        // Mismatched keys fail at start.
        assert!(JwtKeys::new(
            "ES256",
            p2.as_bytes(),
            Some(private.as_bytes()),
            DEFAULT_TTL
        )
        .is_err());
        assert!(JwtKeys::new("HS256", public.as_bytes(), None, DEFAULT_TTL).is_err());
    }

    #[test]
    fn the_option_parses_like_etcds() {
        assert_eq!(parse_option("simple").unwrap(), TokenOption::Simple);
        assert_eq!(
            parse_option("jwt,pub-key=a.pem,priv-key=b.pem,sign-method=RS256,ttl=10m").unwrap(),
            TokenOption::Jwt {
                public_key: "a.pem".into(),
                private_key: Some("b.pem".into()),
                method: "RS256".into(),
                ttl: Duration::from_secs(600),
            }
        );
        assert!(parse_option("jwt,priv-key=b.pem,sign-method=RS256").is_err());
        assert!(parse_option("jwt,pub-key=a,sign-method=RS256,bogus=1").is_err());
        assert!(parse_option("magic").is_err());
    }
}
