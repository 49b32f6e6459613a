//! Integrity of what the store keeps outside `blobs/`: tokenized entries and training
//! checkpoints are not named by their digest, so they carry it. A tokenized entry ends in the
//! BLAKE3 of everything before it ([`seal`], [`open`]); a checkpoint directory holds
//! `digests.json`, the BLAKE3 of each of its files ([`write_digests`], [`check_digests`]). A
//! reader that finds a mismatch discards the entry and computes it again: a flipped bit must
//! never train a different model under the right action key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::hash::hash_file;

const DIGEST_LEN: usize = 32;

/// The name of a checkpoint directory's list of file digests.
pub const DIGESTS_FILE: &str = "digests.json";

/// `payload` followed by its BLAKE3.
pub fn seal(mut payload: Vec<u8>) -> Vec<u8> {
    let digest = blake3::hash(&payload);
    payload.extend_from_slice(digest.as_bytes());
    payload
}

/// The payload of sealed `bytes`, or `None` when they are truncated or altered.
pub fn open(bytes: &[u8]) -> Option<&[u8]> {
    let split = bytes.len().checked_sub(DIGEST_LEN)?;
    let (payload, digest) = bytes.split_at(split);
    (blake3::hash(payload).as_bytes() == digest).then_some(payload)
}

/// Records the digests of `files` (names inside `dir`) in `dir/digests.json`, synced.
pub fn write_digests(dir: &Path, files: &[&str]) -> std::io::Result<()> {
    let mut digests = BTreeMap::new();
    for name in files {
        digests.insert(*name, hash_file(&dir.join(name))?);
    }
    let path = dir.join(DIGESTS_FILE);
    let text = serde_json::to_vec(&digests).map_err(std::io::Error::other)?;
    let mut f = std::fs::File::create(&path)?;
    std::io::Write::write_all(&mut f, &text)?;
    f.sync_all()
}

/// What is wrong with a directory of files listed in `digests.json`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("{} has no {DIGESTS_FILE}", .0.display())]
    NoDigests(PathBuf),
    #[error("{} is damaged", .0.display())]
    Damaged(PathBuf),
    #[error("{} is missing", .0.display())]
    Missing(PathBuf),
}

/// Checks every file `dir/digests.json` lists.
pub fn check_digests(dir: &Path) -> Result<(), SealError> {
    let list = dir.join(DIGESTS_FILE);
    let listed = std::fs::read(&list).map_err(|_| SealError::NoDigests(dir.to_path_buf()))?;
    let digests: BTreeMap<String, String> =
        serde_json::from_slice(&listed).map_err(|_| SealError::Damaged(list.clone()))?;
    for (name, digest) in &digests {
        // A name that is not a plain file name means the list itself was altered.
        if !super::is_plain_name(name) {
            return Err(SealError::Damaged(list));
        }
        match hash_file(&dir.join(name)) {
            Ok(d) if &d == digest => {}
            Ok(_) => return Err(SealError::Damaged(dir.join(name))),
            Err(_) => return Err(SealError::Missing(dir.join(name))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flipped_bit_or_a_cut_is_seen() {
        let sealed = seal(b"tokens".to_vec());
        assert_eq!(open(&sealed), Some(&b"tokens"[..]));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert_eq!(open(&bad), None, "flip at {i}");
        }
        assert_eq!(open(&sealed[..sealed.len() - 1]), None);
        assert_eq!(open(b"short"), None);
    }

    #[test]
    fn digests_cover_every_listed_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), b"one").unwrap();
        std::fs::write(dir.path().join("state.json"), b"{}").unwrap();
        write_digests(dir.path(), &["a.bin", "state.json"]).unwrap();
        assert_eq!(check_digests(dir.path()), Ok(()));
        std::fs::write(dir.path().join("a.bin"), b"on").unwrap();
        let a = dir.path().join("a.bin");
        assert_eq!(
            check_digests(dir.path()),
            Err(SealError::Damaged(a.clone()))
        );
        std::fs::remove_file(&a).unwrap();
        assert_eq!(check_digests(dir.path()), Err(SealError::Missing(a)));
        std::fs::remove_file(dir.path().join(DIGESTS_FILE)).unwrap();
        assert!(check_digests(dir.path()).is_err());
    }
}
