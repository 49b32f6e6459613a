//! The `hone` command line.

mod artifact;
mod cache;
mod compare;
mod docs;
mod generate;
pub mod logging;
pub mod output;
pub(crate) mod render;
mod report;
mod runs;
mod score;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::backend::{self, BackendKind};
use crate::diag::Diagnostics;
use crate::exec::{self, RunOptions};
use crate::plan::Selection;
use crate::plan::dag::Dag;
use crate::plan::status::Evaluator;
use crate::recipe::{self, Recipe, types::BackendChoice};
use crate::stages::context::Cancelled;
use crate::store::Store;

const ABOUT: &str = "Run LLM fine-tuning pipelines written as YAML recipes.

A recipe is a DAG of stages (datasets, pretraining, SFT, reward models, DPO, PPO, evaluation,
export). hone validates the whole recipe first, runs the stages in dependency order, caches every
artifact by content in the project's store (.hone/ at the project root: the nearest directory
up from the recipe with a .hone/ store or a hone.toml, else the repository root), and writes
<recipe>.lock so a rerun does only what changed.";

const AFTER: &str = "Examples:
  hone validate recipes/quickstart.yaml          check a recipe without running anything
  hone status recipes/quickstart.yaml            what is cached, what is stale and why
  hone run recipes/quickstart.yaml               run what is stale
  hone run r.yaml --set stages.sft.train.lr=1e-4 --name lr-1e-4
                                                 an experiment: lockfile and dist/ untouched
  hone runs r.yaml                               past runs: names, overrides, metrics
  hone run r.yaml --only corpus --force corpus   rerun one stage regardless of the cache
  hone dag r.yaml --format mermaid               draw the stage graph
  hone show r.yaml corpus                        an artifact's summary and first rows
  HONE_REMOTE=s3://team/hone hone run r.yaml     take what a teammate pushed, compute the rest
  hone cache push r.yaml --remote s3://team/hone publish this recipe's results
  hone run r.yaml --executor slurm --wait        each stale stage a Slurm job; follow them

Exit codes: 0 success, 1 a stage or the store failed, 2 invalid recipe, data or arguments,
130 interrupted (Ctrl-C; nothing half-written is kept, rerun to continue).
Environment: HONE_STORE (store location), RUST_LOG (log filter, e.g. hone=debug),
HONE_PROGRESS_INTERVAL (seconds between progress lines when stderr is not a terminal; 10),
HONE_REMOTE (a remote cache URL: s3://bucket/prefix, gs://, az://, https://, file:///dir),
HONE_REMOTE_WRITE (1: upload what runs compute; 0: never), AWS_* / GOOGLE_* / AZURE_*
(the remote's endpoint, region and credentials, as object_store reads them),
HONE_SLURM_POLL (seconds between checks of `run --executor slurm --wait`; 5).";

#[derive(Debug, Parser)]
#[command(name = "hone", version, about = ABOUT, after_help = AFTER)]
pub struct Cli {
    /// Store directory (default: $HONE_STORE, else the project's .hone/: in the nearest
    /// directory up from the recipe that holds a .hone/ store or a hone.toml, else in the
    /// repository root, else beside the recipe).
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    /// No progress bars or per-stage lines (errors, and `--log-format json` events, still print).
    #[arg(long, short, global = true)]
    quiet: bool,
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(long, short, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct RecipeArgs {
    /// The recipe file.
    recipe: PathBuf,
    /// Override any key, YAML-typed: --set stages.sft.train.lr=1e-4, --set vars.lr=1e-4.
    #[arg(long = "set", value_name = "PATH=VALUE")]
    set: Vec<String>,
    /// Tensor backend, overriding the recipe's `backend:`.
    #[arg(long, value_name = "auto|cpu|wgpu|cuda")]
    backend: Option<BackendChoice>,
}

#[derive(Debug, Args, Default)]
struct SelectArgs {
    /// Only these stages (repeatable); their inputs must be cached.
    #[arg(long, value_name = "STAGE")]
    only: Vec<String>,
    /// This stage and everything downstream of it.
    #[arg(long, value_name = "STAGE")]
    from: Option<String>,
    /// This stage and everything it depends on.
    #[arg(long, value_name = "STAGE")]
    until: Option<String>,
    /// Rerun this stage even if cached (repeatable); downstream reruns only if its output changes.
    #[arg(long, value_name = "STAGE")]
    force: Vec<String>,
}

impl SelectArgs {
    fn selection(&self) -> Selection {
        Selection {
            only: self.only.clone(),
            from: self.from.clone(),
            until: self.until.clone(),
            force: self.force.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the stale stages of a recipe, in dependency order.
    Run {
        #[command(flatten)]
        recipe: RecipeArgs,
        #[command(flatten)]
        select: SelectArgs,
        /// Fail, before running anything, if the run would change the lockfile.
        #[arg(long)]
        locked: bool,
        /// With --set: record this run in the recipe's lockfile and publish its exports. A run
        /// with --set is otherwise an experiment: its artifacts land in the store and its run
        /// directory (`hone runs`), and the lockfile and `dist/` keep the recipe's own.
        #[arg(long, conflicts_with = "locked")]
        update_lock: bool,
        /// A name for this run, shown by `hone runs` (e.g. `ipo-beta-0.3`).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Re-read every input file instead of trusting the (size, mtime, inode) digest cache.
        #[arg(long)]
        rehash: bool,
        /// How the run is shown: `text` (lines and progress bars) or `json` (one event a line
        /// on stdout, for tools and CI logs).
        #[arg(long, value_enum, default_value_t, value_name = "FORMAT")]
        log_format: output::LogFormat,
        #[command(flatten)]
        remote: cache::RemoteArgs,
        /// Where the stages run: `local` (here) or `slurm` (each stale stage a Slurm job,
        /// chained by dependencies); overrides the recipe's `executor.kind`.
        #[arg(long, value_enum, value_name = "local|slurm")]
        executor: Option<recipe::types::ExecutorKind>,
        /// With --executor slurm: follow the jobs until the pipeline ends, and exit with its
        /// result (failed jobs' logs are named).
        #[arg(long)]
        wait: bool,
        /// Inside a Slurm job: run the selected stage and leave the lockfile and exports to the
        /// final job.
        #[arg(long, hide = true)]
        stage_job: bool,
    },
    /// What `run` would do with the same arguments: each stage, cached or stale, and why.
    Plan {
        #[command(flatten)]
        recipe: RecipeArgs,
        #[command(flatten)]
        select: SelectArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        rehash: bool,
        #[command(flatten)]
        remote: cache::RemoteArgs,
    },
    /// Each stage of a recipe: cached or stale, and why.
    Status {
        #[command(flatten)]
        recipe: RecipeArgs,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        rehash: bool,
        #[command(flatten)]
        remote: cache::RemoteArgs,
    },
    /// Check a recipe (syntax, types, keys, references, cycles, files, contracts); run nothing.
    Validate {
        #[command(flatten)]
        recipe: RecipeArgs,
    },
    /// Print the stage graph.
    Dag {
        #[command(flatten)]
        recipe: RecipeArgs,
        #[arg(long, value_enum, default_value_t = DagFormat::Ascii)]
        format: DagFormat,
    },
    /// Print the JSON Schema of recipe files (editors use it for completion and checks).
    Schema {
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// The recipe reference as Markdown (docs/recipe-reference.md) instead of JSON Schema.
        #[arg(long)]
        markdown: bool,
    },
    /// Summary of a stage's artifact: metrics, warnings, rows and columns, first rows.
    ///
    /// `hone show RECIPE STAGE`, or `hone show STAGE` in a directory with one recipe lockfile.
    Show {
        /// [RECIPE] STAGE
        #[arg(num_args = 1..=2, required = true, value_name = "[RECIPE] STAGE")]
        args: Vec<String>,
        #[arg(long, value_name = "K=V")]
        set: Vec<String>,
        /// The full manifest as JSON.
        #[arg(long)]
        json: bool,
        /// Instead of the stage's result: its first N training examples exactly as it encodes
        /// them (template, special tokens, truncation), the text the loss covers in [[ ]]
        /// (sft, dpo; what the stage reads must have run).
        #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "3")]
        examples: Option<usize>,
    },
    /// The runs of a recipe recorded in the store, oldest first: name, `--set` overrides, what
    /// ran, and the metrics of each stage it computed. Experiments (`run --set`) leave the
    /// lockfile alone; this is where they are found again.
    Runs {
        /// The recipe file.
        recipe: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Results side by side: recipes (what their lockfiles record) or runs (RECIPE@RUN).
    ///
    /// `hone compare dpo.yaml ipo.yaml`, or after `hone run r.yaml --set stages.dpo.beta=0.3
    /// --name beta03`, `hone compare r.yaml r.yaml@beta03`: the stages with the same result in
    /// all are named once; every metric of a stage whose result differs is a row with a column
    /// per item. --html writes the table with those stages' loss curves overlaid.
    Compare {
        /// Recipes, or runs of one as RECIPE@RUN (a run's --name, or its id from `hone runs`).
        #[arg(num_args = 2.., required = true, value_name = "RECIPE[@RUN]")]
        items: Vec<String>,
        /// Also write an HTML page with the table and overlaid loss curves.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Write a self-contained HTML report of a recipe's last results: the DAG with each stage's
    /// status, wall times, metrics, training curves, evaluation tables and pitfall warnings.
    Report {
        #[command(flatten)]
        recipe: RecipeArgs,
        /// Where to write it (default: <recipe>.report.html beside the recipe).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Generate text with a model: an HF directory or a .gguf file.
    ///
    /// Chat models get their own chat template (or ChatML); --raw sends the prompt as is.
    Generate(generate::GenerateArgs),
    /// Score responses to a prompt with a reward model (highest first).
    ///
    /// `hone score --model recipes/reward_minilm.yaml:rm --prompt "Which country owns
    /// Antarctica?" --response "..." --response "..."`
    Score(score::ScoreArgs),
    /// Inspect and maintain the store, and share it through a remote cache (push, pull,
    /// remote ls/verify).
    Cache {
        #[command(subcommand)]
        command: cache::CacheCommand,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DagFormat {
    Ascii,
    Mermaid,
    Dot,
}

/// Runs the CLI; returns the process exit code. Call it first thing in `main` (it sets up the
/// process: the CPU backend's threads and burn's default device). A program that registers
/// its own stage kinds (`stages::kind::register`) registers them first and is then a complete `hone`.
pub fn main() -> ExitCode {
    // burn puts a few things on its *default* device (a restored optimizer state, before the
    // next step moves it to the parameters' device); with wgpu compiled in that default is a
    // GPU, whose start-up is slow and fails on machines without Vulkan. hone names its devices
    // explicitly everywhere else, so the CPU is the right default.
    if std::env::var_os("BURN_DEVICE").is_none() {
        // SAFETY: called at the start of `main`, before hone starts any thread.
        unsafe { std::env::set_var("BURN_DEVICE", "flex") };
    }
    quiet_on_closed_pipe();
    crate::backend::init_cpu();
    let cli = Cli::parse();
    logging::init(cli.verbose);
    match dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            if e.downcast_ref::<Cancelled>().is_some()
                || e.chain().any(|c| c.downcast_ref::<Cancelled>().is_some())
            {
                // What the interrupted stage kept (a training stage says which checkpoint).
                for note in e
                    .chain()
                    .take_while(|c| c.downcast_ref::<Cancelled>().is_none())
                {
                    eprintln!("{note}");
                }
                eprintln!("interrupted: completed stages are committed; run again to continue");
                return ExitCode::from(130);
            }
            if let Some(d) = e.chain().find_map(|c| c.downcast_ref::<Diagnostics>()) {
                let context: Vec<String> = e
                    .chain()
                    .take_while(|c| c.downcast_ref::<Diagnostics>().is_none())
                    .map(ToString::to_string)
                    .collect();
                for c in &context {
                    eprintln!("{c}");
                }
                eprintln!("{d}");
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Rust ignores SIGPIPE, so writing to a pipe whose reader has gone (`hone show ... | head`)
/// fails, and `println!` panics with "Broken pipe". Restoring the default action ends hone
/// quietly there instead, as other command-line tools end; a run cut short this way keeps
/// what it committed (commits are atomic) and continues on the next `hone run`.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: sets one signal disposition at the start of `main`, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Loads and validates; exits with the diagnostics (code 2) on failure.
fn load(args: &RecipeArgs) -> Result<(Recipe, Dag)> {
    let mut recipe = recipe::load(&args.recipe, &args.set)?;
    if let Some(b) = args.backend {
        recipe.header.backend = b;
    }
    let dag = recipe::validate(&recipe)?;
    Ok((recipe, dag))
}

/// Installs the Ctrl-C handler: the first press stops after cleaning up, the second exits now
/// (still safe: commits are atomic).
fn install_ctrlc_handler() {
    use std::sync::atomic::Ordering;
    let _ = ctrlc::set_handler(|| {
        if crate::stages::context::CANCELLED.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: exiting now");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: stopping after cleaning up (press Ctrl-C again to exit at once)");
    });
}

fn dispatch(cli: &Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Run {
            recipe: args,
            select,
            locked,
            update_lock,
            name,
            rehash,
            log_format,
            remote: remote_args,
            executor,
            wait,
            stage_job,
        } => {
            let (recipe, dag) = load(args)?;
            let remote = cache::open(remote_args, Some(&recipe))?;
            let executor = executor.unwrap_or(recipe.header.executor.kind);
            if executor == recipe::types::ExecutorKind::Slurm && !*stage_job {
                if !select.force.is_empty() {
                    bail!(
                        "--force is not supported with --executor slurm: run the forced stage with --executor local"
                    );
                }
                let lockfile = LockfileArgs {
                    locked: *locked,
                    update_lock: *update_lock,
                    name: name.clone(),
                };
                if let Some(code) = slurm_submit(
                    cli,
                    args,
                    select,
                    remote_args,
                    &lockfile,
                    &recipe,
                    &dag,
                    *wait,
                )? {
                    return Ok(code);
                }
            } else if *wait {
                bail!("--wait follows Slurm jobs: use it with --executor slurm");
            }
            let store = Store::open(&Store::location(cli.store.as_deref(), Some(&recipe.path)))?;
            install_ctrlc_handler();
            let experiment = (!recipe.overrides.is_empty() && !*update_lock) || *stage_job;
            let opts = RunOptions {
                selection: select.selection(),
                locked: *locked,
                rehash: *rehash,
                no_lockfile: experiment,
                no_publish: experiment,
                name: name.clone(),
                remote,
            };
            let mut observer: Box<dyn exec::observer::Observer> = match log_format {
                output::LogFormat::Text => Box::new(output::Terminal::new(cli.quiet)),
                output::LogFormat::Json => Box::new(output::JsonLines::new()),
            };
            exec::run(
                &recipe,
                &dag,
                &store,
                backend::resolve(recipe.header.backend),
                &opts,
                observer.as_mut(),
            )?;
            if experiment && !cli.quiet {
                eprintln!(
                    "experiment (--set): {} and exports left as they were; `hone runs {}` lists it, --update-lock records it",
                    recipe.lockfile_path().display(),
                    recipe.path.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan {
            recipe: args,
            select,
            json,
            rehash,
            remote,
        } => {
            let (recipe, dag) = load(args)?;
            let selection = select.selection();
            let selected = selection.resolve(&recipe, &dag)?;
            status_like(
                cli, &recipe, &dag, &selected, &selection, *json, *rehash, true, remote,
            )
        }
        Command::Status {
            recipe: args,
            json,
            rehash,
            remote,
        } => {
            let (recipe, dag) = load(args)?;
            let selected = (0..recipe.stages.len()).collect();
            status_like(
                cli,
                &recipe,
                &dag,
                &selected,
                &Selection::default(),
                *json,
                *rehash,
                false,
                remote,
            )
        }
        Command::Validate { recipe: args } => {
            let (recipe, dag) = load(args)?;
            let files = recipe
                .stages
                .iter()
                .flat_map(|s| s.spec.inputs())
                .filter(|(_, i)| matches!(i, recipe::types::Input::Source(_)))
                .count();
            println!(
                "{}: valid ({} stages, {} edges, {} source inputs)",
                recipe.path.display(),
                recipe.stages.len(),
                dag.graph.edge_count(),
                files
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Dag {
            recipe: args,
            format,
        } => {
            let (recipe, dag) = load(args)?;
            let text = match format {
                DagFormat::Ascii => render::dag_ascii(&recipe, &dag),
                DagFormat::Mermaid => render::dag_mermaid(&recipe, &dag),
                DagFormat::Dot => render::dag_dot(&recipe, &dag),
            };
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema { output, markdown } => {
            let text = if *markdown {
                docs::markdown(&recipe::json_schema())
            } else {
                format!(
                    "{}\n",
                    serde_json::to_string_pretty(&recipe::json_schema())?
                )
            };
            match output {
                Some(p) => crate::store::write_atomic(p, text.as_bytes())?,
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            recipe: args,
            output,
        } => {
            let (recipe, dag) = load(args)?;
            let root = Store::location(cli.store.as_deref(), Some(&recipe.path));
            let store = Store::open_existing(&root)?;
            let backend: BackendKind = backend::resolve(recipe.header.backend);
            let mut eval = Evaluator::new(&recipe, &dag, &store, backend, false)?;
            let all: std::collections::BTreeSet<usize> = (0..recipe.stages.len()).collect();
            let statuses = eval.statuses(&all, &|_| false)?;
            let html = report::render(&recipe, &dag, &store, &statuses)?;
            let out = output
                .clone()
                .unwrap_or_else(|| recipe.path.with_extension("report.html"));
            report::write(&html, &out)?;
            println!("wrote {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Compare { items, html, json } => {
            let c = compare::compare(items, cli.store.as_deref())?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print!("{}", compare::render(&c));
            }
            if let Some(out) = html {
                report::write(&compare::html(&c), out)?;
                println!("wrote {}", out.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs { recipe: path, json } => {
            // Any run of the recipe counts, whatever it overrode: no overrides here.
            let recipe = recipe::load(path, &[])?;
            let root = Store::location(cli.store.as_deref(), Some(&recipe.path));
            let rows = runs::list(&root, &recipe.header.name)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", runs::render(&recipe.path, &root, &rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show {
            args,
            set,
            json,
            examples,
        } => {
            let (recipe_path, stage) = match args.as_slice() {
                [stage] => (find_recipe()?, stage.clone()),
                [r, stage] => (PathBuf::from(r), stage.clone()),
                _ => unreachable!("clap enforces 1..=2 arguments"),
            };
            let rargs = RecipeArgs {
                recipe: recipe_path,
                set: set.clone(),
                backend: None,
            };
            let (recipe, dag) = load(&rargs)?;
            let store =
                Store::open_existing(&Store::location(cli.store.as_deref(), Some(&recipe.path)))?;
            match examples {
                Some(n) => {
                    let backend = crate::backend::resolve(recipe.header.backend);
                    let shown =
                        crate::exec::preview_examples(&recipe, &dag, &store, backend, &stage, *n)?;
                    if *json {
                        println!("{}", serde_json::to_string_pretty(&shown)?);
                    } else {
                        print!("{}", render::examples(&stage, &shown));
                    }
                }
                None => render::show(&recipe, &dag, &store, &stage, *json)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cache { command } => cache::run(cli.store.as_deref(), command),
        Command::Generate(args) => generate::run(args, cli.store.as_deref()),
        Command::Score(args) => score::run(args, cli.store.as_deref()),
    }
}

/// `hone status` after `run --executor slurm`: the job of each stage not cached yet.
fn slurm_jobs(store: &Store, recipe: &Recipe, statuses: &mut [crate::plan::status::StageStatus]) {
    use crate::exec::slurm;
    use crate::plan::status::{JobView, State};
    let Some(submission) = slurm::last_submission(store, &recipe.path) else {
        return;
    };
    let pending: Vec<&slurm::Job> = submission
        .jobs
        .iter()
        .filter(|j| {
            statuses
                .iter()
                .any(|s| s.stage == j.stage && s.state != State::Cached)
        })
        .collect();
    if pending.is_empty() {
        return;
    }
    let states = match slurm::states(&pending) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warning: cannot ask Slurm about the recipe's jobs: {e:#}");
            return;
        }
    };
    for job in pending {
        if let (Some(s), Some(st)) = (
            statuses.iter_mut().find(|s| s.stage == job.stage),
            states.get(&job.id),
        ) {
            s.job = Some(JobView {
                id: job.id.clone(),
                state: st.state.clone(),
                reason: st.reason.clone(),
                description: st.describe(),
                log: job.log.clone(),
            });
        }
    }
}

/// What `run` was asked to do with the lockfile, which the Slurm executor's final job does.
struct LockfileArgs {
    locked: bool,
    update_lock: bool,
    name: Option<String>,
}

/// `run --executor slurm`: submits the stale stages as jobs (see `exec::slurm`). `None` when
/// every stage is cached: the run then goes on here (it only writes the lockfile).
#[allow(clippy::too_many_arguments)]
fn slurm_submit(
    cli: &Cli,
    args: &RecipeArgs,
    select: &SelectArgs,
    remote: &cache::RemoteArgs,
    lockfile: &LockfileArgs,
    recipe: &Recipe,
    dag: &Dag,
    wait: bool,
) -> Result<Option<ExitCode>> {
    use crate::exec::slurm;
    let store = Store::open(&Store::location(cli.store.as_deref(), Some(&recipe.path)))?;
    let backend: BackendKind = backend::resolve(recipe.header.backend);
    let selection = select.selection();
    let selected = selection.resolve(recipe, dag)?;
    let mut eval = Evaluator::new(recipe, dag, &store, backend, false)?;
    if lockfile.locked {
        // Before anything is submitted, as a local run checks before anything runs.
        crate::exec::check_locked(&mut eval, &selected)?;
    }
    let statuses = eval.statuses(&selected, &|_| false)?;
    eval.hashes.save().ok();
    let mut final_args = Vec::new();
    for s in &select.only {
        final_args.extend(["--only".to_owned(), s.clone()]);
    }
    if let Some(s) = &select.from {
        final_args.extend(["--from".to_owned(), s.clone()]);
    }
    if let Some(s) = &select.until {
        final_args.extend(["--until".to_owned(), s.clone()]);
    }
    if lockfile.locked {
        final_args.push("--locked".into());
    }
    if lockfile.update_lock {
        final_args.push("--update-lock".into());
    }
    if let Some(n) = &lockfile.name {
        final_args.extend(["--name".to_owned(), n.clone()]);
    }
    let mut forward = Vec::new();
    for s in &args.set {
        forward.extend(["--set".to_owned(), s.clone()]);
    }
    if args.backend.is_some() {
        // The backend this run resolved: every job computes on it.
        forward.extend(["--backend".to_owned(), backend.name().to_owned()]);
    }
    if let Some(url) = &remote.remote {
        forward.extend(["--remote".to_owned(), url.clone()]);
    }
    if remote.no_remote {
        forward.push("--no-remote".into());
    }
    let opts = slurm::SlurmOptions {
        hone: std::env::current_exe().context("cannot find this hone's path for the jobs")?,
        forward,
        final_args,
        gpu_backend: backend != BackendKind::Cpu,
    };
    let quiet = cli.quiet;
    let mut say = |line: &str| {
        if !quiet {
            println!("{line}");
        }
    };
    let Some(submission) = slurm::submit(recipe, dag, &store, &statuses, &opts, &mut say)? else {
        say(&format!(
            "{}: every stage is cached; nothing to submit",
            recipe.path.display()
        ));
        return Ok(None);
    };
    let submitted = submission.jobs.iter().filter(|j| !j.found).count();
    say(&format!(
        "{}: {submitted} jobs submitted, {} already queued; `hone status {}` follows them",
        recipe.path.display(),
        submission.jobs.len() - submitted,
        recipe.path.display()
    ));
    if !wait {
        return Ok(Some(ExitCode::SUCCESS));
    }
    let poll = std::env::var("HONE_SLURM_POLL")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs_f64,
        );
    let ok = slurm::wait(&submission, poll, &mut say)?;
    say(&format!(
        "{}: {}",
        recipe.path.display(),
        if ok {
            "every job completed; the lockfile is written"
        } else {
            "the pipeline did not complete (see the failed jobs above)"
        }
    ));
    Ok(Some(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }))
}

#[allow(clippy::too_many_arguments)]
fn status_like(
    cli: &Cli,
    recipe: &Recipe,
    dag: &Dag,
    selected: &std::collections::BTreeSet<usize>,
    selection: &Selection,
    json: bool,
    rehash: bool,
    is_plan: bool,
    remote: &cache::RemoteArgs,
) -> Result<ExitCode> {
    let root = Store::location(cli.store.as_deref(), Some(&recipe.path));
    // Planning never creates a store: an absent one is planned against as an empty one.
    let empty = tempfile::tempdir()?;
    let store = Store::open(if root.join("FORMAT").is_file() {
        &root
    } else {
        empty.path()
    })?;
    let backend: BackendKind = backend::resolve(recipe.header.backend);
    let mut eval = Evaluator::new(recipe, dag, &store, backend, rehash)?;
    let mut statuses = eval.statuses(selected, &|s| selection.forced(s))?;
    eval.hashes.save().ok();
    // What a run would pull, found as the run finds it (keys downstream of a remote hit come
    // from its manifest). Only stages missing here are looked up, so a fully cached recipe
    // costs the remote nothing.
    let missing = statuses
        .iter()
        .any(|s| s.selected && s.state != crate::plan::status::State::Cached);
    if missing && let Some(remote) = cache::open(remote, Some(recipe))?.filter(|r| r.read) {
        let hits = exec::remote_hits::find(
            recipe,
            dag,
            &store,
            &mut eval,
            selected,
            &|s| selection.forced(s),
            &remote,
            &mut output::StderrWarnings,
        )?;
        for i in hits.hits.keys() {
            if let Some(s) = statuses
                .iter_mut()
                .find(|s| s.stage == recipe.stages[*i].name)
                && s.selected
            {
                s.on_remote = true;
                s.action = Some(hits.hits[i].action.clone());
                s.pull_bytes = hits.pull.contains(i).then(|| hits.hits[i].total_bytes());
            }
        }
    }
    if !is_plan {
        slurm_jobs(&store, recipe, &mut statuses);
    }
    let drift = (!is_plan).then(|| eval.lockfile_drift(&statuses));
    if json {
        // Each stage says whether `run --locked` would pass for it, as the text's last line does.
        for (stage, why) in drift.iter().flatten() {
            if let Some(s) = statuses.iter_mut().find(|s| &s.stage == stage) {
                s.lockfile_drift = Some(why.clone());
            }
        }
        println!("{}", serde_json::to_string_pretty(&statuses)?);
    } else {
        render::statuses(recipe, &statuses, is_plan, drift.as_deref());
    }
    Ok(ExitCode::SUCCESS)
}

/// The recipe of `hone show STAGE`: `$HONE_RECIPE`, else the one recipe in the working
/// directory that has a lockfile.
fn find_recipe() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("HONE_RECIPE") {
        return Ok(PathBuf::from(p));
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(".")? {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "yaml" || e == "yml")
            && p.with_extension("lock").is_file()
        {
            found.push(p);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no recipe with a lockfile in this directory: use `hone show RECIPE STAGE`"),
        many => bail!(
            "several recipes here ({}): use `hone show RECIPE STAGE`",
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
