//! `pie-controller`: reconciles PieProbes into probe CronJobs and PVCs, and pushes what its
//! probes find to remote write. The subcommands are composed in `pie_controller::apps`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use pie_controller::apps::receive::ReceiveArgs;
use pie_controller::apps::run::RunArgs;
use pie_controller::apps::{self, ProbeArgs};
use pie_controller::{crd, signal};

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
    Run(Box<RunArgs>),
    /// Print the objects `run` would apply for PieProbes and Nodes read from files.
    Plan(PlanArgs),
    /// Print the PieProbe CustomResourceDefinition as YAML.
    Crd,
    /// Receive probe results and push them, without Kubernetes.
    Receive(ReceiveArgs),
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

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// `e` and its causes on one line, each said once: pie's error types already end their message
/// with their source's, anyhow's contexts (`reading FILE`) do not.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Crd => print!("{}", crd::crd_yaml()?),
        Command::Plan(args) => {
            let classes = args.storage_classes.as_deref().map(read).transpose()?;
            let (yaml, blocked) = apps::plan::render(
                &read(&args.filename)?,
                &read(&args.nodes)?,
                classes.as_deref(),
                &args.probe.config(),
            )?;
            print!("{yaml}");
            anyhow::ensure!(blocked.is_empty(), "not planned: {}", blocked.join("; "));
        }
        Command::Run(args) => {
            init_logs();
            tokio::runtime::Runtime::new()?.block_on(apps::run::run(*args))?;
        }
        Command::Receive(args) => {
            init_logs();
            tokio::runtime::Runtime::new()?
                .block_on(apps::receive::run(args, signal::shutdown()))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn an_error_is_one_line_that_says_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("binding on 127.0.0.1:1: {0}")]
        struct Bind(#[source] std::io::Error);
        let in_use = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let e = anyhow::Error::new(Bind(in_use)).context("starting");
        assert_eq!(
            one_line(&e),
            "starting: binding on 127.0.0.1:1: Address already in use"
        );
        let e = anyhow::anyhow!("line one\nline two").context("reading f");
        assert_eq!(one_line(&e), "reading f: line one line two");
    }

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
            "--kube-qps",
            "20",
            "--kube-burst",
            "30",
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
        assert_eq!((args.kube.kube_qps, args.kube.kube_burst), (20.0, 30));

        let Command::Run(defaults) = Cli::try_parse_from(["pie-controller", "run"])
            .unwrap()
            .command
        else {
            panic!("not run")
        };
        assert!(defaults.leader_elect);
        assert!(defaults.namespaces.is_empty());
        assert_eq!(defaults.health_addr, ":8081");
        assert_eq!(
            (defaults.kube.kube_qps, defaults.kube.kube_burst),
            (100.0, 200)
        );
    }
}
