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
    /// if the directory has none.
    pub fn load_or_create(dir: &Path) -> Result<Identity, NodeError> {
        let (key_path, cert_path) = (dir.join(KEY_FILE), dir.join(CERT_FILE));
        if key_path.exists() && cert_path.exists() {
            let key = PrivatePkcs8KeyDer::from(std::fs::read(&key_path).map_err(io(&key_path))?);
            let cert = CertificateDer::from(std::fs::read(&cert_path).map_err(io(&cert_path))?);
            let id = node_id(&cert)?;
            return Ok(Identity { key, cert, id });
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key_pair =
            rcgen::KeyPair::generate().map_err(|e| NodeError::Identity(e.to_string()))?;
        let params = rcgen::CertificateParams::new(vec!["crdt-node".to_owned()])
            .map_err(|e| NodeError::Identity(e.to_string()))?;
        let cert = params
            .self_signed(&key_pair)
            .map_err(|e| NodeError::Identity(e.to_string()))?;
        let key_der = key_pair.serialize_der();
        write_private(&key_path, &key_der)?;
        std::fs::write(&cert_path, cert.der()).map_err(io(&cert_path))?;
        let cert = cert.der().clone();
        let id = node_id(&cert)?;
        Ok(Identity {
            key: PrivatePkcs8KeyDer::from(key_der),
            cert,
            id,
        })
    }

    /// The node id: the first 8 bytes of the SHA-256 of the public key.
    pub fn id(&self) -> ReplicaId {
        self.id
    }

    pub(crate) fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// The id a certificate's public key stands for.
pub fn node_id(cert: &CertificateDer<'_>) -> Result<ReplicaId, NodeError> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| NodeError::Identity(format!("unreadable certificate: {e}")))?;
    let spki = parsed.subject_public_key_info();
    let digest = ring::digest::digest(&ring::digest::SHA256, spki.as_ref());
    let mut first = [0u8; 8];
    first.copy_from_slice(digest.as_ref().get(..8).unwrap_or(&[0; 8]));
    Ok(ReplicaId::new(u64::from_be_bytes(first)))
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

/// The ids a node accepts as peers, backed by a file (`trusted` in the data directory: one id
/// per line, `#` starts a comment).
#[derive(Clone, Debug)]
pub struct TrustList {
    ids: Arc<RwLock<BTreeSet<ReplicaId>>>,
    file: PathBuf,
}

impl TrustList {
    /// Reads the trust file in `dir` (an absent file is an empty list).
    pub fn load(dir: &Path) -> Result<TrustList, NodeError> {
        let file = dir.join(TRUST_FILE);
        let mut ids = BTreeSet::new();
        if file.exists() {
            let text = std::fs::read_to_string(&file).map_err(io(&file))?;
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or("").trim();
                if !line.is_empty() {
                    ids.insert(parse_node_id(line)?);
                }
            }
        }
        Ok(TrustList {
            ids: Arc::new(RwLock::new(ids)),
            file,
        })
    }

    /// Whether `id` may connect.
    pub fn contains(&self, id: ReplicaId) -> bool {
        self.ids
            .read()
            .map(|ids| ids.contains(&id))
            .unwrap_or(false)
    }

    /// Every trusted id.
    pub fn ids(&self) -> Vec<ReplicaId> {
        self.ids
            .read()
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Adds (`trusted`) or removes an id, and rewrites the file.
    pub fn set(&self, id: ReplicaId, trusted: bool) -> Result<(), NodeError> {
        let text = {
            let mut ids = self
                .ids
                .write()
                .map_err(|_| NodeError::Identity("trust list lock poisoned".into()))?;
            if trusted {
                ids.insert(id);
            } else {
                ids.remove(&id);
            }
            ids.iter().map(|id| format!("{id}\n")).collect::<String>()
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
        let id = node_id(cert)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if self.trust.contains(id) {
            Ok(())
        } else {
            tracing::warn!(peer = %id, "refused a peer that is not on the trust list");
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

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    std::fs::write(path, bytes).map_err(io(path))
}
