//! Models named by their Hugging Face Hub id, found in the local Hugging Face cache the way
//! `huggingface_hub` lays it out: `$HF_HUB_CACHE` (default `$HF_HOME/hub`, `HF_HOME` defaulting
//! to `$XDG_CACHE_HOME/huggingface` or `~/.cache/huggingface`), then
//! `models--{org}--{name}/refs/{revision}` holding a commit, whose files are in
//! `snapshots/{commit}/`. hone reads the cache and never writes it: a model not there is
//! fetched with `huggingface-cli download` (or any tool of the hub's), then found offline.

use std::path::{Path, PathBuf};

/// A model the recipe names by hub id, and the snapshot of it in the local cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub dir: PathBuf,
    /// The commit the revision named when it was resolved.
    pub commit: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HubError {
    #[error(
        "`{0}` is not a hub id: write `org/name` (letters, digits, `-`, `_`, `.`), as on huggingface.co"
    )]
    BadId(String),
    #[error("`{0}` is not a revision name hone can look up (a branch, tag or commit)")]
    BadRevision(String),
    #[error("{repo} is not in the Hugging Face cache (looked for {dir})")]
    NotCached { repo: String, dir: PathBuf },
    #[error("{repo} is in the Hugging Face cache, but not at revision `{revision}` (no {path})")]
    NoRevision {
        repo: String,
        revision: String,
        path: PathBuf,
    },
}

impl HubError {
    /// What to do about it.
    pub fn help(&self, repo: &str, revision: &str) -> String {
        match self {
            HubError::NotCached { .. } | HubError::NoRevision { .. } => format!(
                "download it into the cache with `huggingface-cli download {repo} --revision {revision}` (or point HF_HUB_CACHE / HF_HOME at the cache that has it); hone reads the cache offline"
            ),
            _ => {
                "e.g. `model: { hub: HuggingFaceTB/SmolLM2-135M-Instruct, revision: main }`".into()
            }
        }
    }
}

/// The hub cache directory the environment names (see the module comment).
pub fn cache_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
        return d;
    }
    let home = var("HF_HOME").unwrap_or_else(|| {
        var("XDG_CACHE_HOME")
            .or_else(|| var("HOME").map(|h| h.join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"))
            .join("huggingface")
    });
    home.join("hub")
}

fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks a hub id (`org/name`, or a bare `name` of the hub's oldest models).
pub fn check_id(repo: &str) -> Result<(), HubError> {
    let parts: Vec<&str> = repo.split('/').collect();
    if parts.len() > 2 || !parts.iter().all(|p| plain_name(p)) {
        return Err(HubError::BadId(repo.to_owned()));
    }
    Ok(())
}

/// The snapshot of `repo` at `revision` (a branch or tag with a ref in the cache, or a full
/// commit hash) in the cache at `cache`.
pub fn resolve_in(cache: &Path, repo: &str, revision: &str) -> Result<Resolved, HubError> {
    check_id(repo)?;
    // Branch and tag names may hold `/` (refs/heads/x/y is refs/x/y in the cache).
    if revision.is_empty() || !revision.split('/').all(plain_name) {
        return Err(HubError::BadRevision(revision.to_owned()));
    }
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    if !root.is_dir() {
        return Err(HubError::NotCached {
            repo: repo.to_owned(),
            dir: root,
        });
    }
    let is_commit = revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit());
    let commit = if is_commit {
        revision.to_owned()
    } else {
        let r = root.join("refs").join(revision);
        match std::fs::read_to_string(&r) {
            Ok(c) if c.trim().len() == 40 && c.trim().chars().all(|c| c.is_ascii_hexdigit()) => {
                c.trim().to_owned()
            }
            _ => {
                return Err(HubError::NoRevision {
                    repo: repo.to_owned(),
                    revision: revision.to_owned(),
                    path: r,
                });
            }
        }
    };
    let dir = root.join("snapshots").join(&commit);
    if !dir.is_dir() {
        return Err(HubError::NoRevision {
            repo: repo.to_owned(),
            revision: revision.to_owned(),
            path: dir,
        });
    }
    Ok(Resolved { dir, commit })
}

/// [`resolve_in`] the environment's cache.
pub fn resolve(repo: &str, revision: &str) -> Result<Resolved, HubError> {
    resolve_in(&cache_dir(), repo, revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn cache() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("models--org--tiny");
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots").join(COMMIT)).unwrap();
        std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
        d
    }

    #[test]
    fn a_branch_resolves_through_its_ref_and_a_commit_directly() {
        let c = cache();
        let want = c.path().join("models--org--tiny/snapshots").join(COMMIT);
        let by_ref = resolve_in(c.path(), "org/tiny", "main").unwrap();
        assert_eq!(
            (by_ref.dir.clone(), by_ref.commit.as_str()),
            (want.clone(), COMMIT)
        );
        assert_eq!(resolve_in(c.path(), "org/tiny", COMMIT).unwrap().dir, want);
    }

    #[test]
    fn what_is_missing_or_malformed_is_named() {
        let c = cache();
        assert!(matches!(
            resolve_in(c.path(), "org/other", "main"),
            Err(HubError::NotCached { .. })
        ));
        assert!(matches!(
            resolve_in(c.path(), "org/tiny", "v2"),
            Err(HubError::NoRevision { .. })
        ));
        for bad in ["../etc", "a/b/c", "org/..", ""] {
            assert_eq!(
                resolve_in(c.path(), bad, "main"),
                Err(HubError::BadId(bad.to_owned()))
            );
        }
        assert!(matches!(
            resolve_in(c.path(), "org/tiny", "../../x"),
            Err(HubError::BadRevision(_))
        ));
    }
}
