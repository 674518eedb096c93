//! Test support for the `modelgate` binary as a process: running it, writing its files, and
//! `serve` children that are killed when dropped.

use super::root;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// The `modelgate` binary, run from the checkout's root without an ORT_DYLIB_PATH.
pub fn modelgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_modelgate"));
    c.current_dir(root()).env_remove("ORT_DYLIB_PATH");
    c
}

/// Writes `text` to `name` in `dir`.
pub fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A `modelgate serve` child that is killed when dropped, so a failing test leaves no gateway behind.
pub struct Served(pub std::process::Child);

impl std::ops::Deref for Served {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Served {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `modelgate serve` on ports chosen by the OS; returns the child and its inference address.
pub fn spawn_serve(config: &str) -> (Served, String) {
    let (child, addr, _) = spawn_serve_admin(config);
    (child, addr)
}

/// Starts `modelgate serve`, sharing the feedback key of every test gateway; returns the child,
/// its inference address and its admin address.
pub fn spawn_serve_admin(config: &str) -> (Served, String, String) {
    // Each gateway keeps its rollout status in a folder of its own.
    spawn_serve_state(config, &tempfile::tempdir().unwrap().keep())
}

pub fn spawn_serve_state(config: &str, state: &std::path::Path) -> (Served, String, String) {
    let mut child = modelgate()
        .args(["serve", "--config", config, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .env("MODELGATE_FEEDBACK_KEY", "shared-by-the-replicas")
        .env("MODELGATE_ADMIN_TOKEN", "cli-admin-token")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("modelgate: listening on http://")
        .and_then(|rest| rest.split_once(' '))
        .map(|(addr, _)| addr.to_string())
        .unwrap_or_else(|| panic!("{line:?}"));
    let admin = line
        .trim()
        .rsplit_once("(admin http://")
        .map(|(_, a)| a.trim_end_matches(')').to_string())
        .unwrap_or_else(|| panic!("{line:?}"));
    (Served(child), addr, admin)
}

/// Waits for `child` to exit, at most `limit` (then fails the test with `why`); its status.
pub fn wait_exit(child: &mut Served, limit: std::time::Duration, why: &str) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "{why}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
