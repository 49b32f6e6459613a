//! The content-addressed store (by default the project's `.hone/`: [`project_store`]).
//!
//! ```text
//! .hone/
//!   FORMAT                      cache format version
//!   store.lock                  shared by runs, exclusive for gc
//!   blobs/ab/<blake3>           file contents, read-only, named by digest
//!   actions/ab/<key>.json       one manifest per action: what ran, its outputs' blobs, metrics
//!   locks/<key>.lock            per-action locks: two processes never run one action twice
//!   scratch/<key>-<pid>-<n>/    work in progress; never read, removed by gc
//!   checkpoints/<key>/          training checkpoints of an unfinished action (resume); removed
//!                               when the action commits, or by gc once it has
//!   tokenized/<key>             tokenized examples (a cache keyed by tokenizer and data)
//!   runs/<time>-<pid>/          resolved recipe, metrics JSONL and summary of each run
//!   hashcache.json              (size, mtime, inode) -> digest of input files
//! ```
//! A commit moves finished files into `blobs/` (fsync, rename) and writes the manifest last
//! (temp file, fsync, rename), so a killed process leaves either a whole action or none.

pub mod hash;
pub mod lockfile;
pub mod remote;
pub mod sealed;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Bumped whenever the layout or the meaning of action keys changes, or what an action with
/// the same key produces; part of every key. It, not hone's version, is what invalidates
/// caches: keep it unchanged across releases that produce the same artifacts.
/// 2: one stop-token rule (a list `eos_token_id` ends generated answers in stages too, not only
/// in `hone generate`), and JSON floats parsed exactly in every build (serde_json's
/// `float_roundtrip`, which only test builds had).
/// 3: fused CPU kernels (`kernels`): the tanh GELU, `silu(gate) * up`, RMSNorm and the LM
/// head's cross-entropy compute the same functions in another order, so f32 results on the
/// CPU differ in the last bits.
/// 4: every model a stage saves carries what a serving stack reads beside the weights
/// (`tokenizer_config.json` with the chat template it was trained with, special tokens;
/// `generation_config.json`), adapters carry their tokenizer, and a stage's `template: model`
/// on a trained model uses the template that model was trained with.
/// 5: hone's version left the action key (this format stands for what actions produce, so
/// a release that changes no output keeps every cache, local and remote); the remote cache
/// (`remote`) shares actions by these keys.
/// 6: a LoRA/QLoRA stage's `model` is its adapter on the checkpoint it started from (the
/// base's own files, blobs shared with it; `model::layered`), not a merged f32 copy; readers
/// fold the adapter in on load, to the values the merged copy held.
/// 7: an export's model card loads the model with `return_dict=True` and `**inputs`, which
/// transformers 5 needs (its `apply_chat_template(..., return_tensors="pt")` returns a
/// BatchEncoding); the exported weights are unchanged.
pub const CACHE_FORMAT: u32 = 7;

/// The type of an artifact, for contracts between stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactType {
    /// All splits of a dataset stage (`{ from: corpus }`).
    Dataset,
    /// One split: a Parquet table (`{ from: corpus.train }`).
    Table,
    /// A `tokenizer.json`.
    Tokenizer,
    /// An HF model directory (config.json, model.safetensors, tokenizer.json).
    Model,
    /// A model with a scalar head trained on preferences: what PPO, GRPO and evaluation
    /// score responses with.
    RewardModel,
}

impl ArtifactType {
    pub fn describe(self) -> &'static str {
        match self {
            ArtifactType::Dataset => "a dataset",
            ArtifactType::Table => "a dataset split",
            ArtifactType::Tokenizer => "a tokenizer",
            ArtifactType::Model => "a model",
            ArtifactType::RewardModel => "a reward model",
        }
    }
}

/// A file a stage wrote into its scratch directory, under an output name.
#[derive(Debug, Clone)]
pub struct ProducedOutput {
    pub name: String,
    pub artifact_type: ArtifactType,
    /// Directory holding the output's files (inside the scratch dir).
    pub dir: PathBuf,
}

/// One file of an output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub digest: String,
    pub size: u64,
}

/// One named output of an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputEntry {
    #[serde(rename = "type")]
    pub artifact_type: ArtifactType,
    /// Digest of the output's content (types and files), what downstream keys use.
    pub digest: String,
    pub files: BTreeMap<String, FileEntry>,
}

/// The record of one committed action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub action: String,
    pub stage: String,
    pub kind: String,
    /// Everything the action key hashes (resolved config, input digests, seed, ...).
    pub material: serde_json::Value,
    /// People-readable names of the inputs (`data/qa.jsonl`, `stage corpus.train`).
    pub input_labels: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, OutputEntry>,
    /// Headline numbers (lockfile, status).
    pub metrics: serde_json::Map<String, serde_json::Value>,
    /// The detailed summary (`hone show`).
    pub summary: serde_json::Value,
    pub warnings: Vec<String>,
    pub wall_time_s: f64,
    pub created_unix: u64,
    pub hone_version: String,
}

impl Manifest {
    /// Digest of all outputs together (`{ from: stage }`).
    pub fn artifact_digest(&self) -> String {
        artifact_digest(&self.outputs)
    }

    /// Bytes of all output files together.
    pub fn total_bytes(&self) -> u64 {
        self.outputs
            .values()
            .flat_map(|o| o.files.values().map(|f| f.size))
            .sum()
    }

    /// Parses a manifest and checks everything a reader will use as a path or a key, so a
    /// damaged or hostile manifest (from a shared or remote store) is refused before any use:
    /// the action and every digest are 64 lowercase hex characters, every file name is a
    /// relative path of plain components, and each output's digest is the digest of its files.
    /// `action` is the key the manifest was found under.
    pub fn parse(bytes: &[u8], action: &str) -> Result<Manifest, ManifestError> {
        let m: Manifest = serde_json::from_slice(bytes)?;
        if m.action != action {
            return Err(ManifestError::StoredElsewhere {
                records: m.action.escape_debug().to_string(),
                stored: action.to_owned(),
            });
        }
        for (name, out) in &m.outputs {
            let output = name.escape_debug().to_string();
            if !is_plain_name(name) {
                return Err(ManifestError::OutputName(output));
            }
            for (rel, f) in &out.files {
                if !is_relative_path(rel) {
                    let file = rel.escape_debug().to_string();
                    return Err(ManifestError::FileName { output, file });
                }
                if !is_digest(&f.digest) {
                    return Err(ManifestError::Digest {
                        output,
                        file: rel.clone(),
                        digest: f.digest.escape_debug().to_string(),
                    });
                }
            }
            if out.digest != output_digest(out.artifact_type, &out.files) {
                return Err(ManifestError::OutputDigest(output));
            }
        }
        Ok(m)
    }
}

/// Why a manifest cannot be used. Names from the manifest are escaped: it may be hostile.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read it: {0}")]
    Io(#[from] io::Error),
    #[error("not a manifest: {0}")]
    Json(#[from] serde_json::Error),
    #[error("it records action `{records}`, but is stored as `{stored}`")]
    StoredElsewhere { records: String, stored: String },
    #[error("output name `{0}` is not a plain name")]
    OutputName(String),
    #[error("output `{output}`: file name `{file}` is not a relative path inside the output")]
    FileName { output: String, file: String },
    #[error("output `{output}`: file `{file}` has an invalid digest `{digest}`")]
    Digest {
        output: String,
        file: String,
        digest: String,
    },
    #[error("output `{0}`: its digest does not match its files")]
    OutputDigest(String),
}

/// A BLAKE3 digest as hone writes it: 64 lowercase hex characters. Action keys are digests too.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A file name inside an output: `/`-separated plain components (no empty, `.` or `..`
/// component, no absolute path, no backslash or NUL), so joining it to a directory stays
/// inside that directory.
pub fn is_relative_path(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 4096
        && !s.contains(['\\', '\0'])
        && s.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// An output name: one plain component.
pub fn is_plain_name(s: &str) -> bool {
    is_relative_path(s) && !s.contains('/')
}

/// The key of an action: BLAKE3 of the canonical JSON of its material (serde_json maps are
/// sorted by key). A manifest read from elsewhere proves it belongs under a key by hashing to it.
pub fn action_key(material: &serde_json::Value) -> String {
    hash::hash_bytes(material.to_string().as_bytes())
}

pub fn artifact_digest(outputs: &BTreeMap<String, OutputEntry>) -> String {
    let v: BTreeMap<&String, &String> = outputs.iter().map(|(k, o)| (k, &o.digest)).collect();
    hash::hash_bytes(
        serde_json::to_string(&v)
            .expect("map serializes")
            .as_bytes(),
    )
}

fn output_digest(t: ArtifactType, files: &BTreeMap<String, FileEntry>) -> String {
    let v = serde_json::json!({ "type": t, "files": files.iter().map(|(k, f)| (k.clone(), f.digest.clone())).collect::<BTreeMap<_, _>>() });
    hash::hash_bytes(v.to_string().as_bytes())
}

/// Test-only fault injection. With `HONE_TEST_FAULT=<point>` the process announces the point on
/// stderr and stops there until it is killed, so tests can SIGKILL it mid-commit. With
/// `HONE_TEST_PAUSE=<point>=<ms>` it sleeps there, widening race windows for concurrency tests.
pub fn fault_point(point: &str) {
    if std::env::var("HONE_TEST_FAULT").is_ok_and(|p| p == point) {
        eprintln!("hone-fault-point: {point}");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    if let Ok(spec) = std::env::var("HONE_TEST_PAUSE")
        && let Some((p, ms)) = spec.split_once('=')
        && p == point
        && let Ok(ms) = ms.parse()
    {
        eprintln!("hone-pause-point: {point}");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// An open store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct LockGuard(#[allow(dead_code)] File);

/// A directory for one stage's work in progress; removed on drop unless committed.
#[derive(Debug)]
pub struct Scratch {
    pub dir: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

static SCRATCH_SEQ: AtomicU64 = AtomicU64::new(0);

/// The file that marks a project's root for [`project_store`] (it may be empty).
pub const PROJECT_FILE: &str = "hone.toml";

/// The one store of the project `dir` lies in, so that recipes in subdirectories (a team's
/// recipe extending `../base.yaml`) share a cache, found as cargo finds a workspace: `.hone/`
/// in the nearest of `dir` and its ancestors that holds a store (`.hone/FORMAT`) or a
/// [`PROJECT_FILE`], looking no higher than the repository root (the nearest directory with
/// `.git`); else in that repository root; else beside the recipe (`dir/.hone`). A store found
/// in `dir` itself keeps the path as given, so messages stay short.
pub fn project_store(dir: &Path) -> PathBuf {
    let beside = if dir == Path::new(".") {
        PathBuf::from(".hone")
    } else {
        dir.join(".hone")
    };
    let Ok(abs) = std::path::absolute(dir) else {
        return beside;
    };
    for (up, ancestor) in abs.ancestors().enumerate() {
        let marked =
            ancestor.join(".hone/FORMAT").is_file() || ancestor.join(PROJECT_FILE).is_file();
        let repo_root = ancestor.join(".git").exists();
        if marked || repo_root {
            return if up == 0 {
                beside
            } else {
                ancestor.join(".hone")
            };
        }
    }
    beside
}

impl Store {
    /// The store for a recipe (or, without one, for the working directory): `--store`, else
    /// `$HONE_STORE`, else the project's (see [`project_store`]).
    pub fn location(explicit: Option<&Path>, recipe: Option<&Path>) -> PathBuf {
        if let Some(p) = explicit {
            return p.to_path_buf();
        }
        if let Some(p) = std::env::var_os("HONE_STORE").filter(|p| !p.is_empty()) {
            return PathBuf::from(p);
        }
        match recipe.and_then(Path::parent) {
            Some(dir) if !dir.as_os_str().is_empty() => project_store(dir),
            _ => project_store(Path::new(".")),
        }
    }

    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        for sub in ["blobs", "actions", "locks", "scratch", "runs"] {
            fs::create_dir_all(root.join(sub)).with_context(|| {
                format!("cannot create store directory {}", root.join(sub).display())
            })?;
        }
        let format_file = root.join("FORMAT");
        match fs::read_to_string(&format_file) {
            Ok(s) if s.trim() == CACHE_FORMAT.to_string() => {}
            Ok(s) => bail!(
                "store {} has cache format {}, this hone writes format {CACHE_FORMAT}; use another --store or remove it",
                root.display(),
                s.trim()
            ),
            Err(_) => write_atomic(&format_file, CACHE_FORMAT.to_string().as_bytes())?,
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// Opens an existing store without creating one.
    pub fn open_existing(root: &Path) -> Result<Store> {
        if !root.join("FORMAT").is_file() {
            bail!(
                "no hone store at {} (run a recipe first, or pass --store)",
                root.display()
            );
        }
        Store::open(root)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob of `digest` lives. Digests come from hashing or from manifests that
    /// [`Manifest::parse`] checked; anything else is refused with a path that cannot exist.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        if !is_digest(digest) {
            return self.root.join("blobs").join("invalid-digest");
        }
        self.root.join("blobs").join(&digest[..2]).join(digest)
    }

    fn manifest_path(&self, action: &str) -> Result<PathBuf> {
        if !is_digest(action) {
            bail!(
                "`{}` is not an action key (64 hex characters); is the lockfile damaged?",
                action.escape_debug()
            );
        }
        Ok(self
            .root
            .join("actions")
            .join(&action[..2])
            .join(format!("{action}.json")))
    }

    pub fn hash_cache(&self, distrust: bool) -> hash::HashCache {
        hash::HashCache::load(self.root.join("hashcache.json"), distrust)
    }

    pub fn has(&self, action: &str) -> bool {
        self.manifest_path(action).is_ok_and(|p| p.is_file())
    }

    /// The manifest of `action`, checked ([`Manifest::parse`]); `None` when it never ran.
    pub fn manifest(&self, action: &str) -> Result<Option<Manifest>> {
        let path = self.manifest_path(action)?;
        match fs::read(&path) {
            Ok(bytes) => match Manifest::parse(&bytes, action) {
                Ok(m) => Ok(Some(m)),
                Err(why) => bail!(
                    "the store is damaged: manifest {} cannot be used ({why})\nrun `hone cache verify --repair` to drop it, then run again to recompute it",
                    path.display()
                ),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Every manifest file of the store with what reading it gave: the manifest, or why it
    /// cannot be used.
    fn manifest_files(&self) -> Result<Vec<(PathBuf, Result<Manifest, ManifestError>)>> {
        let mut out = Vec::new();
        for f in hash::walk_files(&self.root.join("actions"))? {
            let path = self.root.join("actions").join(&f);
            let Some(action) = f
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|n| !n.starts_with('.'))
            else {
                continue; // unfinished manifests are listed with the garbage
            };
            let read = fs::read(&path)
                .map_err(ManifestError::from)
                .and_then(|bytes| Manifest::parse(&bytes, action));
            out.push((path, read));
        }
        Ok(out)
    }

    /// The manifest files that cannot be used, with why.
    pub fn unusable_manifests(&self) -> Result<Vec<(PathBuf, ManifestError)>> {
        Ok(self
            .manifest_files()?
            .into_iter()
            .filter_map(|(path, m)| m.err().map(|why| (path, why)))
            .collect())
    }

    /// Every usable manifest in the store (`verify` reports the others).
    pub fn manifests(&self) -> Result<Vec<Manifest>> {
        let mut out: Vec<Manifest> = self
            .manifest_files()?
            .into_iter()
            .filter_map(|(_, m)| m.ok())
            .collect();
        out.sort_by(|a, b| (a.created_unix, &a.stage).cmp(&(b.created_unix, &b.stage)));
        Ok(out)
    }

    /// Runs hold the store lock shared; gc holds it exclusive.
    pub fn lock_shared(&self) -> Result<LockGuard> {
        let f = lock_file(&self.root.join("store.lock"))?;
        f.lock_shared().context("cannot lock the store")?;
        Ok(LockGuard(f))
    }

    pub fn try_lock_exclusive(&self) -> Result<Option<LockGuard>> {
        let f = lock_file(&self.root.join("store.lock"))?;
        match f.try_lock() {
            Ok(()) => Ok(Some(LockGuard(f))),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e).context("cannot lock the store"),
        }
    }

    /// Locks one action. `Err(None)`-like: returns whether we had to wait for another process.
    pub fn lock_action(&self, action: &str, on_wait: impl FnOnce()) -> Result<LockGuard> {
        let f = lock_file(&self.root.join("locks").join(format!("{action}.lock")))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                on_wait();
                f.lock().context("cannot lock action")?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(e).context("cannot lock action"),
        }
        Ok(LockGuard(f))
    }

    /// Where a training action keeps its checkpoints: stable across processes, so a rerun of
    /// an interrupted action finds them (the action lock keeps two processes apart).
    pub fn checkpoint_dir(&self, action: &str) -> PathBuf {
        self.root.join("checkpoints").join(action)
    }

    pub fn scratch(&self, action: &str) -> Result<Scratch> {
        let n = SCRATCH_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir =
            self.root
                .join("scratch")
                .join(format!("{}-{}-{n}", &action[..16], std::process::id()));
        fs::create_dir_all(&dir)?;
        Ok(Scratch { dir })
    }

    /// Moves the produced files into `blobs/` and writes the manifest last.
    /// `manifest.outputs` is filled in here.
    pub fn commit(&self, produced: &[ProducedOutput], mut manifest: Manifest) -> Result<Manifest> {
        fault_point("before-commit");
        let mut touched_dirs = BTreeSet::new();
        for out in produced {
            let mut files = BTreeMap::new();
            for rel in hash::walk_files(&out.dir)? {
                let src = out.dir.join(&rel);
                File::open(&src)?.sync_all()?;
                let digest = hash::hash_file(&src)?;
                let size = fs::metadata(&src)?.len();
                let dst = self.blob_path(&digest);
                if dst.is_file() {
                    fs::remove_file(&src)?;
                } else {
                    let dir = dst.parent().expect("blob has a parent");
                    fs::create_dir_all(dir)?;
                    let mut perms = fs::metadata(&src)?.permissions();
                    perms.set_readonly(true);
                    fs::set_permissions(&src, perms)?;
                    fs::rename(&src, &dst)?;
                    touched_dirs.insert(dir.to_path_buf());
                    fault_point("mid-blobs");
                }
                let rel = rel.to_string_lossy().replace('\\', "/");
                files.insert(rel, FileEntry { digest, size });
            }
            let digest = output_digest(out.artifact_type, &files);
            manifest.outputs.insert(
                out.name.clone(),
                OutputEntry {
                    artifact_type: out.artifact_type,
                    digest,
                    files,
                },
            );
        }
        for dir in &touched_dirs {
            File::open(dir)?.sync_all()?;
        }
        fault_point("before-manifest");
        self.record_manifest(&manifest)?;
        fault_point("after-manifest");
        Ok(manifest)
    }

    /// Writes `m` as the manifest of its action, atomically: the last step of a commit, once
    /// every blob it names is in `blobs/` (a commit, or a pull from a remote).
    pub fn record_manifest(&self, m: &Manifest) -> Result<()> {
        let path = self.manifest_path(&m.action)?;
        fs::create_dir_all(path.parent().expect("manifest has a parent"))?;
        write_atomic_with(&path, &serde_json::to_vec_pretty(m)?, || {
            fault_point("manifest-tmp-written")
        })
    }

    /// A fresh path in `scratch/` for a file being downloaded (gc removes leftovers).
    pub fn download_path(&self) -> PathBuf {
        let n = SCRATCH_SEQ.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("scratch")
            .join(format!("download-{}-{n}", std::process::id()))
    }

    /// Moves `file`, whose content the caller checked hashes to `digest`, into `blobs/` (synced,
    /// read-only); removes it instead when the store has that blob already.
    pub fn adopt_blob(&self, file: &Path, digest: &str) -> Result<()> {
        if !is_digest(digest) {
            bail!("`{}` is not a digest", digest.escape_debug());
        }
        let dst = self.blob_path(digest);
        if dst.is_file() {
            fs::remove_file(file)?;
            return Ok(());
        }
        File::open(file)?.sync_all()?;
        let dir = dst.parent().expect("blob has a parent");
        fs::create_dir_all(dir)?;
        let mut perms = fs::metadata(file)?.permissions();
        perms.set_readonly(true);
        fs::set_permissions(file, perms)?;
        fs::rename(file, &dst)?;
        File::open(dir)?.sync_all()?;
        Ok(())
    }

    /// Checks a manifest's blobs against their digests (verification on read).
    pub fn verify_manifest(&self, m: &Manifest) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, out) in &m.outputs {
            for (rel, f) in &out.files {
                let p = self.blob_path(&f.digest);
                match hash::hash_file(&p) {
                    Ok(d) if d == f.digest => {}
                    Ok(_) => problems.push(format!(
                        "stage `{}` output `{name}`: {rel} is corrupt (blob {})",
                        m.stage,
                        p.display()
                    )),
                    Err(_) => problems.push(format!(
                        "stage `{}` output `{name}`: {rel} is missing (blob {})",
                        m.stage,
                        p.display()
                    )),
                }
            }
        }
        problems
    }

    /// Copies output `name` of `m` into `dir` as ordinary files (writable by their owner,
    /// permissions from the umask, not the blobs' read-only ones), checking each blob's digest
    /// as it is copied: a damaged blob is an error that names the stage and the blob, and
    /// nothing the copy wrote so far is kept by the caller (`dir` is its temp directory).
    pub fn checkout(&self, m: &Manifest, name: &str, dir: &Path) -> Result<()> {
        let Some(out) = m.outputs.get(name) else {
            bail!("stage `{}` has no output `{name}`", m.stage);
        };
        for (rel, f) in &out.files {
            // Manifest::parse checked the name; a second look costs nothing.
            if !is_relative_path(rel) {
                bail!(
                    "stage `{}` output `{name}`: unsafe file name `{}`",
                    m.stage,
                    rel.escape_debug()
                );
            }
            let blob = self.blob_path(&f.digest);
            let dest = dir.join(rel);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let damaged = |what: &str| {
                anyhow::anyhow!(
                    "the store is damaged: stage `{}` output `{name}`: {rel} is {what} (blob {})\nrun `hone cache verify --repair`, then run again to recompute it",
                    m.stage,
                    blob.display()
                )
            };
            let mut src = match File::open(&blob) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(damaged("missing")),
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot read {}", blob.display()));
                }
            };
            let mut dst =
                File::create(&dest).with_context(|| format!("cannot write {}", dest.display()))?;
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = io::Read::read(&mut src, &mut buf)
                    .with_context(|| format!("cannot read {}", blob.display()))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                dst.write_all(&buf[..n])
                    .with_context(|| format!("cannot write {}", dest.display()))?;
            }
            dst.sync_all()
                .with_context(|| format!("cannot write {}", dest.display()))?;
            if hasher.finalize().to_hex().as_str() != f.digest {
                return Err(damaged("corrupt"));
            }
        }
        Ok(())
    }

    /// Removes a manifest (a broken action becomes "never run").
    pub fn forget(&self, action: &str) -> Result<()> {
        match fs::remove_file(self.manifest_path(action)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Full check of the store.
    pub fn verify(&self, repair: bool) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        for (path, read) in self.manifest_files()? {
            let m = match read {
                Ok(m) => m,
                Err(why) => {
                    report
                        .problems
                        .push(format!("unusable manifest {} ({why})", path.display()));
                    if repair {
                        fs::remove_file(&path)?;
                    }
                    continue;
                }
            };
            report.actions += 1;
            let problems = self.verify_manifest(&m);
            report.blobs_checked += m.outputs.values().map(|o| o.files.len()).sum::<usize>();
            if !problems.is_empty() && repair {
                // Forget the action and delete its damaged blobs, so a recomputation that
                // produces the same digest writes a good copy instead of reusing the bad one.
                self.forget(&m.action)?;
                for f in m.outputs.values().flat_map(|o| o.files.values()) {
                    let p = self.blob_path(&f.digest);
                    if p.is_file() && hash::hash_file(&p).is_ok_and(|d| d != f.digest) {
                        fs::remove_file(&p)?;
                    }
                }
            }
            report.problems.extend(problems);
        }
        self.verify_caches(repair, &mut report)?;
        let (orphans, scratch) = self.garbage(&self.referenced_blobs()?)?;
        report.reclaimable.extend(
            orphans
                .iter()
                .map(|p| format!("unreferenced blob {}", p.display())),
        );
        report.reclaimable.extend(
            scratch
                .iter()
                .map(|p| format!("leftover scratch {}", p.display())),
        );
        Ok(report)
    }

    /// Tokenized entries and checkpoints carry their own digests (`sealed`): a damaged one
    /// is a problem, and repair removes it (both are recomputed by the next run).
    fn verify_caches(&self, repair: bool, report: &mut VerifyReport) -> Result<()> {
        if let Ok(entries) = fs::read_dir(self.root.join("tokenized")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with('.') {
                    continue;
                }
                report.cache_entries_checked += 1;
                if fs::read(e.path()).is_ok_and(|b| sealed::open(&b).is_some()) {
                    continue;
                }
                report.problems.push(format!(
                    "damaged tokenized cache entry {}",
                    e.path().display()
                ));
                if repair {
                    fs::remove_file(e.path())?;
                }
            }
        }
        if let Ok(entries) = fs::read_dir(self.root.join("checkpoints")) {
            for e in entries.flatten() {
                let current = e.path().join("current");
                let current_intact = current.is_dir() && sealed::check_digests(&current).is_ok();
                for sub in ["current", "old"] {
                    let dir = e.path().join(sub);
                    if !dir.is_dir() {
                        continue;
                    }
                    report.cache_entries_checked += 1;
                    match sealed::check_digests(&dir) {
                        Ok(()) => {}
                        // A run killed while it rotated checkpoints leaves the previous one
                        // (`old`) part-deleted beside an intact `current`, which resumes:
                        // nothing is damaged that a run would read.
                        Err(_) if sub == "old" && current_intact => {
                            if repair {
                                fs::remove_dir_all(&dir)?;
                            }
                        }
                        Err(why) => {
                            report.problems.push(format!("damaged checkpoint: {why}"));
                            if repair {
                                fs::remove_dir_all(e.path())?;
                                break;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn referenced_blobs(&self) -> Result<BTreeSet<String>> {
        Ok(self
            .manifests()?
            .iter()
            .flat_map(|m| {
                m.outputs
                    .values()
                    .flat_map(|o| o.files.values().map(|f| f.digest.clone()))
            })
            .collect())
    }

    /// Unreferenced blobs and leftover scratch entries / unfinished manifests.
    fn garbage(&self, keep: &BTreeSet<String>) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
        let mut orphans = Vec::new();
        for f in hash::walk_files(&self.root.join("blobs"))? {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if !keep.contains(&name) {
                orphans.push(self.root.join("blobs").join(f));
            }
        }
        let mut scratch: Vec<PathBuf> = fs::read_dir(self.root.join("scratch"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        for f in hash::walk_files(&self.root.join("actions"))? {
            if f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                scratch.push(self.root.join("actions").join(f));
            }
        }
        if let Ok(entries) = fs::read_dir(self.root.join("checkpoints")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if self.manifest(&name).ok().flatten().is_some() {
                    scratch.push(e.path());
                }
            }
        }
        scratch.sort();
        Ok((orphans, scratch))
    }

    /// Removes garbage. With `keep_actions`, also drops every action not in it.
    /// Needs the store to itself: fails while a run holds it.
    pub fn gc(&self, keep_actions: Option<&BTreeSet<String>>, dry_run: bool) -> Result<GcReport> {
        let Some(_lock) = self.try_lock_exclusive()? else {
            bail!(
                "another hone process is using the store {}; try gc again when it finishes",
                self.root.display()
            );
        };
        let mut report = GcReport::default();
        if let Some(keep) = keep_actions {
            for m in self.manifests()? {
                if !keep.contains(&m.action) {
                    report.actions_removed += 1;
                    if !dry_run {
                        self.forget(&m.action)?;
                    }
                }
            }
        }
        let (orphans, scratch) = self.garbage(&self.referenced_blobs()?)?;
        for p in &orphans {
            report.bytes_freed += fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            report.blobs_removed += 1;
            if !dry_run {
                fs::remove_file(p)?;
            }
        }
        // Tokenized examples are a pure cache (`data::tokenized`): recomputed when needed.
        if let Ok(entries) = fs::read_dir(self.root.join("tokenized")) {
            for e in entries.flatten() {
                report.bytes_freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                report.tokenized_removed += 1;
                if !dry_run {
                    fs::remove_file(e.path())?;
                }
            }
        }
        for p in &scratch {
            report.scratch_removed += 1;
            if !dry_run {
                if p.is_dir() {
                    fs::remove_dir_all(p)?
                } else {
                    fs::remove_file(p)?
                }
            }
        }
        Ok(report)
    }

    /// Bytes used per area of the store.
    pub fn disk_usage(&self) -> Result<BTreeMap<&'static str, (u64, u64)>> {
        let mut out = BTreeMap::new();
        for area in [
            "blobs",
            "actions",
            "scratch",
            "checkpoints",
            "tokenized",
            "runs",
        ] {
            let dir = self.root.join(area);
            // Areas appear when first used (`checkpoints/` only once a run was interrupted).
            let files = match hash::walk_files(&dir) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
                other => other.with_context(|| format!("cannot read {}", dir.display()))?,
            };
            let bytes = files
                .iter()
                .map(|f| fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0))
                .sum();
            out.insert(area, (files.len() as u64, bytes));
        }
        Ok(out)
    }
}

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub actions: usize,
    pub blobs_checked: usize,
    /// Tokenized entries and checkpoints checked against their own digests.
    pub cache_entries_checked: usize,
    /// Corruption: missing or altered blobs, unreadable manifests.
    pub problems: Vec<String>,
    /// Not corruption: leftovers of interrupted runs that `gc` removes.
    pub reclaimable: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub actions_removed: usize,
    pub blobs_removed: usize,
    pub scratch_removed: usize,
    pub tokenized_removed: usize,
    pub bytes_freed: u64,
}

fn lock_file(path: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open lock file {}", path.display()))
}

/// Writes `path` whole or not at all: a hidden temp file beside it, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, bytes, || {})
}

/// The directory of `path` and a fresh temporary name in it (same filesystem, so a rename
/// into place is atomic).
fn scratch_beside(path: &Path) -> (&Path, PathBuf) {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let n = SCRATCH_SEQ.fetch_add(1, Ordering::Relaxed);
    (
        dir,
        dir.join(format!(".{name}.{}.{n}.tmp", std::process::id())),
    )
}

/// [`write_atomic`] for a file another writer produces: `write` creates the file at the
/// temporary path it is given (e.g. a library that streams to a path); it is then synced and
/// renamed into place, or removed if `write` fails.
pub fn write_atomic_file(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let (dir, tmp) = scratch_beside(path);
    if let Err(e) = write(&tmp).and_then(|()| Ok(File::open(&tmp)?.sync_all()?)) {
        let _ = fs::remove_file(&tmp);
        return Err(e.context(format!("cannot write {}", path.display())));
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn write_atomic_with(path: &Path, bytes: &[u8], before_rename: impl FnOnce()) -> Result<()> {
    let (dir, tmp) = scratch_beside(path);
    let mut f = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    before_rename();
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}
