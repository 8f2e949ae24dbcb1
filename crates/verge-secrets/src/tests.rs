//! Sealing and opening secrets, and the master key's files: creation,
//! permissions, damage, and rotation step by step.

use std::os::unix::fs::PermissionsExt;

use super::*;

const ID: SecretId<'static> = SecretId {
    tenant: "acme",
    app: "shop",
    name: "api_key",
};

#[test]
fn sealed_values_open_only_for_their_secret_and_key() {
    let key = MasterKey::generate().expect("key");
    let value = b"a\0b".repeat(1000);
    let sealed = key.seal(ID, &value).expect("seal");
    let json = serde_json::to_string(&sealed).expect("json");
    assert!(!json.contains("a\\u0000b"), "no plaintext in the record");
    let ring = Keyring::single(key);
    assert_eq!(
        ring.open(ID, &sealed).expect("open").as_slice(),
        value.as_slice()
    );
    // Moved onto another secret: refused.
    let other = SecretId {
        name: "other",
        ..ID
    };
    assert!(matches!(
        ring.open(other, &sealed),
        Err(SecretError::Undecryptable(_))
    ));
    // A flipped bit: refused.
    let mut damaged = sealed.clone();
    damaged.ciphertext = damaged
        .ciphertext
        .replacen('A', "B", 1)
        .replacen('a', "b", 1);
    assert!(ring.open(ID, &damaged).is_err());
    // Another key: refused, naming only the key id.
    let stranger = Keyring::single(MasterKey::generate().expect("key"));
    let err = stranger.open(ID, &sealed).expect_err("unknown key");
    assert!(
        err.to_string().starts_with("sealed with master key"),
        "{err}"
    );
    // Sizes: 1 MiB is fine, more is refused.
    let ring = Keyring::single(MasterKey::generate().expect("key"));
    let big = vec![0u8; MAX_SECRET_BYTES];
    let sealed = ring.seal(ID, &big).expect("1 MiB");
    assert_eq!(
        ring.open(ID, &sealed).expect("open").len(),
        MAX_SECRET_BYTES
    );
    assert!(matches!(
        ring.seal(ID, &[0; MAX_SECRET_BYTES + 1]),
        Err(SecretError::TooLarge)
    ));
}

#[test]
fn key_files_are_created_once_private_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("master.key");
    let source = KeySource::File(path.clone());
    // Missing while secrets exist: refused, nothing created.
    let err = Keyring::load(&source, true, false).expect_err("missing");
    assert!(
        err.to_string()
            .contains("it is missing, but the store holds secrets"),
        "{err}"
    );
    assert!(!path.exists());
    // A crash while writing a key leaves only a `.tmp` file, never a
    // partial key: it is ignored and replaced.
    std::fs::write(dir.path().join("master.key.tmp"), "0123").expect("leftover");
    let first = Keyring::load(&source, false, false).expect("created");
    assert!(first.created);
    assert!(!dir.path().join("master.key.tmp").exists());
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = Keyring::load(&source, true, false).expect("read");
    assert!(!again.created);
    assert_eq!(again.keyring.current().id(), first.keyring.current().id());

    // Readable by others: refused.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = Keyring::load(&source, true, false).expect_err("loose permissions");
    assert!(err.to_string().contains("run `chmod 600"), "{err}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // Damaged: refused, without echoing the file.
    let secret_looking = "zz".repeat(32);
    std::fs::write(&path, &secret_looking).expect("write");
    let err = Keyring::load(&source, true, false).expect_err("damaged");
    let text = err.to_string();
    assert!(text.contains("it is damaged"), "{text}");
    assert!(!text.contains(&secret_looking), "{text}");
    std::fs::write(&path, "").expect("write");
    assert!(Keyring::load(&source, true, false).is_err(), "empty file");
}

#[test]
fn rotation_keeps_every_secret_readable_at_every_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("master.key");
    let source = KeySource::File(path.clone());
    let old = Keyring::load(&source, false, false)
        .expect("created")
        .keyring;
    let sealed = old.seal(ID, b"v").expect("seal");

    // Start a rotation: the new key is current, the old one still opens.
    let mut ring = Keyring::load(&source, true, true)
        .expect("rotating")
        .keyring;
    assert!(ring.rotating());
    assert_ne!(ring.current().id(), old.current().id());
    assert!(ring.is_stale(&sealed));
    assert_eq!(
        ring.open(ID, &sealed).expect("old key opens").as_slice(),
        b"v"
    );
    let resealed = ring.seal(ID, b"v").expect("reseal");

    // A crash here: loading again still has both keys.
    let again = Keyring::load(&source, true, false)
        .expect("after crash")
        .keyring;
    assert_eq!(again.current().id(), ring.current().id());
    assert!(again.open(ID, &sealed).is_ok());

    assert!(ring.finish_rotation().expect("finish"));
    assert!(!dir.path().join("master.key.next").exists());
    let done = Keyring::load(&source, true, false).expect("after").keyring;
    assert!(!done.rotating());
    assert_eq!(done.open(ID, &resealed).expect("open").as_slice(), b"v");
    assert!(matches!(
        done.open(ID, &sealed),
        Err(SecretError::UnknownKey(_))
    ));
}

#[test]
fn environment_keys_are_parsed_and_never_echoed() {
    let key = MasterKey::generate().expect("key");
    let source = KeySource::Env {
        current: key.to_hex(),
        previous: None,
    };
    let ring = Keyring::load(&source, true, false).expect("env").keyring;
    assert_eq!(ring.current().id(), key.id());
    let bad = KeySource::Env {
        current: zeroize::Zeroizing::new("not-a-key".to_string()),
        previous: None,
    };
    let err = Keyring::load(&bad, true, false).expect_err("bad");
    assert!(
        err.to_string().starts_with("VERGE_MASTER_KEY: expected 64"),
        "{err}"
    );
    assert!(!err.to_string().contains("not-a-key"));
    assert!(format!("{key:?}").starts_with("MasterKey("));
    let debug = format!("{source:?}");
    assert!(!debug.contains(&*key.to_hex()), "{debug}");
    assert!(!format!("{key:?}").contains(&*key.to_hex()));
}
