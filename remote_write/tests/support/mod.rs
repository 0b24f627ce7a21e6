//! A local remote-write receiver for tests: records every request (headers and the decoded
//! body) and answers from a script, then 204.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use remote_write::proto::WriteRequest;
use remote_write::{BatchConfig, ClientConfig, EndpointConfig, RetryConfig};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub headers: HeaderMap,
    pub body: WriteRequest,
    pub at: Instant,
    pub status: u16,
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Answer {
    pub fn status(status: u16) -> Answer {
        Answer {
            status,
            headers: vec![],
            body: String::new(),
        }
    }
    pub fn with_header(mut self, name: &'static str, value: &str) -> Answer {
        self.headers.push((name, value.to_owned()));
        self
    }
    pub fn with_body(mut self, body: &str) -> Answer {
        self.body = body.to_owned();
        self
    }
}

#[derive(Clone, Default)]
struct Shared {
    log: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<VecDeque<Answer>>>,
}

/// A running test receiver.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let answer = shared
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Answer::status(204));
    let decoded = remote_write::decode_write_request(&body).expect("the client sent a valid body");
    shared.log.lock().unwrap().push(Recorded {
        headers,
        body: decoded,
        at: Instant::now(),
        status: answer.status,
    });
    let mut response = (StatusCode::from_u16(answer.status).unwrap(), answer.body).into_response();
    for (name, value) in answer.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

impl Receiver {
    /// Starts on a free port.
    pub async fn start() -> Receiver {
        Receiver::start_on(0).await
    }

    /// Starts on `port` (0 = any free port; a [`dead_url`]'s port comes alive).
    pub async fn start_on(port: u16) -> Receiver {
        revive(port);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Shared::default();
        let app = Router::new()
            .route("/api/v1/write", axum::routing::post(handle))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/api/v1/write", self.addr)
    }

    /// Answers the next requests with `answers`, in order, then 204.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.shared.script.lock().unwrap().extend(answers);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.log.lock().unwrap().clone()
    }

    /// `(metric name, value, timestamp)` of every sample in requests answered 2xx, in order.
    pub fn accepted_samples(&self) -> Vec<(String, f64, i64)> {
        samples_of(
            self.requests()
                .iter()
                .filter(|r| (200..300).contains(&r.status)),
        )
    }

    /// Waits until `n` requests arrived (panics after 10 s).
    pub async fn wait_requests(&self, n: usize) -> Vec<Recorded> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} requests arrived",
                requests.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub fn samples_of<'a>(requests: impl Iterator<Item = &'a Recorded>) -> Vec<(String, f64, i64)> {
    let mut out = Vec::new();
    for r in requests {
        for ts in &r.body.timeseries {
            let name = ts
                .labels
                .iter()
                .find(|l| l.name == "__name__")
                .map(|l| l.value.clone())
                .unwrap_or_default();
            for s in &ts.samples {
                out.push((name.clone(), s.value, s.timestamp));
            }
        }
    }
    out
}

/// A config for one or more endpoints with fast retries and a short flush interval.
pub fn fast_config(urls: &[String]) -> ClientConfig {
    ClientConfig {
        endpoints: urls
            .iter()
            .map(|u| {
                let mut e = EndpointConfig::new(u.clone());
                e.timeout = Duration::from_secs(2);
                e
            })
            .collect(),
        batch: BatchConfig {
            flush_interval: Duration::from_millis(50),
            ..BatchConfig::default()
        },
        retry: RetryConfig {
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(200),
            max_retry_after: Duration::from_secs(10),
        },
        ..ClientConfig::default()
    }
}

/// Ports of [`dead_url`]s, bound without listening until a [`Receiver`] starts on one.
static DEAD: std::sync::Mutex<Vec<tokio::net::TcpSocket>> = std::sync::Mutex::new(Vec::new());

/// A URL on a loopback port where nothing listens: connections are refused. The port stays
/// bound (without listening) until [`Receiver::start_on`] takes it, so that no one else can
/// take it meanwhile, as a closed `bind(0)` port could be.
pub fn dead_url() -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    DEAD.lock().unwrap_or_else(|e| e.into_inner()).push(socket);
    format!("http://127.0.0.1:{port}/api/v1/write")
}

/// Unbinds `port` if a [`dead_url`] holds it.
fn revive(port: u16) {
    DEAD.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|s| s.local_addr().map(|a| a.port()).ok() != Some(port));
}
