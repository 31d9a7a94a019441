//! A real `redis-server` for one test: its own free port, no persistence, killed on drop.
//! Stoppable, pausable (SIGSTOP: a Redis that is slow, not gone) and restartable on the
//! same port. [`Redis::start_tls`] serves TLS only (`rediss://`), with a certificate from a
//! CA made for the test.

use super::certs::TestCa;
use super::{free_port, wait_until};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Redis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// The CA of a TLS-only server, its PEM file written in `dir`.
    tls: Option<TestCa>,
}

impl Redis {
    pub async fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: tempfile::tempdir().expect("a temp dir"),
            child: None,
            tls: None,
        };
        r.restart().await;
        r
    }

    /// A server that speaks TLS only, with a certificate for 127.0.0.1 from a fresh CA
    /// (its PEM at [`Redis::ca_file`]); clients need not present one.
    pub async fn start_tls() -> Redis {
        let dir = tempfile::tempdir().expect("a temp dir");
        let ca = TestCa::new("redis");
        ca.write(dir.path(), "server", &["127.0.0.1"]);
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write CA");
        let mut r = Redis {
            port: free_port(),
            dir,
            child: None,
            tls: Some(ca),
        };
        r.restart().await;
        r
    }

    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    fn port_args(&self) -> Vec<String> {
        let port = self.port.to_string();
        if self.tls.is_none() {
            return vec!["--port".into(), port];
        }
        let file = |name: &str| self.dir.path().join(name).display().to_string();
        [
            ("--port", "0".into()),
            ("--tls-port", port),
            ("--tls-cert-file", file("server.crt")),
            ("--tls-key-file", file("server.key")),
            ("--tls-ca-cert-file", file("ca.pem")),
            ("--tls-auth-clients", "no".into()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect()
    }

    /// Starts the server (again) on its port and waits until it answers PING.
    pub async fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(self.port_args())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let (port, tls) = (self.port, self.tls.as_ref().map(TestCa::connector));
        let up = wait_until(Duration::from_secs(10), || ping(port, tls.clone())).await;
        assert!(up, "redis-server on port {port} never answered PING");
    }

    /// Kills the server and waits until it is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): connections stay open, nothing answers.
    pub fn pause(&self, paused: bool) {
        let pid = self.child.as_ref().expect("running").id();
        let sig = if paused { "-STOP" } else { "-CONT" };
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} redis-server");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A paused server does not die of SIGKILL before it is continued on some kernels.
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.stop();
    }
}

/// Whether a server on `port` answers `PING` with `+PONG` (over TLS with `tls`).
async fn ping(port: u16, tls: Option<tokio_rustls::TlsConnector>) -> bool {
    let probe = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let Some(tls) = tls else {
            return pong(tcp).await;
        };
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").ok()?;
        pong(tls.connect(name, tcp).await.ok()?).await
    };
    tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

async fn pong<S: AsyncReadExt + AsyncWriteExt + Unpin>(mut s: S) -> Option<bool> {
    s.write_all(b"PING\r\n").await.ok()?;
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).await.ok()?;
    Some(&buf == b"+PONG\r\n")
}
