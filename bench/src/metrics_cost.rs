//! What the `metrics` feature costs per request: the same layer over `MemoryStore` with
//! `.metrics(false)` and `.metrics(true)`, first with no recorder installed, then with the
//! Prometheus exporter's recorder (installed for the rest of the process, so this part runs
//! last). Paired ratios against metrics off; the app CPU column includes the recording
//! thread.

use std::sync::Arc;

use axum::routing::post;
use axum::Router;
use coatcheck::{KeyRing, Secure, SessionLayer};

use crate::http_level::{cc_incr, Http};
use crate::{section, BoxErr, Contender, Settings};

const SECRET: &str = "bench secret, at least thirty-two bytes long";

fn router(metrics: bool) -> Result<Router, BoxErr> {
    let layer = SessionLayer::builder(
        coatcheck_memory::MemoryStore::new(),
        KeyRing::new([SECRET])?,
    )
    .secure(Secure::Never)
    .metrics(metrics)
    .build()?;
    Ok(Router::new().route("/incr", post(cc_incr)).layer(layer))
}

async fn pair(clients: usize) -> Result<Vec<Contender>, BoxErr> {
    Ok(vec![
        Contender::new(
            "metrics off",
            Arc::new(Http::with_clients(router(false)?, clients, true).await?),
        )
        .reference("off"),
        Contender::new(
            "metrics on",
            Arc::new(Http::with_clients(router(true)?, clients, true).await?),
        ),
    ])
}

pub async fn run(s: &Settings) -> Result<(), BoxErr> {
    println!("## Metrics cost: POST /incr over MemoryStore, in-process\n");
    println!(
        "Each request makes three samples (the load's and the save's durations, the session's \
         size), sent to the recording thread.\n"
    );
    let clients = if s.quick { 100 } else { 1000 };
    section(
        "No recorder installed",
        &pair(clients).await?,
        16,
        clients,
        s,
    )
    .await?;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("installing the Prometheus recorder: {e}"))?;
    section("Prometheus recorder", &pair(clients).await?, 16, clients, s).await?;
    let text = handle.render();
    let recorded = text
        .lines()
        .find(|l| l.starts_with("db_client_operation_duration_count"))
        .unwrap_or("db_client_operation_duration_count: none");
    println!("Recorded (one series): `{recorded}`\n");
    Ok(())
}
