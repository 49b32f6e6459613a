//! BLAKE3 content digests of files and directories, with a (size, mtime, inode) cache so an
//! unchanged multi-GB input is not read again on every plan.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Hex BLAKE3 of a file's bytes, read a few MiB at a time and hashed on every core. Not
/// memory-mapped: the mapped pages of a multi-GB checkpoint would count in the process's
/// resident memory (a 1 GB model written by a stage raised its peak RSS by 1 GB when hashed).
pub fn hash_file(path: &Path) -> io::Result<String> {
    // A FIFO or a device would block or never end.
    if !std::fs::metadata(path)?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    use std::io::Read;
    const CHUNK: usize = 8 << 20;
    let mut file = std::fs::File::open(path)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut filled = 0;
        // Whole chunks where the file has them, so each parallel update is large.
        while filled < CHUNK {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        h.update_rayon(&buf[..filled]);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Hex BLAKE3 of bytes.
pub fn hash_bytes(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: i128,
    inode: u64,
    digest: String,
}

/// Remembers digests of files by (size, mtime, inode). Saved in the store as JSON.
#[derive(Debug, Default)]
pub struct HashCache {
    path: Option<PathBuf>,
    entries: BTreeMap<PathBuf, Stamp>,
    /// Ignore remembered digests (`--rehash`), but still record fresh ones.
    distrust: bool,
    dirty: bool,
}

impl HashCache {
    pub fn load(path: PathBuf, distrust: bool) -> HashCache {
        let entries = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        HashCache {
            path: Some(path),
            entries,
            distrust,
            dirty: false,
        }
    }

    /// Digest of a file, or of a directory (over its sorted relative paths and file digests).
    pub fn digest(&mut self, path: &Path) -> io::Result<String> {
        let meta = std::fs::metadata(path)?;
        if meta.is_dir() {
            let mut listing = String::new();
            for rel in walk_files(path)? {
                let d = self.digest(&path.join(&rel))?;
                listing.push_str(&format!("{}\0{d}\n", rel.display()));
            }
            return Ok(hash_bytes(listing.as_bytes()));
        }
        let key = path.canonicalize()?;
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        if !self.distrust
            && let Some(s) = self.entries.get(&key)
            && s.size == meta.len()
            && s.mtime_ns == mtime_ns
            && s.inode == meta.ino()
        {
            return Ok(s.digest.clone());
        }
        let digest = hash_file(path)?;
        self.entries.insert(
            key,
            Stamp {
                size: meta.len(),
                mtime_ns,
                inode: meta.ino(),
                digest: digest.clone(),
            },
        );
        self.dirty = true;
        Ok(digest)
    }

    /// Writes the cache back (atomically; a lost race only costs a rehash later).
    pub fn save(&mut self) -> io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec(&self.entries)?)?;
        std::fs::rename(&tmp, path)?;
        self.dirty = false;
        Ok(())
    }
}

/// Files under `dir`, as sorted paths relative to it.
pub fn walk_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for entry in std::fs::read_dir(dir.join(&rel))? {
            let entry = entry?;
            let child = rel.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                todo.push(child);
            } else {
                out.push(child);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_notices_changes_and_rehash_distrusts_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.txt");
        std::fs::write(&f, "hello").unwrap();
        let mut cache = HashCache::load(dir.path().join("cache.json"), false);
        let d1 = cache.digest(&f).unwrap();
        assert_eq!(d1, hash_bytes(b"hello"));
        std::fs::write(&f, "hello, world").unwrap();
        assert_eq!(cache.digest(&f).unwrap(), hash_bytes(b"hello, world"));
        cache.save().unwrap();
        let mut reloaded = HashCache::load(dir.path().join("cache.json"), false);
        assert_eq!(reloaded.digest(&f).unwrap(), hash_bytes(b"hello, world"));
    }

    #[test]
    fn directory_digest_covers_names_and_contents() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("m")).unwrap();
        std::fs::write(dir.path().join("m/a"), "1").unwrap();
        let mut cache = HashCache::default();
        let d1 = cache.digest(&dir.path().join("m")).unwrap();
        std::fs::rename(dir.path().join("m/a"), dir.path().join("m/b")).unwrap();
        assert_ne!(d1, cache.digest(&dir.path().join("m")).unwrap());
    }
}
