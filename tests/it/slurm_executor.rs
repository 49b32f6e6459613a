//! `hone run --executor slurm` on a real single-node Slurm cluster started here (slurmctld,
//! slurmd, munge): the quickstart through Slurm ends with the lockfile a local run writes; a
//! failed stage cancels what depends on it and `status` says which; a second submit while
//! jobs are queued submits nothing; a submit after a partial run submits only what is stale.

use crate::common::{
    Project, Run, car_lm_stages, lock_results, quickstart_recipe, run_with_env, two_dataset_project,
};
use crate::services::SlurmCluster;

fn with_env(p: &Project, args: &[&str], env: &[(&str, String)]) -> Run {
    let mut env = env.to_vec();
    env.push(("HONE_SLURM_POLL", "0.5".into()));
    run_with_env(p, args, &env)
}

/// Checks what `run` printed, whole, against snapshot `slurm_<name>`, job ids filtered.
fn printed(p: &Project, run: &Run, name: &str) {
    let mut s = crate::common::snapshots(p);
    s.add_filter(r"job \d+", "job [JOB]");
    s.add_filter(r"\bafter(ok:| )\d+", "after$1[JOB]");
    s.bind(|| insta::assert_snapshot!(format!("slurm_{name}"), run.transcript()));
}

/// Lines of `out` that name `stage` in its column and contain `words`.
fn says(out: &str, stage: &str, words: &str) -> bool {
    out.lines()
        .any(|l| l.split_whitespace().any(|w| w == stage) && l.contains(words))
}

#[test]
fn the_quickstart_through_slurm_ends_with_the_lockfile_of_a_local_run() {
    let cluster = SlurmCluster::start();
    let env = cluster.env();
    let local = Project::new();
    local.write("quickstart.yaml", &quickstart_recipe());
    local.hone(&["run", "quickstart.yaml"]).ok();

    let p = Project::new();
    p.write("quickstart.yaml", &quickstart_recipe());
    let run = with_env(
        &p,
        &["run", "quickstart.yaml", "--executor", "slurm", "--wait"],
        &env,
    );
    let out = run.ok();
    assert_eq!(
        out.matches("  submitted ").count(),
        14,
        "13 stages and the final job: {out}"
    );
    assert!(out.contains("every job completed"), "{out}");
    assert_eq!(
        lock_results(&p, "quickstart.lock"),
        lock_results(&local, "quickstart.lock")
    );
    assert!(p.path("quickstart.report.html").is_file());
    assert!(p.path("dist/car-assistant/model.safetensors").is_file());
    let again = p.hone(&["run", "quickstart.yaml", "--locked"]);
    assert!(
        again.ok().contains("0 ran, 13 cached"),
        "{}",
        again.stdout()
    );
    // Submitting a fully cached recipe submits nothing.
    let none = with_env(&p, &["run", "quickstart.yaml", "--executor", "slurm"], &env);
    none.ok();
    assert!(
        none.stdout()
            .contains("every stage is cached; nothing to submit"),
        "{}",
        none.stdout()
    );
}

#[test]
fn a_failed_stage_cancels_its_dependants_and_status_says_which() {
    let cluster = SlurmCluster::start();
    let env = cluster.env();
    let p = two_dataset_project();
    // `qa` selects a column its data lacks: valid as written, it fails when it runs.
    let recipe = std::fs::read_to_string(p.path("r.yaml")).unwrap().replacen(
        "    split: { validation: 0.2 }\n",
        "    split: { validation: 0.2 }\n    select: [no_such_column]\n",
        1,
    );
    p.write("r.yaml", &recipe);
    let run = with_env(
        &p,
        &["run", "r.yaml", "--executor", "slurm", "--wait"],
        &env,
    );
    let out = run.stdout();
    assert_eq!(run.code(), 1, "{out}{}", run.stderr());
    assert!(says(&out, "qa", "failed; log: "), "{out}");
    assert!(
        says(&out, "qa_clean", "cancelled (a job it depends on failed)"),
        "{out}"
    );
    assert!(says(&out, "reviews", "completed"), "{out}");
    assert!(out.contains("did not complete"), "{out}");
    let log = out
        .lines()
        .find(|l| says(l, "qa", "failed"))
        .and_then(|l| l.split("log: ").nth(1))
        .unwrap()
        .trim()
        .to_owned();
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("no_such_column"), "{log_text}");

    let status = with_env(&p, &["status", "r.yaml"], &env).ok();
    assert!(
        status
            .lines()
            .any(|l| l.contains("failed") && l.contains(" qa ") && l.contains("slurm job")),
        "{status}"
    );
    assert!(
        status.lines().any(|l| l.contains("cancel")
            && l.contains("qa_clean")
            && l.contains("depends on failed")),
        "{status}"
    );
    assert!(says(&status, "reviews", "cached"), "{status}");
}

#[test]
fn resubmits_find_queued_jobs_and_a_partial_run_submits_only_what_is_stale() {
    let cluster = SlurmCluster::start();
    let env = cluster.env();
    let p = two_dataset_project();
    // `reviews` already ran here: only `qa` and `qa_clean` are stale.
    p.hone(&["run", "r.yaml", "--only", "reviews"]).ok();
    // Held jobs stay queued, so the second submit meets them.
    // What each job asks for: a stage's own `resources`, over the kind's `defaults`.
    let recipe = std::fs::read_to_string(p.path("r.yaml"))
        .unwrap()
        .replacen(
            "stages:\n",
            "executor: { kind: slurm, sbatch_args: [--hold] }\ndefaults: { dataset: { resources: { time: \"0:20:00\" } } }\nstages:\n",
            1,
        )
        .replacen(
            "    split: { validation: 0.2 }\n",
            "    split: { validation: 0.2 }\n    resources: { mem: 300M, cpus: 1 }\n",
            1,
        );
    p.write("r.yaml", &recipe);
    let first_run = with_env(&p, &["run", "r.yaml"], &env);
    let first = first_run.ok();
    printed(&p, &first_run, "submit_only_what_is_stale");
    let queued_before = cluster.run("squeue", &["-h", "-o", "%i"]).lines().count();
    assert_eq!(queued_before, 3, "two stages and the final job");
    let job_of = |out: &str, stage: &str| {
        out.lines()
            .find(|l| says(l, stage, "submitted"))
            .and_then(|l| l.split("job ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .to_owned()
    };
    let qa_job = job_of(&first, "qa");
    let asked = cluster.run("scontrol", &["show", "job", "-o", &qa_job]);
    for field in ["TimeLimit=00:20:00", "MinMemoryNode=300M", "NumCPUs=1"] {
        assert!(asked.contains(field), "{field}: {asked}");
    }
    let clean_asked = cluster.run(
        "scontrol",
        &["show", "job", "-o", &job_of(&first, "qa_clean")],
    );
    assert!(clean_asked.contains("TimeLimit=00:20:00"), "{clean_asked}");
    assert!(
        clean_asked.contains(&format!("Dependency=afterok:{qa_job}")),
        "{clean_asked}"
    );

    let second = with_env(&p, &["run", "r.yaml"], &env);
    second.ok();
    printed(&p, &second, "resubmit_finds_queued_jobs");
    assert_eq!(
        cluster.run("squeue", &["-h", "-o", "%i"]).lines().count(),
        3
    );
    let status = with_env(&p, &["status", "r.yaml"], &env).ok();
    assert!(
        status
            .lines()
            .any(|l| l.contains("queued") && l.contains(" qa ")),
        "{status}"
    );

    // Once `qa` ran, `qa_clean` is named by its own action key: a submit finds its job
    // all the same, and the final job that waits on it.
    cluster.run("scontrol", &["release", &qa_job]);
    let mut status = String::new();
    for _ in 0..120 {
        status = with_env(&p, &["status", "r.yaml"], &env).ok();
        if says(&status, "qa", "cached") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(says(&status, "qa", "cached"), "{status}");
    let third = with_env(&p, &["run", "r.yaml"], &env);
    third.ok();
    printed(&p, &third, "resubmit_after_a_partial_run");
    assert_eq!(
        cluster.run("squeue", &["-h", "-o", "%i"]).lines().count(),
        2,
        "qa_clean and the final job"
    );

    // A job cancelled by hand is reported as such.
    cluster.run("scancel", &[&job_of(&first, "qa_clean")]);
    let mut status = String::new();
    for _ in 0..40 {
        status = with_env(&p, &["status", "r.yaml"], &env).ok();
        if status.contains("cancelled (scancel)") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    assert!(status.contains("cancelled (scancel)"), "{status}");
    cluster.run("scancel", &["--user=root"]);
}

#[test]
fn the_final_job_finishes_the_run_that_was_asked_for() {
    let cluster = SlurmCluster::start();
    let env = cluster.env();
    let p = two_dataset_project();
    // The recipe says slurm; `--only reviews` computes `reviews` and nothing else, in its
    // job and in the final one.
    let recipe = std::fs::read_to_string(p.path("r.yaml")).unwrap().replacen(
        "stages:\n",
        "executor: { kind: slurm }\nstages:\n",
        1,
    );
    p.write("r.yaml", &recipe);
    let only = with_env(&p, &["run", "r.yaml", "--wait", "--only", "reviews"], &env).ok();
    assert!(only.contains("1 jobs submitted"), "{only}");
    assert!(only.contains("every job completed"), "{only}");
    let status = with_env(&p, &["status", "r.yaml"], &env).ok();
    assert!(says(&status, "reviews", "cached"), "{status}");
    assert!(!says(&status, "qa", "cached"), "{status}");
    assert!(!says(&status, "qa_clean", "cached"), "{status}");

    let all = with_env(&p, &["run", "r.yaml", "--wait"], &env).ok();
    assert!(all.contains("2 jobs submitted"), "{all}");
    assert!(all.contains("every job completed"), "{all}");
    let lock = std::fs::read(p.path("r.lock")).unwrap();

    // `--locked` is checked before anything is submitted.
    p.write(
        "r.yaml",
        &recipe.replacen("validation: 0.2", "validation: 0.25", 1),
    );
    let locked = with_env(&p, &["run", "r.yaml", "--locked"], &env);
    assert_eq!(locked.code(), 1, "{}", locked.stdout());
    printed(&p, &locked, "locked_before_submitting");
    assert_eq!(
        cluster.run("squeue", &["-h", "-o", "%i"]).lines().count(),
        0
    );
    assert_eq!(std::fs::read(p.path("r.lock")).unwrap(), lock);
}

#[test]
fn jobs_ask_for_the_gpus_and_partition_their_stages_need() {
    let cluster = SlurmCluster::start();
    let env = cluster.env();
    let p = Project::new();
    // Held: what each job asks for is read from Slurm, nothing runs. On a GPU backend a
    // tensor stage asks for a GPU per training device; a stage's own `resources` win.
    let stages = car_lm_stages()
        .replace("warmup_steps: 10 }", "warmup_steps: 10, devices: 2 }")
        .replacen(
            "    leakage_key: [prompt]\n",
            "    leakage_key: [prompt]\n    resources: { gpus: 1, partition: main }\n",
            1,
        );
    p.write(
        "r.yaml",
        &format!(
            "version: 1\nname: gpus\nseed: 1\nexecutor: {{ kind: slurm, sbatch_args: [--hold] }}\nstages:\n{stages}"
        ),
    );
    let out = with_env(&p, &["run", "r.yaml", "--backend", "wgpu"], &env).ok();
    let job_of = |stage: &str| {
        out.lines()
            .find(|l| says(l, stage, "submitted"))
            .and_then(|l| l.split("job ").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("{stage}: {out}"))
            .to_owned()
    };
    let show = |stage: &str| cluster.run("scontrol", &["show", "job", "-o", &job_of(stage)]);
    let lm = show("lm");
    assert!(lm.contains("gpu:2"), "lm trains on 2 devices: {lm}");
    let qa = show("qa");
    assert!(
        qa.contains("gpu:1") && qa.contains("Partition=main"),
        "{qa}"
    );
    // A data stage asks for no GPU.
    let corpus = show("corpus");
    assert!(!corpus.contains("gpu"), "{corpus}");
    cluster.run("scancel", &["--user=root"]);
}
