//! The `modelgate` command line: its arguments, and every command but `serve` (in [`serve`]):
//! `validate`, the admin CLI, `cluster`, `profile`, `evaluate`.

/// mimalloc for the gateway's own allocations (ONNX Runtime keeps the C allocator): see Cargo.toml.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod serve;

use anyhow::Context;
use clap::{Parser, Subcommand};
use modelgate::admin::AdminState;
use modelgate::backend::runtime;
use modelgate::config::Config;
use modelgate::protocol::request_id::IdCodec;
use modelgate::quality::evaluate::Gate;
use modelgate::rollout::control::Options;
use modelgate::rollout::Controller;
use modelgate::server::{self, AppState, ListenerSettings};
use modelgate::telemetry::{self, LogFormat, Telemetry};
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
    /// Async worker threads (default: one per core). Inference runs on its own threads.
    #[arg(long, global = true, env = "MODELGATE_WORKERS")]
    workers: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The routes file.
    #[arg(long, short, default_value = "routes.yaml")]
    config: PathBuf,
    /// Inference listener address; overrides server.listen.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin listener address; overrides server.admin_listen.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Open Inference Protocol gRPC listener address; overrides server.grpc_listen.
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// ONNX Runtime shared library; overrides ORT_DYLIB_PATH and server.ort_library.
    #[arg(long)]
    ort_library: Option<PathBuf>,
    /// Folder for persisted rollout status; overrides server.state_dir.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// File holding the admin bearer token (else MODELGATE_ADMIN_TOKEN).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// PEM certificate chain for the inference listener (with --tls-key); overrides server.tls.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for the inference listener.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM certificate chain for the admin listener (with --admin-tls-key); overrides server.admin_tls.
    #[arg(long, requires = "admin_tls_key")]
    admin_tls_cert: Option<PathBuf>,
    /// PEM private key for the admin listener.
    #[arg(long, requires = "admin_tls_cert")]
    admin_tls_key: Option<PathBuf>,
    /// Require admin clients to present a certificate chaining to a CA in this PEM file.
    #[arg(long, requires = "admin_tls_cert")]
    admin_client_ca: Option<PathBuf>,
}

impl ServeArgs {
    /// The listeners' TLS: flags over the file's `server.tls` / `server.admin_tls`.
    fn apply_tls(&self, settings: &mut modelgate::config::ServerSettings) {
        use modelgate::config::TlsSettings;
        let every = std::time::Duration::from_secs(10);
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            let reload_interval = settings.tls.as_ref().map_or(every, |t| t.reload_interval);
            settings.tls = Some(TlsSettings { cert: cert.clone(), key: key.clone(), client_ca: None, reload_interval });
        }
        if let (Some(cert), Some(key)) = (&self.admin_tls_cert, &self.admin_tls_key) {
            let reload_interval = settings.admin_tls.as_ref().map_or(every, |t| t.reload_interval);
            settings.admin_tls = Some(TlsSettings {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.admin_client_ca.clone(),
                reload_interval,
            });
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve the routes of a routes.yaml; edits to the file (or SIGHUP) reload it.
    Serve(ServeArgs),
    /// Show every route's rollout (admin API).
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show the fleet: replicas, leader, spec revisions, last publications (admin API).
    Cluster {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Promote a route's candidate: one canary step, or `--full`; an A/B arm with `--variant`.
    Promote {
        /// Route: model name or path prefix.
        route: String,
        /// Skip the remaining canary steps.
        #[arg(long)]
        full: bool,
        /// A/B: the winning arm.
        #[arg(long)]
        variant: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Take a route's candidate out (canary to 0%, blue-green back, A/B to the file's weights).
    Rollback {
        /// Route: model name or path prefix.
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop a route's automatic canary steps where they stand.
    Pause {
        /// Route: model name or path prefix.
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Start a route's automatic canary steps again.
    Resume {
        /// Route: model name or path prefix.
        route: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Set a canary route's weight by hand (0-100).
    Weight {
        /// Route: model name or path prefix.
        route: String,
        /// Percent of traffic to the canary.
        weight: f64,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Benchmark: run one ONNX model in a tight loop on N threads, no HTTP, no JSON (the limit
    /// the gateway's in-process inference can approach).
    #[command(hide = true)]
    BenchOnnx {
        /// The model file.
        model: PathBuf,
        /// Threads, each with its own session.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// How long.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// ONNX Runtime shared library.
        #[arg(long)]
        ort_library: Option<PathBuf>,
    },
    /// Write a model's reference profile (per input feature and output column: histogram on the
    /// reference deciles, range, NaN share, categories) from reference rows.
    Profile {
        /// The ONNX model (one input, `[rows, features]`).
        #[arg(long)]
        model: PathBuf,
        /// Rows as JSON: `[[...], ...]`, `{"samples": [{"features": [...]}]}` or an inference request.
        #[arg(long)]
        data: PathBuf,
        /// Where to write the profile (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
        /// ONNX Runtime shared library; overrides ORT_DYLIB_PATH.
        #[arg(long)]
        ort_library: Option<PathBuf>,
    },
    /// CI model gate: compare a candidate with the baseline on held-out labelled rows. Exit 0
    /// when the candidate is shown no worse than --max-regression, 1 when it is not, 2 on errors.
    Evaluate {
        /// The production model.
        #[arg(long)]
        baseline: PathBuf,
        /// The model that wants to replace it.
        #[arg(long)]
        candidate: PathBuf,
        /// Labelled rows: `{"samples": [{"features": [...], "label": ...}]}`.
        #[arg(long)]
        data: PathBuf,
        /// accuracy | auc | rmse.
        #[arg(long, default_value = "accuracy")]
        metric: String,
        /// Largest regression allowed, in the metric's units (0.01 = one accuracy point).
        #[arg(long, default_value_t = 0.0)]
        max_regression: f64,
        /// Confidence of the one-sided bound on the regression.
        #[arg(long, default_value_t = 0.95)]
        confidence: f64,
        /// Paired bootstrap resamples.
        #[arg(long, default_value_t = 2000)]
        resamples: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// ONNX Runtime shared library; overrides ORT_DYLIB_PATH.
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

/// Where the admin API is, and how to talk to it.
#[derive(clap::Args)]
struct AdminArgs {
    /// The gateway's admin listener.
    #[arg(long, env = "MODELGATE_ADMIN_URL", default_value = "http://127.0.0.1:9090")]
    admin_url: String,
    /// CA file (PEM) to trust for an https admin URL; else the system's roots.
    #[arg(long, env = "MODELGATE_ADMIN_CA")]
    admin_ca: Option<PathBuf>,
    /// Client certificate (PEM) for an admin listener that requires one (with --admin-key).
    #[arg(long, env = "MODELGATE_ADMIN_CERT", requires = "admin_key")]
    admin_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "MODELGATE_ADMIN_KEY", requires = "admin_cert")]
    admin_key: Option<PathBuf>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs one admin call and prints its answer.
async fn admin_call(
    admin: AdminArgs,
    route: Option<&str>,
    action: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<()> {
    use modelgate::admin::client;
    let token = std::env::var("MODELGATE_ADMIN_TOKEN").ok();
    let (method, path) = match route {
        None if action == "cluster" => (http::Method::GET, "/admin/cluster".to_string()),
        None => (http::Method::GET, "/admin/routes".to_string()),
        Some(r) => (http::Method::POST, client::action_path(r, action)),
    };
    let tls = client::ClientTls {
        ca: admin.admin_ca.clone(),
        identity: admin.admin_cert.clone().zip(admin.admin_key.clone()),
    };
    let answer = client::call(&admin.admin_url, method, &path, body, token.as_deref(), &tls).await?;
    if admin.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else if action == "cluster" {
        print!("{}", client::cluster_table(&answer));
    } else if route.is_none() {
        print!("{}", client::status_table(&answer));
    } else {
        println!("{action} {}: applied (table generation {})", route.unwrap_or_default(), answer["generation"]);
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(cli.log_format);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.workers {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.enable_all().thread_name("modelgate-io").build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("modelgate: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Validate { config, ort_library } => validate(&config, ort_library.as_deref()).await,
            Command::Status { admin } => admin_call(admin, None, "status", None).await,
            Command::Cluster { admin } => admin_call(admin, None, "cluster", None).await,
            Command::Evaluate {
                baseline,
                candidate,
                data,
                metric,
                max_regression,
                confidence,
                resamples,
                json,
                ort_library,
            } => match Gate::new(&metric, max_regression, confidence, resamples) {
                Err(e) => Err(anyhow::anyhow!(e)),
                Ok(gate) => match evaluate([&baseline, &candidate], &data, gate, json, ort_library.as_deref()).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(anyhow::Error::new(GateFailed)),
                    Err(e) => Err(e),
                },
            },
            Command::Profile { model, data, out, ort_library } => {
                profile(&model, &data, out.as_deref(), ort_library.as_deref()).await
            }
            Command::BenchOnnx { model, threads, seconds, ort_library } => {
                let lib = runtime::locate(ort_library.as_deref(), None);
                let path = model.clone();
                let runs =
                    tokio::task::spawn_blocking(move || modelgate::backend::onnx::bench(&path, &lib, threads, seconds))
                        .await?
                        .map_err(anyhow::Error::msg)?;
                let per_sec = runs as f64 / seconds.max(1) as f64;
                let report = serde_json::json!({
                    "model": model.display().to_string(),
                    "threads": threads,
                    "runs": runs,
                    "runs_per_second": per_sec.round(),
                    "mean_us_per_run": 1e6 * threads.max(1) as f64 / per_sec.max(1e-9),
                });
                println!("{report}");
                Ok(())
            }
            Command::Promote { route, full, variant, admin } => {
                admin_call(
                    admin,
                    Some(&route),
                    "promote",
                    Some(serde_json::json!({ "full": full, "variant": variant })),
                )
                .await
            }
            Command::Rollback { route, admin } => admin_call(admin, Some(&route), "rollback", None).await,
            Command::Pause { route, admin } => admin_call(admin, Some(&route), "pause", None).await,
            Command::Resume { route, admin } => admin_call(admin, Some(&route), "resume", None).await,
            Command::Weight { route, weight, admin } => {
                admin_call(admin, Some(&route), "weight", Some(serde_json::json!({ "weight": weight }))).await
            }
            Command::Serve(args) => {
                let token = admin_token(args.admin_token_file.as_deref())?;
                serve::serve(&args, token).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<GateFailed>() => ExitCode::from(1),
        Err(e) => {
            eprintln!("modelgate: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The admin token: from a file, else from MODELGATE_ADMIN_TOKEN; never logged.
fn admin_token(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let token = match file {
        Some(f) => Some(
            std::fs::read_to_string(f).with_context(|| format!("cannot read the admin token file {}", f.display()))?,
        ),
        None => std::env::var("MODELGATE_ADMIN_TOKEN").ok(),
    };
    Ok(token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
}

/// Loads every routed backend of a validated config and builds the first table: the same steps
/// for `validate` and `serve`. `state_dir` resumes persisted rollouts (serve only).
async fn start(
    config: Config,
    ort_flag: Option<&Path>,
    state_dir: Option<PathBuf>,
) -> anyhow::Result<(Config, Arc<Controller>)> {
    let ort_library = runtime::locate(ort_flag, config.server.ort_library.as_deref());
    let options = Options { ort_library, telemetry: Telemetry::new(), state_dir };
    let controller = Controller::start(config.clone(), options).await?;
    Ok((config, controller))
}

async fn validate(path: &Path, ort_flag: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    // The certificate files parse and go with their keys, as `serve` will need them.
    for (listener, tls) in [("server.tls", &config.server.tls), ("server.admin_tls", &config.server.admin_tls)] {
        if let Some(tls) = tls {
            modelgate::tls::server_config(tls).with_context(|| format!("{}: {listener}", path.display()))?;
        }
    }
    let (config, _) = start(config, ort_flag, None).await?;
    println!("{}: ok ({} backends, {} routes)", path.display(), config.backends.len(), config.routes.len());
    Ok(())
}

/// `modelgate evaluate`'s verdict against the candidate (exit code 1; the table says why).
#[derive(Debug)]
struct GateFailed;

impl std::fmt::Display for GateFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the candidate is not shown within the allowed regression")
    }
}

impl std::error::Error for GateFailed {}

/// `modelgate evaluate`: both models on the labelled rows; prints the comparison, returns the verdict.
async fn evaluate(models: [&Path; 2], data: &Path, gate: Gate, json: bool, ort: Option<&Path>) -> anyhow::Result<bool> {
    let text = std::fs::read(data).with_context(|| format!("cannot read {}", data.display()))?;
    let rows = modelgate::quality::profile::read_rows(&text).map_err(|e| anyhow::anyhow!("{}: {e}", data.display()))?;
    let lib = runtime::locate(ort, None);
    let e = modelgate::backend::profile::evaluate_models(models[0], models[1], &rows, gate, &lib)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", data.display()))?;
    match json {
        true => println!("{}", serde_json::to_string_pretty(&e)?),
        false => print!("{}", e.table(&models[0].display().to_string(), &models[1].display().to_string())),
    }
    Ok(e.pass)
}

/// `modelgate profile`: reference rows through the model, a profile out.
async fn profile(model: &Path, data: &Path, out: Option<&Path>, ort_flag: Option<&Path>) -> anyhow::Result<()> {
    use modelgate::quality::profile::read_rows;
    let text = std::fs::read(data).with_context(|| format!("cannot read {}", data.display()))?;
    let rows = read_rows(&text).map_err(|e| anyhow::anyhow!("{}: {e}", data.display()))?;
    let lib = runtime::locate(ort_flag, None);
    let profile = modelgate::backend::profile::profile_model(model, &lib, rows).await.map_err(anyhow::Error::msg)?;
    let json = serde_json::to_string_pretty(&profile)? + "\n";
    match out {
        Some(path) => {
            std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "{}: {} rows, {} features, {} output columns",
                path.display(),
                profile.rows,
                profile.features.len(),
                profile.outputs.len()
            );
        }
        None => print!("{json}"),
    }
    Ok(())
}
