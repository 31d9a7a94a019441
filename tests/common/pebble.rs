//! Let's Encrypt's ACME test server for one test: `pebble` with `pebble-challtestsrv` as
//! its DNS (every name is 127.0.0.1), on free ports, killed on drop. Its validators connect
//! to the `http_port` and `tls_port` the test gives, where switchyard listens. Pebble's own
//! HTTPS certificate comes from a CA made for the test ([`Pebble::ca_file`]); the CA that
//! signs what it issues is its own, fetched with [`Pebble::root`]. Nonce rejections (5 %)
//! stay on: a real client retries them.

use super::certs::TestCa;
use super::{free_port, wait_until};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Pebble {
    pub port: u16,
    management: u16,
    dir: tempfile::TempDir,
    ca: TestCa,
    pebble: Option<Child>,
    dns: Option<Child>,
}

impl Pebble {
    pub async fn start(http_port: u16, tls_port: u16) -> Pebble {
        let dir = tempfile::tempdir().expect("a temp dir");
        let ca = TestCa::new("pebble");
        let (cert, key) = ca.write(dir.path(), "pebble", &["127.0.0.1", "localhost"]);
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write CA");
        let (port, management, dns_port) = (free_port(), free_port(), free_port());
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": cert, "privateKey": key,
            "httpPort": http_port, "tlsPort": tls_port,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        let config_file = dir.path().join("pebble.json");
        std::fs::write(&config_file, config.to_string()).expect("write pebble config");
        let log =
            |name: &str| Stdio::from(std::fs::File::create(dir.path().join(name)).expect("log"));
        let dns = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv (apt-get install pebble)");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err.log"))
            .spawn()
            .expect("start pebble (apt-get install pebble)");
        let p = Pebble {
            port,
            management,
            dir,
            ca,
            pebble: Some(pebble),
            dns: Some(dns),
        };
        let client = p.client();
        let url = p.directory();
        let up = wait_until(Duration::from_secs(20), || async {
            client
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(up, "pebble never served its directory:\n{}", p.log());
        p
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The CA of Pebble's own HTTPS certificate (for `directory_ca`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The root that what Pebble issues chains to (PEM); made anew at each start.
    pub async fn root(&self) -> String {
        let url = format!("https://127.0.0.1:{}/roots/0", self.management);
        let r = self
            .client()
            .get(url)
            .send()
            .await
            .expect("pebble /roots/0");
        r.text().await.expect("root PEM")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    /// Kills Pebble (its DNS stays): the CA is gone.
    pub fn stop(&mut self) {
        for child in [&mut self.pebble].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.pebble = None;
    }

    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(self.ca.reqwest_root())
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client")
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut c) = self.dns.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
