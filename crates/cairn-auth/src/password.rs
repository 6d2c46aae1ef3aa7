//! Passwords: bcrypt, as etcd (`--bcrypt-cost`, default 10).
//!
//! Hashing and checking cost tens of milliseconds by design; callers run
//! them off the async executor.

/// etcd's default cost.
pub const DEFAULT_COST: u32 = 10;

/// The bcrypt hash of `password` at `cost` (4–31).
pub fn hash(password: &str, cost: u32) -> Result<String, String> {
    bcrypt::hash(password, cost).map_err(|e| e.to_string())
}

/// Whether `password` matches `hash`; a malformed hash matches nothing.
pub fn verify(password: &str, hash: &str) -> bool {
    bcrypt::verify(password, hash).unwrap_or(false)
}

/// Whether `cost` is one bcrypt accepts.
pub fn valid_cost(cost: u32) -> bool {
    (4..=31).contains(&cost)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = super::hash("s3cret", 4).unwrap();
        assert!(super::verify("s3cret", &h));
        assert!(!super::verify("secret", &h));
        assert!(!super::verify("s3cret", "not a hash"));
    }
}
