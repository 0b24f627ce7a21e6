//! `/healthz` (liveness) and `/readyz` (ready only on the leader with synced caches while the
//! API server answers, so a Service in front of several replicas routes probe results to the
//! leader, and none while the API server is away: results could not be checked then).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

/// Readiness inputs, flipped by the leader election and the cache sync.
#[derive(Debug, Default)]
pub struct Health {
    leader: AtomicBool,
    synced: AtomicBool,
    api_unreachable: AtomicBool,
}

impl Health {
    /// Records whether this replica holds the lease.
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// Records whether the API server answered lately (the Lease's renewals say).
    pub fn set_api_reachable(&self, reachable: bool) {
        self.api_unreachable.store(!reachable, Ordering::Relaxed);
    }

    /// Records whether the watch caches have synced.
    pub fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::Relaxed);
    }

    /// Whether this replica holds the Lease (always, without leader election).
    pub fn leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Leader with synced caches, and the API server answers.
    pub fn ready(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
            && self.synced.load(Ordering::Relaxed)
            && !self.api_unreachable.load(Ordering::Relaxed)
    }

    /// Why it is not ready (`None`: it is).
    pub fn not_ready_because(&self) -> Option<&'static str> {
        if self.api_unreachable.load(Ordering::Relaxed) {
            Some("the Kubernetes API server does not answer")
        } else if !self.leader.load(Ordering::Relaxed) {
            Some("not the leader")
        } else if !self.synced.load(Ordering::Relaxed) {
            Some("caches not synced")
        } else {
            None
        }
    }
}

/// The health routes; merge into another router or serve with [`serve`].
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, &'static str) {
    match health.not_ready_because() {
        None => (StatusCode::OK, "ready"),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Serves the health routes on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, health: Arc<Health>) -> std::io::Result<()> {
    axum::serve(listener, router(health)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get_status(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response.lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn readyz_needs_leadership_and_synced_caches() {
        let health = Arc::new(Health::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, health.clone()));
        assert_eq!(get_status(addr, "/healthz").await, "HTTP/1.1 200 OK");
        assert_eq!(
            get_status(addr, "/readyz").await,
            "HTTP/1.1 503 Service Unavailable"
        );
        health.set_leader(true);
        assert_eq!(
            get_status(addr, "/readyz").await,
            "HTTP/1.1 503 Service Unavailable"
        );
        health.set_synced(true);
        assert_eq!(get_status(addr, "/readyz").await, "HTTP/1.1 200 OK");
        health.set_api_reachable(false);
        assert_eq!(
            get_status(addr, "/readyz").await,
            "HTTP/1.1 503 Service Unavailable"
        );
        assert_eq!(
            health.not_ready_because(),
            Some("the Kubernetes API server does not answer")
        );
        health.set_api_reachable(true);
        assert_eq!(get_status(addr, "/readyz").await, "HTTP/1.1 200 OK");
        health.set_leader(false);
        assert_eq!(
            get_status(addr, "/readyz").await,
            "HTTP/1.1 503 Service Unavailable"
        );
    }
}
