//! `loadtest`: drive load at a modelgate (or any loopback HTTP server) and print a JSON report.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = loadtest::Args::parse();
    let report = loadtest::run(args).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
