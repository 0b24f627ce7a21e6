//! `pie-agent`: the probe binary that runs inside pie's probe Pods.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use pie_agent::app::{self, Exit};
use pie_agent::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    let exit = match run(cli.command) {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::NotDelivered
        }
    };
    if cli.report_peak_rss {
        match app::peak_rss_kib() {
            Some(kib) => eprintln!("pie-agent peak RSS (VmHWM): {kib} kB"),
            None => eprintln!("pie-agent peak RSS (VmHWM): unknown"),
        }
    }
    exit.into()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(command: Command) -> anyhow::Result<Exit> {
    Ok(match command {
        Command::Version => {
            println!("pie-agent {}", env!("CARGO_PKG_VERSION"));
            Exit::Success
        }
        Command::ProvisionProbe(args) => runtime()?.block_on(app::run_provision_probe(args)),
        Command::MountProbe(args) => runtime()?.block_on(app::run_mount_probe(*args)),
    })
}
