//! Real services the tests start on loopback: an S3 protocol server (moto), an MLflow tracking
//! server and a single-node Slurm cluster, installed by `scripts/test_services.sh` (which
//! `.ci/run` calls). No mock stands in for any of them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An S3 server on 127.0.0.1 with one empty bucket; stopped on drop.
pub struct S3Server {
    child: Child,
    pub port: u16,
    pub bucket: String,
}

/// A service's program: installed by `scripts/test_services.sh` into `.test-services/bin/`,
/// else at `$env`, else on PATH.
fn service_program(name: &str, env: &str) -> PathBuf {
    let installed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".test-services/bin")
        .join(name);
    if installed.is_file() {
        return installed;
    }
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no `{name}` for the tests that need it: run scripts/test_services.sh (installs it into .test-services/)"
            )
        })
}

/// Sends one HTTP request and returns the status code.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))
}

impl S3Server {
    pub fn start() -> S3Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(service_program("moto_server", "HONE_TEST_MOTO_SERVER"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let server = S3Server {
            child,
            port,
            bucket: "team-cache".into(),
        };
        let started = Instant::now();
        loop {
            match http(port, "PUT", &format!("/{}", server.bucket)) {
                Ok(200) => break,
                Ok(code) => panic!("creating the bucket answered {code}"),
                Err(_) if started.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => panic!("moto_server did not come up on port {port}: {e}"),
            }
        }
        server
    }

    /// A remote URL in the bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The environment an S3 client needs for this server, as `object_store` reads it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ]
    }

    /// Stops the server (the remote goes down).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One HTTP/1.0 request with an optional JSON body; the status and the JSON it answered
/// (`null` when the body is not JSON).
pub fn http_json(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> std::io::Result<(u16, serde_json::Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:?}")))?;
    let json = response
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    Ok((code, json))
}

/// An MLflow tracking server on 127.0.0.1 (`mlflow server`, its runs in a SQLite file of its
/// own); stopped on drop.
pub struct MlflowServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl MlflowServer {
    pub fn start() -> MlflowServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // Its own process group: `mlflow server` starts uvicorn as a child, and all of them
        // stop together on drop. Without the background job runner (a pool of idle workers
        // that nothing here uses).
        let child = Command::new(service_program("mlflow", "HONE_TEST_MLFLOW"))
            .process_group(0)
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .args(["server", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--workers", "1"])
            .arg("--backend-store-uri")
            .arg(format!("sqlite:///{}/mlflow.db", dir.path().display()))
            .arg("--default-artifact-root")
            .arg(dir.path().join("artifacts"))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mlflow server");
        let server = MlflowServer {
            child,
            port,
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            match http_json(port, "GET", "/health", None) {
                Ok((200, _)) => break,
                _ if started.elapsed() < Duration::from_secs(120) => {
                    std::thread::sleep(Duration::from_millis(300))
                }
                other => panic!("the MLflow server did not come up on port {port}: {other:?}"),
            }
        }
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A call of the REST API (`api/2.0/mlflow/<endpoint>`) that must succeed.
    pub fn api(
        &self,
        method: &str,
        endpoint: &str,
        body: Option<&serde_json::Value>,
    ) -> serde_json::Value {
        let (code, json) = http_json(
            self.port,
            method,
            &format!("/api/2.0/mlflow/{endpoint}"),
            body,
        )
        .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
        assert_eq!(code, 200, "{endpoint}: {json}");
        json
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        // The whole group: the server and its uvicorn.
        let group = self.child.id() as i32;
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A single-node Slurm cluster on loopback (slurmctld, slurmd, munged; installed by
/// `scripts/test_services.sh`), with its own configuration, munge key, state and ports; stopped
/// on drop.
/// Clusters are started one at a time (a guard held while one runs), since each takes the
/// machine's CPUs as its node's.
pub struct SlurmCluster {
    daemons: Vec<Child>,
    pub dir: tempfile::TempDir,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static SLURM: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl SlurmCluster {
    pub fn start() -> SlurmCluster {
        let guard = SLURM.lock().unwrap_or_else(|e| e.into_inner());
        for tool in ["slurmctld", "slurmd", "sbatch", "munged"] {
            let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .any(|d| Path::new(d).join(tool).is_file());
            assert!(
                found,
                "`{tool}` is missing: run scripts/test_services.sh (installs slurmctld, slurmd, slurm-client and munge)"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["state", "spool", "log"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        // The cluster's own munge daemon, key and socket: a system munged may be absent, or
        // have left a socket nobody listens on (as a package's install does in a container).
        let munge = start_munged(d);
        let host = String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned();
        let conf = format!(
            "ClusterName=hone-test\nSlurmctldHost={host}(127.0.0.1)\nSlurmctldPort={}\nSlurmdPort={}\n\
             SlurmUser=root\nSlurmdUser=root\nAuthType=auth/munge\nAuthInfo=socket={socket}\nProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/none\n\
             AccountingStorageType=accounting_storage/none\nSelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core_Memory\nDefMemPerCPU=200\nMpiDefault=none\nReturnToService=2\n\
             SchedulerParameters=sched_min_interval=200000\nMinJobAge=600\n\
             StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
             SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\n\
             SlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd.log\n\
             GresTypes=gpu\nNodeName={host} CPUs=2 RealMemory=2000 Gres=gpu:2 State=UNKNOWN\n\
             PartitionName=main Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
            free_port(),
            free_port(),
            d = d.display(),
            socket = d.join("munge.socket").display(),
        );
        let conf_path = d.join("slurm.conf");
        std::fs::write(&conf_path, conf).unwrap();
        // Two GPUs for scheduling only: character devices made here (slurmd checks that its
        // gres files exist), nothing behind them. Jobs that ask for them are placed and run
        // like any other.
        for i in 0..2 {
            let made = Command::new("mknod")
                .arg(d.join(format!("gpu{i}")))
                .args(["c", "195", &i.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                made,
                "cannot make the test cluster's fake GPU devices (mknod, as root)"
            );
        }
        std::fs::write(
            d.join("gres.conf"),
            format!("NodeName={host} Name=gpu File={}/gpu[0-1]\n", d.display()),
        )
        .unwrap();
        let daemon = |cmd: &str, args: &[&str]| {
            Command::new(cmd)
                .args(args)
                .env("SLURM_CONF", &conf_path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {cmd}: {e}"))
        };
        let conf_arg = conf_path.to_str().unwrap();
        // Stopped in this order on drop: munged last.
        let daemons = vec![
            daemon("slurmctld", &["-D", "-i", "-f", conf_arg]),
            daemon("slurmd", &["-D", "-f", conf_arg]),
            munge,
        ];
        let cluster = SlurmCluster {
            daemons,
            dir,
            _one_at_a_time: guard,
        };
        let started = Instant::now();
        loop {
            let out = Command::new("sinfo")
                .args(["-h", "-o", "%t"])
                .env("SLURM_CONF", &conf_path)
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).trim() == "idle" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the Slurm node did not come up idle: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        cluster
    }

    /// The environment Slurm's commands (and hone's calls to them) need for this cluster.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![(
            "SLURM_CONF",
            self.dir.path().join("slurm.conf").display().to_string(),
        )]
    }

    /// Runs a Slurm command against this cluster; its stdout.
    pub fn run(&self, cmd: &str, args: &[&str]) -> String {
        let out = Command::new(cmd)
            .args(args)
            .envs(self.env())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Starts munged in the foreground with a fresh key and its socket, pid, seed and log files in
/// `dir` (`--force`: the tests run as root, which Slurm's daemons need anyway); returns once
/// the socket answers.
fn start_munged(dir: &Path) -> Child {
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("munge.key");
    let mut bytes = vec![0u8; 1024];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .unwrap();
    std::fs::write(&key, &bytes).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let socket = dir.join("munge.socket");
    let arg = |name: &str, path: PathBuf| format!("--{name}={}", path.display());
    let child = Command::new("munged")
        .args([
            "--foreground".to_owned(),
            "--force".to_owned(),
            arg("socket", socket.clone()),
            arg("key-file", key),
            arg("pid-file", dir.join("munged.pid")),
            arg("seed-file", dir.join("munged.seed")),
            arg("log-file", dir.join("log/munged.log")),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start munged: {e}"));
    let started = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "munged did not open its socket {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}
