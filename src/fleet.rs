//! `switchyard fleet ADMIN_URL…`: reads `/health` from each node's admin listener and says
//! whether every node runs the same config (by its hash), when each last reloaded, and
//! whether each reaches its shared store. Non-zero when the hashes differ or a node does
//! not answer, so config management can check a rollout with it.

use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The fields of `/health` that `fleet` reads.
#[derive(Debug, Deserialize)]
struct Health {
    config_hash: String,
    #[serde(default)]
    last_reload: Option<LastReload>,
    #[serde(default)]
    redis: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LastReload {
    source: String,
    ok: bool,
    at: f64,
}

/// What one node answered.
struct Node {
    url: String,
    health: Result<Health>,
}

/// Prints one line per node and the verdict; `Ok(true)` when the fleet agrees.
pub fn run(urls: &[String]) -> Result<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    let nodes = rt.block_on(read_all(urls))?;
    for node in &nodes {
        println!("{}", line(node));
    }
    let (agree, verdict) = verdict(&nodes);
    println!("{verdict}");
    Ok(agree)
}

async fn read_all(urls: &[String]) -> Result<Vec<Node>> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .context("building the HTTP client")?;
    let asks = urls.iter().map(|url| {
        let client = client.clone();
        async move {
            let health = read(&client, url).await;
            Node {
                url: url.clone(),
                health,
            }
        }
    });
    Ok(futures::future::join_all(asks).await)
}

async fn read(client: &reqwest::Client, url: &str) -> Result<Health> {
    let base = url.trim_end_matches('/');
    let at = format!("{base}/health");
    let answer = client.get(&at).send().await.with_context(|| at.clone())?;
    let answer = answer.error_for_status().with_context(|| at.clone())?;
    let body = answer.bytes().await.with_context(|| at.clone())?;
    serde_json::from_slice(&body).with_context(|| format!("{at}: not a switchyard /health answer"))
}

fn line(node: &Node) -> String {
    match &node.health {
        Err(e) => format!("{}  unreachable: {e:#}", node.url),
        Ok(h) => {
            let reload = h.last_reload.as_ref().map_or("unknown".to_string(), |r| {
                let at = UNIX_EPOCH + Duration::from_secs_f64(r.at.max(0.0));
                let outcome = if r.ok { "ok" } else { "failed" };
                format!("{} ({}, {outcome})", rfc3339(at), r.source)
            });
            let redis = h.redis.as_deref().unwrap_or("unknown");
            format!(
                "{}  config {}  last reload {reload}  redis {redis}",
                node.url,
                short(&h.config_hash)
            )
        }
    }
}

/// Whether every node answered with the same hash, and the sentence that says so.
fn verdict(nodes: &[Node]) -> (bool, String) {
    let unreachable = nodes.iter().filter(|n| n.health.is_err()).count();
    let mut by_hash: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for n in nodes {
        if let Ok(h) = &n.health {
            by_hash.entry(&h.config_hash).or_default().push(&n.url);
        }
    }
    if by_hash.len() > 1 {
        let groups: Vec<String> = by_hash
            .iter()
            .map(|(hash, urls)| format!("{} on {}", short(hash), urls.join(", ")))
            .collect();
        return (
            false,
            format!("config hashes differ: {}", groups.join("; ")),
        );
    }
    if unreachable > 0 {
        return (false, format!("{unreachable} node(s) unreachable"));
    }
    match by_hash.keys().next() {
        Some(hash) => (
            true,
            format!(
                "in sync: {} node(s) run config {}",
                nodes.len(),
                short(hash)
            ),
        ),
        None => (false, "no node answered".to_string()),
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
