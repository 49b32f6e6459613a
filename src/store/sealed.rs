//! Integrity of what the store keeps outside `blobs/`: tokenized entries and training
//! checkpoints are not named by their digest, so they carry it. A tokenized entry ends in the
//! BLAKE3 of everything before it ([`seal`], [`open`]); a checkpoint directory holds
//! `digests.json`, the BLAKE3 of each of its files ([`write_digests`], [`check_digests`]). A
//! reader that finds a mismatch discards the entry and computes it again: a flipped bit must
//! never train a different model under the right action key.

use std::collections::BTreeMap;
use std::path::Path;

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

/// Checks every file `dir/digests.json` lists; says what is wrong otherwise.
pub fn check_digests(dir: &Path) -> Result<(), String> {
    let listed = std::fs::read(dir.join(DIGESTS_FILE))
        .map_err(|_| format!("{} has no {DIGESTS_FILE}", dir.display()))?;
    let digests: BTreeMap<String, String> = serde_json::from_slice(&listed)
        .map_err(|_| format!("{} is damaged", dir.join(DIGESTS_FILE).display()))?;
    for (name, digest) in &digests {
        if !super::is_plain_name(name) {
            return Err(format!("{} lists `{}`", dir.display(), name.escape_debug()));
        }
        match hash_file(&dir.join(name)) {
            Ok(d) if &d == digest => {}
            Ok(_) => return Err(format!("{} is damaged", dir.join(name).display())),
            Err(_) => return Err(format!("{} is missing", dir.join(name).display())),
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
        assert!(
            check_digests(dir.path())
                .unwrap_err()
                .contains("a.bin is damaged")
        );
        std::fs::remove_file(dir.path().join("a.bin")).unwrap();
        assert!(
            check_digests(dir.path())
                .unwrap_err()
                .contains("a.bin is missing")
        );
        std::fs::remove_file(dir.path().join(DIGESTS_FILE)).unwrap();
        assert!(check_digests(dir.path()).is_err());
    }
}
