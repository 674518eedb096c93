//! A real etcd for the fleet tests (Debian's etcd-server; `make test` installs it): its own
//! loopback ports and temporary data folder, killed when dropped; and a bounded wait.

use etcd_client::Client;
use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// An etcd of its own on 127.0.0.1, killed when dropped.
pub struct Etcd {
    child: Child,
    pub url: String,
    peer_url: String,
    dir: tempfile::TempDir,
}

fn etcd_binary() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".to_string())
}

/// A port that was free a moment ago (etcd binds its own listeners; a clash is retried).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn_etcd(dir: &std::path::Path, url: &str, peer_url: &str) -> Child {
    let bin = etcd_binary();
    assert!(
        std::path::Path::new(&bin).exists(),
        "{bin} is missing: run scripts/fetch-tools.sh (make test does) or set ETCD_BIN"
    );
    Command::new(&bin)
        .args(["--name", "t", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", url, "--advertise-client-urls", url])
        .args(["--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url])
        .args(["--initial-cluster", &format!("t={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"))
}

impl Etcd {
    pub async fn start() -> Etcd {
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("http://127.0.0.1:{}", free_port());
            let peer_url = format!("http://127.0.0.1:{}", free_port());
            let child = spawn_etcd(dir.path(), &url, &peer_url);
            let mut etcd = Etcd { child, url, peer_url, dir };
            if etcd.ready().await {
                return etcd;
            }
            let _ = etcd.child.kill();
            let _ = etcd.child.wait();
        }
        panic!("etcd did not start on loopback ports (3 tries)");
    }

    /// Kills etcd (an outage); [`Etcd::restart`] brings it back with its data.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes etcd (SIGSTOP): requests to it hang instead of failing, as on a stalled disk
    /// or network. [`Etcd::resume`] thaws it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused etcd (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill").args([signal, &self.child.id().to_string()]).status().is_ok_and(|s| s.success());
        assert!(ok, "kill {signal} etcd");
    }

    pub async fn restart(&mut self) {
        self.child = spawn_etcd(self.dir.path(), &self.url, &self.peer_url);
        assert!(self.ready().await, "etcd came back on its ports");
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
        false
    }

    pub async fn client(&self) -> Client {
        Client::connect([&self.url], None).await.unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to `limit` for `check` to give a value (a bound on waiting, not a measurement).
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
