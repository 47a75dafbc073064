//! Every vector of `shared/reference/identity-vectors.md`, reproduced.

use std::os::unix::fs::PermissionsExt;

use hashfleet_shared::identity::{Identity, IdentityError, IDENTITY_FILE};
use hashfleet_shared::secure_file::SecureFileError;
use hashfleet_shared::wallet::{self, WalletAddress, WalletKey};
use hashfleet_shared::{NodeId, NodeKey};

fn seed(hex_text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out).unwrap();
    out
}

#[test]
fn node_id_vectors() {
    let cases = [
        (
            "0000000000000000000000000000000000000000000000000000000000000000",
            "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29",
            "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
        ),
        (
            "0100000000000000000000000000000000000000000000000000000000000000",
            "cecc1507dc1ddd7295951c290888f095adb9044d1b73d696e6df065d683bd4fc",
            "12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X",
        ),
        (
            "7e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d",
            "1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e",
            "12D3KooWBtg3aaRMjxwedh83aGiUkwSxDwUZkzuJcfaqUmo7R3pq",
        ),
    ];
    for (secret, public, node_id) in cases {
        let key = NodeKey::from_seed(&seed(secret));
        assert_eq!(key.node_id().public_key_hex(), public);
        assert_eq!(key.node_id().to_string(), node_id);
        let parsed: NodeId = node_id.parse().unwrap();
        assert_eq!(parsed, key.node_id());
    }
    // The spec's protobuf form of the third key.
    let key = NodeKey::from_seed(&seed(cases[2].0));
    assert_eq!(
        hex::encode(&key.node_id().to_multihash()[2..]),
        "080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
    );
}

#[test]
fn wallet_address_vectors() {
    let cases = [
        (
            "0000000000000000000000000000000000000000000000000000000000000001",
            "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf",
        ),
        (
            "0000000000000000000000000000000000000000000000000000000000000002",
            "0x2B5AD5c4795c026514f8317c7a215E218DcCD6cF",
        ),
        (
            "0000000000000000000000000000000000000000000000000000000000000003",
            "0x6813Eb9362372EEF6200f3b1dbC3f819671cBA69",
        ),
        (
            "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318",
            "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23",
        ),
        (
            "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
        ),
    ];
    for (secret, address) in cases {
        let key = WalletKey::from_bytes(&seed(secret)).unwrap();
        assert_eq!(key.address().to_string(), address);
        assert_eq!(address.parse::<WalletAddress>().unwrap(), key.address());
    }
}

#[test]
fn eip55_checksum_vector() {
    let lower: WalletAddress = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"
        .parse()
        .unwrap();
    assert_eq!(
        lower.to_string(),
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
    );
    // A wrong mixed case is refused.
    assert!("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"
        .parse::<WalletAddress>()
        .is_err());
}

#[test]
fn eip191_personal_sign_round_trip() {
    let key = WalletKey::from_bytes(&seed(
        "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318",
    ))
    .unwrap();
    let message = b"12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
    let sig = key.personal_sign(message);
    assert!(sig[64] == 27 || sig[64] == 28);
    assert_eq!(
        wallet::recover_personal(message, &sig).unwrap(),
        key.address()
    );
    assert!(wallet::verify_personal(message, &sig, &key.address()).is_ok());
    // Another message, or another claimed address, fails.
    assert!(wallet::verify_personal(b"other", &sig, &key.address()).is_err());
    let other = WalletKey::generate().address();
    assert!(wallet::verify_personal(message, &sig, &other).is_err());
}

#[test]
fn eip191_digest_matches_the_published_hello_world_hash() {
    // keccak256("\x19Ethereum Signed Message:\n11hello world"), as given by
    // ethers' hashMessage("hello world").
    assert_eq!(
        hex::encode(wallet::eip191_digest(b"hello world")),
        "d9eba16ed0ecae432b71fe008c98cc872bb4cc214d3220a36f365326cf807d68"
    );
}

#[test]
fn identity_file_round_trip_fields_and_mode() {
    let home = tempfile::tempdir().unwrap();
    let home = home.path().join("home");
    let (created, fresh) = Identity::load_or_create(&home).unwrap();
    assert!(fresh);
    let path = home.join(IDENTITY_FILE);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&home).unwrap().permissions().mode() & 0o777,
        0o700
    );

    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for field in [
        "node_id",
        "node_key_type",
        "node_public_key",
        "node_private_key",
        "wallet_key_type",
        "wallet_public_key",
        "wallet_private_key",
        "wallet_address",
        "created_at",
    ] {
        assert!(json.get(field).is_some(), "missing {field}");
    }
    assert_eq!(json["node_key_type"], "ed25519");
    assert_eq!(json["wallet_key_type"], "secp256k1");
    assert_eq!(json["node_private_key"].as_str().unwrap().len(), 64);
    assert_eq!(json["wallet_public_key"].as_str().unwrap().len(), 66);
    assert!(json["node_id"].as_str().unwrap().starts_with("12D3KooW"));

    let (loaded, fresh) = Identity::load_or_create(&home).unwrap();
    assert!(!fresh);
    assert_eq!(loaded.node_id(), created.node_id());
    assert_eq!(loaded.wallet.address(), created.wallet.address());
}

#[test]
fn identity_refuses_open_mode_and_never_regenerates() {
    let home = tempfile::tempdir().unwrap();
    let (_, _) = Identity::load_or_create(home.path()).unwrap();
    let path = home.path().join(IDENTITY_FILE);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = Identity::load_or_create(home.path()).unwrap_err();
    assert!(
        matches!(err, IdentityError::File(SecureFileError::TooOpen { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("chmod 600"));
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn identity_refuses_corrupt_files_and_leaves_them() {
    let home = tempfile::tempdir().unwrap();
    let (_, _) = Identity::load_or_create(home.path()).unwrap();
    let path = home.path().join(IDENTITY_FILE);
    let good = std::fs::read_to_string(&path).unwrap();

    let truncated = &good[..good.len() / 2];
    let mut json: serde_json::Value = serde_json::from_str(&good).unwrap();
    json["node_public_key"] = serde_json::Value::String("00".repeat(32));
    let mismatched = serde_json::to_string(&json).unwrap();

    for bad in [
        truncated.to_string(),
        mismatched,
        "{}".to_string(),
        String::new(),
    ] {
        hashfleet_shared::secure_file::write_atomic(&path, bad.as_bytes(), 0o600).unwrap();
        let err = Identity::load_or_create(home.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("left untouched"));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            bad,
            "file was rewritten"
        );
    }
}
