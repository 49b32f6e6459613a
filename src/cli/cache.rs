//! `hone cache`: the local store (list, disk usage, verify, gc) and the remote cache behind it
//! (push, pull, remote ls/verify), and how a command finds its remote: `--no-remote`, else
//! `--remote URL`, else `$HONE_REMOTE`, else the recipe's `cache:` block.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use super::args::{Globals, RecipeArgs};
use super::render;
use crate::recipe::Recipe;
use crate::spec::Registry;
use crate::store::Store;
use crate::store::lockfile::Lockfile;
use crate::store::remote::{self, Remote, RemoteError, RemoteSettings};

/// Where the remote cache is, for this command.
#[derive(Debug, Args, Default, Clone)]
pub struct RemoteArgs {
    /// The remote cache, overriding the recipe's `cache.remote` and $HONE_REMOTE:
    /// s3://bucket/prefix, gs://..., az://..., https://... (WebDAV), file:///dir.
    #[arg(long, global = true, value_name = "URL", conflicts_with = "no_remote")]
    pub remote: Option<String>,
    /// Use no remote cache, whatever the recipe and the environment say.
    #[arg(long, global = true)]
    pub no_remote: bool,
}

/// The remote this command uses, if any: `--no-remote`, else `--remote`, else `$HONE_REMOTE`,
/// else the recipe's `cache:`. `$HONE_REMOTE_WRITE` (`1`/`0`) overrides whether runs upload.
pub fn settings(args: &RemoteArgs, recipe: Option<&Recipe>) -> Result<Option<RemoteSettings>> {
    if args.no_remote {
        return Ok(None);
    }
    let from_env = std::env::var("HONE_REMOTE")
        .ok()
        .filter(|u| !u.trim().is_empty());
    let cache = recipe.map(|r| &r.header.cache);
    let mut s = match (args.remote.clone().or(from_env), cache) {
        (Some(url), _) => RemoteSettings {
            url,
            options: Default::default(),
            read: true,
            write: false,
        },
        (None, Some(c)) if c.remote.is_some() => RemoteSettings {
            url: c.remote.clone().expect("checked"),
            options: c.options.clone(),
            read: c.read,
            write: c.write,
        },
        _ => return Ok(None),
    };
    match std::env::var("HONE_REMOTE_WRITE").as_deref().map(str::trim) {
        Ok("1" | "true" | "yes") => s.write = true,
        Ok("0" | "false" | "no") => s.write = false,
        Ok("") | Err(_) => {}
        Ok(other) => bail!(
            "HONE_REMOTE_WRITE is `{}`; use 1 or 0",
            other.escape_debug()
        ),
    }
    Ok(Some(s))
}

/// Opens the remote of [`settings`]; a bad URL or option is an error, an unreachable server is
/// not (that shows when it is used).
pub fn open(args: &RemoteArgs, recipe: Option<&Recipe>) -> Result<Option<Arc<Remote>>> {
    Ok(match settings(args, recipe)? {
        Some(s) => Some(Arc::new(Remote::open(&s).with_context(|| {
            format!(
                "cannot use the remote cache {}",
                remote::display_url(&s.url)
            )
        })?)),
        None => None,
    })
}

fn require(args: &RemoteArgs, recipe: Option<&Recipe>) -> Result<Arc<Remote>> {
    open(args, recipe)?.context(
        "no remote cache: pass --remote URL, set HONE_REMOTE, or add `cache: { remote: URL }` to the recipe",
    )
}

fn push(
    store_flag: Option<&Path>,
    kinds: &Registry,
    args: &RecipeArgs,
    all: bool,
    remote_args: &RemoteArgs,
) -> Result<ExitCode> {
    let (recipe, _dag) = args.load(kinds)?;
    let remote = require(remote_args, Some(&recipe))?;
    let store = Store::open_existing(&Store::location(store_flag, Some(&recipe.path)))?;
    let manifests = if all {
        store.manifests()?
    } else {
        let lock = lockfile(&recipe)?;
        let mut out = Vec::new();
        for (stage, entry) in &lock.stages {
            match store.manifest(&entry.action)? {
                Some(m) => out.push(m),
                None => bail!(
                    "stage `{stage}` of {} is not in the local store {}; run the recipe first (or pull it)",
                    recipe.lockfile_path().display(),
                    store.root().display()
                ),
            }
        }
        out
    };
    // Blobs are checked before they leave: a damaged local blob must not become the team's.
    for m in &manifests {
        let problems = store.verify_manifest(m);
        if !problems.is_empty() {
            bail!(
                "the local store is damaged, nothing of stage `{}` was pushed:\n  {}\nrun `hone cache verify --repair`, then the recipe again",
                m.stage,
                problems.join("\n  ")
            );
        }
    }
    let r = remote::push_many(&remote, &store, &manifests)?;
    for c in &r.conflicts {
        println!("warning: {c}");
    }
    println!(
        "pushed {} actions to {} ({} already there): {} blobs, {} in {:.2}s",
        r.created,
        remote.label,
        r.already,
        r.transfer.blobs,
        render::bytes(r.transfer.bytes),
        r.transfer.seconds
    );
    Ok(ExitCode::SUCCESS)
}

fn lockfile(recipe: &Recipe) -> Result<Lockfile> {
    Lockfile::read(&recipe.lockfile_path())?.with_context(|| {
        format!(
            "{} has no lockfile ({}); run it first",
            recipe.path.display(),
            recipe.lockfile_path().display()
        )
    })
}

fn pull(
    store_flag: Option<&Path>,
    kinds: &Registry,
    args: &RecipeArgs,
    remote_args: &RemoteArgs,
) -> Result<ExitCode> {
    let (recipe, _dag) = args.load(kinds)?;
    let remote = require(remote_args, Some(&recipe))?;
    let lock = lockfile(&recipe)?;
    let store = Store::open(&Store::location(store_flag, Some(&recipe.path)))?;
    let _shared = store.lock_shared()?;
    let (mut pulled, mut present, mut bytes, mut seconds) = (0, 0, 0u64, 0.0);
    let mut missing = Vec::new();
    for (stage, entry) in &lock.stages {
        if store.has(&entry.action) {
            present += 1;
            continue;
        }
        let _lock = store.lock_action(&entry.action, || {})?;
        if store.has(&entry.action) {
            present += 1;
            continue;
        }
        let m = match remote.manifest(&entry.action) {
            Ok(Some(m)) => m,
            Ok(None) => {
                missing.push(format!("{stage}: the remote does not have it"));
                continue;
            }
            Err(e @ RemoteError::Unavailable(_)) => {
                return Err(anyhow::anyhow!("{e}"))
                    .context(format!("cannot pull from {}", remote.label));
            }
            Err(e) => {
                missing.push(format!("{stage}: {e}"));
                continue;
            }
        };
        if let Some(why) = entry.contradicts(&m) {
            missing.push(format!("{stage}: the remote's manifest: {why}"));
            continue;
        }
        match remote.pull(&store, &m) {
            Ok(t) => {
                println!(
                    "  pulled  {stage:<20} {:<9} {} {:.2}s",
                    m.kind,
                    render::bytes(t.bytes),
                    t.seconds
                );
                pulled += 1;
                bytes += t.bytes;
                seconds += t.seconds;
            }
            Err(e @ RemoteError::Unavailable(_)) => {
                return Err(anyhow::anyhow!("{e}"))
                    .context(format!("cannot pull from {}", remote.label));
            }
            Err(e) => missing.push(format!("{stage}: {e}")),
        }
    }
    println!(
        "pulled {pulled} actions from {} ({} in {seconds:.2}s), {present} already here",
        remote.label,
        render::bytes(bytes)
    );
    if !missing.is_empty() {
        println!("not pulled (`hone run` computes them):");
        for m in &missing {
            println!("  {m}");
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn remote_command(command: &RemoteCommand, args: &RemoteArgs) -> Result<ExitCode> {
    let remote = require(args, None)?;
    let unavailable = |e: RemoteError| anyhow::anyhow!("{}: {e}", remote.label);
    let keys = remote.actions().map_err(unavailable)?;
    let mut problems = Vec::new();
    let mut blobs = 0;
    for key in &keys {
        let m = match remote.manifest(key) {
            Ok(Some(m)) => m,
            Ok(None) => continue, // removed while listing
            Err(e @ RemoteError::Unavailable(_)) => return Err(unavailable(e)),
            Err(e) => {
                problems.push(format!("action {}: {e}", &key[..16]));
                continue;
            }
        };
        match command {
            RemoteCommand::Ls => {
                let size = m.total_bytes();
                println!(
                    "{}  {:<20} {:<9} {:>10}  hone {}",
                    &m.action[..16],
                    m.stage,
                    m.kind,
                    render::bytes(size),
                    m.hone_version.escape_debug()
                );
            }
            RemoteCommand::Verify { deep } => {
                blobs += m.outputs.values().map(|o| o.files.len()).sum::<usize>();
                problems.extend(remote.check_blobs(&m, *deep).map_err(unavailable)?);
            }
        }
    }
    if let RemoteCommand::Verify { deep } = command {
        for p in &problems {
            println!("corrupt: {p}");
        }
        // Without --deep a blob's content is not read: say so, since a same-size swap passes.
        let how = if *deep {
            "each downloaded and hashed"
        } else {
            "sizes only; --deep also hashes each"
        };
        println!(
            "verified {} actions, {blobs} blobs ({how}) on {}: {} problems",
            keys.len(),
            remote.label,
            problems.len()
        );
    } else {
        for p in &problems {
            println!("unusable  {p}");
        }
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List the actions in the store.
    Ls,
    /// Disk usage of the store.
    Du,
    /// Check every blob against its digest; exit 1 if anything is corrupt.
    Verify {
        /// Forget actions with missing or corrupt blobs, so the next run recomputes them.
        #[arg(long)]
        repair: bool,
    },
    /// Remove leftovers of interrupted runs and unreferenced blobs.
    Gc {
        /// Also drop every action not recorded in these recipes' lockfiles (repeatable).
        #[arg(long, value_name = "RECIPE")]
        keep: Vec<PathBuf>,
        /// Report what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Upload a recipe's results (the actions its lockfile records) to the remote cache:
    /// missing blobs first, each manifest last. With --all: every action in the store.
    Push {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Every action in the local store, not only the recipe's.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Download exactly the actions a recipe's lockfile records from the remote cache, checked,
    /// so a following `hone run --locked` computes nothing.
    Pull {
        #[command(flatten)]
        recipe: RecipeArgs,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Inspect the remote cache (`--remote URL`, else $HONE_REMOTE).
    Remote {
        #[command(subcommand)]
        command: RemoteCommand,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// List the actions the remote has: key, stage, kind, size, hone version.
    Ls,
    /// Check every remote manifest (it must prove its key) and that every blob it names is
    /// there at its size; exit 1 on any problem.
    Verify {
        /// Also download every blob and check its digest.
        #[arg(long)]
        deep: bool,
    },
}

pub fn run(g: &Globals, command: &CacheCommand) -> Result<ExitCode> {
    let store_flag = g.store;
    match command {
        CacheCommand::Push {
            recipe,
            all,
            remote,
        } => return push(store_flag, g.kinds, recipe, *all, remote),
        CacheCommand::Pull { recipe, remote } => return pull(store_flag, g.kinds, recipe, remote),
        CacheCommand::Remote { command, remote } => return remote_command(command, remote),
        _ => {}
    }
    let store = Store::open_existing(&Store::location(store_flag, None))?;
    match command {
        CacheCommand::Push { .. } | CacheCommand::Pull { .. } | CacheCommand::Remote { .. } => {
            unreachable!("handled above")
        }
        CacheCommand::Ls => {
            for m in store.manifests()? {
                let size = m.total_bytes();
                println!(
                    "{}  {:<20} {:<9} {:>10}  {}",
                    &m.action[..16],
                    m.stage,
                    m.kind,
                    render::bytes(size),
                    m.outputs.keys().cloned().collect::<Vec<_>>().join(",")
                );
            }
            let unusable = store.unusable_manifests()?;
            for (path, why) in &unusable {
                println!("unusable  {} ({why})", path.display());
            }
            if !unusable.is_empty() {
                println!(
                    "{} manifests cannot be used; `hone cache verify --repair` drops them",
                    unusable.len()
                );
            }
        }
        CacheCommand::Du => {
            let mut total = 0;
            for (area, (files, bytes)) in store.disk_usage()? {
                total += bytes;
                println!("{area:<8} {files:>7} files {:>10}", render::bytes(bytes));
            }
            println!(
                "{:<8} {:>7}       {:>10}",
                "total",
                "",
                render::bytes(total)
            );
        }
        CacheCommand::Verify { repair } => {
            let report = store.verify(*repair)?;
            for p in &report.problems {
                println!("corrupt: {p}");
            }
            for r in &report.reclaimable {
                println!("reclaimable: {r}");
            }
            println!(
                "verified {} actions, {} blobs, {} cache entries: {} problems, {} reclaimable{}",
                report.actions,
                report.blobs_checked,
                report.cache_entries_checked,
                report.problems.len(),
                report.reclaimable.len(),
                if report.reclaimable.is_empty() {
                    ""
                } else {
                    " (`hone cache gc` removes them)"
                }
            );
            if !report.problems.is_empty() {
                if *repair {
                    println!(
                        "repaired: the broken actions are forgotten and will be recomputed by the next run"
                    );
                } else {
                    println!("run `hone cache verify --repair` to forget the broken actions");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        CacheCommand::Gc { keep, dry_run } => {
            let keep_actions = if keep.is_empty() {
                None
            } else {
                let mut set = std::collections::BTreeSet::new();
                for r in keep {
                    let lock = r.with_extension("lock");
                    let l = crate::store::lockfile::Lockfile::read(&lock)?.with_context(|| {
                        format!(
                            "{} has no lockfile ({}); run it first",
                            r.display(),
                            lock.display()
                        )
                    })?;
                    set.extend(l.stages.into_values().map(|s| s.action));
                }
                Some(set)
            };
            let r = store.gc(keep_actions.as_ref(), *dry_run)?;
            println!(
                "{}{} actions, {} blobs ({}), {} leftovers, {} tokenized caches",
                if *dry_run {
                    "would remove "
                } else {
                    "removed "
                },
                r.actions_removed,
                r.blobs_removed,
                render::bytes(r.bytes_freed),
                r.scratch_removed,
                r.tokenized_removed
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
