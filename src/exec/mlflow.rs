//! MLflow experiment tracking through the tracking server's REST API (`logging: { mlflow: URI }`):
//! one MLflow run per stage that runs (a cached stage logs nothing), in the experiment named
//! after the recipe (created when missing), with the stage's settings as params, its per-step
//! scalars as metric histories (the names TensorBoard gets: `train/loss`, `rewards/margins`,
//! ...), its final metrics under their own names, and tags that tie it to hone's store
//! (`hone.action`, `hone.stage`, `hone.kind`, `hone.recipe`, `hone.run`). The run ends
//! FINISHED once the stage is committed, FAILED when it fails, KILLED when it is stopped.
//!
//! Logging never stops a run: the first request that fails (a server that is down, refuses
//! the credentials, or rejects a value) is warned about once, and the run goes on without
//! MLflow. Credentials come from MLflow's own variables: `MLFLOW_TRACKING_TOKEN` (a bearer
//! token) or `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// MLflow's limits on what one `runs/log-batch` request and one param may hold.
const BATCH_METRICS: usize = 1000;
const BATCH_PARAMS: usize = 100;
const PARAM_VALUE_CHARS: usize = 6000;
const KEY_CHARS: usize = 250;

/// Per-step metrics wait in a buffer and go out this often, or when this many are waiting: a
/// request per step would tie training's pace to the server's.
const FLUSH_EVERY: Duration = Duration::from_secs(5);
const FLUSH_AT: usize = 200;

/// A tracking server and the recipe's experiment on it, for the whole `hone run`.
pub struct Tracker {
    server: Server,
    experiment: String,
    /// Where it was first wanted: the recipe's `logging.mlflow`.
    uri: String,
    /// Set by the first request that fails; then nothing more is sent.
    off: AtomicBool,
}

struct Server {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
}

impl Server {
    fn new(uri: &str) -> Result<Server> {
        let base = uri.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("`{uri}` is not an http:// or https:// tracking server address");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the MLflow client's I/O runtime")?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(15))
            .build()
            .context("cannot build the MLflow HTTP client")?;
        Ok(Server {
            runtime,
            http,
            base,
        })
    }

    /// One call of the REST API: `GET` with a query, or `POST` with a JSON body. A response
    /// that is not 2xx is an error carrying MLflow's `error_code` and message.
    fn call(&self, endpoint: &str, query: &[(&str, &str)], body: Option<&Value>) -> Result<Value> {
        let url = format!("{}/api/2.0/mlflow/{endpoint}", self.base);
        let mut request = match body {
            Some(b) => self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(b.to_string()),
            None => self
                .http
                .get(url::Url::parse_with_params(&url, query).context("a bad server address")?),
        };
        if let Ok(token) = std::env::var("MLFLOW_TRACKING_TOKEN") {
            request = request.bearer_auth(token);
        } else if let Ok(user) = std::env::var("MLFLOW_TRACKING_USERNAME") {
            request = request.basic_auth(user, std::env::var("MLFLOW_TRACKING_PASSWORD").ok());
        }
        let (status, text) = self.runtime.block_on(async {
            let response = request.send().await?;
            let status = response.status();
            Ok::<_, reqwest::Error>((status, response.text().await?))
        })?;
        let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let code = parsed["error_code"].as_str().unwrap_or("");
            let message = parsed["message"]
                .as_str()
                .map_or_else(|| text.chars().take(200).collect(), str::to_owned);
            bail!("{endpoint}: HTTP {status} {code} {message}");
        }
        Ok(parsed)
    }
}

impl Tracker {
    /// Connects to the server at `uri` and finds (or creates) the experiment `experiment`.
    pub fn connect(uri: &str, experiment: &str) -> Result<Tracker> {
        let server = Server::new(uri)?;
        let id = match server.call(
            "experiments/get-by-name",
            &[("experiment_name", experiment)],
            None,
        ) {
            Ok(found) => found["experiment"]["experiment_id"].clone(),
            Err(e) if format!("{e}").contains("RESOURCE_DOES_NOT_EXIST") => {
                match server.call(
                    "experiments/create",
                    &[],
                    Some(&json!({ "name": experiment })),
                ) {
                    Ok(created) => created["experiment_id"].clone(),
                    // Another process created it meanwhile.
                    Err(e) if format!("{e}").contains("RESOURCE_ALREADY_EXISTS") => server.call(
                        "experiments/get-by-name",
                        &[("experiment_name", experiment)],
                        None,
                    )?["experiment"]["experiment_id"]
                        .clone(),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let experiment = id
            .as_str()
            .with_context(|| format!("the server named no experiment id for `{experiment}`"))?
            .to_owned();
        Ok(Tracker {
            server,
            experiment,
            uri: uri.to_owned(),
            off: AtomicBool::new(false),
        })
    }

    /// Warns once, and stops logging, when `result` failed.
    fn check<T>(&self, result: Result<T>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                if !self.off.swap(true, Ordering::SeqCst) {
                    tracing::warn!(
                        "MLflow at {}: {e:#}; not logging there for the rest of this run",
                        self.uri
                    );
                }
                None
            }
        }
    }

    fn is_off(&self) -> bool {
        self.off.load(Ordering::SeqCst)
    }

    /// Starts the MLflow run of one stage run: named after the stage, tagged, its settings
    /// (`config`, the stage's key material) logged as params.
    pub fn start(self: &Arc<Self>, stage: &StageInfo<'_>, config: &Value) -> Option<StageRun> {
        if self.is_off() {
            return None;
        }
        let tags: Vec<Value> = [
            ("hone.action", stage.action),
            ("hone.stage", stage.stage),
            ("hone.kind", stage.kind),
            ("hone.recipe", stage.recipe),
            ("hone.run", stage.run),
            ("hone.version", crate::HONE_VERSION),
        ]
        .iter()
        .map(|(k, v)| json!({ "key": k, "value": v }))
        .collect();
        let created = self.server.call(
            "runs/create",
            &[],
            Some(&json!({
                "experiment_id": self.experiment,
                "run_name": stage.stage,
                "start_time": now_ms(),
                "tags": tags,
            })),
        );
        let run_id = self.check(created.and_then(|r| {
            r["run"]["info"]["run_id"]
                .as_str()
                .map(str::to_owned)
                .context("runs/create answered no run id")
        }))?;
        let run = StageRun {
            tracker: self.clone(),
            run_id,
            pending: Mutex::new(Pending {
                metrics: Vec::new(),
                since: Instant::now(),
                last_step: 0,
            }),
            ended: AtomicBool::new(false),
        };
        let params = params_of(config);
        for chunk in params.chunks(BATCH_PARAMS) {
            if !run.log_batch(&[], chunk) {
                break;
            }
        }
        Some(run)
    }
}

/// What names a stage run in MLflow.
pub struct StageInfo<'a> {
    pub stage: &'a str,
    pub kind: &'a str,
    pub action: &'a str,
    pub recipe: &'a str,
    /// The run directory's name (`hone runs`).
    pub run: &'a str,
}

/// How an MLflow run ended.
#[derive(Clone, Copy)]
pub enum RunStatus {
    Finished,
    Failed,
    Killed,
}

/// One stage run's MLflow run. Dropped without [`StageRun::end`] (the stage failed, or
/// committing it did), it ends FAILED.
pub struct StageRun {
    tracker: Arc<Tracker>,
    run_id: String,
    pending: Mutex<Pending>,
    ended: AtomicBool,
}

struct Pending {
    metrics: Vec<Value>,
    since: Instant,
    last_step: i64,
}

impl StageRun {
    /// Per-step scalars at `step` (what [`super::tracking::step_scalars`] reads from a record).
    pub fn scalars(&self, step: i64, values: &[(String, f64)]) {
        let ready = {
            let Ok(mut p) = self.pending.lock() else {
                return;
            };
            p.last_step = p.last_step.max(step);
            let at = now_ms();
            p.metrics
                .extend(values.iter().filter_map(|(k, v)| metric(k, *v, at, step)));
            if p.metrics.len() >= FLUSH_AT || p.since.elapsed() >= FLUSH_EVERY {
                p.since = Instant::now();
                std::mem::take(&mut p.metrics)
            } else {
                Vec::new()
            }
        };
        self.send(ready);
    }

    /// The stage's final metrics, at its last step; sends what is still waiting.
    pub fn finish(&self, metrics: &serde_json::Map<String, Value>) {
        let mut ready = self
            .pending
            .lock()
            .map(|mut p| std::mem::take(&mut p.metrics))
            .unwrap_or_default();
        let step = self.pending.lock().map(|p| p.last_step).unwrap_or(0);
        let at = now_ms();
        ready.extend(
            metrics
                .iter()
                .filter_map(|(k, v)| metric(k, v.as_f64()?, at, step)),
        );
        self.send(ready);
    }

    /// Marks the run ended with `status`.
    pub fn end(&self, status: RunStatus) {
        if self.ended.swap(true, Ordering::SeqCst) || self.tracker.is_off() {
            return;
        }
        let status = match status {
            RunStatus::Finished => "FINISHED",
            RunStatus::Failed => "FAILED",
            RunStatus::Killed => "KILLED",
        };
        let r = self.tracker.server.call(
            "runs/update",
            &[],
            Some(&json!({ "run_id": self.run_id, "status": status, "end_time": now_ms() })),
        );
        self.tracker.check(r);
    }

    fn send(&self, metrics: Vec<Value>) {
        for chunk in metrics.chunks(BATCH_METRICS) {
            if !self.log_batch(chunk, &[]) {
                return;
            }
        }
    }

    /// One `runs/log-batch`; false once logging is off.
    fn log_batch(&self, metrics: &[Value], params: &[Value]) -> bool {
        if self.tracker.is_off() {
            return false;
        }
        if metrics.is_empty() && params.is_empty() {
            return true;
        }
        let r = self.tracker.server.call(
            "runs/log-batch",
            &[],
            Some(&json!({ "run_id": self.run_id, "metrics": metrics, "params": params })),
        );
        self.tracker.check(r).is_some()
    }
}

impl Drop for StageRun {
    fn drop(&mut self) {
        self.end(RunStatus::Failed);
    }
}

/// A metric as `log-batch` takes it; `None` for a value JSON cannot carry (NaN, infinities).
fn metric(key: &str, value: f64, timestamp: u64, step: i64) -> Option<Value> {
    value.is_finite().then(|| {
        json!({ "key": clip(key, KEY_CHARS), "value": value, "timestamp": timestamp, "step": step })
    })
}

/// The stage's settings as MLflow params: nested keys joined with dots (`train.lr`,
/// `peft.r`), lists and scalars as their JSON text (strings bare), values cut to MLflow's
/// 6000 characters.
pub fn params_of(config: &Value) -> Vec<Value> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            Value::Null => {}
            Value::String(s) => out.push((prefix.to_owned(), s.clone())),
            other => out.push((prefix.to_owned(), other.to_string())),
        }
    }
    let mut flat = Vec::new();
    walk("", config, &mut flat);
    flat.into_iter()
        .map(|(k, v)| json!({ "key": clip(&k, KEY_CHARS), "value": clip(&v, PARAM_VALUE_CHARS) }))
        .collect()
}

fn clip(s: &str, chars: usize) -> String {
    s.chars().take(chars).collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_flatten_to_dotted_params() {
        let config = json!({
            "kind": "sft",
            "train": { "lr": 0.001, "epochs": 2 },
            "peft": { "method": "lora", "target_modules": ["q_proj", "v_proj"] },
            "system": null,
            "long": "x".repeat(7000),
        });
        let params = params_of(&config);
        let get = |k: &str| {
            params
                .iter()
                .find(|p| p["key"] == k)
                .map(|p| p["value"].as_str().unwrap().to_owned())
        };
        assert_eq!(get("kind").as_deref(), Some("sft"));
        assert_eq!(get("train.lr").as_deref(), Some("0.001"));
        assert_eq!(get("train.epochs").as_deref(), Some("2"));
        assert_eq!(
            get("peft.target_modules").as_deref(),
            Some(r#"["q_proj","v_proj"]"#)
        );
        assert_eq!(get("system"), None, "unset settings are left out");
        assert_eq!(get("long").unwrap().len(), PARAM_VALUE_CHARS);
    }

    #[test]
    fn values_json_cannot_carry_are_left_out() {
        assert!(metric("train/loss", f64::NAN, 0, 1).is_none());
        assert!(metric("train/loss", f64::INFINITY, 0, 1).is_none());
        assert_eq!(metric("train/loss", 0.5, 7, 3).unwrap()["step"], 3);
    }

    #[test]
    fn an_address_that_is_not_http_is_refused() {
        let e = Server::new("databricks").err().unwrap();
        assert!(format!("{e}").contains("not an http"), "{e}");
    }
}
