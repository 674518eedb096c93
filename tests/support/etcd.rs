//! An etcd of its own on free loopback ports with a temporary data folder (Debian's etcd-server;
//! `make test` installs it; `ETCD_BIN` may name another), killed when dropped.
// tests/cluster.rs keeps its own copy (it also stops and restarts etcd) while fleet mode changes.

use etcd_client::Client;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running etcd.
pub struct Etcd {
    child: Child,
    /// Its client URL.
    pub url: String,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Etcd {
    /// Starts one (a port taken meanwhile is retried with others).
    pub async fn start() -> Etcd {
        let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".to_string());
        assert!(
            std::path::Path::new(&bin).exists(),
            "{bin} is missing: run scripts/fetch-tools.sh (make test does) or set ETCD_BIN"
        );
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("http://127.0.0.1:{}", free_port());
            let peer_url = format!("http://127.0.0.1:{}", free_port());
            let child = Command::new(&bin)
                .args(["--name", "t", "--data-dir"])
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
                .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("t={peer_url}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
            let mut etcd = Etcd { child, url, _dir: dir };
            if etcd.ready().await {
                return etcd;
            }
        }
        panic!("etcd did not start on loopback ports (3 tries)");
    }

    /// Waits (bounded) until etcd answers; false when the process died (a port clash).
    async fn ready(&mut self) -> bool {
        for _ in 0..200 {
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if let Ok(mut c) = Client::connect([&self.url], None).await {
                if tokio::time::timeout(Duration::from_secs(1), c.get("x", None)).await.is_ok_and(|r| r.is_ok()) {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
