//! `modelgate serve`: one gateway process — config and keys checked, backends loaded, the fleet
//! joined when routes.yaml has `cluster:`, the inference, gRPC and admin listeners started, and
//! on SIGTERM the drain (readiness false for `server.drain_delay`, then the listeners close).

use super::*;

pub(crate) async fn serve(args: &ServeArgs, token: Option<String>) -> anyhow::Result<()> {
    let path = args.config.as_path();
    let mut config = Config::load(path)?;
    // Registry backends: each alias is looked at once before serving, so a first start has
    // models to load; one that cannot be looked at serves the version fetched before, if any.
    let ort_library = runtime::locate(args.ort_library.as_deref(), config.server.ort_library.as_deref());
    let registry_errors = prefetch(&mut config, path, &ort_library).await?;
    args.apply_tls(&mut config.server);
    let feedback_key = std::env::var("MODELGATE_FEEDBACK_KEY").ok().filter(|k| !k.is_empty());
    if feedback_key.is_none() && !config.server.insecure_unsigned_feedback {
        anyhow::bail!(
            "refusing to serve {} without MODELGATE_FEEDBACK_KEY: request ids would be unsigned, so anyone could post \
             forged feedback and steer the rollouts. Set MODELGATE_FEEDBACK_KEY to a secret shared by every replica, \
             or, for a demo only, set `insecure_unsigned_feedback: true` under `server:` in {}",
            path.display(),
            path.display()
        );
    }
    let state_dir = args.state_dir.clone().unwrap_or_else(|| config.server.state_dir.clone());
    let admin_addr = args.admin_listen.unwrap_or(config.server.admin_listen);
    let client_auth = config.server.admin_tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    if !admin_addr.ip().is_loopback() && token.is_none() && !client_auth {
        anyhow::bail!(
            "refusing to serve the admin API on {admin_addr} without a token: anyone who reaches it could change rollouts. \
             Set MODELGATE_ADMIN_TOKEN (or --admin-token-file), require client certificates \
             (server.admin_tls.client_ca / --admin-client-ca), or keep server.admin_listen on 127.0.0.1"
        );
    }
    let tls = |listener: &'static str, tls: &Option<modelgate::config::TlsSettings>| {
        tls.as_ref()
            .map(|t| {
                modelgate::tls::listener_config(t, listener)
                    .with_context(|| format!("cannot serve TLS on the {listener} listener"))
            })
            .transpose()
    };
    let (listen, admin_listen, ort_flag) = (args.listen, args.admin_listen, args.ort_library.as_deref());
    // In a fleet, etcd holds the status; the state folder is for a gateway on its own.
    let state_dir = config.cluster.is_none().then_some(state_dir);
    let (config, controller) = match start(config, ort_flag, state_dir).await {
        Ok(started) => started,
        Err(e) if !registry_errors.is_empty() => {
            return Err(e.context(format!("the model registry failed: {}", registry_errors.join("; "))))
        }
        Err(e) => return Err(e),
    };
    let cluster = match config.cluster.clone() {
        Some(settings) => Some(
            modelgate::cluster::Cluster::join(settings, &controller)
                .await
                .context("cannot join the fleet (cluster:)")?,
        ),
        None => None,
    };
    controller.spawn_analysis(std::time::Duration::from_millis(250));
    controller.telemetry().spawn_upkeep(std::time::Duration::from_secs(5));
    if config.server.console {
        if let Some(c) = &cluster {
            controller.telemetry().series().set_peers(c.peers());
        }
        controller.telemetry().spawn_series();
    }
    if token.is_none() {
        tracing::warn!("no admin token (MODELGATE_ADMIN_TOKEN or --admin-token-file): admin changes are open to anyone who reaches the admin listener");
    }
    let mut settings = config.server.clone();
    settings.listen = listen.unwrap_or(settings.listen);
    settings.admin_listen = admin_listen.unwrap_or(settings.admin_listen);
    settings.grpc_listen = args.grpc_listen.or(settings.grpc_listen);
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen / --listen)", settings.listen))?;
    let admin = tokio::net::TcpListener::bind(settings.admin_listen).await.with_context(|| {
        format!("cannot listen on {} (server.admin_listen / --admin-listen)", settings.admin_listen)
    })?;
    let grpc = match settings.grpc_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (server.grpc_listen / --grpc-listen)"))?,
        ),
        None => None,
    };
    let (local, admin_local) = (listener.local_addr()?, admin.local_addr()?);

    let (_watch, reload) = controller.watch_file().with_context(|| format!("cannot watch {}", path.display()))?;
    modelgate::registry::spawn(&controller, ort_library, reload.clone());
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading routes");
            let _ = reload.send(()).await;
        }
    });

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let inference_tls = tls("inference", &settings.tls)?;
    let listener_settings = ListenerSettings::admin(&settings, tls("admin", &settings.admin_tls)?);
    let (scheme, admin_scheme) = (
        if inference_tls.is_some() { "https" } else { "http" },
        if listener_settings.tls.is_some() { "https" } else { "http" },
    );
    let admin_state = Arc::new(AdminState { controller: controller.clone(), token: token.clone() });
    let mut admin_stop = stop_rx.clone();
    let admin_task = tokio::spawn(server::serve_with(
        admin,
        listener_settings,
        async move {
            let _ = admin_stop.changed().await;
        },
        move |req, _peer| modelgate::admin::handle(admin_state.clone(), req),
    ));

    let grpc_local = grpc.as_ref().map(|g| g.local_addr()).transpose()?;
    tracing::info!(%local, admin = %admin_local, grpc = ?grpc_local, routes = config.routes.len(), config = %path.display(), "modelgate serving");
    println!("modelgate: listening on {scheme}://{local} (admin {admin_scheme}://{admin_local})");
    if let Some(g) = grpc_local {
        let scheme = if inference_tls.is_some() { "grpcs" } else { "grpc" };
        println!("modelgate: Open Inference Protocol gRPC on {scheme}://{g}");
    }
    // A log line, not stdout: callers read the lines above and may close the pipe after them.
    tracing::info!("operator console on {admin_scheme}://{admin_local}/ui/");
    if feedback_key.is_none() {
        tracing::warn!(
            "MODELGATE_FEEDBACK_KEY is not set (server.insecure_unsigned_feedback): request ids are not signed, so \
             anyone can forge feedback"
        );
    }
    let ids = IdCodec::new(feedback_key.map(String::into_bytes), settings.feedback_max_age);
    let state = Arc::new(AppState::new(controller.table(), settings, controller.telemetry().clone(), ids, token));
    if let Some(cluster) = &cluster {
        // Feedback counts once fleet-wide: each post is claimed in etcd.
        state.claim_feedback_through(cluster.fleet());
    }
    // SIGTERM/SIGINT drains the inference listeners together; the admin API stays up until
    // they are done, so status is readable during the drain.
    // Readiness turns false first and the listeners keep serving for server.drain_delay, so a
    // load balancer stops sending before connections are refused.
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let drained = state.clone();
    tokio::spawn(async move {
        server::shutdown_signal().await;
        drained.start_draining();
        let delay = drained.settings.drain_delay;
        if !delay.is_zero() {
            tracing::info!(?delay, "draining: readiness is false; still serving until the delay is over");
            tokio::time::sleep(delay).await;
        }
        let _ = drain_tx.send(true);
    });
    let draining = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|d| *d).await;
    };
    let grpc_task = grpc.map(|g| {
        tokio::spawn(server::grpc::serve(g, state.clone(), inference_tls.clone(), draining(drain_rx.clone())))
    });
    server::serve(listener, state, inference_tls, draining(drain_rx)).await;
    if let Some(task) = grpc_task {
        let _ = task.await;
    }
    // Captured lines accepted before the drain ended reach the disk before the process exits.
    let telemetry = controller.telemetry().clone();
    let synced =
        tokio::task::spawn_blocking(move || telemetry.quality.sync_captures(std::time::Duration::from_secs(5))).await;
    if !matches!(synced, Ok(true)) {
        tracing::warn!("labelled-data capture: some queued lines may not have reached the disk");
    }
    let _ = stop_tx.send(true);
    let _ = admin_task.await;
    if let Some(cluster) = cluster {
        cluster.leave().await;
    }
    Ok(())
}

/// Looks at every registry alias of `config` once; when a version was fetched, routes.yaml is
/// read again so that its backends name the downloaded files. Returns the failures (logged).
async fn prefetch(config: &mut Config, path: &Path, ort_library: &Path) -> anyhow::Result<Vec<String>> {
    let mut errors = Vec::new();
    let mut fetched = false;
    for outcome in modelgate::registry::prefetch(config, ort_library).await {
        match outcome {
            Ok(modelgate::registry::Outcome::Fetched(p)) => {
                tracing::info!(model = %p.model, alias = %p.alias, version = %p.version, sha256 = %p.sha256, "fetched from the registry");
                fetched = true;
            }
            Ok(modelgate::registry::Outcome::Unchanged(_)) => {}
            Err(e) => {
                tracing::error!("model registry: {e}");
                errors.push(e.to_string());
            }
        }
    }
    if fetched {
        *config = Config::load(path)?;
    }
    Ok(errors)
}
