//! Real services the tests start on loopback: an S3 protocol server (moto), installed by
//! `scripts/test_services.sh` (which `.ci/run` calls). No mock stands in for it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An S3 server on 127.0.0.1 with one empty bucket; stopped on drop.
pub struct S3Server {
    child: Child,
    pub port: u16,
    pub bucket: String,
}

fn moto_server() -> PathBuf {
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join(".test-services/bin/moto_server");
    if installed.is_file() {
        return installed;
    }
    if let Some(p) = std::env::var_os("HONE_TEST_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("moto_server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no S3 server for the remote-cache tests: run scripts/test_services.sh (installs moto[server] into .test-services/)"
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
        let child = Command::new(moto_server())
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
