//! etcd's `simple` tokens: opaque random strings, each naming a user.
//!
//! A token is made by the member serving `Authenticate` and registered on
//! every member when the meta region applies it, so any member accepts it;
//! each member counts its TTL itself, from registration and again from
//! every use (etcd's simple token TTL, `--auth-token-ttl`, default 300 s).
//! Tokens live in memory only: a restarted member forgets them and clients
//! authenticate again (they get `invalid auth token`), as with etcd.
//! Deleting a user or changing their password drops their tokens; turning
//! auth off drops all. At most [`MAX_TOKENS`] are kept; past that the one
//! closest to expiry goes first, so a flood of `Authenticate` calls costs
//! bounded memory.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// etcd's default simple-token TTL.
pub const TOKEN_TTL: Duration = Duration::from_secs(300);

/// Tokens kept at most.
pub const MAX_TOKENS: usize = 100_000;

/// The live tokens of one member.
#[derive(Debug)]
pub struct SimpleTokens {
    ttl: Duration,
    tokens: HashMap<String, (String, Instant)>,
}

impl Default for SimpleTokens {
    fn default() -> Self {
        Self::new(TOKEN_TTL)
    }
}

impl SimpleTokens {
    /// An empty set whose tokens live `ttl` past their last use.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            tokens: HashMap::new(),
        }
    }

    /// Sets the TTL of tokens registered or used from now on.
    pub fn set_ttl(&mut self, ttl: Duration) {
        self.ttl = ttl;
    }

    /// A fresh token for `user`: 16 random letters and the registering
    /// entry's index, etcd's shape (`abcdefghijklmnop.42`).
    pub fn mint(index: u64) -> String {
        let mut bytes = [0u8; 16];
        // The OS's randomness; failing that there is nothing safe to do.
        getrandom::fill(&mut bytes).expect("the OS random source failed");
        let letters: String = bytes
            .iter()
            .map(|b| {
                let i = b % 52;
                if i < 26 {
                    char::from(b'a' + i)
                } else {
                    char::from(b'A' + i - 26)
                }
            })
            .collect();
        format!("{letters}.{index}")
    }

    /// Registers `token` for `user` now.
    pub fn insert(&mut self, token: String, user: String, now: Instant) {
        if self.tokens.len() >= MAX_TOKENS {
            self.tokens.retain(|_, (_, exp)| *exp > now);
        }
        if self.tokens.len() >= MAX_TOKENS {
            if let Some(oldest) = self
                .tokens
                .iter()
                .min_by_key(|(_, (_, exp))| *exp)
                .map(|(t, _)| t.clone())
            {
                self.tokens.remove(&oldest);
            }
        }
        self.tokens.insert(token, (user, now + self.ttl));
    }

    /// The user of a live `token`, whose TTL starts again.
    pub fn user(&mut self, token: &str, now: Instant) -> Option<String> {
        let (user, exp) = self.tokens.get_mut(token)?;
        if *exp <= now {
            self.tokens.remove(token);
            return None;
        }
        *exp = now + self.ttl;
        Some(user.clone())
    }

    /// Drops every token of `user`.
    pub fn forget_user(&mut self, user: &str) {
        self.tokens.retain(|_, (u, _)| u != user);
    }

    /// Drops every token.
    pub fn clear(&mut self) {
        self.tokens.clear();
    }

    /// How many are kept.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_unless_used_and_die_with_their_user() {
        let t0 = Instant::now();
        let mut s = SimpleTokens::new(Duration::from_secs(10));
        let a = SimpleTokens::mint(7);
        assert!(a.ends_with(".7") && a.len() == 18);
        assert_ne!(a, SimpleTokens::mint(7));
        s.insert(a.clone(), "alice".into(), t0);
        assert_eq!(
            s.user(&a, t0 + Duration::from_secs(9)).as_deref(),
            Some("alice")
        );
        // Used at 9 s: good until 19 s.
        assert_eq!(
            s.user(&a, t0 + Duration::from_secs(18)).as_deref(),
            Some("alice")
        );
        assert_eq!(s.user(&a, t0 + Duration::from_secs(29)), None);
        s.insert(a.clone(), "alice".into(), t0);
        s.forget_user("alice");
        assert_eq!(s.user(&a, t0), None);
        assert_eq!(s.user("made.up", t0), None);
    }
}
