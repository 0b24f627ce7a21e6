//! `pie-agent`: the probe binary that runs inside pie's probe Pods.

use clap::Parser;

/// The probe that runs inside pie's probe Pods.
#[derive(Debug, Parser)]
#[command(name = "pie-agent", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
