//! `pie-controller`: reconciles PieProbes into probe CronJobs and PVCs.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use pie_controller::{crd, offline, plan};

/// pie's controller.
#[derive(Debug, Parser)]
#[command(name = "pie-controller", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the PieProbe CustomResourceDefinition as YAML.
    Crd,
    /// Print the objects `run` would apply for PieProbes and Nodes read from files.
    Plan(PlanArgs),
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
    }
    Ok(())
}
