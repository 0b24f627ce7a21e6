//! A Kubernetes Service in front of several `pie-controller` replicas, on loopback: the local
//! cluster has no kube-proxy and its Pods share the host's network, so probe Pods reach the
//! controller through this instead. Like a Service, it sends each request to a backend that is
//! Ready: one whose `/readyz` answered 200 at the last check (every 250 ms, as the kubelet's
//! readiness probe and the endpoints controller would, only faster). With no Ready backend it
//! answers 503, as an agent would see a Service without endpoints (it retries either way).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::http_client;

/// One replica behind the Service: its readiness URL and the base URL requests go to.
#[derive(Debug, Clone)]
pub struct Backend {
    /// `http://127.0.0.1:<health>/readyz`.
    pub readyz: String,
    /// `http://127.0.0.1:<port>`: a request for `/x` goes to `<base>/x`.
    pub base: String,
}

#[derive(Debug, Default)]
struct Endpoints {
    backends: RwLock<Vec<Backend>>,
    ready: RwLock<Vec<bool>>,
}

/// The Service; stops when dropped.
#[derive(Debug)]
pub struct ReadyService {
    url: String,
    endpoints: Arc<Endpoints>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ReadyService {
    /// Starts it on a free loopback port in front of `backends` (more can be added).
    pub async fn start(backends: Vec<Backend>) -> ReadyService {
        let endpoints = Arc::new(Endpoints {
            ready: RwLock::new(vec![false; backends.len()]),
            backends: RwLock::new(backends),
        });
        let probe = {
            let endpoints = endpoints.clone();
            tokio::spawn(async move {
                let client = http_client();
                loop {
                    let backends = endpoints
                        .backends
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    let mut now = Vec::new();
                    for b in &backends {
                        let ok = tokio::time::timeout(
                            Duration::from_secs(1),
                            client.get(&b.readyz).send(),
                        )
                        .await
                        .is_ok_and(|r| r.is_ok_and(|r| r.status().is_success()));
                        now.push(ok);
                    }
                    *endpoints.ready.write().unwrap_or_else(|e| e.into_inner()) = now;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        };
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(endpoints.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the service");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let serve = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ReadyService {
            url,
            endpoints,
            tasks: vec![probe, serve],
        }
    }

    /// Its URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Adds a backend (a replica that starts later).
    pub fn add(&self, backend: Backend) {
        self.endpoints
            .backends
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(backend);
    }

    /// Which backends are Ready now, in the order given.
    pub fn ready(&self) -> Vec<bool> {
        self.endpoints
            .ready
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for ReadyService {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn forward(State(endpoints): State<Arc<Endpoints>>, request: Request) -> Response {
    let target = {
        let ready = endpoints.ready.read().unwrap_or_else(|e| e.into_inner());
        let backends = endpoints.backends.read().unwrap_or_else(|e| e.into_inner());
        ready
            .iter()
            .position(|r| *r)
            .and_then(|i| backends.get(i))
            .map(|b| b.base.clone())
    };
    let Some(base) = target else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"error": "no Ready endpoint behind the Service"})),
        )
            .into_response();
    };
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let mut outgoing = http_client().request(method, format!("{base}{path}"));
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            outgoing = outgoing.header(name.as_str(), value.as_bytes());
        }
    }
    match outgoing.body(bytes).send().await {
        Ok(answer) => {
            let status = answer.status().as_u16();
            let content_type = answer.headers().get("content-type").cloned();
            let body = answer.bytes().await.unwrap_or_default();
            let mut response = Response::new(Body::from(body));
            *response.status_mut() =
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Some(ct) = content_type
                && let Ok(v) = axum::http::HeaderValue::from_bytes(ct.as_bytes())
            {
                response.headers_mut().insert("content-type", v);
            }
            response
        }
        // The backend went away between the readiness check and the request (a killed
        // leader): the connection is refused, as through a Service whose endpoint just died.
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            axum::Json(serde_json::json!({"error": format!("backend {base}: {e}")})),
        )
            .into_response(),
    }
}
