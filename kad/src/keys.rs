//! Node identities and key files: a secret key kept in a file (64 hex digits, mode 0600), created
//! on first use, so a node keeps its id across restarts.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use kad_core::NativeIdentity;

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file could not be read, created or written.
    #[error("key file {path}: cannot {action} it: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// `read`, `create` or `write`.
        action: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file does not hold 64 hex digits.
    #[error("key file {path}: expected 64 hex digits ({what})")]
    NotHex {
        /// The file.
        path: PathBuf,
        /// The kind of key expected.
        what: &'static str,
    },
    /// The 32 bytes are not a valid secp256k1 secret key.
    #[error("key file {path}: not a valid secp256k1 secret key")]
    InvalidKey {
        /// The file.
        path: PathBuf,
    },
    /// The key's id has less work than the network asks for.
    #[error(
        "key file {path}: its id has {has} bits of work, less than id_work = {wanted}; use a new key file"
    )]
    TooLittleWork {
        /// The file.
        path: PathBuf,
        /// Bits of work the id has.
        has: u32,
        /// Bits asked for.
        wanted: u32,
    },
    /// The operating system's random source failed.
    #[error("the OS random source failed: {0}")]
    Random(getrandom::Error),
}

/// A fresh identity from the OS random source.
pub fn fresh_identity() -> Result<NativeIdentity, KeyFileError> {
    loop {
        let mut s = [0u8; 32];
        getrandom::fill(&mut s).map_err(KeyFileError::Random)?;
        if let Ok(id) = NativeIdentity::from_secret(&s) {
            return Ok(id);
        }
    }
}

/// A fresh identity whose id carries at least `bits` of work
/// ([`id_work`](kad_core::native::id_work)): about `2^bits` key generations.
pub fn fresh_identity_with_work(bits: u32) -> Result<NativeIdentity, KeyFileError> {
    if bits == 0 {
        return fresh_identity();
    }
    // The thread RNG: a CSPRNG seeded from the OS.
    Ok(NativeIdentity::generate_with_work(&mut rand::rng(), bits))
}

/// Loads the identity in the key file at `path`, or creates the file (mode 0600) with a fresh
/// identity of `bits` of work when it does not exist. A loaded key with less work is an error.
/// Returns the identity and whether the file was created.
pub fn load_or_create_identity(
    path: &Path,
    bits: u32,
) -> Result<(NativeIdentity, bool), KeyFileError> {
    let (secret, created) = load_or_create_secret(path, "a secp256k1 secret key", || {
        Ok(fresh_identity_with_work(bits)?.secret_bytes())
    })?;
    let id = NativeIdentity::from_secret(&secret).map_err(|_| KeyFileError::InvalidKey {
        path: path.to_owned(),
    })?;
    let has = kad_core::native::id_work(&id.id());
    if has < bits {
        return Err(KeyFileError::TooLittleWork {
            path: path.to_owned(),
            has,
            wanted: bits,
        });
    }
    Ok((id, created))
}

/// Reads the 32-byte secret (64 hex digits) in the key file at `path`, warning on stderr when
/// others may read it; when the file does not exist, writes `fresh()` there with mode 0600.
/// `what` names the kind of key in errors. Returns the secret and whether it was created.
pub fn load_or_create_secret(
    path: &Path,
    what: &'static str,
    fresh: impl FnOnce() -> Result<[u8; 32], KeyFileError>,
) -> Result<([u8; 32], bool), KeyFileError> {
    let io = |action, source| KeyFileError::Io {
        path: path.to_owned(),
        action,
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut secret = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut secret).map_err(|_| KeyFileError::NotHex {
                path: path.to_owned(),
                what,
            })?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                if let Ok(m) = std::fs::metadata(path) {
                    if m.permissions().mode() & 0o077 != 0 {
                        eprintln!(
                            "warning: key file {} is readable by others (mode {:o}); chmod 600 it",
                            path.display(),
                            m.permissions().mode() & 0o777
                        );
                    }
                }
            }
            Ok((secret, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = fresh()?;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                opts.mode(0o600);
            }
            let mut f = opts.open(path).map_err(|e| io("create", e))?;
            writeln!(f, "{}", hex::encode(secret)).map_err(|e| io("write", e))?;
            Ok((secret, true))
        }
        Err(e) => Err(io("read", e)),
    }
}
