//! Node identity (a key pair and a self-signed certificate), the trust list, and the TLS
//! verifiers that admit only trusted peers.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crdt_core::ReplicaId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::NodeError;

/// A node's key pair and certificate, kept in its data directory.
pub struct Identity {
    pub(crate) key: PrivatePkcs8KeyDer<'static>,
    pub(crate) cert: CertificateDer<'static>,
    id: ReplicaId,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

const KEY_FILE: &str = "node.key";
const CERT_FILE: &str = "node.crt";
const TRUST_FILE: &str = "trusted";

impl Identity {
    /// Loads the identity in `dir`, or makes one (a P-256 key and a self-signed certificate)
    /// if the directory has neither `node.key` nor `node.crt`.
    ///
    /// A half-present identity (one file without the other) or a damaged one (a key that is not
    /// PKCS#8, a certificate that does not parse, a certificate for another key) is an error
    /// that names the file; the existing files are never overwritten.
    pub fn load_or_create(dir: &Path) -> Result<Identity, NodeError> {
        let (key_path, cert_path) = (dir.join(KEY_FILE), dir.join(CERT_FILE));
        match (read_if_present(&key_path)?, read_if_present(&cert_path)?) {
            (Some(key), Some(cert)) => load(&key_path, key, &cert_path, cert),
            (None, None) => create(dir, &key_path, &cert_path),
            (Some(_), None) => Err(incomplete(dir, &key_path, &cert_path)),
            (None, Some(_)) => Err(incomplete(dir, &cert_path, &key_path)),
        }
    }

    /// The node id: the first 8 bytes of the SHA-256 of the public key.
    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// The SHA-256 of the public key: what peers pin in their trust lists.
    pub fn fingerprint(&self) -> Result<Fingerprint, NodeError> {
        fingerprint(&self.cert)
    }

    pub(crate) fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// Checks a stored key and certificate: the key must be PKCS#8, the certificate must parse, and
/// the certificate must carry the key's public key.
fn load(
    key_path: &Path,
    key: Vec<u8>,
    cert_path: &Path,
    cert: Vec<u8>,
) -> Result<Identity, NodeError> {
    use rcgen::PublicKeyData;

    let key = PrivatePkcs8KeyDer::from(key);
    let key_pair = rcgen::KeyPair::try_from(&key).map_err(|e| {
        NodeError::Identity(format!(
            "{}: not a readable PKCS#8 private key: {e}",
            key_path.display()
        ))
    })?;
    let cert = CertificateDer::from(cert);
    let parsed = webpki::EndEntityCert::try_from(&cert).map_err(|e| {
        NodeError::Identity(format!(
            "{}: not a readable certificate: {e}",
            cert_path.display()
        ))
    })?;
    if parsed.subject_public_key_info().as_ref() != key_pair.subject_public_key_info().as_slice() {
        return Err(NodeError::Identity(format!(
            "{}: the certificate is not for the private key in {}",
            cert_path.display(),
            key_path.display()
        )));
    }
    let id = node_id(&cert)?;
    Ok(Identity { key, cert, id })
}

/// Makes a new key pair and self-signed certificate and writes both durably.
fn create(dir: &Path, key_path: &Path, cert_path: &Path) -> Result<Identity, NodeError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let key_pair = rcgen::KeyPair::generate().map_err(|e| NodeError::Identity(e.to_string()))?;
    let params = rcgen::CertificateParams::new(vec!["crdt-node".to_owned()])
        .map_err(|e| NodeError::Identity(e.to_string()))?;
    let cert = params
        .self_signed(&key_pair)
        .map_err(|e| NodeError::Identity(e.to_string()))?;
    let key_der = key_pair.serialize_der();
    // The key goes in first: if a crash falls between the two renames, what is left is the key
    // (from which the node id follows), not a certificate without its key.
    write_durably(key_path, &key_der, true)?;
    write_durably(cert_path, cert.der(), false)?;
    sync_dir(dir)?;
    let cert = cert.der().clone();
    let id = node_id(&cert)?;
    Ok(Identity {
        key: PrivatePkcs8KeyDer::from(key_der),
        cert,
        id,
    })
}

/// The error for an identity with one of its two files missing.
fn incomplete(dir: &Path, present: &Path, missing: &Path) -> NodeError {
    NodeError::Identity(format!(
        "the identity in {} is incomplete: {} is missing but {} exists; refusing to make a new \
         identity over it (restore the missing file, or move {} away to make a new identity)",
        dir.display(),
        missing.display(),
        present.display(),
        present.display()
    ))
}

/// The file's bytes, or `None` if it does not exist.
fn read_if_present(path: &Path) -> Result<Option<Vec<u8>>, NodeError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// The id a certificate's public key stands for: the first 8 bytes of its fingerprint.
pub fn node_id(cert: &CertificateDer<'_>) -> Result<ReplicaId, NodeError> {
    fingerprint(cert).map(|f| f.id())
}

/// The SHA-256 of a certificate's public key (its DER subject public key info).
pub fn fingerprint(cert: &CertificateDer<'_>) -> Result<Fingerprint, NodeError> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| NodeError::Identity(format!("unreadable certificate: {e}")))?;
    let spki = parsed.subject_public_key_info();
    let digest = ring::digest::digest(&ring::digest::SHA256, spki.as_ref());
    let bytes: [u8; 32] = digest
        .as_ref()
        .try_into()
        .map_err(|_| NodeError::Identity("SHA-256 is not 32 bytes".into()))?;
    Ok(Fingerprint(bytes))
}

/// The SHA-256 of a node's public key: what a trust list pins. Printed and parsed as 64 hex
/// digits; its first 16 are the node id.
///
/// ```
/// use crdt_net::node::Fingerprint;
///
/// let text = "1f2e3d4c5b6a79880000000000000000000000000000000000000000000000ff";
/// let fingerprint: Fingerprint = text.parse().unwrap();
/// assert_eq!(fingerprint.to_string(), text);
/// assert_eq!(fingerprint.id().to_string(), "1f2e3d4c5b6a7988");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The node id: the first 8 bytes.
    pub fn id(&self) -> ReplicaId {
        let mut first = [0u8; 8];
        first.copy_from_slice(self.0.get(..8).unwrap_or(&[0; 8]));
        ReplicaId::new(u64::from_be_bytes(first))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = NodeError;

    fn from_str(text: &str) -> Result<Self, NodeError> {
        let text = text.trim();
        let bad = || NodeError::BadNodeId(text.to_owned());
        if text.len() != 64 || !text.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            let pair = text.get(2 * i..2 * i + 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Fingerprint(bytes))
    }
}

/// Parses a node id as printed (16 hex digits).
pub fn parse_node_id(text: &str) -> Result<ReplicaId, NodeError> {
    let text = text.trim();
    if text.len() != 16 {
        return Err(NodeError::BadNodeId(text.to_owned()));
    }
    u64::from_str_radix(text, 16)
        .map(ReplicaId::new)
        .map_err(|_| NodeError::BadNodeId(text.to_owned()))
}

/// The peers a node accepts, backed by a file (`trusted` in the data directory: one entry per
/// line, `#` starts a comment).
///
/// An entry is a key's [`Fingerprint`] (64 hex digits), which pins that one key; or, as
/// earlier versions wrote, a node id (16 hex digits), which admits any key whose fingerprint
/// starts with it: 64 bits, which a determined attacker could match. `crdt-node trust` and
/// [`NodeBuilder::trust_key`](super::NodeBuilder::trust_key) write fingerprints.
#[derive(Clone, Debug)]
pub struct TrustList {
    entries: Arc<RwLock<Entries>>,
    file: PathBuf,
}

/// What a trust list holds.
#[derive(Debug, Default)]
struct Entries {
    keys: BTreeSet<Fingerprint>,
    /// Trusted by id only (the format of earlier versions).
    ids: BTreeSet<ReplicaId>,
}

impl Entries {
    fn admits(&self, fingerprint: &Fingerprint) -> bool {
        self.keys.contains(fingerprint) || self.ids.contains(&fingerprint.id())
    }

    fn to_text(&self) -> String {
        let keys = self.keys.iter().map(|k| format!("{k}\n"));
        let ids = self.ids.iter().map(|id| format!("{id}\n"));
        keys.chain(ids).collect()
    }
}

impl TrustList {
    /// Reads the trust file in `dir` (an absent file is an empty list).
    pub fn load(dir: &Path) -> Result<TrustList, NodeError> {
        let file = dir.join(TRUST_FILE);
        let mut entries = Entries::default();
        if file.exists() {
            let text = std::fs::read_to_string(&file).map_err(io(&file))?;
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.len() == 64 {
                    entries.keys.insert(line.parse()?);
                } else if !line.is_empty() {
                    entries.ids.insert(parse_node_id(line)?);
                }
            }
        }
        if !entries.ids.is_empty() {
            tracing::warn!(
                file = %file.display(),
                "the trust list names peers by id only (64 bits); trust their fingerprints instead (`crdt-node trust FINGERPRINT`)"
            );
        }
        Ok(TrustList {
            entries: Arc::new(RwLock::new(entries)),
            file,
        })
    }

    /// Whether the node with `id` may connect (by a pinned key with that id, or the id).
    pub fn contains(&self, id: ReplicaId) -> bool {
        self.entries
            .read()
            .map(|e| e.ids.contains(&id) || e.keys.iter().any(|k| k.id() == id))
            .unwrap_or(false)
    }

    /// Whether the key with `fingerprint` may connect.
    pub fn admits(&self, fingerprint: &Fingerprint) -> bool {
        self.entries
            .read()
            .map(|e| e.admits(fingerprint))
            .unwrap_or(false)
    }

    /// Every trusted id (of pinned keys and of id-only entries).
    pub fn ids(&self) -> Vec<ReplicaId> {
        self.entries
            .read()
            .map(|e| {
                let ids: BTreeSet<ReplicaId> = e
                    .keys
                    .iter()
                    .map(Fingerprint::id)
                    .chain(e.ids.iter().copied())
                    .collect();
                ids.into_iter().collect()
            })
            .unwrap_or_default()
    }

    /// Pins (`trusted`) or unpins the key with `fingerprint`, and rewrites the file.
    pub fn set_key(&self, fingerprint: Fingerprint, trusted: bool) -> Result<(), NodeError> {
        self.edit(|e| {
            if trusted {
                e.keys.insert(fingerprint);
            } else {
                e.keys.remove(&fingerprint);
            }
        })
    }

    /// Adds (`trusted`) or removes an id-only entry (see the type's docs: prefer
    /// [`set_key`](TrustList::set_key)), and rewrites the file. Removing an id also unpins
    /// every key with that id.
    pub fn set(&self, id: ReplicaId, trusted: bool) -> Result<(), NodeError> {
        self.edit(|e| {
            if trusted {
                e.ids.insert(id);
            } else {
                e.ids.remove(&id);
                e.keys.retain(|k| k.id() != id);
            }
        })
    }

    fn edit(&self, change: impl FnOnce(&mut Entries)) -> Result<(), NodeError> {
        let text = {
            let mut entries = self
                .entries
                .write()
                .map_err(|_| NodeError::Identity("trust list lock poisoned".into()))?;
            change(&mut entries);
            entries.to_text()
        };
        std::fs::write(&self.file, text).map_err(io(&self.file))
    }
}

/// Admits a peer, client or server, only if its certificate's key is on the trust list and it
/// proves possession of that key in the handshake. Certificates are self-signed; the trust list
/// replaces certificate authorities (as SSH's known hosts do).
#[derive(Debug)]
pub(crate) struct TrustVerifier {
    trust: TrustList,
    algorithms: WebPkiSupportedAlgorithms,
}

impl TrustVerifier {
    pub(crate) fn new(trust: TrustList) -> Arc<Self> {
        Arc::new(TrustVerifier {
            trust,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        })
    }

    fn admit(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let key = fingerprint(cert)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.trust.admits(&key) {
            Ok(())
        } else {
            tracing::debug!(peer = %key.id(), fingerprint = %key, "refused a peer that is not on the trust list");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

impl ServerCertVerifier for TrustVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.admit(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for TrustVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.admit(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> NodeError + '_ {
    move |e| NodeError::Io {
        path: path.to_owned(),
        source: e,
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old state or the whole file:
/// a temporary file in the same directory, written and fsynced, then renamed into place. The
/// caller fsyncs the directory. A `private` file is readable by its owner only.
fn write_durably(path: &Path, bytes: &[u8], private: bool) -> Result<(), NodeError> {
    use std::io::Write;

    let tmp = temp_path(path);
    let written = (|| {
        let mut file = open_new(&tmp, private).map_err(io(&tmp))?;
        file.write_all(bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io(path))
    })();
    if written.is_err() {
        // Best effort: the error that matters is the one returned.
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// A fresh name beside `path` for a temporary file.
fn temp_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

#[cfg(unix)]
fn open_new(path: &Path, private: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    if private {
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(not(unix))]
fn open_new(path: &Path, _private: bool) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Makes the renames in `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> Result<(), NodeError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Directories cannot be opened for syncing here; the renames are as durable as the platform
/// makes them.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> Result<(), NodeError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pinned key admits that key only: another key with the same 64-bit id (made up here;
    /// finding one takes about 2^32 tries of key generation) is refused.
    #[test]
    fn a_pinned_key_admits_that_key_only() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let trust = TrustList::load(dir.path()).expect("an empty list");
        let pinned: Fingerprint = format!("{}{}", "ab".repeat(8), "01".repeat(24))
            .parse()
            .expect("64 hex digits");
        let same_id: Fingerprint = format!("{}{}", "ab".repeat(8), "02".repeat(24))
            .parse()
            .expect("64 hex digits");
        assert_eq!(pinned.id(), same_id.id());
        trust.set_key(pinned, true).expect("written");
        assert!(trust.admits(&pinned));
        assert!(!trust.admits(&same_id), "a key is pinned, not its id");
        assert!(trust.contains(pinned.id()));
        // The file holds the fingerprint and reads back the same.
        let again = TrustList::load(dir.path()).expect("read back");
        assert!(again.admits(&pinned) && !again.admits(&same_id));
        // An id-only entry (earlier versions) admits any key with that id.
        again.set(same_id.id(), true).expect("written");
        assert!(again.admits(&same_id));
    }
}
