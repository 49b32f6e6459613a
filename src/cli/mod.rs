//! The `hone` command line: one file per command (its arguments and its `run`), [`args`] for
//! what several share, and the terminal and JSON renderings of what the engine reports
//! ([`output`], `render`).

pub mod args;
mod artifact;
mod cache;
mod compare;
mod dag;
mod docs;
mod generate;
pub mod logging;
pub mod output;
mod plan;
pub(crate) mod render;
mod report;
mod run;
mod runs;
mod schema;
mod score;
mod show;
mod status;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::diag::Diagnostics;
use crate::spec::Registry;
use crate::spec::context::Cancelled;
use args::Globals;

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
HONE_SLURM_POLL (seconds between checks of `run --executor slurm --wait`; 5),
HONE_AMX (0: bf16 never multiplies on Intel AMX tiles, even where the CPU has them).";

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

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the stale stages of a recipe, in dependency order.
    Run(run::RunArgs),
    /// What `run` would do with the same arguments: each stage, cached or stale, and why.
    Plan(plan::PlanArgs),
    /// Each stage of a recipe: cached or stale, and why.
    Status(status::StatusArgs),
    /// Check a recipe (syntax, types, keys, references, cycles, files, contracts); run nothing.
    Validate(validate::ValidateArgs),
    /// Print the stage graph.
    Dag(dag::DagArgs),
    /// Print the JSON Schema of recipe files (editors use it for completion and checks).
    Schema(schema::SchemaArgs),
    /// Summary of a stage's artifact: metrics, warnings, rows and columns, first rows.
    ///
    /// `hone show RECIPE STAGE`, or `hone show STAGE` in a directory with one recipe lockfile.
    Show(show::ShowArgs),
    /// The runs of a recipe recorded in the store, oldest first: name, `--set` overrides, what
    /// ran, and the metrics of each stage it computed. Experiments (`run --set`) leave the
    /// lockfile alone; this is where they are found again.
    Runs(runs::RunsArgs),
    /// Results side by side: recipes (what their lockfiles record) or runs (RECIPE@RUN).
    ///
    /// `hone compare dpo.yaml ipo.yaml`, or after `hone run r.yaml --set stages.dpo.beta=0.3
    /// --name beta03`, `hone compare r.yaml r.yaml@beta03`: the stages with the same result in
    /// all are named once; every metric of a stage whose result differs is a row with a column
    /// per item. --html writes the table with those stages' loss curves overlaid.
    Compare(compare::CompareArgs),
    /// Write a self-contained HTML report of a recipe's last results: the DAG with each stage's
    /// status, wall times, metrics, training curves, evaluation tables and pitfall warnings.
    Report(report::ReportArgs),
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

/// Runs the CLI with the built-in stage kinds; returns the process exit code. Call it first
/// thing in `main` (it sets up the process: the CPU backend's threads and burn's default
/// device).
pub fn main() -> ExitCode {
    main_with(&crate::stages::registry())
}

/// Runs the CLI with the stage kinds of `kinds`: a program that adds its own kinds
/// (`stages::registry()`, then `register`) hands its registry here and is then a complete
/// `hone`.
pub fn main_with(kinds: &Registry) -> ExitCode {
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
    let globals = Globals {
        store: cli.store.as_deref(),
        quiet: cli.quiet,
        kinds,
    };
    match dispatch(&globals, &cli.command) {
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

fn dispatch(g: &Globals, command: &Command) -> Result<ExitCode> {
    match command {
        Command::Run(args) => run::run(g, args),
        Command::Plan(args) => plan::run(g, args),
        Command::Status(args) => status::run(g, args),
        Command::Validate(args) => validate::run(g, args),
        Command::Dag(args) => dag::run(g, args),
        Command::Schema(args) => schema::run(g, args),
        Command::Show(args) => show::run(g, args),
        Command::Runs(args) => runs::run(g, args),
        Command::Compare(args) => compare::run(g, args),
        Command::Report(args) => report::run(g, args),
        Command::Generate(args) => generate::run(g, args),
        Command::Score(args) => score::run(g, args),
        Command::Cache { command } => cache::run(g, command),
    }
}
