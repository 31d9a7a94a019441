//! Raw TCP listeners (`protocol: tcp`): each connection is tunnelled to a backend of the
//! listener's pool, chosen by the pool's balancing and health checks, with connect failover
//! and an idle timeout. Allow/deny lists are applied at accept (Pingora's connection filter),
//! or, on a listener with `proxy_protocol`, to the client its header names (the socket peer
//! is the balancer). `send_proxy_protocol` opens each backend connection with a header of
//! its own that carries the client's address.

use crate::runtime::policy::acl;
use crate::runtime::pool::{client_ip_key, InflightGuard};
use crate::runtime::snapshot::EdgePolicy;
use crate::runtime::{HashOn, State};
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::listeners::ConnectionFilter;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const DEFAULT_IDLE: Duration = Duration::from_secs(3600);
const DEFAULT_RETRIES: u32 = 2;

pub struct TcpProxy {
    pub state: Arc<State>,
    pub listener: String,
}

/// Refuses connections from denied addresses before anything is read.
pub struct AcceptFilter {
    pub state: Arc<State>,
    pub listener: String,
}

impl std::fmt::Debug for AcceptFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AcceptFilter")
    }
}

#[async_trait]
impl ConnectionFilter for AcceptFilter {
    async fn should_accept(&self, addr: Option<&SocketAddr>) -> bool {
        let snap = self.state.snapshot();
        if snap.proxy_protocol.contains_key(&self.listener) {
            // The peer is a balancer: the client is known once its header is read.
            return true;
        }
        permitted(addr.map(|a| a.ip().to_canonical()), &snap.edge)
    }
}

fn permitted(ip: Option<IpAddr>, edge: &EdgePolicy) -> bool {
    let ok = acl::permits(ip, &edge.allow, &edge.deny);
    if !ok {
        log::info!("tcp: refused a connection from {ip:?} (edge allow/deny)");
    }
    ok
}

/// The client's address and the one it connected to, as the stream's socket digest has them
/// (the PROXY header's, when the listener reads one).
fn addresses(io: &Stream) -> Option<(SocketAddr, SocketAddr)> {
    let digest = io.get_socket_digest()?;
    let peer = *digest.peer_addr()?.as_inet()?;
    let local = *digest.local_addr()?.as_inet()?;
    Some((peer, local))
}

fn peer_ip(io: &Stream) -> Option<IpAddr> {
    let digest = io.get_socket_digest()?;
    digest.peer_addr()?.as_inet().map(|a| a.ip().to_canonical())
}

#[async_trait]
impl ServerApp for TcpProxy {
    async fn process_new(self: &Arc<Self>, io: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let snap = self.state.snapshot();
        let listener = snap
            .loaded
            .config
            .listeners
            .iter()
            .find(|l| l.name == self.listener)?;
        let pool = snap.pools.get(listener.pool.as_deref()?)?.clone();
        let idle = listener.idle.map(|d| d.get()).unwrap_or(DEFAULT_IDLE);
        let retries = listener.retries.unwrap_or(DEFAULT_RETRIES);
        let client = peer_ip(&io);
        if snap.proxy_protocol.contains_key(&self.listener) && !permitted(client, &snap.edge) {
            return None;
        }
        let send_header = listener
            .send_proxy_protocol
            .map(|v| crate::proxy_protocol::encode(v, addresses(&io)));
        let mut buf = [0u8; 16];
        // The same key as HTTP routes use, so a client lands on the same backend either way.
        let key = match &pool.hash_on {
            Some(HashOn::ClientIp) => client_ip_key(client, &mut buf),
            _ => b"",
        };
        let mut tried: Vec<SocketAddr> = Vec::new();
        loop {
            // The backend's `max_inflight` slot is taken with the choice, before the connect
            // yields, so simultaneous connections cannot all pass the same free slot.
            let (member, slot) = match pool.select_reserved(key, None, |a| !tried.contains(a)) {
                Ok(chosen) => chosen,
                Err(why) => {
                    log::warn!("tcp {}: no backend for {client:?} ({why:?})", self.listener);
                    return None;
                }
            };
            let connect = pool.config.timeouts.connect.get();
            match tokio::time::timeout(connect, TcpStream::connect(member.addr)).await {
                Ok(Ok(mut upstream)) => {
                    pool.record_outcome(&member, false);
                    if let Some(header) = &send_header {
                        if let Err(e) = upstream.write_all(header).await {
                            log::info!(
                                "tcp {}: backend {} closed before the PROXY header: {e}",
                                self.listener,
                                member.addr
                            );
                            return None;
                        }
                    }
                    self.tunnel(io, upstream, slot, idle, shutdown.clone())
                        .await;
                    return None;
                }
                Ok(Err(_)) | Err(_) => {
                    crate::metrics::CONNECT_FAILURES
                        .with_label_values(&[pool.name.as_str(), &member.label])
                        .inc();
                    pool.record_outcome(&member, true);
                    tried.push(member.addr);
                    if tried.len() as u32 > retries {
                        return None;
                    }
                }
            }
        }
    }
}

impl TcpProxy {
    async fn tunnel(
        &self,
        client: Stream,
        upstream: TcpStream,
        _slot: InflightGuard,
        idle: Duration,
        mut shutdown: ShutdownWatch,
    ) {
        let _ = upstream.set_nodelay(true);
        crate::metrics::TCP_CONNECTIONS
            .with_label_values(&[self.listener.as_str()])
            .inc();
        let started = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let (cr, cw) = tokio::io::split(client);
        let (ur, uw) = upstream.into_split();
        let up = pump(cr, uw, last.clone(), started);
        let down = pump(ur, cw, last.clone(), started);
        let watchdog = async {
            loop {
                tokio::time::sleep(idle.min(Duration::from_secs(1))).await;
                let quiet = started
                    .elapsed()
                    .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if quiet >= idle {
                    return;
                }
            }
        };
        let (sent, received) = tokio::select! {
            (a, b) = async { tokio::join!(up, down) } => (a, b),
            _ = watchdog => (0, 0),
            _ = shutdown.changed() => (0, 0),
        };
        let bytes = &crate::metrics::TCP_BYTES;
        bytes
            .with_label_values(&[self.listener.as_str(), "upstream"])
            .inc_by(sent);
        bytes
            .with_label_values(&[self.listener.as_str(), "downstream"])
            .inc_by(received);
    }
}

/// Copies one direction until EOF, noting the time of every transfer; then half-closes.
async fn pump<R, W>(mut from: R, mut to: W, last: Arc<AtomicU64>, started: Instant) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Pingora's client stream buffers writes: flush so interactive protocols see replies.
        if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
            break;
        }
        total += n as u64;
        last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
    total
}
