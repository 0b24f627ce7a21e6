//! `pie-controller`: reconciles PieProbes into probe CronJobs and PVCs.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{ArgAction, Parser, Subcommand};
use pie_controller::run::{Handles, RunOptions};
use pie_controller::{crd, health, offline, plan, run};

/// pie's controller.
#[derive(Debug, Parser)]
#[command(name = "pie-controller", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reconcile PieProbes into probe CronJobs and PVCs.
    Run(RunArgs),
    /// Print the objects `run` would apply for PieProbes and Nodes read from files.
    Plan(PlanArgs),
    /// Print the PieProbe CustomResourceDefinition as YAML.
    Crd,
    /// Receive probe results and push them, without Kubernetes.
    Receive(pie_controller::receive::ReceiveArgs),
}

/// Probe object settings shared by `plan` and `run`.
#[derive(Debug, clap::Args)]
struct ProbeArgs {
    /// Image of pie-agent, run by every probe Pod.
    #[arg(
        long,
        env = "PIE_AGENT_IMAGE",
        default_value = "ghcr.io/pie-rs/pie-agent:latest"
    )]
    agent_image: String,
    /// URL mount probes post their results to.
    #[arg(
        long,
        env = "PIE_CONTROLLER_URL",
        default_value = "http://pie-controller.pie.svc:8082"
    )]
    controller_url: String,
    /// ServiceAccount of probe Pods (default: the namespace's default ServiceAccount).
    #[arg(long, env = "PIE_PROBE_SERVICE_ACCOUNT")]
    probe_service_account: Option<String>,
    /// Image pull secret of probe Pods (repeatable; comma-separated in the env var).
    #[arg(
        long = "image-pull-secret",
        env = "PIE_IMAGE_PULL_SECRETS",
        value_delimiter = ','
    )]
    image_pull_secrets: Vec<String>,
}

impl ProbeArgs {
    fn config(&self) -> plan::Config {
        plan::Config {
            agent_image: self.agent_image.clone(),
            controller_url: self.controller_url.clone(),
            probe_service_account: self.probe_service_account.clone(),
            image_pull_secrets: self.image_pull_secrets.clone(),
        }
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    probe: ProbeArgs,
    /// Namespace whose PieProbes are reconciled (repeatable; comma-separated in the env var).
    /// Default: all namespaces.
    #[arg(long = "namespace", env = "PIE_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Reconcile only while holding the Lease `pie-controller`.
    #[arg(long, env = "PIE_LEADER_ELECT", default_value_t = true, action = ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the Lease (default: the controller's own namespace).
    #[arg(long, env = "PIE_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's identity in the Lease.
    #[arg(long, env = "PIE_POD_NAME")]
    pod_name: Option<String>,
    /// Address of /healthz and /readyz (`:PORT` for all interfaces).
    #[arg(long, env = "PIE_HEALTH_ADDR", default_value = ":8081")]
    health_addr: String,
    #[command(flatten)]
    listen: pie_controller::receive::ListenArgs,
    #[command(flatten)]
    push: pie_controller::push::PushArgs,
}

#[derive(Debug, clap::Args)]
struct PlanArgs {
    /// File with one or more PieProbes (YAML, multi-document or a List).
    #[arg(short = 'f', long = "filename", env = "PIE_PLAN_FILENAME")]
    filename: PathBuf,
    /// Nodes as `kubectl get nodes -o yaml` prints them (a List, a Node, or multi-document).
    #[arg(long, env = "PIE_PLAN_NODES")]
    nodes: PathBuf,
    /// StorageClasses (as `kubectl get storageclasses -o yaml`); default: every one exists.
    #[arg(long, env = "PIE_PLAN_STORAGE_CLASSES")]
    storage_classes: Option<PathBuf>,
    #[command(flatten)]
    probe: ProbeArgs,
}

fn read(path: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => print!("{}", crd::crd_yaml()?),
        Command::Plan(args) => {
            let classes = args.storage_classes.as_ref().map(read).transpose()?;
            let (yaml, blocked) = offline::render(
                &read(&args.filename)?,
                &read(&args.nodes)?,
                classes.as_deref(),
                &args.probe.config(),
            )?;
            print!("{yaml}");
            anyhow::ensure!(blocked.is_empty(), "not planned: {}", blocked.join("; "));
        }
        Command::Run(args) => tokio::runtime::Runtime::new()?.block_on(run_controller(args))?,
        Command::Receive(args) => {
            init_logs();
            tokio::runtime::Runtime::new()?
                .block_on(pie_controller::receive::run(args, run::shutdown_signal()))?;
        }
    }
    Ok(())
}

fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
}

async fn run_controller(args: RunArgs) -> anyhow::Result<()> {
    init_logs();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let health = Arc::new(health::Health::default());
    let addr = health::parse_addr(&args.health_addr).context("--health-addr")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tokio::spawn(health::serve(listener, health.clone()));
    let identity = args
        .pod_name
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "pie-controller".into());
    let options = RunOptions {
        namespaces: args.namespaces,
        leader_elect: args.leader_elect,
        lease_namespace: args
            .lease_namespace
            .unwrap_or_else(|| client.default_namespace().to_owned()),
        identity,
    };
    let handles = Handles::default();
    let pusher = pie_controller::serve::start(
        &args.listen,
        &args.push,
        client.clone(),
        handles.clone(),
        health.clone(),
    )
    .await?;
    let outcome = run::run(
        client,
        args.probe.config(),
        options,
        health,
        handles,
        pusher.clone(),
    )
    .await;
    pusher.shutdown(std::time::Duration::from_secs(10)).await;
    outcome?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn receive_and_push_flags() {
        let cli = Cli::try_parse_from([
            "pie-controller",
            "receive",
            "--listen",
            "127.0.0.1:9",
            "--auth-token-file",
            "/t",
            "--remote-write-url",
            "http://vm/api/v1/write",
            "--external-label",
            "cluster=a",
        ])
        .unwrap();
        let Command::Receive(args) = cli.command else {
            panic!("not receive")
        };
        assert_eq!(args.listen.listen, "127.0.0.1:9");
        assert_eq!(args.push.external_labels, [("cluster".into(), "a".into())]);
        let Command::Run(args) = Cli::try_parse_from([
            "pie-controller",
            "run",
            "--metrics-addr",
            ":9090",
            "--push-interval",
            "5s",
        ])
        .unwrap()
        .command
        else {
            panic!("not run")
        };
        assert_eq!(args.listen.listen, ":8082");
        assert_eq!(args.listen.metrics_addr.as_deref(), Some(":9090"));
        assert_eq!(args.push.push_interval.as_secs(), 5);
    }

    #[test]
    fn run_flags() {
        let cli = Cli::try_parse_from([
            "pie-controller",
            "run",
            "--namespace",
            "a",
            "--namespace",
            "b",
            "--leader-elect=false",
            "--image-pull-secret",
            "s1",
            "--image-pull-secret",
            "s2",
            "--agent-image",
            "img",
            "--controller-url",
            "http://c",
            "--health-addr",
            "127.0.0.1:9",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.namespaces, ["a", "b"]);
        assert!(!args.leader_elect);
        assert_eq!(args.probe.image_pull_secrets, ["s1", "s2"]);
        assert_eq!(args.probe.config().agent_image, "img");
        assert_eq!(args.health_addr, "127.0.0.1:9");

        let Command::Run(defaults) = Cli::try_parse_from(["pie-controller", "run"])
            .unwrap()
            .command
        else {
            panic!("not run")
        };
        assert!(defaults.leader_elect);
        assert!(defaults.namespaces.is_empty());
        assert_eq!(defaults.health_addr, ":8081");
    }
}
