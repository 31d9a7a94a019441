//! The floor under switchyard's per-request cost: a Pingora proxy with nothing in it.
//!
//! One listener, one upstream, an empty `ProxyHttp` (no filters, no context, no metrics),
//! one worker thread (or THREADS) without work stealing, upstream keep-alive; with CERT and
//! KEY (PEM files) the listener terminates TLS (Pingora's rustls defaults). The load harness
//! runs it beside nginx and switchyard (docs/benchmarks.md, "What Pingora itself costs") to
//! split the gap to nginx into Pingora's share and switchyard's.
//!
//! ```sh
//! cargo build --release --example bare_pingora
//! taskset -c 1 target/release/examples/bare_pingora 127.0.0.1:18080 127.0.0.1:18081 [THREADS [CERT KEY]]
//! ```

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::net::SocketAddr;

/// The allocator switchyard uses, so that the comparison is of the proxy code alone.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: bare_pingora LISTEN UPSTREAM [THREADS [CERT KEY]] (host:port each)";

/// Sends every request to one upstream address.
struct Bare(SocketAddr);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        anyhow::bail!(USAGE);
    };
    let upstream: SocketAddr = upstream.parse()?;
    let threads = args.next().map_or(Ok(1), |t| t.parse())?;
    let conf = ServerConf {
        threads,
        work_stealing: false,
        upstream_keepalive_pool_size: 128,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Bare(upstream));
    match (args.next(), args.next(), args.next()) {
        (Some(cert), Some(key), None) => proxy.add_tls(&listen, &cert, &key)?,
        (None, None, None) => proxy.add_tcp(&listen),
        _ => anyhow::bail!(USAGE),
    }
    server.add_service(proxy);
    server.run_forever()
}
