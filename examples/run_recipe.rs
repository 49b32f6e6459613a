//! hone as a library: load a recipe with overrides, validate it, run it against a store, and
//! read the results (what ran, the evaluation table) from the run report and the store.
//!
//!     cargo run --release --example run_recipe -- recipes/full_vs_lora.yaml /tmp/hone-example
//!
//! The same as `hone run`, without the CLI: a program can sweep a setting and compare runs.

use std::path::PathBuf;

use hone::exec::{Outcome, RunOptions, run};
use hone::store::Store;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let recipe_path = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "recipes/full_vs_lora.yaml".into()),
    );
    let store_dir = PathBuf::from(args.next().unwrap_or_else(|| "/tmp/hone-example".into()));
    hone::backend::init_cpu();

    // Overrides are what `--set` takes: a sweep over the LoRA learning rate.
    for lr in ["0.01", "0.005"] {
        let recipe = hone::recipe::load(
            &recipe_path,
            &[format!("stages.lora.train.lr={lr}")],
            &hone::stages::registry(),
        )?;
        let dag = hone::plan::validate(&recipe)?;
        let store = Store::open(&store_dir)?;
        let backend = hone::backend::resolve(recipe.header.backend);
        let report = run(
            &recipe,
            &dag,
            &store,
            backend,
            &RunOptions {
                // A sweep's variants are experiments: the recipe's lockfile and exports stay as
                // they are.
                no_lockfile: true,
                no_publish: true,
                ..Default::default()
            },
            &mut hone::exec::observer::Silent,
        )?;
        println!(
            "lr {lr}: {} ran, {} cached in {:.1}s",
            report.count(Outcome::Ran),
            report.count(Outcome::Cached),
            report.wall_time_s
        );
        // Every stage's manifest holds its metrics; the evaluate stage's are the comparison.
        for s in report.stages.iter().filter(|s| s.kind == "evaluate") {
            let Some(action) = &s.action else { continue };
            if let Some(m) = store.manifest(action)? {
                for (k, v) in m.metrics.iter().filter(|(k, _)| k.ends_with("exact_match")) {
                    println!("  {k} = {v}");
                }
            }
        }
    }
    Ok(())
}
