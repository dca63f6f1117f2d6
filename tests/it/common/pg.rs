//! A throwaway PostgreSQL cluster for the tests of PostgreSQL stores: one per test binary
//! run (started on first use, stopped at exit), a fresh database per test. With
//! `TOKENCACHE_PG_URL` set (a URL of a server where the user may create databases), that
//! server is used instead. Tests that stop the server start their own cluster.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// What to tell whoever runs the tests without PostgreSQL.
const INSTALL: &str = "the PostgreSQL server binaries (initdb, pg_ctl) are needed by the tests of PostgreSQL stores, and none were found under /usr/lib/postgresql/*/bin: install Debian's `postgresql` package (apt-get install postgresql), or set TOKENCACHE_PG_URL to a server where the user may create databases";

/// A PostgreSQL cluster in a temp directory, run as the `postgres` user when we are root.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// More of the server's command line (`-c ssl=on ...`), from [`Cluster::start_with`].
    options: String,
}

/// The binaries' directory: the newest /usr/lib/postgresql/<version>/bin with initdb.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!("{INSTALL}"),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `program` with `args`, as the `postgres` user when we are root (PostgreSQL refuses
/// to run as root); panics with its output if it fails.
fn run_as_postgres(program: &Path, args: &[&str]) {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let output = command
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
    assert!(
        output.status.success(),
        "{} {args:?} failed: {}\n{}",
        program.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

impl Cluster {
    /// initdb and start a new cluster on a free port.
    pub fn start() -> Cluster {
        Cluster::start_with("", |_| {})
    }

    /// initdb, `setup` with the data directory (to write files such as certificates and
    /// `pg_hba.conf` there; they are then given to the `postgres` user), and start with
    /// `options` added to the server's command line.
    pub fn start_with(options: &str, setup: impl FnOnce(&Path)) -> Cluster {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("tokencache-pg")
            .tempdir()
            .expect("temp dir");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown the cluster directory to postgres");
        }
        let data = dir.path().join("data");
        run_as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        setup(&data);
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&data)
                .status()
                .expect("chown");
            assert!(status.success(), "chown the cluster's files to postgres");
        }
        let cluster = Cluster {
            dir,
            bin,
            port: free_port(),
            options: options.to_owned(),
        };
        cluster.start_again();
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_str().unwrap().to_owned()
    }

    /// Starts the (stopped) cluster, on the same port.
    /// Tests run it with `fsync=off` (nothing here survives a power loss, and commits are
    /// fast); with `TOKENCACHE_PG_FSYNC=on` (the replica bench sets it) commits are
    /// flushed as in production.
    pub fn start_again(&self) {
        let fsync = std::env::var("TOKENCACHE_PG_FSYNC").unwrap_or_else(|_| "off".into());
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync={fsync} -c max_connections=300 {}",
            self.port,
            self.dir.path().display(),
            self.options
        );
        let log = self.dir.path().join("log");
        run_as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                &self.data(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    /// Stops the cluster at once (connections are cut).
    pub fn stop(&self) {
        run_as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Stops the cluster when the test binary exits (for a cluster kept in a static, which
    /// is never dropped).
    pub fn stop_at_exit(&self) {
        let mut to_stop = TO_STOP.lock().unwrap();
        if to_stop.is_empty() {
            // SAFETY: registers a plain function with no arguments, run at process exit.
            unsafe { libc::atexit(stop_shared) };
        }
        to_stop.push((self.bin.clone(), self.data()));
    }

    /// A new empty database; its URL.
    pub fn fresh_db(&self) -> String {
        create_db(&self.url("postgres"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(if is_root() { "runuser" } else { "true" })
            .args(if is_root() {
                vec!["-u", "postgres", "--"]
            } else {
                vec![]
            })
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The server the tests share: `TOKENCACHE_PG_URL`'s, or a cluster started on first use.
enum Server {
    External(String),
    Local(Cluster),
}

static SHARED: OnceLock<Server> = OnceLock::new();
/// The clusters kept in statics, for the exit hook to stop (statics are never dropped).
static TO_STOP: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

extern "C" fn stop_shared() {
    let clusters = TO_STOP.lock().map(|mut t| std::mem::take(&mut *t));
    for (bin, data) in clusters.unwrap_or_default() {
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin.join("pg_ctl"));
            c
        } else {
            Command::new(bin.join("pg_ctl"))
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn shared() -> &'static Server {
    SHARED.get_or_init(|| {
        if let Ok(url) = std::env::var("TOKENCACHE_PG_URL") {
            return Server::External(url);
        }
        let cluster = Cluster::start();
        cluster.stop_at_exit();
        Server::Local(cluster)
    })
}

static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// Creates a new database on the server `admin_url` points to (any database there);
/// returns the new one's URL.
fn create_db(admin_url: &str) -> String {
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    );
    let mut client = connect(admin_url);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create a test database");
    with_db(admin_url, &name)
}

/// `url` with its database replaced by `db`.
fn with_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let base = match rest.find('/') {
        Some(at) => &base[..base.len() - rest.len() + at],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// A fresh database on the shared server; its URL.
pub fn fresh_db() -> String {
    match shared() {
        Server::External(url) => create_db(url),
        Server::Local(cluster) => cluster.fresh_db(),
    }
}

/// A plain client on `url`, retrying for a while (a server just started).
pub fn connect(url: &str) -> postgres::Client {
    let start = Instant::now();
    loop {
        match postgres::Client::connect(url, postgres::NoTls) {
            Ok(client) => return client,
            Err(e) if start.elapsed() > Duration::from_secs(10) => {
                panic!("connect to the test database: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Every token `store` lists, without `last_used`: what two replicas agree on once their
/// catch-ups are done (`last_used` reaches the others only with a flush).
pub fn definitions(store: &tokencache::TokenStore) -> Vec<tokencache::TokenInfo> {
    let mut listed = store.list();
    listed.iter_mut().for_each(|t| t.last_used = None);
    listed
}

/// Polls `check` every millisecond until it holds; how long that took, or `None` after `limit`.
pub fn within(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `program` from the PostgreSQL binaries, as the `postgres` user when we are root.
fn pg_command(program: &str) -> Command {
    let path = bin_dir().join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// A `pg_dump` of the database at `url` (custom format), as a backup would be taken.
pub fn dump(url: &str) -> Vec<u8> {
    let output = pg_command("pg_dump")
        .args(["-Fc", "-d", url])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run pg_dump");
    assert!(
        output.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Restores `backup` (from [`dump`]) over the database at `url`, dropping what is there
/// (`pg_restore --clean`), as an operator restoring a backup would.
pub fn restore(url: &str, backup: &[u8]) {
    use std::io::Write;
    let mut child = pg_command("pg_restore")
        .args(["--clean", "--if-exists", "--single-transaction", "-d", url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pg_restore");
    child
        .stdin
        .take()
        .expect("pg_restore's stdin")
        .write_all(backup)
        .expect("feed pg_restore");
    let output = child.wait_with_output().expect("wait for pg_restore");
    assert!(
        output.status.success(),
        "pg_restore failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Commits `sql` (`$1`: the id of `token`, `$2`: the version it takes) as another writer
/// would, taking the next version; with `notify`, signals the replicas as tokencache does
/// (without: as if the notification was lost).
pub fn commit_by_hand(url: &str, sql: &str, token: &tokencache::TokenId, notify: bool) {
    let mut admin = connect(url);
    let mut tx = admin.transaction().unwrap();
    let version: i64 = tx
        .query_one(
            "UPDATE tokencache_version SET version = version + 1 RETURNING version",
            &[],
        )
        .unwrap()
        .get(0);
    tx.execute(sql, &[&token.to_string(), &version]).unwrap();
    if notify {
        tx.execute(
            "SELECT pg_notify('tokencache', $1)",
            &[&version.to_string()],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}
