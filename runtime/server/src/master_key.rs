//! The master key environment variables and snapshot layers are sealed
//! with: `KILN_MASTER_KEY` (64 hex digits), or one generated once and kept
//! in `<data dir>/master-key`, readable by its owner only. It is kept out of
//! the store on purpose: a copy of the store without it reveals no value.
//! Losing it loses every variable (and the snapshots, which Kiln then
//! rebuilds by replaying journals), so it is backed up apart from the store.

use kiln_store::SealKey;
use kiln_store::seal::KEY_LEN;
use std::io::Write;
use std::path::Path;

/// The key from `configured` (`KILN_MASTER_KEY`) or the data directory's
/// file, created (and synced) if missing — unless the store was sealed
/// before (`sealed_before`), when a missing key is an error to fix, not a
/// key to make.
pub(crate) fn load_or_create(
    data_dir: &Path,
    configured: Option<&str>,
    sealed_before: bool,
) -> anyhow::Result<SealKey> {
    if let Some(text) = configured {
        return parse(text).map_err(|e| anyhow::anyhow!("KILN_MASTER_KEY: {e}"));
    }
    let path = data_dir.join("master-key");
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && sealed_before => {
            Err(anyhow::anyhow!(
                "{} is missing and this store was sealed with a master key: restore the file from a backup, or set KILN_MASTER_KEY to the key",
                path.display()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Written whole to a temporary file, then renamed: a crash
            // leaves either no key file or a complete one.
            let bytes = SealKey::generate().map_err(|e| anyhow::anyhow!(e))?;
            let temporary = data_dir.join("master-key.tmp");
            // A file left by an earlier try keeps its mode: start afresh.
            let _ = std::fs::remove_file(&temporary);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&temporary)?;
            file.write_all(format!("{}\n", hex::encode(bytes)).as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            // The file's name is durable once its directory is synced.
            std::fs::File::open(data_dir)?.sync_all()?;
            Ok(SealKey::from_bytes(&bytes))
        }
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

fn parse(text: &str) -> Result<SealKey, String> {
    let bytes = hex::decode(text.trim())
        .map_err(|_| format!("a master key is {} hex digits", KEY_LEN * 2))?;
    let bytes: [u8; KEY_LEN] = bytes
        .try_into()
        .map_err(|_| format!("a master key is {} hex digits", KEY_LEN * 2))?;
    Ok(SealKey::from_bytes(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_made_once_kept_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), None, false).unwrap();
        let sealed = first.seal(b"c", b"value").unwrap();
        let again = load_or_create(dir.path(), None, true).unwrap();
        assert_eq!(again.open(b"c", &sealed).unwrap(), b"value");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("master-key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let configured = load_or_create(dir.path(), Some(&"ab".repeat(32)), true).unwrap();
        assert!(configured.open(b"c", &sealed).is_err());
        assert!(load_or_create(dir.path(), Some("not hex"), true).is_err());
        assert!(load_or_create(dir.path(), Some("abcd"), true).is_err());
        // A sealed store whose key file went missing gets no new key.
        std::fs::remove_file(dir.path().join("master-key")).unwrap();
        let missing = load_or_create(dir.path(), None, true).unwrap_err();
        assert!(missing.to_string().contains("restore"), "{missing}");
        assert!(!dir.path().join("master-key").exists());
    }
}
