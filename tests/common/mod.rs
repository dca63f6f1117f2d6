//! Helpers shared by the integration tests.
#![allow(dead_code)]

#[cfg(feature = "postgres")]
pub mod pg;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokencache::__fault::FaultPlan;
use tokencache::{Builder, ManualClock, TokenStore};

/// A temp directory and a store path inside it.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn scratch() -> Scratch {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tokens.snap");
    Scratch { dir, path }
}

/// The journal beside store `path`.
pub fn journal_path(path: &std::path::Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".journal");
    PathBuf::from(name)
}

pub const INTERVAL: Duration = Duration::from_secs(60);

/// A builder for a store on a manual clock with the default 60 s interval.
pub fn manual_builder(path: &std::path::Path) -> (Builder, ManualClock) {
    let clock = ManualClock::default();
    let builder = TokenStore::builder(path)
        .clock(clock.clone())
        .flush_interval(INTERVAL);
    (builder, clock)
}

/// A store on a manual clock with the default 60 s interval.
pub fn manual_store(path: &std::path::Path) -> (TokenStore, ManualClock) {
    let (builder, clock) = manual_builder(path);
    (builder.open().expect("open store"), clock)
}

/// Like [`manual_store`], with a fault plan (inert until a test arms it) in the file writer.
pub fn faulty_store(path: &std::path::Path) -> (TokenStore, ManualClock, FaultPlan) {
    let (builder, clock) = manual_builder(path);
    let plan = FaultPlan::default();
    let store = builder.fault_plan(plan.clone()).open().expect("open store");
    (store, clock, plan)
}

/// Runs the ignored test `name` of the current test binary in a child process, with
/// `env` set, so a test can use real processes (SIGKILL, a second lock holder).
pub fn child(name: &str, env: &[(&str, &str)]) -> Command {
    let exe = std::env::current_exe().expect("current test binary");
    let mut command = Command::new(exe);
    command
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TOKENCACHE_CHILD", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

/// Whether this process is a child started by [`child`].
pub fn in_child() -> bool {
    std::env::var_os("TOKENCACHE_CHILD").is_some()
}

/// A buffer a `tracing` subscriber writes into; clones share it.
#[derive(Clone, Default)]
pub struct LogBuffer(pub Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
