//! The `modelgate` command: `serve` and `validate`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use modelgate::backend::{self, runtime};
use modelgate::config::Config;
use modelgate::routing::{RouteTable, SharedTable};
use modelgate::server::{self, AppState};
use modelgate::telemetry::{self, LogFormat};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "modelgate", version, about = "Model-serving traffic gateway")]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the routes of a routes.yaml.
    Serve {
        /// The routes file.
        #[arg(long, short, default_value = "routes.yaml")]
        config: PathBuf,
        /// Inference listener address; overrides server.listen.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// ONNX Runtime shared library; overrides ORT_DYLIB_PATH and server.ort_library.
        #[arg(long)]
        ort_library: Option<PathBuf>,
    },
    /// Check a routes.yaml and load every model in it; exit non-zero on any error.
    Validate {
        /// The routes file.
        #[arg(default_value = "routes.yaml")]
        config: PathBuf,
        /// ONNX Runtime shared library; overrides ORT_DYLIB_PATH and server.ort_library.
        #[arg(long)]
        ort_library: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format);
    let result = match cli.command {
        Command::Validate {
            config,
            ort_library,
        } => validate(&config, ort_library.as_deref()),
        Command::Serve {
            config,
            listen,
            ort_library,
        } => serve(&config, listen, ort_library.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modelgate: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Reads, validates and loads every backend: the same steps for `validate` and `serve`.
fn load(path: &Path, ort_flag: Option<&Path>) -> anyhow::Result<(Config, backend::BackendSet)> {
    let config = Config::load(path)?;
    let library = runtime::locate(ort_flag, config.server.ort_library.as_deref());
    let backends = backend::load_all(&config, &library)?;
    Ok((config, backends))
}

fn validate(path: &Path, ort_flag: Option<&Path>) -> anyhow::Result<()> {
    let (config, backends) = load(path, ort_flag)?;
    println!(
        "{}: ok ({} backends loaded, {} routes)",
        path.display(),
        backends.len(),
        config.routes.len()
    );
    Ok(())
}

fn serve(path: &Path, listen: Option<SocketAddr>, ort_flag: Option<&Path>) -> anyhow::Result<()> {
    let (mut config, backends) = load(path, ort_flag)?;
    if let Some(addr) = listen {
        config.server.listen = addr;
    }
    let table = SharedTable::new(RouteTable::build(&config, &backends, 1));
    drop(backends);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("modelgate-io")
        .build()?;
    runtime.block_on(async {
        let addr = config.server.listen;
        let listener =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (server.listen / --listen)"))?;
        let local = listener.local_addr()?;
        tracing::info!(%local, routes = table.load().routes().len(), config = %path.display(), "modelgate serving");
        println!("modelgate: listening on http://{local}");
        let state = Arc::new(AppState { table, settings: config.server.clone() });
        server::serve(listener, state, server::shutdown_signal()).await;
        Ok(())
    })
}
