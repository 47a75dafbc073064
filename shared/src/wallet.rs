//! The secp256k1 wallet key: EIP-55 addresses and EIP-191 `personal_sign` proofs.
//!
//! A sentry proves it holds its wallet by signing its node_id with the
//! wallet key in EIP-191 form; the commander recovers the signer's address
//! from the signature and compares it with the claimed one.

use std::fmt;
use std::str::FromStr;

use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};
use sha3::{Digest, Keccak256};
use zeroize::Zeroizing;

/// Why a wallet key, address or proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    #[error("wallet private key must be 64 hex digits encoding a scalar in 1..n")]
    BadPrivateKey,
    #[error("wallet address `{0}` is not 0x followed by 40 hex digits")]
    BadAddress(String),
    #[error("wallet address `{0}` has mixed case that fails its EIP-55 checksum")]
    BadChecksum(String),
    #[error("wallet signature is malformed: {0}")]
    BadSignature(&'static str),
    #[error("wallet signature was made by {recovered}, not by the claimed {claimed}")]
    WrongSigner {
        claimed: WalletAddress,
        recovered: WalletAddress,
    },
}

/// A 20-byte EVM address. Displays with its EIP-55 checksum.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WalletAddress(pub [u8; 20]);

impl WalletAddress {
    /// The address of a public key: last 20 bytes of keccak256(X ‖ Y).
    pub fn from_verifying_key(key: &VerifyingKey) -> Self {
        let point = key.to_encoded_point(false);
        let hash = Keccak256::digest(&point.as_bytes()[1..]);
        let mut out = [0u8; 20];
        out.copy_from_slice(&hash[12..]);
        WalletAddress(out)
    }

    /// EIP-55 mixed-case form, with `0x`.
    pub fn to_checksummed(&self) -> String {
        let lower = hex::encode(self.0);
        let hash = Keccak256::digest(lower.as_bytes());
        let mut out = String::with_capacity(42);
        out.push_str("0x");
        for (i, c) in lower.chars().enumerate() {
            let nibble = (hash[i / 2] >> if i % 2 == 0 { 4 } else { 0 }) & 0x0f;
            if c.is_ascii_alphabetic() && nibble >= 8 {
                out.push(c.to_ascii_uppercase());
            } else {
                out.push(c);
            }
        }
        out
    }
}

impl fmt::Display for WalletAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_checksummed())
    }
}

impl fmt::Debug for WalletAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WalletAddress({self})")
    }
}

impl FromStr for WalletAddress {
    type Err = WalletError;

    /// Accepts all-lower or all-upper hex, or mixed case with a valid checksum.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let digits = text
            .strip_prefix("0x")
            .filter(|d| d.len() == 40)
            .ok_or_else(|| WalletError::BadAddress(truncate(text)))?;
        let mut out = [0u8; 20];
        hex::decode_to_slice(digits, &mut out)
            .map_err(|_| WalletError::BadAddress(truncate(text)))?;
        let address = WalletAddress(out);
        let mixed = digits.chars().any(|c| c.is_ascii_lowercase())
            && digits.chars().any(|c| c.is_ascii_uppercase());
        if mixed && address.to_checksummed() != text {
            return Err(WalletError::BadChecksum(text.to_string()));
        }
        Ok(address)
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

impl serde::Serialize for WalletAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for WalletAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl bincode::Encode for WalletAddress {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        e: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        bincode::Encode::encode(&self.0, e)
    }
}

impl<C> bincode::Decode<C> for WalletAddress {
    fn decode<D: bincode::de::Decoder<Context = C>>(
        d: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        Ok(WalletAddress(<[u8; 20] as bincode::Decode<C>>::decode(d)?))
    }
}
bincode::impl_borrow_decode!(WalletAddress);

/// A secp256k1 private key. Zeroized on drop, never printed.
#[derive(Clone)]
pub struct WalletKey(SigningKey);

impl WalletKey {
    pub fn generate() -> Self {
        WalletKey(SigningKey::random(&mut rand_core::OsRng))
    }

    pub fn from_bytes(secret: &[u8; 32]) -> Result<Self, WalletError> {
        SigningKey::from_slice(secret)
            .map(WalletKey)
            .map_err(|_| WalletError::BadPrivateKey)
    }

    /// The 32-byte secret scalar.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes().into())
    }

    /// The 33-byte compressed public point.
    pub fn public_compressed(&self) -> [u8; 33] {
        let point = self.0.verifying_key().to_encoded_point(true);
        let mut out = [0u8; 33];
        out.copy_from_slice(point.as_bytes());
        out
    }

    pub fn address(&self) -> WalletAddress {
        WalletAddress::from_verifying_key(self.0.verifying_key())
    }

    /// EIP-191 `personal_sign`: 65 bytes r ‖ s ‖ v with v = 27 or 28.
    pub fn personal_sign(&self, message: &[u8]) -> [u8; 65] {
        let digest = eip191_digest(message);
        let (signature, recovery) = self
            .0
            .sign_prehash_recoverable(&digest)
            .expect("signing a 32-byte prehash with a valid key cannot fail");
        let mut out = [0u8; 65];
        out[..64].copy_from_slice(&signature.to_bytes());
        out[64] = 27 + recovery.to_byte();
        out
    }
}

impl fmt::Debug for WalletKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WalletKey({}, secret redacted)", self.address())
    }
}

/// keccak256("\x19Ethereum Signed Message:\n" ‖ len(message) ‖ message).
pub fn eip191_digest(message: &[u8]) -> [u8; 32] {
    let mut hasher = Keccak256::new();
    hasher.update(b"\x19Ethereum Signed Message:\n");
    hasher.update(message.len().to_string().as_bytes());
    hasher.update(message);
    hasher.finalize().into()
}

/// Recovers the address that made an EIP-191 signature.
pub fn recover_personal(
    message: &[u8],
    signature: &[u8; 65],
) -> Result<WalletAddress, WalletError> {
    let v = match signature[64] {
        v @ (27 | 28) => v - 27,
        v @ (0 | 1) => v,
        _ => return Err(WalletError::BadSignature("v must be 27 or 28")),
    };
    let recovery = RecoveryId::from_byte(v).ok_or(WalletError::BadSignature("bad recovery id"))?;
    let sig = Signature::from_slice(&signature[..64])
        .map_err(|_| WalletError::BadSignature("r or s out of range"))?;
    let key = VerifyingKey::recover_from_prehash(&eip191_digest(message), &sig, recovery)
        .map_err(|_| WalletError::BadSignature("no public key recovers from it"))?;
    Ok(WalletAddress::from_verifying_key(&key))
}

/// Checks that `claimed` signed `message` in EIP-191 form.
pub fn verify_personal(
    message: &[u8],
    signature: &[u8; 65],
    claimed: &WalletAddress,
) -> Result<(), WalletError> {
    let recovered = recover_personal(message, signature)?;
    if &recovered == claimed {
        Ok(())
    } else {
        Err(WalletError::WrongSigner {
            claimed: *claimed,
            recovered,
        })
    }
}
