//! Where a node keeps its files, and its configuration file.
//!
//! The data directory holds the identity, the trust list, the store, the control socket and
//! `config.toml`:
//!
//! ```toml
//! listen = "0.0.0.0:4433"                        # UDP address to listen on
//! peers = ["laptop-b.local:4433", "192.0.2.10:4433"]  # host names are resolved at each dial
//! gossip_ms = 1000                               # between anti-entropy rounds
//! fanout = 2                                     # peers contacted per round
//! mdns = true                                    # find nodes on the LAN
//! ```
//!
//! Every field is optional; a flag given to `crdt-node run` wins over the file (`--peer`
//! flags replace its `peers`). An unknown field is an error, so a misspelling is not ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The configuration file, in the data directory.
pub const CONFIG_FILE: &str = "config.toml";

/// The gossip intervals accepted, in milliseconds: faster only burns CPU and bandwidth, and
/// slower than an hour is a typo (no round would come before anyone looks).
pub const GOSSIP_MS: std::ops::RangeInclusive<u64> = 10..=3_600_000;
/// The fanouts accepted: 0 would gossip with nobody; more than the peers a node remembers
/// is the same as all of them.
pub const FANOUT: std::ops::RangeInclusive<usize> = 1..=1024;

/// A configuration file larger than this is refused (it is a few lines).
const MAX_CONFIG: u64 = 64 << 10;

/// What `config.toml` may say.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// UDP address to listen on.
    pub listen: Option<SocketAddr>,
    /// Peers to connect to, `HOST:PORT`.
    #[serde(default)]
    pub peers: Vec<String>,
    /// Milliseconds between anti-entropy rounds.
    pub gossip_ms: Option<u64>,
    /// Peers contacted per round.
    pub fanout: Option<usize>,
    /// Whether to announce and find nodes on the LAN by mDNS.
    pub mdns: Option<bool>,
    /// TCP address of the local HTTP API (off when absent).
    pub http: Option<SocketAddr>,
    /// Whether the HTTP API may listen on an address other than loopback.
    pub http_allow_remote: Option<bool>,
}

/// What `crdt-node init` writes when there is no configuration file yet.
pub const DEFAULT_CONFIG: &str = "\
# crdt-node configuration. Flags given to `crdt-node run` win over these.
# listen = \"0.0.0.0:4433\"        # UDP address to listen on
# peers = [\"laptop-b.local:4433\"] # HOST:PORT; names are resolved again at each dial
# gossip_ms = 1000                # milliseconds between anti-entropy rounds
# fanout = 2                      # peers contacted per round
# mdns = true                     # announce and find nodes on the LAN
# http = \"127.0.0.1:8080\"        # local HTTP API (docs/http-api.md); off when absent
# http_allow_remote = false       # let `http` listen beyond loopback (plain HTTP)
";

impl Config {
    /// Reads `config.toml` in `dir`; no file is the empty configuration.
    pub fn load(dir: &Path) -> Result<Config, String> {
        let path = dir.join(CONFIG_FILE);
        // Opening a FIFO (or a device) would wait for a writer forever, at every start.
        match std::fs::metadata(&path) {
            Ok(meta) if !meta.is_file() => {
                return Err(format!(
                    "{}: not a regular file; a configuration file is a few lines of TOML",
                    path.display()
                ))
            }
            _ => {}
        }
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut text = String::new();
        use std::io::Read;
        file.take(MAX_CONFIG + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if text.len() as u64 > MAX_CONFIG {
            return Err(format!(
                "{}: larger than {MAX_CONFIG} bytes; is it the right file?",
                path.display()
            ));
        }
        let config: Config =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for peer in &config.peers {
            Peer::parse(peer).map_err(|e| format!("{}: peers: {e}", path.display()))?;
        }
        if let Some(ms) = config.gossip_ms.filter(|ms| !GOSSIP_MS.contains(ms)) {
            return Err(format!(
                "{}: gossip_ms = {ms}: it must be from {} to {} (an hour)",
                path.display(),
                GOSSIP_MS.start(),
                GOSSIP_MS.end()
            ));
        }
        if let Some(fanout) = config.fanout.filter(|f| !FANOUT.contains(f)) {
            return Err(format!(
                "{}: fanout = {fanout}: it must be from {} to {}",
                path.display(),
                FANOUT.start(),
                FANOUT.end()
            ));
        }
        Ok(config)
    }

    /// Writes [`DEFAULT_CONFIG`] into `dir` unless a configuration file is there; returns
    /// whether it wrote one.
    pub fn write_default(dir: &Path) -> Result<bool, String> {
        let path = dir.join(CONFIG_FILE);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                use std::io::Write;
                file.write_all(DEFAULT_CONFIG.as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

/// A peer to dial: an address, or a host name with a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// `IP:PORT`.
    Addr(SocketAddr),
    /// `HOST:PORT`, resolved at each dial.
    Name(String),
}

impl Peer {
    /// Parses `IP:PORT` or `HOST:PORT`.
    pub fn parse(text: &str) -> Result<Peer, String> {
        if let Ok(addr) = text.parse() {
            return Ok(Peer::Addr(addr));
        }
        let bad = || {
            format!(
                "not HOST:PORT (such as laptop.local:4433 or 192.0.2.10:4433): {}",
                crate::execute::quoted(text)
            )
        };
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
        if !valid_host || port.parse::<u16>().is_err() {
            return Err(bad());
        }
        Ok(Peer::Name(text.to_owned()))
    }
}

/// `given`, else $CRDT_NODE_DIR, else the platform's per-user data directory.
pub fn data_dir_or_default(given: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("CRDT_NODE_DIR") {
        return Ok(dir);
    }
    let home = var("HOME");
    let dir = if cfg!(target_os = "macos") {
        home.map(|h| h.join("Library/Application Support"))
    } else {
        var("XDG_DATA_HOME").or_else(|| home.map(|h| h.join(".local/share")))
    };
    dir.map(|d| d.join("crdt-node"))
        .ok_or_else(|| "no --data-dir, and neither CRDT_NODE_DIR nor HOME is set".into())
}

/// Makes `dir` (owner-only) if it is missing; an existing one that others may enter is made
/// owner-only, since it holds the private key and the control socket.
pub fn private_dir(dir: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let mode = std::fs::metadata(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("{}: cannot make it owner-only: {e}", dir.display()))?;
            eprintln!(
                "made {} owner-only (it was {:o}): it holds the node's private key and control socket",
                dir.display(),
                mode & 0o777
            );
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_addresses_or_names_with_ports() {
        assert_eq!(
            Peer::parse("192.0.2.1:4433"),
            Ok(Peer::Addr("192.0.2.1:4433".parse().unwrap()))
        );
        assert_eq!(
            Peer::parse("laptop.local:4433"),
            Ok(Peer::Name("laptop.local:4433".into()))
        );
        for bad in [
            "laptop",
            ":4433",
            "laptop:",
            "laptop:99999",
            "a b:1",
            "[::1]:x",
        ] {
            assert!(Peer::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_config_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Config::load(dir.path()), Ok(Config::default()));
        assert!(Config::write_default(dir.path()).unwrap());
        assert!(!Config::write_default(dir.path()).unwrap());
        assert_eq!(Config::load(dir.path()), Ok(Config::default()));
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, "listen = \"127.0.0.1:9\"\npeers = [\"b.local:1\"]\n").unwrap();
        let config = Config::load(dir.path()).unwrap();
        assert_eq!(config.listen, Some("127.0.0.1:9".parse().unwrap()));
        assert_eq!(config.peers, ["b.local:1"]);
        for bad in [
            "lisen = \"127.0.0.1:9\"",
            "peers = [\"nope\"]",
            "gossip_ms = -1",
            "gossip_ms = 0",
            "gossip_ms = 18446744073709551615",
            "fanout = 0",
            "fanout = 100000",
            "[",
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = Config::load(dir.path()).unwrap_err();
            assert!(e.contains(CONFIG_FILE), "{e}");
        }
    }
}
