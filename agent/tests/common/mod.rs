//! Test helpers: a controller stand-in that records what it receives and answers from a script,
//! fake fio binaries, and a way to run the real `pie-agent` binary.

#![allow(dead_code)] // each test crate uses a different subset

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// One request the controller stand-in received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: serde_json::Value,
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn body(mut self, body: &str) -> Self {
        self.body = body.to_owned();
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Hook = Box<dyn Fn(usize) + Send + Sync>;

struct Shared {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    fallback: Reply,
    hook: Option<Hook>,
}

/// The controller stand-in; serves until the test process ends.
pub struct Controller {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Controller {
    /// Answers with `script` in order, then with `fallback` forever.
    pub fn start(script: Vec<Reply>, fallback: Reply) -> Self {
        Self::start_with_hook(script, fallback, None)
    }

    /// Like [`Controller::start`]; `hook` is called with the request's index before it is
    /// answered.
    pub fn start_with_hook(script: Vec<Reply>, fallback: Reply, hook: Option<Hook>) -> Self {
        let shared = Arc::new(Shared {
            received: Mutex::new(Vec::new()),
            script: Mutex::new(script.into()),
            fallback,
            hook,
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = shared.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new()
                    .fallback(axum::routing::any(handle))
                    .with_state(state);
                axum::serve(listener, app).await.unwrap();
            });
        });
        Self { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let index = {
        let mut received = shared.received.lock().unwrap();
        received.push(Received {
            at: Instant::now(),
            path: uri.path().to_owned(),
            authorization: header("authorization"),
            content_type: header("content-type"),
            body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        });
        received.len() - 1
    };
    if let Some(hook) = &shared.hook {
        hook(index);
    }
    let reply = shared
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| shared.fallback.clone());
    tokio::time::sleep(reply.delay).await;
    let mut map = HeaderMap::new();
    for (name, value) in &reply.headers {
        map.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    (StatusCode::from_u16(reply.status).unwrap(), map, reply.body).into_response()
}

/// A directory on a real filesystem (the target dir, not a possible tmpfs /tmp) for fio.
pub fn real_fs_tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// An executable shell script standing in for fio.
pub fn fake_fio(dir: &Path, script: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-fio");
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A fake fio that prints the successful fio 3.33 fixture.
pub fn fio_printing_ok_fixture(dir: &Path) -> PathBuf {
    fake_fio(
        dir,
        &format!("cat '{}'", fixture("fio-3.33-ok.json").display()),
    )
}

/// The outcome of one agent run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs the real binary with a clean environment (only PATH kept) and `args`.
pub fn agent(args: &[&str]) -> Run {
    let start = Instant::now();
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_pie-agent"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(args)
        .output()
        .unwrap();
    Run {
        code: status.code(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// `mount-probe` arguments for `controller` and `path`, plus `extra`.
pub fn mount_args<'a>(controller: &'a str, path: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "mount-probe",
        "--controller-url",
        controller,
        "--path",
        path,
        "--node-name",
        "worker-1",
        "--storage-class",
        "topolvm-provisioner",
        "--pie-probe-name",
        "test-pie-probe",
    ];
    args.extend_from_slice(extra);
    args
}
