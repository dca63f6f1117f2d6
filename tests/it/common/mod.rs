//! Helpers shared by the integration tests: every module of `tests/it/` reaches them as
//! `crate::common` (and `common::pg` with the `postgres` feature); `tests/crash/` includes
//! this module by `#[path]`, and `benches/replicas.rs` includes `pg.rs` the same way to
//! start the same throwaway cluster. Nothing else includes them.
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

/// A model test's sequence, printed one numbered step a line, as a person reads it (what a
/// shrunk failure shows).
#[derive(Clone)]
pub struct Steps<T>(pub Vec<T>);

impl<T: std::fmt::Debug> std::fmt::Debug for Steps<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f)?;
        for (n, step) in self.0.iter().enumerate() {
            writeln!(f, "  {:>2}. {step:?}", n + 1)?;
        }
        Ok(())
    }
}

/// Runs a model-based property test: as many cases as the environment variable `var` says
/// (else `default`), no failure file, shrinking up to `max_shrink` steps; a failure panics
/// with the shrunk input.
pub fn run_model<S: proptest::strategy::Strategy>(
    var: &str,
    default: u32,
    max_shrink: u32,
    strategy: &S,
    test: impl Fn(S::Value) -> Result<(), proptest::test_runner::TestCaseError>,
) {
    let cases = std::env::var(var)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    let config = proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: max_shrink,
        ..proptest::test_runner::Config::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    if let Err(failure) = runner.run(strategy, test) {
        panic!("{failure}");
    }
}

/// The journal beside store `path`.
pub fn journal_path(path: &std::path::Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".journal");
    PathBuf::from(name)
}

/// The files as a SIGKILL between two calls leaves them (every write is synchronous with
/// its call), copied to a fresh directory, so a test can open them while the store is live.
pub fn crash_image(path: &std::path::Path) -> Scratch {
    let image = scratch();
    std::fs::copy(path, &image.path).unwrap();
    let journal = journal_path(path);
    if journal.exists() {
        std::fs::copy(journal, journal_path(&image.path)).unwrap();
    }
    image
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

/// A command that runs the child-process test `name` of this test binary (the `it` crate)
/// in a new process, with `env` set, so a test can use real processes (SIGKILL, a second
/// lock holder, a replica).
///
/// `name` is the test's full path in its crate, module included (`"lock::child_try_open"`
/// in `tests/it/`, `"child_work_until_killed"` at the root of `tests/crash/`): libtest
/// matches it `--exact`. A child-process test is named `child_*`, is `#[ignore]`d (with a
/// reason naming the test that runs it), and returns at once unless [`in_child`].
pub fn spawn_child_test(name: &str, env: &[(&str, &str)]) -> Command {
    assert!(
        name.rsplit("::")
            .next()
            .is_some_and(|f| f.starts_with("child_")),
        "{name:?}: a child-process test is named `child_*`"
    );
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

/// The uid and gid of `nobody`, the unprivileged user [`as_nobody`] runs a child as.
pub const NOBODY: u32 = 65534;

/// `command` (a [`spawn_child_test`]) run as the unprivileged user `nobody` through
/// `setpriv` (util-linux), for checks that need file permissions enforced when the tests
/// run as root. The child gets no supplementary groups and no capabilities.
pub fn as_nobody(command: &Command) -> Command {
    let mut wrapped = Command::new("setpriv");
    wrapped
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(command.get_program())
        .args(command.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    wrapped
}

/// Whether this process is a child started by [`spawn_child_test`].
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
