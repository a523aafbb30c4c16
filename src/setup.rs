//! First run (CONTRACT §2): while the data dir has no admin password, each start of the daemon
//! makes a one-time set-up code, prints the URL that carries it (log and terminal), and keeps
//! only its hash in memory. The code is spent when the password is set; a restart makes a new
//! one, and the old one dies with the process that held its hash.

use std::sync::Mutex;

use crate::secret::{ct_eq, RandomError, SecretString, TokenHash};

/// 128 bits: the contract asks for at least 64.
const CODE_BYTES: usize = 16;
/// Longer than any code we make (22 base64url characters); anything longer is not ours.
pub const MAX_CODE_LEN: usize = 64;

/// The live set-up code's hash, if any.
#[derive(Default)]
pub struct SetupCode {
    hash: Mutex<Option<TokenHash>>,
}

impl SetupCode {
    /// Makes a fresh code from the OS CSPRNG, replacing any earlier one, and returns it for
    /// printing; only its hash stays.
    pub fn issue(&self) -> Result<SecretString, RandomError> {
        let code = SecretString::random_token::<CODE_BYTES>("")?;
        *self.lock() = Some(code.hash());
        Ok(code)
    }

    /// Whether `presented` is the live code (compared as hashes, in constant time).
    pub fn matches(&self, presented: &str) -> bool {
        if presented.is_empty() || presented.len() > MAX_CODE_LEN {
            return false;
        }
        let probe = TokenHash::of(presented);
        self.lock()
            .as_ref()
            .is_some_and(|h| ct_eq(h.as_bytes(), probe.as_bytes()))
    }

    /// Forgets the code: it opens nothing from now on.
    pub fn spend(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<TokenHash>> {
        self.hash.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The URL an owner opens to finish set-up; `host_port` as phones are told (`App::host_port`).
pub fn url(host_port: &str, code: &SecretString) -> String {
    format!("http://{host_port}/setup?code={}", code.expose())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_code_at_a_time_until_spent() {
        let s = SetupCode::default();
        assert!(!s.matches(""), "no code before one is issued");
        let first = s.issue().unwrap();
        assert_eq!(first.expose().len(), 22, "128 bits in base64url");
        assert!(s.matches(first.expose()));
        assert!(!s.matches("wrong"));
        assert!(!s.matches(&"a".repeat(MAX_CODE_LEN + 1)));
        let second = s.issue().unwrap();
        assert_ne!(first.expose(), second.expose());
        assert!(
            !s.matches(first.expose()),
            "a new code replaces the old one"
        );
        assert!(s.matches(second.expose()));
        s.spend();
        assert!(!s.matches(second.expose()));
        assert_eq!(
            url("192.168.1.42:8080", &second),
            format!("http://192.168.1.42:8080/setup?code={}", second.expose())
        );
    }
}
