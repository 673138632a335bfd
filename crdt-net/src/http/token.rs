//! The bearer token: random, kept in the data directory, readable by its owner only.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

use super::HttpError;

/// The token file's name in the data directory.
pub const TOKEN_FILE: &str = "http.token";

/// Random bytes in a fresh token (printed as twice as many hex digits).
const TOKEN_BYTES: usize = 32;

/// Shortest and longest token accepted from the file (a user may write their own).
const TOKEN_CHARS: std::ops::RangeInclusive<usize> = 32..=256;

/// The secret every request must present as `Authorization: Bearer TOKEN`.
///
/// Its `Debug` does not show it.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use crdt_net::http::ApiToken;
///
/// let dir = tempfile::tempdir()?;
/// let token = ApiToken::load_or_create(dir.path())?;
/// assert_eq!(token.as_str().len(), 64);
/// // The same token next time.
/// assert_eq!(ApiToken::load_or_create(dir.path())?.as_str(), token.as_str());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl ApiToken {
    /// The token in `data_dir`'s [`TOKEN_FILE`], made (random, owner-only permissions) if the
    /// file does not exist. A file that group or others can read or write, that another user
    /// than this process's (or root) owns, or that does not hold one token (32 to 256 visible
    /// ASCII characters, surrounding blanks ignored), is refused rather than used or
    /// replaced. A symbolic link is followed and what it leads to checked.
    pub fn load_or_create(data_dir: &Path) -> Result<ApiToken, HttpError> {
        let path = Self::path(data_dir);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => Self::load(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(&path),
            Err(source) => Err(HttpError::Io { path, source }),
        }
    }

    /// Where [`load_or_create`](ApiToken::load_or_create) keeps the token for `data_dir`.
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(TOKEN_FILE)
    }

    /// The token itself (for a client in the same process, or to print).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, compared in time independent of where they differ.
    pub(crate) fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }

    fn load(path: &Path) -> Result<ApiToken, HttpError> {
        let io = |source| HttpError::Io {
            path: path.to_owned(),
            source,
        };
        let malformed = |reason| HttpError::TokenMalformed {
            path: path.to_owned(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(malformed("not a regular file"));
        }
        check_private(path, &meta)?;
        // Read at most a little more than the longest token, so a huge file costs nothing.
        let mut text = String::new();
        let limit = (*TOKEN_CHARS.end() + 64) as u64;
        file.take(limit + 1)
            .read_to_string(&mut text)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidData => malformed("not UTF-8 text"),
                _ => io(e),
            })?;
        if text.len() as u64 > limit {
            return Err(malformed("longer than a token"));
        }
        let token = text.trim();
        if !TOKEN_CHARS.contains(&token.len()) {
            return Err(malformed("a token has 32 to 256 characters"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(malformed(
                "a token is visible ASCII characters without blanks",
            ));
        }
        Ok(ApiToken(token.to_owned()))
    }

    /// Writes a fresh token to a temporary file and links it into place, so the file is
    /// never seen half written and two processes creating it at once end up with one token.
    fn create(path: &Path) -> Result<ApiToken, HttpError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(
            |_| HttpError::Io {
                path: path.to_owned(),
                source: std::io::Error::other("the system random number generator failed"),
            },
        )?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = path.with_file_name(format!(
            ".{TOKEN_FILE}.tmp-{}-{}",
            std::process::id(),
            token.get(..8).unwrap_or_default()
        ));
        let written = write_private(&tmp, &token).and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        match written {
            Ok(()) => {
                sync_dir(path);
                Ok(ApiToken(token))
            }
            // Another process made it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(source) => Err(HttpError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

/// Writes `token` and a newline to a new file only its owner can read, durably.
fn write_private(path: &Path, token: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()
}

/// Refuses a token file that anyone but its owner may read or write, or that another user
/// than this process's (or root) owns.
#[cfg(unix)]
fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), HttpError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let uid = meta.uid();
    if uid != rustix::process::geteuid().as_raw() && uid != 0 {
        return Err(HttpError::TokenOwner {
            path: path.to_owned(),
            uid,
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(HttpError::TokenPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Other platforms have no mode bits to check; the data directory's own protection applies.
#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &std::fs::Metadata) -> Result<(), HttpError> {
    Ok(())
}

/// Makes the new link durable (best effort: the token is made again if it is lost).
fn sync_dir(path: &Path) {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    #[cfg(not(unix))]
    let _ = path;
}
