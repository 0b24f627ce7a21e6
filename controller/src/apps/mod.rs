//! The subcommands as composition roots: each parses its flags into the shared parts
//! (the store and pusher, the listeners, the Kubernetes wiring) and starts them. What the
//! parts do is in the other folders; here is only which of them a subcommand uses.

use std::sync::Arc;

use tracing::{info, warn};

use crate::http::listen::{self, ListenError};
use crate::metrics::exposition;
use crate::metrics::push::Pusher;

pub mod plan;
pub mod receive;
pub mod run;

/// Where the receiver and `/metrics` listen; shared by `run` and `receive`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListenArgs {
    /// Address of the results receiver (`:PORT` for all interfaces).
    #[arg(long, env = "PIE_LISTEN", default_value = ":8082")]
    pub listen: String,
    /// Address of `/metrics` in the Prometheus text format (off unless given).
    #[arg(long, env = "PIE_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
}

/// Probe object settings shared by `plan` and `run`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Image of pie-agent, run by every probe Pod.
    #[arg(
        long,
        env = "PIE_AGENT_IMAGE",
        default_value = "ghcr.io/pie-rs/pie-agent:latest"
    )]
    pub agent_image: String,
    /// URL mount probes post their results to.
    #[arg(
        long,
        env = "PIE_CONTROLLER_URL",
        default_value = "http://pie-controller.pie.svc:8082"
    )]
    pub controller_url: String,
    /// ServiceAccount of probe Pods (default: the namespace's default ServiceAccount).
    #[arg(long, env = "PIE_PROBE_SERVICE_ACCOUNT")]
    pub probe_service_account: Option<String>,
    /// Image pull secret of probe Pods (repeatable; comma-separated in the env var).
    #[arg(
        long = "image-pull-secret",
        env = "PIE_IMAGE_PULL_SECRETS",
        value_delimiter = ','
    )]
    pub image_pull_secrets: Vec<String>,
}

impl ProbeArgs {
    /// The planner's settings.
    pub fn config(&self) -> crate::domain::plan::Config {
        crate::domain::plan::Config {
            agent_image: self.agent_image.clone(),
            controller_url: self.controller_url.clone(),
            probe_service_account: self.probe_service_account.clone(),
            image_pull_secrets: self.image_pull_secrets.clone(),
        }
    }
}

/// Starts `/metrics` on `metrics_addr` when given.
pub async fn serve_metrics(metrics_addr: Option<&str>, pusher: &Pusher) -> Result<(), ListenError> {
    let Some(value) = metrics_addr else {
        return Ok(());
    };
    let addr = listen::addr("--metrics-addr", value)?;
    let listener = listen::bind("binding /metrics on", addr).await?;
    info!(%addr, "serving /metrics");
    let refresh_pusher = pusher.clone();
    let refresh: exposition::Refresh = Arc::new(move || refresh_pusher.refresh_self_metrics());
    let store = pusher.store().clone();
    tokio::spawn(async move {
        if let Err(e) = exposition::serve(listener, store, refresh).await {
            warn!(error = %e, "/metrics server stopped");
        }
    });
    Ok(())
}
