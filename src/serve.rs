//! Assembles the Pingora server from a validated config: one proxy service per listener,
//! the admin service and the supervisor.

use crate::admin::Admin;
use crate::config::{self, Config, Protocol, ServerSettings};
use crate::proxy::connection::{ConnectionApp, PreTlsHeader, ProxyHeaderApp};
use crate::proxy::redirect::Redirect;
use crate::proxy::{Edge, Listener};
use crate::runtime::supervisor::Supervisor;
use crate::runtime::{Snapshot, State};
use crate::tcp::{AcceptFilter, TcpProxy};
use crate::tls::CertStore;
use anyhow::{Context, Result};
use pingora::apps::HttpServerOptions;
use pingora::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::prelude::{background_service, Opt};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Read buffer of a plaintext client connection. Pingora's default is 64 KiB, which every
/// idle keep-alive connection holds; request heads are far smaller and larger reads (bodies)
/// bypass an empty buffer. Measured (docs/benchmarks.md, scale): 64 KiB → 103 KB per idle
/// connection, 4 KiB → 43 KB (19 KB with the lean keep-alive loop), 1 KiB → 16 KB, with no
/// change in requests/s.
const PLAIN_READ_BUFFER: usize = 1024;
/// Read buffer of a TLS client connection: none. rustls reads whole records into its own
/// buffer, so a second one below it only copies; without it an idle TLS keep-alive connection
/// holds 17 KB instead of 36 KB, with the same syscalls per request (docs/benchmarks.md, TLS).
const TLS_READ_BUFFER: usize = 0;

/// How long the last queued log lines may take to be written at exit.
const EXIT_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

pub struct RunOptions {
    pub config: PathBuf,
    pub daemon: bool,
    pub upgrade: bool,
}

/// Loads the config, starts every service and never returns (Pingora owns the process).
pub fn run(opts: RunOptions) -> Result<()> {
    let path = opts.config.clone();
    let files = |c: &Config<config::Lenient>| crate::tls::check_files(c, path.parent());
    let loaded = config::load_file(&path, Some(&files))
        .map_err(|e| anyhow::anyhow!("{}", e.render(&path.display().to_string())))?;
    crate::process_log::configure(loaded.config.server.log_format);
    // Pingora leaves SIGHUP at its default, which ends the process; take it over before any
    // listener is up. The supervisor listens for it once it runs.
    signal_hook::flag::register(
        signal_hook::consts::SIGHUP,
        Arc::new(AtomicBool::new(false)),
    )
    .context("installing the SIGHUP handler")?;
    // Pingora acts on these too; the flag only makes answers say `Connection: close`.
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGQUIT] {
        signal_hook::flag::register(sig, crate::runtime::DRAINING.clone())
            .context("installing the shutdown handlers")?;
    }
    crate::metrics::init();

    let certs = certificate_stores(&loaded.config, &path)?;
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for the first snapshot")?
        .block_on(Snapshot::build(loaded.clone(), None));
    crate::metrics::reload("startup", true);
    let state = Arc::new(State::new(path, first, certs));

    let opt = Opt {
        upgrade: opts.upgrade,
        daemon: opts.daemon,
        ..Default::default()
    };
    let mut server =
        Server::new_with_opt_and_conf(opt, server_conf(&loaded.config.server, opts.daemon));
    // Bootstrap (taking the sockets over in `-u` mode) runs as a service the others wait for,
    // so that Pingora knows every listen address first and closes inherited sockets that the
    // new config no longer listens on.
    let bootstrap = server.bootstrap_as_a_service();
    let threads = loaded.config.server.threads;
    for l in &loaded.config.listeners {
        if l.proxy_protocol.is_some() {
            crate::proxy_protocol::register(&l.name);
        }
        if l.protocol == Protocol::Tcp {
            let app = TcpProxy {
                state: state.clone(),
                listener: l.name.clone(),
            };
            let app = ProxyHeaderApp::new(app, state.clone(), &l.name);
            let mut svc = Service::new(l.name.clone(), app);
            svc.set_connection_filter(Arc::new(AcceptFilter {
                state: state.clone(),
                listener: l.name.clone(),
            }));
            svc.add_tcp(&l.listen);
            svc.threads = Some(threads);
            server.add_service(svc).add_dependency(&bootstrap);
            continue;
        }
        if let Some(port) = l.redirect_to_https {
            let redirect = Redirect {
                port,
                state: state.clone(),
            };
            let app = ProxyHeaderApp::new(redirect, state.clone(), &l.name);
            let mut svc = Service::new(l.name.clone(), app);
            svc.add_tcp(&l.listen);
            svc.threads = Some(1);
            server.add_service(svc).add_dependency(&bootstrap);
            continue;
        }
        let edge = Edge {
            state: state.clone(),
            listener: Listener {
                name: l.name.clone(),
                tls: l.tls.is_some(),
            },
        };
        let mut proxy = pingora::proxy::http_proxy(&server.configuration, edge);
        let store = state
            .certs
            .iter()
            .find(|(n, _)| *n == l.name)
            .map(|(_, s)| s.clone());
        if store.is_none() {
            let mut options = HttpServerOptions::default();
            options.h2c = true;
            proxy.server_options = Some(options);
        }
        let app = ConnectionApp::new(proxy, state.clone(), &l.name);
        // A plaintext connection's PROXY header is read by this wrapper; a TLS one's before
        // the handshake (below), since Pingora terminates TLS before the app sees the stream.
        let app = ProxyHeaderApp::new(app, state.clone(), &l.name);
        let mut svc = Service::new(l.name.clone(), app);
        let (listener, read_buffer) = match store {
            Some(store) => {
                svc.endpoints().set_pre_tls_callback(Arc::new(PreTlsHeader {
                    state: state.clone(),
                    listener: l.name.clone(),
                }));
                (
                    ListenerConfig::tcp(l.listen.clone()).tls(crate::tls::listener_settings(store)),
                    TLS_READ_BUFFER,
                )
            }
            None => (ListenerConfig::tcp(l.listen.clone()), PLAIN_READ_BUFFER),
        };
        svc.add_listener(listener.l4_buffer(L4BufferSettings::new(
            read_buffer,
            DEFAULT_L4_WRITE_BUFFER_SIZE,
        )));
        svc.threads = Some(threads);
        server.add_service(svc).add_dependency(&bootstrap);
    }
    let mut admin = Service::new(
        "admin".to_string(),
        Admin {
            state: state.clone(),
        },
    );
    admin.add_tcp(&loaded.config.admin.listen);
    admin.threads = Some(1);
    server.add_service(admin).add_dependency(&bootstrap);
    #[cfg(feature = "rustls")]
    if let Some(acme) = acme_service(&loaded.config, &state)? {
        server
            .add_service(background_service("acme", acme))
            .add_dependency(&bootstrap);
    }
    let supervisor = Supervisor {
        state,
        lifecycle: Arc::new(crate::handover::Process::current(opts.daemon)),
    };
    server
        .add_service(background_service("supervisor", supervisor))
        .add_dependency(&bootstrap);
    log::info!(
        "switchyard {} serving {} listener(s), admin on {}",
        env!("CARGO_PKG_VERSION"),
        loaded.config.listeners.len(),
        loaded.config.admin.listen
    );
    server.run(pingora::server::RunArgs::default());
    // Log lines still queued would die with the process; a stalled reader gets a bounded wait.
    crate::logsink::flush(EXIT_FLUSH);
    std::process::exit(0)
}

/// One managed certificate per listener with `tls.acme`, if any has it.
#[cfg(feature = "rustls")]
fn acme_service(
    c: &Config,
    state: &Arc<crate::runtime::State>,
) -> Result<Option<crate::tls::acme::Service>> {
    use crate::config::AcmeChallenge;
    let base = state.path.parent();
    let state_dir = crate::tls::from_config_folder(base, &c.server.state_dir);
    let plaintext = c
        .listeners
        .iter()
        .find(|l| l.protocol == Protocol::Http && l.tls.is_none());
    let mut managed = Vec::new();
    for l in &c.listeners {
        let Some(acme) = l.tls.as_ref().and_then(|t| t.acme.as_ref()) else {
            continue;
        };
        let Some((_, store)) = state.certs.iter().find(|(n, _)| *n == l.name) else {
            continue;
        };
        let answers_on = match acme.challenge {
            AcmeChallenge::TlsAlpn01 => &l.listen,
            AcmeChallenge::Http01 => plaintext.map_or(&l.listen, |p| &p.listen),
        };
        let one = crate::tls::acme::Managed::new(
            &l.name,
            answers_on,
            acme,
            &state_dir,
            base,
            store.clone(),
            state.acme.clone(),
        )
        .with_context(|| {
            format!(
                "listener {}: tls.acme keeps its account and certificates in server.state_dir {}, which cannot be written",
                l.name,
                state_dir.display()
            )
        })?;
        managed.push(one);
    }
    Ok((!managed.is_empty()).then_some(crate::tls::acme::Service { managed }))
}

fn certificate_stores(c: &Config, path: &std::path::Path) -> Result<Vec<(String, Arc<CertStore>)>> {
    let mut out = Vec::new();
    for l in &c.listeners {
        if let Some(tls) = &l.tls {
            let store = CertStore::new(&l.name, tls, path.parent())
                .with_context(|| format!("listener {}", l.name))?;
            out.push((l.name.clone(), Arc::new(store)));
        }
    }
    Ok(out)
}

/// `server:` mapped onto Pingora's own settings.
fn server_conf(s: &ServerSettings, daemon: bool) -> ServerConf {
    ServerConf {
        daemon,
        threads: s.threads,
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        grace_period_seconds: Some(s.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout_seconds),
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
        work_stealing: s.work_stealing,
        ..ServerConf::default()
    }
}
