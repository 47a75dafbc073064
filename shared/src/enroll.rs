//! Enrollment decisions and secret tokens, without storage.
//!
//! Tokens (enrollment and API) are 32 random bytes in base58 behind a short
//! prefix. Only their SHA-256 is stored, so a lookup is one index probe and
//! a stolen store reveals no usable token. (argon2 is for passwords, which
//! have little entropy; these tokens have 256 bits.)

use sha2::{Digest, Sha256};

use crate::wire::{Reject, RejectCode, SentryStatus};

/// A new random token: `prefix` then 32 random bytes in base58.
pub fn generate_token(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        bs58::encode(crate::random_bytes::<32>()).into_string()
    )
}

/// What the store keeps of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// What the commander knows of a node key when it says hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Approved,
    Pending,
    Revoked,
}

/// What the presented enrollment token turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    Absent,
    /// Valid and not yet used up; using it consumes one use.
    Valid,
    Invalid,
}

/// The commander's answer to a verified hello.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Create a new sentry with this status; `consume` says whether the
    /// token's use count goes down.
    Create {
        status: SentryStatus,
        consume: bool,
    },
    /// A known sentry: welcome it with this status.
    Welcome {
        status: SentryStatus,
        consume: bool,
    },
    Reject(Reject),
}

pub fn decide(known: Option<Known>, token: TokenCheck) -> Decision {
    let invalid = || {
        Decision::Reject(Reject {
            code: RejectCode::EnrollTokenInvalid,
            message: "the enrollment token is unknown, expired or used up: create a new one \
                      (POST /api/v1/enrollment-tokens), or start the sentry without a token \
                      and approve it on the commander"
                .into(),
        })
    };
    match (known, token) {
        (Some(Known::Revoked), _) => Decision::Reject(Reject {
            code: RejectCode::Revoked,
            message: "this node key was revoked on the commander and is refused for good: \
                      create a new identity and enroll it with a new token"
                .into(),
        }),
        // An approved sentry needs no token; one it still carries is not used up.
        (Some(Known::Approved), _) => Decision::Welcome {
            status: SentryStatus::Approved,
            consume: false,
        },
        (Some(Known::Pending), TokenCheck::Valid) => Decision::Welcome {
            status: SentryStatus::Approved,
            consume: true,
        },
        (Some(Known::Pending), TokenCheck::Absent) => Decision::Welcome {
            status: SentryStatus::Pending,
            consume: false,
        },
        (None, TokenCheck::Valid) => Decision::Create {
            status: SentryStatus::Approved,
            consume: true,
        },
        (None, TokenCheck::Absent) => Decision::Create {
            status: SentryStatus::Pending,
            consume: false,
        },
        (Some(Known::Pending) | None, TokenCheck::Invalid) => invalid(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        use SentryStatus::*;
        assert_eq!(
            decide(None, TokenCheck::Valid),
            Decision::Create {
                status: Approved,
                consume: true
            }
        );
        assert_eq!(
            decide(None, TokenCheck::Absent),
            Decision::Create {
                status: Pending,
                consume: false
            }
        );
        assert!(
            matches!(decide(None, TokenCheck::Invalid), Decision::Reject(r) if r.code == RejectCode::EnrollTokenInvalid)
        );
        assert!(
            matches!(decide(Some(Known::Revoked), TokenCheck::Valid), Decision::Reject(r) if r.code == RejectCode::Revoked)
        );
        assert_eq!(
            decide(Some(Known::Approved), TokenCheck::Valid),
            Decision::Welcome {
                status: Approved,
                consume: false
            }
        );
        assert_eq!(
            decide(Some(Known::Pending), TokenCheck::Valid),
            Decision::Welcome {
                status: Approved,
                consume: true
            }
        );
        assert_eq!(
            decide(Some(Known::Pending), TokenCheck::Absent),
            Decision::Welcome {
                status: Pending,
                consume: false
            }
        );
    }

    #[test]
    fn tokens_are_random_and_hash_stably() {
        let a = generate_token("hfe_");
        let b = generate_token("hfe_");
        assert_ne!(a, b);
        assert!(a.starts_with("hfe_") && a.len() > 40);
        assert_eq!(token_hash(&a), token_hash(&format!("{a}\n")));
        assert_ne!(token_hash(&a), token_hash(&b));
    }
}
