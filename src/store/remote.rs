//! The remote cache: a second store on object storage (S3 and S3-compatible servers, GCS, Azure,
//! HTTP/WebDAV, a mounted directory through `file://`) behind the local one, so one team's
//! trained stages are another team's cache hits.
//!
//! ```text
//! <url>/
//!   blobs/ab/<blake3>         file contents, named by digest, created once
//!   actions/ab/<key>.json     one manifest per action, uploaded after every blob it names
//! ```
//! Nothing read from a remote is trusted until checked. A manifest is used only if it parses
//! ([`Manifest::parse`]: names, digests), is of this cache format, and its material hashes to
//! the key it is stored under, which is the key this hone computed for the action, so it is
//! the record of the same computation. A blob is hashed as it streams into `scratch/` and is
//! kept only when its size and digest are the manifest's; the pulled action then enters the
//! local store through the same atomic steps as a commit (blobs, then the manifest).
//!
//! A push uploads the missing blobs first (conditional create; multipart above
//! [`MULTIPART_BYTES`]) and the manifest last, with a conditional create too: an interrupted
//! push leaves no manifest, and of two pushers of one action the first wins (the second only
//! checks that it recorded the same outputs).
//!
//! The remote is a cache: any failure to reach it is reported and the run computes locally.
//! Credentials never pass through hone's settings: they come from the environment and the
//! provider's usual files (`AWS_ACCESS_KEY_ID`, `GOOGLE_APPLICATION_CREDENTIALS`, ...).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Serialize;

use super::{CACHE_FORMAT, Manifest, Store, action_key, fault_point, is_digest};

/// Blobs above this many bytes are uploaded in parts (`HONE_REMOTE_MULTIPART_BYTES` overrides
/// it, for tests).
pub const MULTIPART_BYTES: u64 = 64 << 20;
/// The size of one part of a multipart upload.
const PART_BYTES: usize = 16 << 20;
/// A manifest larger than this is refused unread (real ones are kilobytes).
const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// The largest summary (and warnings, together) a remote manifest may carry, far above what
/// hone's stages write (summaries of numbers and short tables).
const MAX_SUMMARY_BYTES: usize = 4 << 20;
/// The most metrics a remote manifest may carry.
const MAX_METRICS: usize = 4096;

/// Where the remote is and what this process may do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSettings {
    pub url: String,
    /// Provider settings (`endpoint`, `region`, `allow_http`, ...): never credentials.
    pub options: BTreeMap<String, String>,
    pub read: bool,
    pub write: bool,
}

/// Option names that would carry a secret; refused in recipes (credentials come from the
/// environment or the provider's files).
pub fn is_secret_option(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "secret",
        "access_key",
        "password",
        "token",
        "credential",
        "account_key",
        "private_key",
        "sas",
        "client_secret",
        "service_account",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// Checks a remote URL without contacting anything: a scheme hone can use, no credentials in
/// it. Returns the parsed URL.
pub fn parse_url(url: &str) -> Result<url::Url> {
    let parsed = url::Url::parse(url).with_context(|| {
        format!(
            "`{}` is not a URL; a remote is s3://bucket/prefix, gs://bucket/prefix, az://container/prefix, https://host/path or file:///absolute/dir",
            url.escape_debug()
        )
    })?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        bail!(
            "the remote URL carries credentials; give them through the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for S3) instead"
        );
    }
    match parsed.scheme() {
        "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" | "adl" | "http" | "https"
        | "file" => Ok(parsed),
        other => bail!(
            "remote scheme `{other}` is not supported; use s3://, gs://, az://, https:// (WebDAV) or file://"
        ),
    }
}

/// The remote URL as it may be shown: no query string (signed URLs carry secrets there).
pub fn display_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            let _ = u.set_password(None);
            let _ = u.set_username("");
            u.to_string().trim_end_matches('/').to_owned()
        }
        Err(_) => url.escape_debug().to_string(),
    }
}

/// Why the remote could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The remote cannot be reached or failed (network, server errors, time-outs,
    /// permissions): the run goes on without it.
    #[error("remote unavailable: {0}")]
    Unavailable(String),
    /// What the remote holds for this action is not usable (a forged or damaged manifest, a
    /// blob that does not match its digest): recompute.
    #[error("{0}")]
    Rejected(String),
    /// The local store failed (disk full, permissions).
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

impl From<object_store::Error> for RemoteError {
    fn from(e: object_store::Error) -> Self {
        RemoteError::Unavailable(one_line(&e))
    }
}

/// An error's chain on one line, without the request URLs' query strings.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = c.source();
    }
    let s: String = s.chars().filter(|c| !c.is_control()).collect();
    // A signed URL in an error would show its signature.
    let mut s = regex::Regex::new(r"\?[^\s)]*")
        .map(|re| re.replace_all(&s, "").into_owned())
        .unwrap_or(s);
    // Servers put whole XML error documents in their messages.
    if let Some((cut, _)) = s.char_indices().nth(400) {
        s.truncate(cut);
        s.push_str(" ...");
    }
    s
}

/// What a pull moved.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Transfer {
    /// Blobs transferred (those the other side had already are not counted).
    pub blobs: usize,
    pub bytes: u64,
    pub seconds: f64,
}

/// How a push ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// This push created the remote manifest.
    Created,
    /// The remote had this action already, with the same outputs.
    AlreadyThere,
    /// The remote had this action with other outputs: the first writer wins, and the stage is
    /// not deterministic across machines (or one of them is damaged).
    Conflict { remote: String, local: String },
}

/// An opened remote.
pub struct Remote {
    /// The URL as shown (no credentials, no query).
    pub label: String,
    pub read: bool,
    pub write: bool,
    settings: RemoteSettings,
    client: OnceLock<Result<Client, String>>,
    /// Set at the first failure to reach the remote: the rest of the run does without it.
    down: AtomicBool,
}

/// What talks to the remote: built on first use.
struct Client {
    objects: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.label)
            .field("read", &self.read)
            .field("write", &self.write)
            .finish()
    }
}

/// Seconds a request may take (`timeout` in the options overrides it).
const REQUEST_TIMEOUT: &str = "60s";
const CONNECT_TIMEOUT: &str = "5s";

impl Client {
    /// Builds the client of a remote (checked by [`Remote::open`]): provider settings from
    /// the environment and the options, the retry policy and time-outs, an I/O runtime.
    fn build(settings: &RemoteSettings) -> Result<Client> {
        let url = parse_url(&settings.url)?;
        let label = display_url(&settings.url);
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: Duration::from_secs(20),
        };
        let mut options = settings.options.clone();
        options
            .entry("timeout".into())
            .or_insert_with(|| REQUEST_TIMEOUT.into());
        options
            .entry("connect_timeout".into())
            .or_insert_with(|| CONNECT_TIMEOUT.into());
        let bad_option = |k: &str, e: object_store::Error| {
            anyhow::anyhow!(
                "remote option `{}` is not known for {}:// remotes ({})",
                k.escape_debug(),
                url.scheme(),
                one_line(&e)
            )
        };
        let (objects, prefix): (Arc<dyn ObjectStore>, String) = match url.scheme() {
            "file" => {
                let dir = url.to_file_path().map_err(|()| {
                    anyhow::anyhow!("`{label}` is not a local directory URL (file:///absolute/dir)")
                })?;
                fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create the remote {}", dir.display()))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .with_context(|| format!("cannot open the remote {}", dir.display()))?;
                (Arc::new(fs), String::new())
            }
            "s3" | "s3a" => {
                use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
                let mut b = AmazonS3Builder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry);
                for (k, v) in &options {
                    let key: AmazonS3ConfigKey = k.parse().map_err(|e| bad_option(k, e))?;
                    b = b.with_config(key, v);
                }
                (Arc::new(b.build()?), url.path().to_owned())
            }
            "gs" => {
                use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
                let mut b = GoogleCloudStorageBuilder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry);
                for (k, v) in &options {
                    let key: GoogleConfigKey = k.parse().map_err(|e| bad_option(k, e))?;
                    b = b.with_config(key, v);
                }
                (Arc::new(b.build()?), url.path().to_owned())
            }
            "http" | "https" => {
                use object_store::ClientConfigKey;
                use object_store::http::HttpBuilder;
                let mut b = HttpBuilder::new().with_url(url.as_str()).with_retry(retry);
                for (k, v) in &options {
                    let key: ClientConfigKey = k.parse().map_err(|e| bad_option(k, e))?;
                    b = b.with_config(key, v);
                }
                (Arc::new(b.build()?), String::new())
            }
            _ => {
                use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
                let mut b = MicrosoftAzureBuilder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry);
                for (k, v) in &options {
                    let key: AzureConfigKey = k.parse().map_err(|e| bad_option(k, e))?;
                    b = b.with_config(key, v);
                }
                (Arc::new(b.build()?), url.path().to_owned())
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the remote's I/O runtime")?;
        let prefix = ObjectPath::from_url_path(prefix.trim_matches('/'))
            .with_context(|| format!("`{label}`: the path is not a valid object prefix"))?;
        Ok(Client {
            objects,
            prefix,
            runtime,
        })
    }

    fn location(&self, rel: &str) -> ObjectPath {
        rel.split('/')
            .fold(self.prefix.clone(), |p, part| p.join(part))
    }

    fn manifest_location(&self, action: &str) -> ObjectPath {
        self.location(&format!("actions/{}/{action}.json", &action[..2]))
    }

    fn blob_location(&self, digest: &str) -> ObjectPath {
        self.location(&format!("blobs/{}/{digest}", &digest[..2]))
    }
}

/// Whether `key` is a setting `object_store` knows for remotes of `scheme` (`s3`, `gs`, ...).
pub fn check_option(scheme: &str, key: &str) -> Result<(), String> {
    use object_store::ClientConfigKey;
    use object_store::aws::AmazonS3ConfigKey;
    use object_store::azure::AzureConfigKey;
    use object_store::gcp::GoogleConfigKey;
    let known = match scheme {
        "file" => return Err("file:// remotes take no options".into()),
        "s3" | "s3a" => key.parse::<AmazonS3ConfigKey>().map(|_| ()),
        "gs" => key.parse::<GoogleConfigKey>().map(|_| ()),
        "http" | "https" => key.parse::<ClientConfigKey>().map(|_| ()),
        _ => key.parse::<AzureConfigKey>().map(|_| ()),
    };
    known.map_err(|_| {
        format!(
            "`{}` is not a setting of {scheme}:// remotes (object_store's names: endpoint, region, allow_http, timeout, ...)",
            key.escape_debug()
        )
    })
}

impl Remote {
    /// Opens the remote of `settings`: checks the URL and the options (no credentials, only
    /// settings the provider knows) and contacts nothing; the client is built on first use, so
    /// a run that finds everything in the local store pays nothing for its remote.
    pub fn open(settings: &RemoteSettings) -> Result<Remote> {
        let url = parse_url(&settings.url)?;
        for k in settings.options.keys() {
            if is_secret_option(k) {
                bail!(
                    "remote option `{k}` would carry a credential; give credentials through the environment or the provider's files, never in a recipe"
                );
            }
            check_option(url.scheme(), k).map_err(anyhow::Error::msg)?;
        }
        Ok(Remote {
            label: display_url(&settings.url),
            read: settings.read,
            write: settings.write,
            settings: settings.clone(),
            client: OnceLock::new(),
            down: AtomicBool::new(false),
        })
    }

    /// The client, built at the first request; a failure to build it (bad settings the
    /// provider found, no runtime) makes the remote unavailable for this process.
    fn client(&self) -> Result<&Client, RemoteError> {
        let built = self
            .client
            .get_or_init(|| Client::build(&self.settings).map_err(|e| format!("{e:#}")));
        let r = built
            .as_ref()
            .map_err(|e| RemoteError::Unavailable(e.clone()));
        self.note(r)
    }

    /// Whether an earlier request found the remote unreachable (the run goes on without it).
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Records `e` if it says the remote is unreachable, so later stages do not wait on it again.
    fn note<T>(&self, r: Result<T, RemoteError>) -> Result<T, RemoteError> {
        if let Err(RemoteError::Unavailable(_)) = &r {
            self.down.store(true, Ordering::Relaxed);
        }
        r
    }

    /// The remote's manifest of `action`, checked (see the module docs); `Ok(None)` when the
    /// remote does not have it.
    pub fn manifest(&self, action: &str) -> Result<Option<Manifest>, RemoteError> {
        if !is_digest(action) {
            return Err(RemoteError::Rejected(format!(
                "`{}` is not an action key",
                action.escape_debug()
            )));
        }
        let c = self.client()?;
        let r = c.runtime.block_on(async {
            let got = match c.objects.get(&c.manifest_location(action)).await {
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                other => other?,
            };
            if got.meta.size > MAX_MANIFEST_BYTES {
                return Err(RemoteError::Rejected(format!(
                    "its manifest is {} bytes, more than a manifest can be",
                    got.meta.size
                )));
            }
            Ok(Some(
                read_capped(got.into_stream(), MAX_MANIFEST_BYTES).await?,
            ))
        });
        let Some(bytes) = self.note(r)? else {
            return Ok(None);
        };
        check_manifest(&bytes, action).map(Some)
    }

    /// Brings the action of `m` (a manifest [`Remote::manifest`] returned) into `store`: each
    /// blob the store lacks is downloaded into `scratch/` while hashed, kept only if it is the
    /// blob the manifest names, then the manifest is recorded. The caller holds the action's
    /// lock.
    pub fn pull(&self, store: &Store, m: &Manifest) -> Result<Transfer, RemoteError> {
        let started = Instant::now();
        let mut t = Transfer::default();
        let mut wanted: BTreeMap<&str, (u64, String)> = BTreeMap::new();
        for (name, out) in &m.outputs {
            for (rel, f) in &out.files {
                wanted
                    .entry(f.digest.as_str())
                    .or_insert((f.size, format!("output `{name}` file {rel}")));
            }
        }
        for (digest, (size, what)) in wanted {
            if store.blob_path(digest).is_file() {
                continue;
            }
            let r = self.download_blob(store, digest, size, &what);
            t.bytes += self.note(r)?;
            t.blobs += 1;
        }
        store.record_manifest(m)?;
        t.seconds = started.elapsed().as_secs_f64();
        Ok(t)
    }

    fn download_blob(
        &self,
        store: &Store,
        digest: &str,
        size: u64,
        what: &str,
    ) -> Result<u64, RemoteError> {
        let c = self.client()?;
        let tmp = store.download_path();
        let loc = c.blob_location(digest);
        let missing =
            || RemoteError::Rejected(format!("{what}: the remote has no blob {}", &digest[..16]));
        let r = c.runtime.block_on(async {
            let mut file = File::create(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            let mut hasher = blake3::Hasher::new();
            let mut n = 0u64;
            loop {
                let from = n;
                let got = if from == 0 {
                    c.objects.get(&loc).await
                } else {
                    let range = Some((from..size).into());
                    let opts = object_store::GetOptions {
                        range,
                        ..Default::default()
                    };
                    c.objects.get_opts(&loc, opts).await
                };
                let got = match got {
                    Err(object_store::Error::NotFound { .. }) => return Err(missing()),
                    other => other?,
                };
                let mut stream = got.into_stream();
                let mut cut = None;
                while let Some(chunk) = stream.next().await {
                    let chunk = match chunk {
                        Ok(c) => c,
                        Err(e) => {
                            cut = Some(e);
                            break;
                        }
                    };
                    n += chunk.len() as u64;
                    if n > size {
                        return Err(RemoteError::Rejected(format!(
                            "{what}: the remote blob {} is larger than the {size} bytes its manifest records",
                            &digest[..16]
                        )));
                    }
                    hasher.update(&chunk);
                    file.write_all(&chunk)
                        .with_context(|| format!("cannot write {}", tmp.display()))?;
                }
                match cut {
                    None => break,
                    // Cut off part-way (the request time-out ends a long body on a slow
                    // link): a ranged request goes on from there, as long as each gets further.
                    Some(_) if n > from && n < size => continue,
                    Some(e) => return Err(e.into()),
                }
            }
            if n != size {
                return Err(RemoteError::Rejected(format!(
                    "{what}: the remote blob {} is {n} bytes, not the {size} its manifest records",
                    &digest[..16]
                )));
            }
            if hasher.finalize().to_hex().as_str() != digest {
                return Err(RemoteError::Rejected(format!(
                    "{what}: the remote blob {} does not match its digest (corrupt or altered)",
                    &digest[..16]
                )));
            }
            file.sync_all()
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            Ok(n)
        });
        match r {
            Ok(n) => {
                store.adopt_blob(&tmp, digest)?;
                Ok(n)
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Uploads the action of `m` from `store`: the blobs the remote lacks, then the manifest.
    pub fn push(&self, store: &Store, m: &Manifest) -> Result<(Pushed, Transfer), RemoteError> {
        let started = Instant::now();
        let mut t = Transfer::default();
        let digests: BTreeSet<&str> = m
            .outputs
            .values()
            .flat_map(|o| o.files.values().map(|f| f.digest.as_str()))
            .collect();
        let multipart_at = std::env::var("HONE_REMOTE_MULTIPART_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(MULTIPART_BYTES);
        for digest in digests {
            let r = self.upload_blob(store, digest, multipart_at);
            if let Some(n) = self.note(r)? {
                t.blobs += 1;
                t.bytes += n;
                fault_point("remote-mid-blobs");
            }
        }
        fault_point("remote-before-manifest");
        let r = self.put_manifest(m);
        let pushed = self.note(r)?;
        t.seconds = started.elapsed().as_secs_f64();
        Ok((pushed, t))
    }

    /// Uploads one blob unless the remote has it; returns the bytes sent.
    fn upload_blob(
        &self,
        store: &Store,
        digest: &str,
        multipart_at: u64,
    ) -> Result<Option<u64>, RemoteError> {
        let c = self.client()?;
        let loc = c.blob_location(digest);
        let path = store.blob_path(digest);
        c.runtime.block_on(async {
            // A remote blob of the wrong size is damaged (a blob is named by its content):
            // it is written over, where a missing one is created only if still missing.
            let damaged = match c.objects.head(&loc).await {
                Ok(meta) if meta.size == fs::metadata(&path).map(|m| m.len()).unwrap_or(0) => {
                    return Ok(None);
                }
                Ok(_) => true,
                Err(object_store::Error::NotFound { .. }) => false,
                Err(e) => return Err(e.into()),
            };
            let mut file = File::open(&path)
                .with_context(|| format!("cannot read blob {}", path.display()))?;
            let size = file.metadata().map_err(anyhow::Error::from)?.len();
            if size > multipart_at {
                let upload = c.objects.put_multipart(&loc).await?;
                let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
                let mut buf = vec![0u8; PART_BYTES];
                loop {
                    let n = file
                        .read(&mut buf)
                        .with_context(|| format!("cannot read blob {}", path.display()))?;
                    if n == 0 {
                        break;
                    }
                    w.wait_for_capacity(4).await?;
                    w.write(&buf[..n]);
                }
                w.finish().await?;
            } else {
                let mut bytes = Vec::with_capacity(size as usize);
                file.read_to_end(&mut bytes)
                    .with_context(|| format!("cannot read blob {}", path.display()))?;
                let payload = PutPayload::from(bytes);
                let mode = if damaged {
                    PutMode::Overwrite
                } else {
                    PutMode::Create
                };
                match c.objects.put_opts(&loc, payload.clone(), mode.into()).await {
                    Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
                    // A store without conditional writes: a blob is named by its content, so
                    // writing it over an equal one changes nothing.
                    Err(object_store::Error::NotImplemented { .. }) => {
                        c.objects.put(&loc, payload).await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(Some(size))
        })
    }

    fn put_manifest(&self, m: &Manifest) -> Result<Pushed, RemoteError> {
        let c = self.client()?;
        let loc = c.manifest_location(&m.action);
        let bytes = serde_json::to_vec_pretty(m).map_err(anyhow::Error::from)?;
        let created = c.runtime.block_on(async {
            let create = PutOptions::from(PutMode::Create);
            match c
                .objects
                .put_opts(&loc, PutPayload::from(bytes.clone()), create)
                .await
            {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
                Err(object_store::Error::NotImplemented { .. }) => {
                    // No conditional writes (WebDAV): look first. Two pushers racing here
                    // both write a valid manifest of the same action; the later one stays.
                    match c.objects.head(&loc).await {
                        Ok(_) => Ok(false),
                        Err(object_store::Error::NotFound { .. }) => {
                            c.objects.put(&loc, PutPayload::from(bytes.clone())).await?;
                            Ok(true)
                        }
                        Err(e) => Err(RemoteError::from(e)),
                    }
                }
                Err(e) => Err(e.into()),
            }
        })?;
        if created {
            return Ok(Pushed::Created);
        }
        match self.manifest(&m.action) {
            Ok(Some(theirs)) if theirs.artifact_digest() == m.artifact_digest() => {
                Ok(Pushed::AlreadyThere)
            }
            Ok(Some(theirs)) => Ok(Pushed::Conflict {
                remote: theirs.artifact_digest(),
                local: m.artifact_digest(),
            }),
            // What is there cannot be used by anyone: replace it with a good one.
            Ok(None) | Err(RemoteError::Rejected(_)) => {
                c.runtime
                    .block_on(c.objects.put(&loc, PutPayload::from(bytes)))?;
                Ok(Pushed::Created)
            }
            Err(e) => Err(e),
        }
    }

    /// Every action key the remote has a manifest for.
    pub fn actions(&self) -> Result<Vec<String>, RemoteError> {
        let c = self.client()?;
        let r = c.runtime.block_on(async {
            let prefix = c.location("actions");
            let mut list = c.objects.list(Some(&prefix));
            let mut keys = Vec::new();
            while let Some(meta) = list.next().await {
                let meta = meta?;
                if let Some(key) = meta
                    .location
                    .filename()
                    .and_then(|n| n.strip_suffix(".json"))
                    .filter(|k| is_digest(k))
                {
                    keys.push(key.to_owned());
                }
            }
            keys.sort();
            Ok(keys)
        });
        self.note(r)
    }

    /// Checks that the remote has every blob of `m` at its recorded size (`deep`: downloads each
    /// and checks its digest too). Returns the problems.
    pub fn check_blobs(&self, m: &Manifest, deep: bool) -> Result<Vec<String>, RemoteError> {
        let c = self.client()?;
        let mut problems = Vec::new();
        for (name, out) in &m.outputs {
            for (rel, f) in &out.files {
                let loc = c.blob_location(&f.digest);
                let r: Result<Option<String>, RemoteError> = c.runtime.block_on(async {
                    let meta = match c.objects.head(&loc).await {
                        Ok(meta) => meta,
                        Err(object_store::Error::NotFound { .. }) => {
                            return Ok(Some("is missing".to_owned()));
                        }
                        Err(e) => return Err(e.into()),
                    };
                    if meta.size != f.size {
                        return Ok(Some(format!(
                            "has {} bytes, the manifest records {}",
                            meta.size, f.size
                        )));
                    }
                    if deep {
                        let mut stream = c.objects.get(&loc).await?.into_stream();
                        let mut hasher = blake3::Hasher::new();
                        while let Some(chunk) = stream.next().await {
                            hasher.update(&chunk?);
                        }
                        if hasher.finalize().to_hex().as_str() != f.digest {
                            return Ok(Some("does not match its digest".to_owned()));
                        }
                    }
                    Ok(None)
                });
                if let Some(why) = self.note(r)? {
                    problems.push(format!(
                        "stage `{}` output `{name}`: {rel} (blob {}) {why}",
                        m.stage,
                        &f.digest[..16]
                    ));
                }
            }
        }
        Ok(problems)
    }
}

/// Reads a stream whole, refusing more than `cap` bytes.
async fn read_capped<S, B>(mut stream: S, cap: u64) -> Result<Vec<u8>, RemoteError>
where
    S: futures_util::Stream<Item = object_store::Result<B>> + Unpin,
    B: AsRef<[u8]>,
{
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(chunk?.as_ref());
        if out.len() as u64 > cap {
            return Err(RemoteError::Rejected(format!(
                "its manifest is more than {cap} bytes"
            )));
        }
    }
    Ok(out)
}

/// A manifest from a remote, checked: it parses with safe names and consistent digests, it is
/// of this cache format, and its material hashes to `action`, the key it was fetched under.
/// Text that is only shown (stage, kind, warnings, input labels) loses control characters, so
/// a hostile manifest cannot drive the terminal.
pub fn check_manifest(bytes: &[u8], action: &str) -> Result<Manifest, RemoteError> {
    let mut m = Manifest::parse(bytes, action)
        .map_err(|why| RemoteError::Rejected(format!("its manifest cannot be used ({why})")))?;
    if m.format != CACHE_FORMAT {
        return Err(RemoteError::Rejected(format!(
            "its manifest is of cache format {}, this hone uses {CACHE_FORMAT}",
            m.format
        )));
    }
    let proved = action_key(&m.material);
    if proved != action {
        return Err(RemoteError::Rejected(format!(
            "its manifest does not prove its key: what it records hashes to {}, not {} (forged or damaged)",
            &proved[..16],
            &action[..16]
        )));
    }
    let total: u128 = m
        .outputs
        .values()
        .flat_map(|o| o.files.values())
        .map(|f| u128::from(f.size))
        .sum();
    if total > 1u128 << 42 {
        return Err(RemoteError::Rejected(format!(
            "its manifest records {total} bytes of outputs, more than 4 TiB"
        )));
    }
    // What is only shown is bounded too: a manifest is a few KiB of numbers and text.
    let summary = serde_json::to_vec(&m.summary).map_or(0, |v| v.len());
    let warnings: usize = m.warnings.iter().map(String::len).sum();
    if summary > MAX_SUMMARY_BYTES || warnings > MAX_SUMMARY_BYTES || m.metrics.len() > MAX_METRICS
    {
        return Err(RemoteError::Rejected(format!(
            "its manifest records a summary of {summary} bytes, warnings of {warnings} bytes and {} metrics; at most {MAX_SUMMARY_BYTES} bytes and {MAX_METRICS} metrics are believed",
            m.metrics.len()
        )));
    }
    let clean = |s: &mut String| s.retain(|c| !c.is_control());
    clean(&mut m.stage);
    clean(&mut m.kind);
    m.warnings.iter_mut().for_each(clean);
    m.input_labels.values_mut().for_each(clean);
    let metrics = std::mem::take(&mut m.metrics);
    m.metrics = metrics
        .into_iter()
        .map(|(mut k, mut v)| {
            clean(&mut k);
            printable(&mut v);
            (k, v)
        })
        .collect();
    printable(&mut m.summary);
    Ok(m)
}

/// Removes terminal control characters (escape sequences, bells; not newlines and tabs) from
/// every string in `v`, keys included: summaries are printed by `hone show`.
fn printable(v: &mut serde_json::Value) {
    let keep = |c: char| !c.is_control() || c == '\n' || c == '\t';
    match v {
        serde_json::Value::String(s) => s.retain(keep),
        serde_json::Value::Array(items) => items.iter_mut().for_each(printable),
        serde_json::Value::Object(map) => {
            let entries = std::mem::take(map);
            for (mut k, mut item) in entries {
                k.retain(keep);
                printable(&mut item);
                map.insert(k, item);
            }
        }
        _ => {}
    }
}

/// What [`push_many`] did.
#[derive(Debug, Default)]
pub struct PushReport {
    pub created: usize,
    pub already: usize,
    pub transfer: Transfer,
    pub conflicts: Vec<String>,
}

/// Pushes each manifest in turn; stops at the first failure to reach the remote.
pub fn push_many(remote: &Remote, store: &Store, manifests: &[Manifest]) -> Result<PushReport> {
    let mut report = PushReport::default();
    for m in manifests {
        let (pushed, t) = remote
            .push(store, m)
            .with_context(|| format!("cannot push stage `{}` to {}", m.stage, remote.label))?;
        report.transfer.blobs += t.blobs;
        report.transfer.bytes += t.bytes;
        report.transfer.seconds += t.seconds;
        match pushed {
            Pushed::Created => report.created += 1,
            Pushed::AlreadyThere => report.already += 1,
            Pushed::Conflict { remote: r, local } => report.conflicts.push(format!(
                "stage `{}`: the remote records output {} for this action, this store {} (first writer wins; is the stage deterministic?)",
                m.stage,
                &r[..16],
                &local[..16]
            )),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_options_are_recognised() {
        for k in [
            "aws_secret_access_key",
            "access_key_id",
            "AWS_SESSION_TOKEN",
            "azure_storage_account_key",
            "sas_token",
            "google_service_account_key",
        ] {
            assert!(is_secret_option(k), "{k}");
        }
        for k in ["endpoint", "region", "allow_http", "timeout", "bucket"] {
            assert!(!is_secret_option(k), "{k}");
        }
    }

    #[test]
    fn urls_with_credentials_or_unknown_schemes_are_refused() {
        assert!(parse_url("s3://bucket/prefix").is_ok());
        assert!(parse_url("file:///tmp/x").is_ok());
        let e = parse_url("https://user:pw@host/x").unwrap_err().to_string();
        assert!(e.contains("credentials"), "{e}");
        let e = parse_url("ftp://host/x").unwrap_err().to_string();
        assert!(e.contains("not supported"), "{e}");
        assert!(parse_url("bucket/prefix").is_err());
        assert_eq!(
            display_url("https://host/p?X-Amz-Signature=abc"),
            "https://host/p"
        );
    }

    #[test]
    fn forged_manifests_are_rejected() {
        let material = serde_json::json!({ "format": CACHE_FORMAT, "config": { "kind": "x" } });
        let key = action_key(&material);
        let m = Manifest {
            format: CACHE_FORMAT,
            action: key.clone(),
            stage: "s\u{1b}[31m".into(),
            kind: "x".into(),
            material: material.clone(),
            input_labels: BTreeMap::new(),
            outputs: BTreeMap::new(),
            metrics: serde_json::Map::new(),
            summary: serde_json::Value::Null,
            warnings: vec!["w\u{7}".into()],
            wall_time_s: 0.0,
            created_unix: 0,
            hone_version: "0".into(),
        };
        let mut shown = m.clone();
        shown.summary = serde_json::json!({ "note\u{1b}]0;x": ["a\u{1b}[2Jb\nc"] });
        let good = check_manifest(&serde_json::to_vec(&shown).unwrap(), &key).unwrap();
        assert_eq!(good.stage, "s[31m");
        assert_eq!(good.warnings, ["w"]);
        assert_eq!(
            good.summary,
            serde_json::json!({ "note]0;x": ["a[2Jb\nc"] })
        );
        // The same record under another key, as a forger would store a result elsewhere.
        let mut forged = m.clone();
        forged.material = serde_json::json!({ "format": CACHE_FORMAT, "config": { "kind": "y" } });
        let e = check_manifest(&serde_json::to_vec(&forged).unwrap(), &key).unwrap_err();
        assert!(e.to_string().contains("does not prove its key"), "{e}");
        let mut old = m.clone();
        old.format = CACHE_FORMAT - 1;
        old.material["format"] = serde_json::json!(CACHE_FORMAT - 1);
        old.action = action_key(&old.material);
        let e = check_manifest(&serde_json::to_vec(&old).unwrap(), &old.action).unwrap_err();
        assert!(e.to_string().contains("cache format"), "{e}");
    }
}
