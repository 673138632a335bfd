//! A node identity on disk: made once, loaded the same afterwards, and a damaged or half-present
//! one is an error that names the file, never a silent new key.

#![cfg(feature = "quic")]

use std::path::Path;

use crdt_net::node::Identity;

fn key(dir: &Path) -> std::path::PathBuf {
    dir.join("node.key")
}

fn cert(dir: &Path) -> std::path::PathBuf {
    dir.join("node.crt")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The error message of a load that must fail.
fn load_err(dir: &Path) -> String {
    match Identity::load_or_create(dir) {
        Ok(identity) => panic!("loaded {identity:?}, expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn fresh_dir_creates_an_identity_that_loads_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let made = Identity::load_or_create(&dir).unwrap();
    assert!(key(&dir).is_file() && cert(&dir).is_file());
    let (key_bytes, cert_bytes) = (read(&key(&dir)), read(&cert(&dir)));

    let loaded = Identity::load_or_create(&dir).unwrap();
    assert_eq!(made.id(), loaded.id());
    assert_eq!(read(&key(&dir)), key_bytes, "loading rewrote node.key");
    assert_eq!(read(&cert(&dir)), cert_bytes, "loading rewrote node.crt");

    // Nothing but the two files is left behind (no temporary files).
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["node.crt", "node.key"]);
}

#[cfg(unix)]
#[test]
fn key_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    Identity::load_or_create(tmp.path()).unwrap();
    let mode = std::fs::metadata(key(tmp.path()))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "node.key mode {mode:o}");
}

#[test]
fn missing_certificate_is_an_error_and_keeps_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    Identity::load_or_create(dir).unwrap();
    let key_bytes = read(&key(dir));
    std::fs::remove_file(cert(dir)).unwrap();

    let err = load_err(dir);
    assert!(err.contains("node.crt"), "{err}");
    assert!(err.contains("incomplete"), "{err}");
    assert_eq!(read(&key(dir)), key_bytes, "node.key was overwritten");
    assert!(!cert(dir).exists(), "node.crt was made anew");
}

#[test]
fn missing_key_is_an_error_and_keeps_the_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    Identity::load_or_create(dir).unwrap();
    let cert_bytes = read(&cert(dir));
    std::fs::remove_file(key(dir)).unwrap();

    let err = load_err(dir);
    assert!(err.contains("node.key"), "{err}");
    assert!(err.contains("incomplete"), "{err}");
    assert_eq!(read(&cert(dir)), cert_bytes, "node.crt was overwritten");
    assert!(!key(dir).exists(), "node.key was made anew");
}

#[test]
fn garbage_key_is_an_error_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    Identity::load_or_create(dir).unwrap();
    std::fs::write(key(dir), b"not a key at all").unwrap();

    let err = load_err(dir);
    assert!(err.contains("node.key"), "{err}");
    assert_eq!(read(&key(dir)), b"not a key at all");
}

#[test]
fn empty_key_is_an_error_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    Identity::load_or_create(dir).unwrap();
    std::fs::write(key(dir), b"").unwrap();

    let err = load_err(dir);
    assert!(err.contains("node.key"), "{err}");
}

#[test]
fn certificate_of_another_identity_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, other) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = Identity::load_or_create(&dir).unwrap();
    let b = Identity::load_or_create(&other).unwrap();
    assert_ne!(a.id(), b.id());
    std::fs::copy(cert(&other), cert(&dir)).unwrap();

    let err = load_err(&dir);
    assert!(err.contains("node.crt"), "{err}");
    assert!(err.contains("not for the private key"), "{err}");
}

#[test]
fn truncated_certificate_is_an_error_naming_the_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    Identity::load_or_create(dir).unwrap();
    let cert_bytes = read(&cert(dir));
    let half = cert_bytes.get(..cert_bytes.len() / 2).unwrap();
    std::fs::write(cert(dir), half).unwrap();

    let err = load_err(dir);
    assert!(err.contains("node.crt"), "{err}");
    assert_eq!(read(&cert(dir)), half);
}
