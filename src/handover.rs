//! Zero-downtime upgrades driven by `systemctl reload`, and the systemd readiness protocol.
//!
//! SIGHUP re-reads the config. When the reload finds something only a new process can apply
//! (the binary on disk was replaced, or listeners or `server:` settings changed), the process
//! hands over by itself, in the order Pingora 0.9.1's `daemon_wait_for_ready` is built for:
//! the new binary first validates the file (`check`), then is started with `-u`; once it
//! listens on `server.upgrade_sock` this process raises SIGQUIT on itself, and Pingora sends
//! the listening sockets over and drains. The new process tells systemd `MAINPID=` + `READY=1`
//! (the unit has `Type=notify`, `NotifyAccess=all`), so systemd follows the process that
//! serves. Anything that fails before the SIGQUIT leaves this process serving as it was.
//!
//! `Type=notify` rather than Pingora's documented `Type=forking` because daemon mode sends
//! stdout (the access log) away from journald.

use crate::runtime::State;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokio::process::{Child, Command};

/// How long the new process may take to validate the file and to open its upgrade socket.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How often a listener that is still not bound is reported.
const LISTEN_WARNING: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);

static HANDING_OVER: AtomicBool = AtomicBool::new(false);

/// What the running process was started as.
pub struct Process {
    exe: Option<PathBuf>,
    exe_stamp: Option<Stamp>,
    /// Daemon mode forks on start: a self-started successor could not be waited for.
    daemon: bool,
}

/// Identity of a file: `install` or a rename gives a new inode, an in-place copy a new mtime.
#[derive(PartialEq, Eq, Debug)]
struct Stamp(u64, u64, u64, Option<SystemTime>);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp(m.dev(), m.ino(), m.len(), m.modified().ok()))
}

#[async_trait::async_trait]
impl crate::runtime::supervisor::Lifecycle for Process {
    async fn announce_ready(&self, listen: Vec<String>) {
        announce_ready(listen).await;
    }

    async fn upgrade_if_needed(&self, state: &State) {
        Process::upgrade_if_needed(self, state).await;
    }
}

impl Process {
    pub fn current(daemon: bool) -> Process {
        let exe = started_as();
        let exe_stamp = exe.as_deref().and_then(stamp);
        Process {
            exe,
            exe_stamp,
            daemon,
        }
    }

    fn binary_replaced(&self) -> bool {
        match &self.exe {
            Some(exe) => stamp(exe) != self.exe_stamp,
            None => false,
        }
    }

    /// After a SIGHUP reload: hands over to a new process if only one can apply what changed.
    pub async fn upgrade_if_needed(&self, state: &State) {
        let binary = self.binary_replaced();
        let settings = state.restart_required();
        if !binary && !settings {
            return;
        }
        let why = if binary {
            "the binary was replaced"
        } else {
            "listener or server settings changed"
        };
        // Once the sockets are on their way, a later SIGHUP must not start another process.
        if HANDING_OVER.swap(true, Ordering::SeqCst) {
            log::warn!("upgrade ({why}): a handover is already under way");
            return;
        }
        if let Err(e) = self.hand_over(state, why).await {
            log::error!("upgrade ({why}) not done, this process keeps serving: {e}");
            HANDING_OVER.store(false, Ordering::SeqCst);
        }
    }

    async fn hand_over(&self, state: &State, why: &str) -> Result<(), String> {
        let exe = self
            .exe
            .as_deref()
            .ok_or("the running binary's path is unknown")?;
        if self.daemon {
            return Err("daemon mode (-d): start the new process with -u by hand".into());
        }
        let socket = state.started_upgrade_sock();
        if state.snapshot().loaded.config.server.upgrade_sock != socket {
            return Err("server.upgrade_sock changed: a restart is needed".into());
        }
        log::info!(
            "upgrade: {why}; validating {} with {}",
            state.path.display(),
            exe.display()
        );
        validate(exe, &state.path).await?;
        let socket = PathBuf::from(socket);
        match std::fs::remove_file(&socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("cannot remove the stale {}: {e}", socket.display()))
            }
            _ => {}
        }
        let mut child = Command::new(exe)
            .args(["run", "-u", "-c"])
            .arg(&state.path)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        wait_for_socket(&mut child, &socket).await?;
        let pid = child.id().unwrap_or_default();
        log::info!("upgrade: handing the listening sockets to pid {pid}");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&format!(
            "handing over to pid {pid}"
        ))]);
        // Pingora's own SIGQUIT path: send the sockets, keep answering for a while, drain.
        signal_hook::low_level::raise(signal_hook::consts::SIGQUIT)
            .map_err(|e| format!("cannot raise SIGQUIT: {e}"))
    }
}

/// The path this process was started by (`ExecStart=`'s), so that a symlink moved to a new
/// release counts as a new binary; the resolved executable when started through `PATH`.
fn started_as() -> Option<PathBuf> {
    let argv0 = std::env::args_os().next().map(PathBuf::from);
    match argv0 {
        Some(p) if p.components().count() > 1 => std::path::absolute(&p).ok(),
        _ => std::env::current_exe().ok(),
    }
}

/// Runs `EXE check -c FILE`: the new binary must accept the file before anything is handed.
async fn validate(exe: &Path, config: &Path) -> Result<(), String> {
    let run = Command::new(exe)
        .args(["check", "-c"])
        .arg(config)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(START_LIMIT, run)
        .await
        .map_err(|_| "`check` did not finish".to_string())?
        .map_err(|e| format!("cannot run {} check: {e}", exe.display()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "the new binary rejects the config:\n{}",
        String::from_utf8_lossy(&out.stderr).trim_end()
    ))
}

/// Waits until the new process listens on the upgrade socket, or gives up and stops it.
async fn wait_for_socket(child: &mut Child, socket: &Path) -> Result<(), String> {
    let end = Instant::now() + START_LIMIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the new process exited ({status}) before taking over"
            ));
        }
        if socket.exists() {
            return Ok(());
        }
        if Instant::now() > end {
            let _ = child.kill().await;
            return Err(format!(
                "the new process did not open {} in time",
                socket.display()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Tells systemd (when `NOTIFY_SOCKET` is set) that this process serves, once every listen
/// address is bound: `READY=1` on a start, and `MAINPID=` so that after an upgrade systemd
/// tracks the new process instead of the one that is leaving. Pingora retries a bind that
/// fails (address in use) forever; until it succeeds READY is withheld, so `systemctl start`
/// fails by its timeout instead of reporting a proxy that does not listen.
async fn announce_ready(listen: Vec<String>) {
    let ports: HashSet<u16> = listen.iter().filter_map(|a| port_of(a)).collect();
    let mut warn_at = Instant::now() + LISTEN_WARNING;
    // No readable socket table: nothing to wait for that can be seen.
    while let Some(listening) = listening_ports() {
        let mut missing: Vec<u16> = ports.difference(&listening).copied().collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() > warn_at {
            missing.sort_unstable();
            log::warn!("not listening yet on port(s) {missing:?} (in use by another process?); readiness is withheld until they are bound");
            warn_at += LISTEN_WARNING;
        }
        tokio::time::sleep(POLL).await;
    }
    let pid = std::process::id();
    let status = format!("serving {} listener(s)", listen.len());
    let states = [
        sd_notify::NotifyState::MainPid(pid),
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ];
    if let Err(e) = sd_notify::notify(&states) {
        log::warn!("cannot notify systemd: {e}");
    }
}

fn port_of(listen: &str) -> Option<u16> {
    crate::config::split_host_port(listen)?.1.parse().ok()
}

/// Ports this process listens on (LISTEN sockets of the namespace whose inode is one of this
/// process's descriptors: another process on the same port does not count); `None` when the
/// socket tables cannot be read.
fn listening_ports() -> Option<HashSet<u16>> {
    const LISTEN: &str = "0A";
    let ours = own_socket_inodes();
    let mut ports = HashSet::new();
    let mut readable = false;
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        // Columns: sl, local_address (hex ip:port), rem_address, st, tx:rx queue, tr:when,
        // retrnsmt, uid, timeout, inode, ...
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(&LISTEN), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if let (Some(port), true) = (port, ours.contains(*inode)) {
                ports.insert(port);
            }
        }
    }
    readable.then_some(ports)
}

/// The inodes of this process's sockets, from the `socket:[INODE]` links in /proc/self/fd.
fn own_socket_inodes() -> HashSet<String> {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_listener_of_this_process_is_seen() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        assert!(listening_ports().expect("/proc").contains(&port));
        drop(l);
        assert!(!listening_ports().expect("/proc").contains(&port));
    }

    #[test]
    fn ports_of_listen_addresses() {
        assert_eq!(port_of("0.0.0.0:8443"), Some(8443));
        assert_eq!(port_of("[::]:80"), Some(80));
        assert_eq!(port_of("nonsense"), None);
    }
}
