//! `pie-controller`: reconciles PieProbes, tracks probe outcomes and pushes them to VictoriaMetrics.

use clap::Parser;

/// pie's controller.
#[derive(Debug, Parser)]
#[command(name = "pie-controller", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
