//! `logging: { mlflow: URI }` against a real MLflow tracking server on loopback
//! (`mlflow server`, installed by scripts/test_services.sh): one MLflow run per stage that
//! runs, in the recipe's experiment, tagged with the stage's action key, with its settings as
//! params, a metric history per step and its final metrics; nothing for cached stages; the
//! same action keys as without logging; and a server that is down costs one warning.

use serde_json::{Value, json};

use crate::common::{Project, tiny_sft_dpo_recipe};
use crate::services::MlflowServer;

/// Every run of the experiment `name`, by stage name.
fn runs_of(server: &MlflowServer, name: &str) -> Vec<Value> {
    let experiment = server.api(
        "GET",
        &format!("experiments/get-by-name?experiment_name={name}"),
        None,
    );
    let id = experiment["experiment"]["experiment_id"].clone();
    let found = server.api(
        "POST",
        "runs/search",
        Some(&json!({ "experiment_ids": [id], "max_results": 1000 })),
    );
    found["runs"].as_array().cloned().unwrap_or_default()
}

fn tag<'a>(run: &'a Value, key: &str) -> &'a str {
    run["data"]["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["key"] == key)
        .and_then(|t| t["value"].as_str())
        .unwrap_or_else(|| panic!("no tag {key}: {run}"))
}

fn param<'a>(run: &'a Value, key: &str) -> Option<&'a str> {
    run["data"]["params"]
        .as_array()?
        .iter()
        .find(|p| p["key"] == key)?["value"]
        .as_str()
}

fn final_metric(run: &Value, key: &str) -> Option<f64> {
    run["data"]["metrics"]
        .as_array()?
        .iter()
        .find(|m| m["key"] == key)?["value"]
        .as_f64()
}

/// The stage's action key as `hone show --json` reports it.
fn action(p: &Project, stage: &str) -> String {
    let shown: Value =
        serde_json::from_str(&p.hone(&["show", "r.yaml", stage, "--json"]).ok()).unwrap();
    shown["action"].as_str().unwrap().to_owned()
}

#[test]
fn each_stage_run_is_an_mlflow_run_with_params_metric_history_and_its_action_key() {
    let server = MlflowServer::start();
    let p = Project::new();
    let logging = format!("logging: {{ mlflow: {} }}\n", server.url());
    p.write("r.yaml", &tiny_sft_dpo_recipe("tracked", 7, &logging));
    let run = p.hone(&["run", "r.yaml"]);
    run.ok();
    assert!(
        !run.stderr().contains("MLflow"),
        "no warning with the server up: {}",
        run.stderr()
    );
    let ran = run.ran();

    let runs = runs_of(&server, "tracked");
    let mut stages: Vec<&str> = runs.iter().map(|r| tag(r, "hone.stage")).collect();
    stages.sort_unstable();
    let mut want: Vec<&str> = ran.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(stages, want, "one MLflow run per stage that ran");
    for r in &runs {
        let stage = tag(r, "hone.stage");
        assert_eq!(r["info"]["status"], "FINISHED", "{stage}");
        assert_eq!(r["info"]["run_name"], stage);
        assert_eq!(tag(r, "hone.action"), action(&p, stage), "{stage}");
        assert_eq!(tag(r, "hone.recipe"), "tracked");
    }
    let sft = runs.iter().find(|r| tag(r, "hone.stage") == "sft").unwrap();
    assert_eq!(tag(sft, "hone.kind"), "sft");
    assert_eq!(param(sft, "train.lr"), Some("0.01"));
    assert_eq!(param(sft, "train.epochs"), Some("3"));
    assert_eq!(param(sft, "kind"), Some("sft"));

    // A point per optimizer step, steps 1..=N, and the final metrics beside them.
    let id = sft["info"]["run_id"].as_str().unwrap();
    let history = server.api(
        "GET",
        &format!("metrics/get-history?run_id={id}&metric_key=train/loss&max_results=10000"),
        None,
    );
    let steps: Vec<i64> = history["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["step"].as_i64().unwrap())
        .collect();
    let n = final_metric(sft, "steps").expect("the final `steps` metric") as i64;
    assert!(n > 1, "{n}");
    assert_eq!(steps, (1..=n).collect::<Vec<_>>());
    let first = history["metrics"][0]["value"].as_f64().unwrap();
    let shown: Value =
        serde_json::from_str(&p.hone(&["show", "r.yaml", "sft", "--json"]).ok()).unwrap();
    let logged_first = shown["metrics"]["train_loss_first"].as_f64().unwrap();
    assert!(
        (first - logged_first).abs() < 1e-3,
        "{first} vs {logged_first}"
    );
    let dpo = runs.iter().find(|r| tag(r, "hone.stage") == "dpo").unwrap();
    assert!(
        final_metric(dpo, "rewards/margins").is_some(),
        "TRL's DPO metrics by name: {dpo}"
    );

    // Cached stages log nothing: a second run adds no MLflow run.
    p.hone(&["run", "r.yaml"]).ok();
    assert_eq!(runs_of(&server, "tracked").len(), runs.len());

    // Logging is not in the action key: the recipe without it has the same actions.
    let plain = Project::new();
    plain.write("r.yaml", &tiny_sft_dpo_recipe("tracked", 7, ""));
    plain.hone(&["run", "r.yaml"]).ok();
    for stage in ["sft", "dpo"] {
        assert_eq!(action(&plain, stage), action(&p, stage));
    }
}

#[test]
fn a_tracking_server_that_is_down_costs_one_warning() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Nothing listens there now.
    let p = Project::new();
    let logging = format!("logging: {{ mlflow: http://127.0.0.1:{port} }}\n");
    p.write("r.yaml", &tiny_sft_dpo_recipe("untracked", 3, &logging));
    let run = p.hone(&["run", "r.yaml"]);
    run.ok();
    assert!(run.ran().len() > 2, "{}", run.stdout());
    let warned = run.stderr().matches("MLflow at").count();
    assert_eq!(warned, 1, "{}", run.stderr());
}

#[test]
fn an_mlflow_address_that_is_not_http_is_a_recipe_error() {
    let p = Project::new();
    for (uri, says) in [
        ("databricks", "not the http:// or https:// address"),
        ("http://me:secret@127.0.0.1:5000", "user or password"),
    ] {
        p.write(
            "r.yaml",
            &tiny_sft_dpo_recipe("bad", 1, &format!("logging: {{ mlflow: \"{uri}\" }}\n")),
        );
        let run = p.hone(&["validate", "r.yaml"]);
        assert_eq!(run.code(), 2, "{}", run.stderr());
        assert!(run.stderr().contains(says), "{}", run.stderr());
        assert!(!run.stderr().contains("secret"), "{}", run.stderr());
    }
}
