//! Users' credentials: username and password rules, Argon2id password
//! hashes, API token ids, and the login throttle.
//!
//! Hashing is slow on purpose: call [`hash_password`] and
//! [`verify_password`] on a blocking thread. The throttle is pure (the
//! clock is a parameter) and kept in memory: a restart forgets it.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Shortest password, in characters.
pub const MIN_PASSWORD_CHARS: usize = 12;
/// Longest password, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Longest username.
pub const MAX_USERNAME: usize = 64;
/// The name the bootstrap admin token acts as; no stored user may take it.
pub const BOOTSTRAP_ADMIN: &str = "admin";
/// Password hashes computed at once (each takes ~19 MiB and a core for a while).
const HASHING_SLOTS: usize = 4;

/// Checks a new username: 1 to 64 of `a-z 0-9 . _ -`, starting with a
/// letter or digit, not the reserved `admin`.
pub fn check_username(name: &str) -> Result<(), String> {
    let valid = (1..=MAX_USERNAME).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-'
        });
    if !valid {
        return Err(format!(
            "username must be 1 to {MAX_USERNAME} characters of a-z, 0-9, `.`, `_` and `-`, starting with a letter or digit"
        ));
    }
    if name == BOOTSTRAP_ADMIN {
        return Err(format!(
            "username `{BOOTSTRAP_ADMIN}` is reserved for the bootstrap admin token; pick another (a user can be an admin with \"admin\": true)"
        ));
    }
    Ok(())
}

/// Checks a new password's length.
pub fn check_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "password must be at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "password must be at most {MAX_PASSWORD_BYTES} bytes"
        ));
    }
    Ok(())
}

/// An Argon2id hash (argon2's default parameters) as a PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&hashfleet_shared::random_bytes::<16>())
        .map_err(|e| format!("cannot encode a salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` matches the PHC string `hash` (constant time).
/// A hash that does not parse matches nothing.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A hash of a random password, verified against when the username is
/// unknown, so an unknown user takes as long as a wrong password.
pub fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let random = hex::encode(hashfleet_shared::random_bytes::<16>());
        hash_password(&random).unwrap_or_default()
    })
}

/// A random API token id: 16 hex digits.
pub fn new_token_id() -> String {
    hex::encode(hashfleet_shared::random_bytes::<8>())
}

/// What a failed login is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ThrottleKey {
    User(String),
    /// An IPv4 address, or the /64 of an IPv6 one (a host gets a whole /64).
    Ip(IpAddr),
}

impl ThrottleKey {
    /// The username key (cut at 65 bytes: longer names are never valid).
    pub fn user(name: &str) -> Self {
        let mut end = name.len().min(MAX_USERNAME + 1);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        ThrottleKey::User(name[..end].to_string())
    }

    pub fn ip(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                ThrottleKey::Ip(IpAddr::from(octets))
            }
            v4 => ThrottleKey::Ip(v4),
        }
    }
}

/// Keys kept before expired ones are swept.
const SWEEP_ABOVE: usize = 10_000;

/// Counts login attempts per key in a sliding window: a key with
/// `max_failures` attempts in the last `window` is refused until the oldest
/// of them is `window` old.
///
/// An attempt is counted when it starts ([`LoginThrottle::begin`]), so
/// parallel guesses cannot slip past the limit, and is taken back when it
/// succeeds ([`LoginThrottle::succeeded`]): a success clears the username's
/// attempts but not the address's, so logging in to one's own account does
/// not buy more guesses at others.
#[derive(Debug)]
pub struct LoginThrottle {
    max_failures: usize,
    window_ms: u64,
    attempts: HashMap<ThrottleKey, VecDeque<u64>>,
}

impl LoginThrottle {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        LoginThrottle {
            max_failures: max_failures.max(1) as usize,
            window_ms: window.as_millis() as u64,
            attempts: HashMap::new(),
        }
    }

    /// Drops a key's attempts older than the window.
    fn expire(&mut self, key: &ThrottleKey, now_ms: u64) {
        if let Some(log) = self.attempts.get_mut(key) {
            while log
                .front()
                .is_some_and(|t| t.saturating_add(self.window_ms) <= now_ms)
            {
                log.pop_front();
            }
            if log.is_empty() {
                self.attempts.remove(key);
            }
        }
    }

    /// Starts an attempt: `Err(retry_at_ms)` when any key is throttled
    /// (nothing is counted then), else counts it against every key.
    pub fn begin(&mut self, keys: &[ThrottleKey], now_ms: u64) -> Result<(), u64> {
        if self.attempts.len() > SWEEP_ABOVE {
            let window = self.window_ms;
            self.attempts
                .retain(|_, log| log.back().is_some_and(|t| t + window > now_ms));
        }
        let mut retry_at = None;
        for key in keys {
            self.expire(key, now_ms);
            if let Some(log) = self.attempts.get(key) {
                if log.len() >= self.max_failures {
                    let at = log[log.len() - self.max_failures] + self.window_ms;
                    retry_at = Some(retry_at.map_or(at, |r: u64| r.max(at)));
                }
            }
        }
        if let Some(at) = retry_at {
            return Err(at);
        }
        for key in keys {
            self.attempts
                .entry(key.clone())
                .or_default()
                .push_back(now_ms);
        }
        Ok(())
    }

    /// The attempt begun at `started_ms` succeeded: the username's count
    /// starts over and the attempt no longer counts against the address.
    pub fn succeeded(&mut self, keys: &[ThrottleKey], started_ms: u64) {
        for key in keys {
            match key {
                ThrottleKey::User(_) => {
                    self.attempts.remove(key);
                }
                ThrottleKey::Ip(_) => {
                    if let Some(log) = self.attempts.get_mut(key) {
                        if let Some(i) = log.iter().rposition(|t| *t == started_ms) {
                            log.remove(i);
                        }
                        if log.is_empty() {
                            self.attempts.remove(key);
                        }
                    }
                }
            }
        }
    }

    /// How many keys are tracked.
    pub fn tracked(&self) -> usize {
        self.attempts.len()
    }
}

/// The commander's login state: the throttle and a bound on concurrent
/// password hashing.
pub struct Accounts {
    pub throttle: Mutex<LoginThrottle>,
    pub hashing: tokio::sync::Semaphore,
}

impl Accounts {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Accounts {
            throttle: Mutex::new(LoginThrottle::new(max_failures, window)),
            hashing: tokio::sync::Semaphore::new(HASHING_SLOTS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(user: &str, ip: &str) -> Vec<ThrottleKey> {
        vec![
            ThrottleKey::user(user),
            ThrottleKey::ip(ip.parse().unwrap()),
        ]
    }

    #[test]
    fn five_failures_lock_until_the_window_passes() {
        let mut t = LoginThrottle::new(5, Duration::from_secs(900));
        let k = keys("alice", "10.0.0.1");
        for i in 0..5 {
            assert_eq!(t.begin(&k, 1000 + i), Ok(()), "attempt {i}");
        }
        // The sixth is refused, whatever the password, until the first is 15 min old.
        assert_eq!(t.begin(&k, 2000), Err(1000 + 900_000));
        assert_eq!(t.begin(&k, 900_999), Err(900_000 + 1000));
        assert_eq!(t.begin(&k, 901_000), Ok(()));
        // Refusals were not counted: the window slides one attempt at a time.
        assert_eq!(t.begin(&k, 901_000), Err(901_001));
    }

    #[test]
    fn the_username_and_the_address_are_counted_apart() {
        let mut t = LoginThrottle::new(3, Duration::from_secs(60));
        for i in 0..3 {
            t.begin(&keys("alice", "10.0.0.1"), i).unwrap();
        }
        // alice is locked from anywhere; the address for anyone.
        assert!(t.begin(&keys("alice", "10.0.0.2"), 10).is_err());
        assert!(t.begin(&keys("bob", "10.0.0.1"), 10).is_err());
        assert!(t.begin(&keys("bob", "10.0.0.2"), 10).is_ok());
    }

    #[test]
    fn success_resets_the_user_but_not_the_address() {
        let mut t = LoginThrottle::new(3, Duration::from_secs(60));
        let k = keys("alice", "10.0.0.1");
        t.begin(&k, 1).unwrap();
        t.begin(&k, 2).unwrap();
        t.begin(&k, 3).unwrap();
        t.succeeded(&k, 3);
        // alice starts over; the address still holds two failures.
        assert!(t.begin(&keys("alice", "10.0.0.9"), 4).is_ok());
        t.begin(&keys("carol", "10.0.0.1"), 5).unwrap();
        assert_eq!(t.begin(&keys("dave", "10.0.0.1"), 6), Err(60_001));
    }

    #[test]
    fn parallel_attempts_count_when_they_start() {
        let mut t = LoginThrottle::new(2, Duration::from_secs(60));
        let k = keys("alice", "10.0.0.1");
        assert!(t.begin(&k, 5).is_ok());
        assert!(t.begin(&k, 5).is_ok());
        // Neither has finished; a third is refused already.
        assert!(t.begin(&k, 5).is_err());
    }

    #[test]
    fn ipv6_hosts_share_their_64_and_mapped_v4_is_v4() {
        assert_eq!(
            ThrottleKey::ip("2001:db8:1:2:aaaa::1".parse().unwrap()),
            ThrottleKey::ip("2001:db8:1:2:bbbb::9".parse().unwrap())
        );
        assert_ne!(
            ThrottleKey::ip("2001:db8:1:2::1".parse().unwrap()),
            ThrottleKey::ip("2001:db8:1:3::1".parse().unwrap())
        );
        assert_eq!(
            ThrottleKey::ip("::ffff:10.0.0.1".parse().unwrap()),
            ThrottleKey::ip("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            ThrottleKey::user(&"x".repeat(1000)),
            ThrottleKey::User("x".repeat(65))
        );
    }

    #[test]
    fn expired_keys_are_swept() {
        let mut t = LoginThrottle::new(5, Duration::from_secs(1));
        for i in 0..=SWEEP_ABOVE as u64 {
            t.begin(&[ThrottleKey::user(&format!("u{i}"))], 0).unwrap();
        }
        assert!(t.tracked() > SWEEP_ABOVE);
        t.begin(&[ThrottleKey::user("late")], 5_000).unwrap();
        assert_eq!(t.tracked(), 1);
    }

    #[test]
    fn usernames_and_passwords_follow_the_rules() {
        assert!(check_username("alice").is_ok());
        assert!(check_username("ops.team-2_a").is_ok());
        for bad in ["", "Alice", "-x", "a b", "admin", &"a".repeat(65), "ä"] {
            assert!(check_username(bad).is_err(), "{bad}");
        }
        assert!(check_password("short-pass1").is_err());
        assert!(check_password("twelve chars").is_ok());
        // Characters, not bytes.
        assert!(check_password("ääääääääääää").is_ok());
        assert!(check_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }

    #[test]
    fn argon2_hashes_verify_only_their_password() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterY", &h));
        assert!(!verify_password("anything", "not a phc string"));
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
        assert!(decoy_hash().starts_with("$argon2id$"));
    }
}
