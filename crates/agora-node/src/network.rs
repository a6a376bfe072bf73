//! The node's identity file and its community's network id.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use agora_core::identity::Identity;
use agora_net::NetworkId;

use crate::NodeError;

/// The genesis policy of the public default network.
pub const DEFAULT_GENESIS: &str =
    "# Agora network genesis\nname = \"agora\"\n# The public default network.\n";

/// `$AGORA_HOME/key`.
pub fn key_path(home: &Path) -> PathBuf {
    home.join("key")
}

/// `$AGORA_HOME/genesis.toml`: the genesis policy of this node's community, if it has one.
pub fn genesis_path(home: &Path) -> PathBuf {
    home.join("genesis.toml")
}

/// Reads the node's key, refusing a key file other users can read.
pub fn load_identity(home: &Path) -> Result<Identity, NodeError> {
    use std::os::unix::fs::PermissionsExt;
    let path = key_path(home);
    let meta = std::fs::metadata(&path).map_err(|source| NodeError::NoKey {
        path: path.clone(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(NodeError::Identity(format!(
            "{} is accessible by other users (mode {mode:o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(|source| NodeError::Read {
        path: path.clone(),
        source,
    })?;
    Identity::from_key_file(&text).map_err(|source| NodeError::BadKey { path, source })
}

/// Reads the node's key; creates one (mode 0600) if there is none yet.
pub fn load_or_create_identity(home: &Path) -> Result<Identity, NodeError> {
    if key_path(home).exists() {
        return load_identity(home);
    }
    let identity = create_identity(home)?;
    eprintln!("created a new node key at {}", key_path(home).display());
    Ok(identity)
}

/// Creates `$AGORA_HOME/key` (mode 0600, the directory 0700); refuses to overwrite a key.
pub fn create_identity(home: &Path) -> Result<Identity, NodeError> {
    let identity = Identity::generate(&mut rand::rngs::OsRng);
    write_new_key(&key_path(home), &identity)?;
    Ok(identity)
}

/// Writes `identity` to `path` with mode 0600, refusing to replace an existing file.
pub fn write_new_key(path: &Path, identity: &Identity) -> Result<(), NodeError> {
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| NodeError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => NodeError::KeyExists { path: path.into() },
            _ => NodeError::Create {
                path: path.into(),
                source,
            },
        })?;
    f.write_all(identity.to_key_file().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|source| NodeError::Write {
            path: path.into(),
            source,
        })
}

/// The network id: of `file` if given, else of `$AGORA_HOME/genesis.toml` if present, else of
/// the built-in default genesis.
pub fn network_id(home: &Path, file: Option<&Path>) -> Result<NetworkId, NodeError> {
    let path = match file {
        Some(f) => Some(f.to_path_buf()),
        None => Some(genesis_path(home)).filter(|p| p.is_file()),
    };
    match path {
        Some(p) => {
            let bytes = std::fs::read(&p).map_err(|source| NodeError::Genesis {
                path: p.clone(),
                source,
            })?;
            Ok(NetworkId::from_genesis(&bytes))
        }
        None => Ok(NetworkId::from_genesis(DEFAULT_GENESIS.as_bytes())),
    }
}

/// Writes a new genesis policy for community `name` to `$AGORA_HOME/genesis.toml`, followed by
/// `extra` (its `[governance]` table, if any); refuses to replace one. Returns its path and the
/// network id.
pub fn create_genesis(
    home: &Path,
    name: &str,
    extra: &str,
) -> Result<(PathBuf, NetworkId), NodeError> {
    let path = genesis_path(home);
    let text = new_genesis(name) + extra;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => NodeError::GenesisExists { path: path.clone() },
            _ => NodeError::Create {
                path: path.clone(),
                source,
            },
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|source| NodeError::Write {
            path: path.clone(),
            source,
        })?;
    Ok((path, NetworkId::from_genesis(text.as_bytes())))
}

/// The text of a new community's genesis policy (`agora init --network NAME`).
pub fn new_genesis(name: &str) -> String {
    let nonce: [u8; 16] = rand::random();
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!(
        "# Agora network genesis: give this file to every node of the community.\n\
         # Its sha256 is the network id; nodes of different networks never exchange traffic.\n\
         name = {name:?}\ncreated_unix = {secs}\nnonce = \"{}\"\n",
        hex::encode(nonce)
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn key_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let a = load_or_create_identity(home.path()).unwrap();
        let mode = std::fs::metadata(key_path(home.path()))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let b = load_or_create_identity(home.path()).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert!(write_new_key(&key_path(home.path()), &a).is_err());
    }

    #[test]
    fn key_file_errors_keep_their_causes() {
        use std::error::Error as _;
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let e = load_identity(home.path()).unwrap_err();
        assert!(matches!(e, NodeError::NoKey { .. }), "{e}");
        assert!(e.to_string().contains("no key at"), "{e}");
        let io = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(
            io.map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );

        let path = key_path(home.path());
        std::fs::write(&path, "not a key\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = load_identity(home.path()).unwrap_err();
        assert!(e.to_string().contains("is unusable"), "{e}");
        assert!(
            e.source()
                .is_some_and(|s| s.downcast_ref::<agora_core::Error>().is_some()),
            "{e:?}"
        );

        let e = create_identity(home.path()).unwrap_err();
        assert!(matches!(e, NodeError::KeyExists { .. }), "{e}");
        assert!(e.to_string().contains("refusing to overwrite"), "{e}");
    }

    #[test]
    fn network_ids_differ_by_genesis() {
        let home = tempfile::tempdir().unwrap();
        let default = network_id(home.path(), None).unwrap();
        std::fs::write(genesis_path(home.path()), new_genesis("kenya")).unwrap();
        let kenya = network_id(home.path(), None).unwrap();
        assert_ne!(default, kenya);
        assert_ne!(
            kenya,
            NetworkId::from_genesis(new_genesis("kenya").as_bytes()),
            "nonce makes each genesis unique"
        );
    }
}
