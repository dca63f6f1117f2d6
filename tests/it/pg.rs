//! PostgreSQL stores against a real server (tests/it/common/pg.rs starts a throwaway cluster):
//! propagation between replicas (other processes), lost notifications, `last_used` from
//! many replicas, an unreachable database, commit order, the CLI, and the staleness policy.
//! Each test has its own database; the ones that stop the server have their own cluster.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::pg::{self, Cluster};
use tokencache::{ManualClock, NewToken, RateLimit, Rejection, TokenId, TokenStore};

const URL_VAR: &str = "TC_TEST_PG_URL";
const POLL_VAR: &str = "TC_TEST_POLL_MS";
/// What precedes each answer of a replica process.
const MARK: &str = "<<replica>> ";
/// The bound every propagation is held to (generous: a loaded CI machine); the measured
/// times are printed.
const BOUND: Duration = Duration::from_secs(2);

fn open(url: &str, poll: Duration) -> TokenStore {
    TokenStore::builder(url)
        .poll_interval(poll)
        .open()
        .expect("open the PostgreSQL store")
}

/// What `validate` says, as the replica child prints it.
fn verdict(store: &TokenStore, secret: &str) -> String {
    match store.validate(secret) {
        Ok(_) => "ok".into(),
        Err(rejection) => rejection.as_str().into(),
    }
}

/// A replica in another process: this test binary re-run as `child_replica`, driven over
/// its stdin and stdout one line at a time.
struct Replica {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Replica {
    fn spawn(url: &str, poll: Duration) -> Replica {
        let poll = poll.as_millis().to_string();
        let mut child =
            common::spawn_child_test("pg::child_replica", &[(URL_VAR, url), (POLL_VAR, &poll)])
                .stdin(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn the replica");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut replica = Replica {
            child,
            stdin,
            stdout,
        };
        assert_eq!(replica.read(), "ready");
        replica
    }

    fn read(&mut self) -> String {
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).expect("read the replica");
            assert!(n > 0, "the replica exited");
            // The test harness prints its own text too, without a newline before ours.
            if let Some((_, answer)) = line.trim_end_matches(['\n', '\r']).split_once(MARK) {
                return answer.to_owned();
            }
        }
    }

    fn ask(&mut self, line: &str) -> String {
        self.tell(line);
        self.read()
    }

    /// Sends a command without waiting for its answer (read it later with `read`).
    fn tell(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to the replica");
    }

    /// Sends the process `signal` (`STOP`, `CONT`) with kill(1).
    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal}");
    }

    fn validate(&mut self, secret: &str) -> String {
        self.ask(&format!("validate {secret}"))
    }

    /// How long until the replica's verdict on `secret` is `expected` (`None`: not within
    /// `limit`).
    fn until(&mut self, secret: &str, expected: &str, limit: Duration) -> Option<Duration> {
        pg::within(limit, || self.validate(secret) == expected)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.wait();
    }
}

/// Child process (run by [`Replica::spawn`], not a test of its own): opens the store and answers `validate SECRET`, `issue NAME`,
/// `revoke ID`, `delete ID`, `rotate ID` (no grace), `flush`, `used ID` (its `last_used`
/// in Unix ms, or `none`), `list` and `quit`, one line each, after [`MARK`].
#[test]
#[ignore = "child process: a replica, run by the tests through `Replica::spawn`"]
fn child_replica() {
    if !common::in_child() {
        return;
    }
    let url = std::env::var(URL_VAR).unwrap();
    let poll = Duration::from_millis(std::env::var(POLL_VAR).unwrap().parse().unwrap());
    // The flush interval paces the retries of changes whose transaction failed.
    let store = TokenStore::builder(&url)
        .poll_interval(poll)
        .flush_interval(poll)
        .open()
        .expect("open the PostgreSQL store");
    let mut out = std::io::stdout();
    writeln!(out, "{MARK}ready").unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let (command, arg) = line.split_once(' ').unwrap_or((&line, ""));
        let answer = match command {
            "validate" => verdict(&store, arg),
            "issue" => match store.issue(NewToken::new(arg)) {
                Ok(issued) => format!("{} {}", issued.secret(), issued.id()),
                Err(e) => format!("error {e}"),
            },
            "revoke" => match store.revoke(&arg.parse().unwrap()) {
                Ok(()) => "ok".into(),
                Err(e) => format!("error {e}"),
            },
            "delete" => match store.delete(&arg.parse().unwrap()) {
                Ok(()) => "ok".into(),
                Err(e) => format!("error {e}"),
            },
            "rotate" => match store.rotate(&arg.parse().unwrap(), Duration::ZERO) {
                Ok(issued) => format!("{} {}", issued.secret(), issued.id()),
                Err(e) => format!("error {e}"),
            },
            "flush" => match store.flush() {
                Ok(()) => "ok".into(),
                Err(e) => format!("error {e}"),
            },
            "used" => last_used_ms(&store, &arg.parse().unwrap()),
            "list" => listing(&store)
                .iter()
                .map(|(id, revoked)| format!("{id}:{revoked}"))
                .collect::<Vec<_>>()
                .join(" "),
            _ => break,
        };
        writeln!(out, "{MARK}{answer}").unwrap();
        out.flush().unwrap();
    }
    store.close().unwrap();
}

/// What `get(id)` says of a token's `last_used`: Unix ms, or `none`.
fn last_used_ms(store: &TokenStore, id: &TokenId) -> String {
    match store.get(id).and_then(|t| t.last_used) {
        Some(at) => at.timestamp_millis().to_string(),
        None => "none".into(),
    }
}

/// A store's tokens: id and whether revoked.
fn listing(store: &TokenStore) -> BTreeMap<String, bool> {
    store
        .list()
        .into_iter()
        .map(|t| (t.id.to_string(), t.revoked_at.is_some()))
        .collect()
}

/// The table's live tokens: id and whether revoked.
fn table(url: &str) -> BTreeMap<String, bool> {
    let mut client = pg::connect(url);
    client
        .query(
            "SELECT id, revoked_at IS NOT NULL FROM tokencache_tokens WHERE NOT deleted",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[test]
fn issue_revoke_delete_and_rotate_reach_a_replica_in_another_process() {
    let url = pg::fresh_db();
    let a = open(&url, Duration::from_secs(1));
    let mut b = Replica::spawn(&url, Duration::from_secs(1));
    let mut figures = Vec::new();

    let issued = a.issue(NewToken::new("ci-bot")).unwrap();
    let took = b.until(issued.secret(), "ok", BOUND);
    figures.push((
        "issue",
        took.expect("the replica validates a token issued elsewhere"),
    ));
    a.revoke(&issued.id()).unwrap();
    let took = b.until(issued.secret(), "revoked", BOUND);
    figures.push(("revoke", took.expect("the replica rejects a revoked token")));

    let doomed = a.issue(NewToken::new("doomed")).unwrap();
    b.until(doomed.secret(), "ok", BOUND).unwrap();
    a.delete(&doomed.id()).unwrap();
    let took = b.until(doomed.secret(), "unknown", BOUND);
    figures.push(("delete", took.expect("the replica forgets a deleted token")));

    let old = a.issue(NewToken::new("rotated")).unwrap();
    b.until(old.secret(), "ok", BOUND).unwrap();
    let new = a.rotate(&old.id(), Duration::ZERO).unwrap();
    let took = b.until(old.secret(), "expired", BOUND);
    figures.push(("rotate (old expires)", took.expect("the old token expires")));
    assert_eq!(b.validate(new.secret()), "ok");

    // And the other way: a change made by the other process reaches this one.
    let answer = b.ask("issue from-b");
    let (secret, id) = answer.split_once(' ').unwrap();
    let took = pg::within(BOUND, || a.validate(secret).is_ok());
    figures.push(("issue (other way)", took.expect("A validates B's token")));
    assert_eq!(b.ask(&format!("revoke {id}")), "ok");
    let took = pg::within(BOUND, || {
        a.validate(secret).err() == Some(Rejection::Revoked)
    });
    figures.push((
        "revoke (other way)",
        took.expect("A rejects B's revoked token"),
    ));

    for (what, took) in &figures {
        eprintln!("propagation to another process: {what}: {took:?}");
    }
    assert_eq!(b.ask("list"), printed(&listing(&a)));
}

#[test]
fn a_revoke_reaches_a_replica_whose_listen_connection_was_killed() {
    let url = pg::fresh_db();
    let poll = Duration::from_millis(300);
    let a = open(&url, Duration::from_secs(1));
    let mut b = Replica::spawn(&url, poll);
    let issued = a.issue(NewToken::new("ci-bot")).unwrap();
    b.until(issued.secret(), "ok", BOUND).unwrap();

    let mut admin = pg::connect(&url);
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'tokencache-listener' AND datname = current_database()",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        killed >= 2,
        "both replicas' listeners were killed ({killed})"
    );
    a.revoke(&issued.id()).unwrap();
    let took = b
        .until(issued.secret(), "revoked", poll + BOUND)
        .expect("the replica rejects the token after it reconnects");
    eprintln!("revoke with the replica's LISTEN connection killed: {took:?}");
}

#[test]
fn a_change_committed_without_a_notification_arrives_by_the_poll() {
    let url = pg::fresh_db();
    let poll = Duration::from_millis(200);
    let a = open(&url, poll);
    let b = open(&url, poll);
    let issued = a.issue(NewToken::new("ci-bot")).unwrap();
    pg::within(BOUND, || b.validate(issued.secret()).is_ok()).unwrap();

    // As a transaction of ours would, without its NOTIFY: as if the notification was lost.
    let revoke = "UPDATE tokencache_tokens SET revoked_at = 1, version = $2 WHERE id = $1";
    pg::commit_by_hand(&url, revoke, &issued.id(), false);
    let took = pg::within(poll + BOUND, || {
        b.validate(issued.secret()).err() == Some(Rejection::Revoked)
    })
    .expect("the poll finds the change");
    eprintln!("revoke without NOTIFY, poll {poll:?}: {took:?}");
    assert!(took < poll + Duration::from_secs(1), "{took:?}");
}

/// Environment of a `child_last_used_replica`: its number, and the secrets it validates
/// (space-separated).
const REPLICA_VAR: &str = "TC_TEST_REPLICA";
const SECRETS_VAR: &str = "TC_TEST_SECRETS";
/// The start of the replicas' manual clocks.
const BASE_MS: u64 = 1_700_000_000_000;
/// Rounds of validate-then-flush each replica runs.
const ROUNDS: u64 = 1000;

/// Child process (not a test of its own): one replica of the `last_used` test: validates ten tokens a round at its own
/// clock (replica 3's runs far behind, so its batches are older), flushes each round (one
/// batched statement, overlapping the other replicas'), and prints the newest time it
/// validated each token at, `n at` a line.
#[test]
#[ignore = "child process of last_used_from_four_replicas_keeps_the_greatest_time_and_never_moves_back"]
fn child_last_used_replica() {
    if !common::in_child() {
        return;
    }
    let url = std::env::var(URL_VAR).unwrap();
    let r: u64 = std::env::var(REPLICA_VAR).unwrap().parse().unwrap();
    let secrets: Vec<String> = std::env::var(SECRETS_VAR)
        .unwrap()
        .split(' ')
        .map(String::from)
        .collect();
    let clock = ManualClock::new(BASE_MS);
    let store = TokenStore::builder(&url)
        .clock(clock.clone())
        .flush_interval(Duration::from_secs(3600))
        .poll_interval(Duration::from_millis(100))
        .open()
        .unwrap();
    // Every token it validates is there (and one more, which it leaves alone).
    pg::within(BOUND, || store.list().len() > secrets.len()).unwrap();
    let mut newest: BTreeMap<usize, u64> = BTreeMap::new();
    for round in 0..ROUNDS {
        let now = match r {
            3 => BASE_MS - 1_000_000 + round * 8,
            _ => BASE_MS + round * 8 + r,
        };
        clock.set(now);
        let first = (round as usize * 3 + r as usize * 5) % secrets.len();
        for n in (first..first + 10).map(|n| n % secrets.len()) {
            if store.validate(&secrets[n]).is_ok() {
                let at = newest.entry(n).or_default();
                *at = (*at).max(now);
            }
        }
        store.flush().expect("a flush never fails (no deadlock)");
    }
    store.close().unwrap();
    for (n, at) in newest {
        println!("{MARK}{n} {at}");
    }
}

/// Four replica processes flush overlapping batches of `last_used` 1,000 times each: no
/// deadlock, the table holds the greatest time any replica saw, and a late, older batch
/// never moves a time back.
#[test]
fn last_used_from_four_replicas_keeps_the_greatest_time_and_never_moves_back() {
    const TOKENS: usize = 40;
    let url = pg::fresh_db();
    let issuer = open(&url, Duration::from_secs(1));
    let issued = issuer
        .issue_many((0..TOKENS).map(|n| NewToken::new(format!("t{n}"))))
        .unwrap();
    let secrets: Vec<String> = issued.iter().map(|i| i.secret().into()).collect();
    let secrets_var = secrets.join(" ");
    // A late replica on a clock far behind, opened before any use reached the table (so it
    // holds no time for any token), with a poll interval longer than the test: it will
    // hold older times than the table for every token, and write them in one batch.
    // `unused` is validated by no other replica: its time proves that batch was written.
    let unused = issuer.issue(NewToken::new("unused")).unwrap();
    let late_at = BASE_MS - 5_000_000;
    let clock = ManualClock::new(late_at - 1);
    let late = TokenStore::builder(&url)
        .clock(clock.clone())
        .poll_interval(Duration::from_secs(3600))
        .flush_interval(Duration::from_secs(3600))
        .open()
        .unwrap();
    assert_eq!(late.list().len(), TOKENS + 1);
    // Its listener catches up once when it connects, which on a loaded machine may come
    // after the replicas below wrote their times: wait for that catch-up (the clock moved
    // on, so it is not the one `open` did) before they start.
    clock.set(late_at);
    caught_up_at(&late, &clock);
    let replicas: Vec<_> = (0..4u64)
        .map(|r| {
            let r = r.to_string();
            common::spawn_child_test(
                "pg::child_last_used_replica",
                &[
                    (URL_VAR, &url),
                    (REPLICA_VAR, &r),
                    (SECRETS_VAR, &secrets_var),
                ],
            )
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a replica")
        })
        .collect();
    let mut expected: HashMap<usize, u64> = HashMap::new();
    for replica in replicas {
        let output = replica.wait_with_output().unwrap();
        assert!(output.status.success(), "a replica failed");
        let text = String::from_utf8(output.stdout).unwrap();
        for line in text
            .lines()
            .filter_map(|l| l.split_once(MARK).map(|(_, a)| a))
        {
            let (n, at) = line.split_once(' ').unwrap();
            let e = expected.entry(n.parse().unwrap()).or_default();
            *e = (*e).max(at.parse().unwrap());
        }
    }
    assert_eq!(
        expected.len(),
        TOKENS,
        "every token was validated by some replica"
    );
    let stored = |client: &mut postgres::Client| -> HashMap<String, i64> {
        client
            .query("SELECT id, last_used FROM tokencache_tokens", &[])
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get::<_, Option<i64>>(1).unwrap_or(0)))
            .collect()
    };
    let mut client = pg::connect(&url);
    let before = stored(&mut client);
    for (n, token) in issued.iter().enumerate() {
        assert_eq!(
            before[&token.id().to_string()],
            expected[&n] as i64,
            "token {n}: the greatest time any replica saw"
        );
    }

    // An older batch never moves a time back: the late replica holds older times than the
    // table for every token, and its flush writes them.
    for secret in secrets.iter().chain([&unused.secret().to_string()]) {
        late.validate(secret).unwrap();
    }
    for token in issued.iter().chain([&unused]) {
        let held = late.get(&token.id()).unwrap().last_used.unwrap();
        assert_eq!(
            held.timestamp_millis() as u64,
            late_at,
            "the late replica's time"
        );
    }
    assert_eq!(
        before[&unused.id().to_string()],
        0,
        "no replica used `unused`"
    );
    late.flush().unwrap();
    let after = stored(&mut client);
    assert_eq!(
        after[&unused.id().to_string()],
        late_at as i64,
        "the late batch was written"
    );
    for token in &issued {
        let id = token.id().to_string();
        assert_eq!(
            after[&id], before[&id],
            "token {id}: an older time moved it back"
        );
    }
    late.close().unwrap();
}

/// A listing as the replica process prints it.
fn printed(listed: &BTreeMap<String, bool>) -> String {
    listed
        .iter()
        .map(|(id, revoked)| format!("{id}:{revoked}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn with_the_database_down_changes_fail_and_every_acknowledged_one_survives() {
    let cluster = Cluster::start();
    let url = cluster.fresh_db();
    let interval = Duration::from_millis(200);
    let a = TokenStore::builder(&url)
        .flush_interval(interval)
        .poll_interval(interval)
        .open()
        .unwrap();
    let mut b = Replica::spawn(&url, interval);
    let mut acked: Vec<TokenId> = Vec::new();
    for n in 0..5 {
        acked.push(a.issue(NewToken::new(format!("before-{n}"))).unwrap().id());
    }
    a.revoke(&acked[0]).unwrap();
    pg::within(BOUND, || b.ask("list") == printed(&listing(&a))).expect("B caught up");

    cluster.stop();
    for n in 0..10 {
        let issue = a.issue(NewToken::new(format!("during-{n}")));
        assert!(
            issue.is_err(),
            "an issue with the database down returned Ok"
        );
        let answer = b.ask(&format!("issue during-b-{n}"));
        assert!(
            answer.starts_with("error "),
            "B's issue with the database down: {answer}"
        );
    }
    let revoke = a.revoke(&acked[1]);
    assert!(
        revoke.is_err(),
        "a revoke with the database down returned Ok"
    );
    eprintln!("revoke with the database down: {}", revoke.unwrap_err());
    let answer = b.ask(&format!("delete {}", acked[2]));
    assert!(
        answer.starts_with("error "),
        "B's delete with the database down: {answer}"
    );

    cluster.start_again();
    let mut after = None;
    let took = pg::within(Duration::from_secs(15), || {
        after = a.issue(NewToken::new("after")).ok();
        after.is_some()
    })
    .expect("issue works again once the database is back");
    eprintln!("first successful issue after the restart: {took:?}");
    acked.push(after.unwrap().id());
    let answer = b.ask("issue after-b");
    let (_, id) = answer.split_once(' ').expect(&answer);
    acked.push(id.parse().unwrap());
    assert_eq!(b.ask(&format!("revoke {}", acked[3])), "ok");

    // Memory and the table agree: the failed revoke and delete were retried (they held
    // in memory), the failed issues are nowhere.
    let converged = pg::within(Duration::from_secs(10), || {
        let t = printed(&table(&url));
        t == printed(&listing(&a)) && t == b.ask("list")
    });
    let t = table(&url);
    assert!(
        converged.is_some(),
        "table {t:?}\nA {:?}\nB {}",
        listing(&a),
        b.ask("list")
    );
    for id in &acked {
        if *id != acked[2] {
            assert!(
                t.contains_key(&id.to_string()),
                "acknowledged {id} is missing"
            );
        }
    }
    assert!(
        !t.contains_key(&acked[2].to_string()),
        "the delete was retried"
    );
    assert!(t[&acked[1].to_string()], "the revoke was retried");
    assert!(t[&acked[3].to_string()]);
    assert_eq!(t.len(), acked.len() - 1);
}

/// PostgreSQL stopped (immediate: a crash for its clients) and restarted while two threads
/// keep issuing and revoking and a third validates: every call that returned `Ok` is in the
/// table afterwards (an issue as a token, a revoke as revoked), the outage made calls fail,
/// and both replicas' memory equals the table.
#[test]
fn postgres_restarted_in_the_middle_of_changes_loses_no_acknowledged_one() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    let cluster = Cluster::start();
    let url = cluster.fresh_db();
    let interval = Duration::from_millis(200);
    let open_a = || {
        TokenStore::builder(&url)
            .flush_interval(interval)
            .poll_interval(interval)
            .open()
            .unwrap()
    };
    let a = open_a();
    let b = open_a();
    let stop = AtomicBool::new(false);
    let acked_issues = Mutex::new(Vec::new());
    let acked_revokes = Mutex::new(Vec::new());
    let failures = Mutex::new(0usize);
    thread::scope(|scope| {
        for worker in 0..2 {
            let (a, stop) = (&a, &stop);
            let (acked_issues, acked_revokes, failures) =
                (&acked_issues, &acked_revokes, &failures);
            scope.spawn(move || {
                let mut mine: Vec<(TokenId, String)> = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    match a.issue(NewToken::new(format!("w{worker}-{n}"))) {
                        Ok(t) => {
                            acked_issues.lock().unwrap().push(t.id());
                            mine.push((t.id(), t.secret().to_owned()));
                        }
                        Err(_) => *failures.lock().unwrap() += 1,
                    }
                    if n % 3 == 0 {
                        if let Some((id, _)) = mine.pop() {
                            match a.revoke(&id) {
                                Ok(()) => acked_revokes.lock().unwrap().push(id),
                                Err(_) => *failures.lock().unwrap() += 1,
                            }
                        }
                    }
                    if let Some((_, secret)) = mine.last() {
                        let _ = a.validate(secret);
                    }
                    thread::sleep(Duration::from_millis(2));
                }
            });
        }
        thread::sleep(Duration::from_millis(400));
        cluster.stop();
        thread::sleep(Duration::from_millis(600));
        cluster.start_again();
        // Until the store writes again, then a little more.
        let issued_before = acked_issues.lock().unwrap().len();
        pg::within(Duration::from_secs(15), || {
            acked_issues.lock().unwrap().len() > issued_before + 5
        })
        .expect("issues succeed again once the database is back");
        stop.store(true, Ordering::Relaxed);
    });
    let failures = *failures.lock().unwrap();
    assert!(failures > 0, "the outage made no call fail");
    let t = table(&url);
    let issues = acked_issues.into_inner().unwrap();
    let revokes = acked_revokes.into_inner().unwrap();
    for id in &issues {
        assert!(
            t.contains_key(&id.to_string()),
            "acknowledged issue {id} is missing"
        );
    }
    for id in &revokes {
        assert!(
            t[&id.to_string()],
            "acknowledged revoke of {id} is not in the table"
        );
    }
    // Failed revokes are retried from memory; failed issues are nowhere: memory converges
    // to the table on both replicas.
    let converged = pg::within(Duration::from_secs(10), || {
        let t = printed(&table(&url));
        t == printed(&listing(&a)) && t == printed(&listing(&b))
    });
    assert!(converged.is_some(), "memory never matched the table");
    eprintln!(
        "restart in the middle: {} issues and {} revokes acknowledged, {failures} calls failed",
        issues.len(),
        revokes.len()
    );
}

#[test]
fn a_slow_transaction_holding_a_version_does_not_make_a_replica_skip_rows() {
    let url = pg::fresh_db();
    let a = open(&url, Duration::from_secs(1));
    let c = open(&url, Duration::from_secs(1));
    let replica = open(&url, Duration::from_millis(100));
    let slow = a.issue(NewToken::new("slow")).unwrap();
    pg::within(BOUND, || replica.validate(slow.secret()).is_ok()).unwrap();

    // Hold the row lock the revoke needs: its transaction takes a version and waits.
    let mut blocker = pg::connect(&url);
    let mut held = blocker.transaction().unwrap();
    held.execute(
        "SELECT 1 FROM tokencache_tokens WHERE id = $1 FOR UPDATE",
        &[&slow.id().to_string()],
    )
    .unwrap();
    let started = Instant::now();
    let (revoked, issued) = thread::scope(|s| {
        let revoke = s.spawn(|| {
            a.revoke(&slow.id()).unwrap();
            started.elapsed()
        });
        thread::sleep(Duration::from_millis(200));
        let issue = s.spawn(|| {
            let many = c.issue_many((0..5).map(|n| NewToken::new(format!("fast-{n}"))));
            (many.unwrap(), started.elapsed())
        });
        thread::sleep(Duration::from_millis(500));
        held.commit().unwrap();
        (revoke.join().unwrap(), issue.join().unwrap())
    });
    let (fast, fast_done) = issued;
    // The revoke held the counter row while it waited, so the issue (started at 200 ms)
    // waited too: versions are taken in commit order.
    assert!(revoked >= Duration::from_millis(700), "the revoke waited");
    assert!(fast_done >= Duration::from_millis(650), "the issue waited");

    pg::within(BOUND, || {
        replica.validate(slow.secret()).err() == Some(Rejection::Revoked)
            && fast.iter().all(|t| replica.validate(t.secret()).is_ok())
    })
    .expect("the replica sees the slow revoke and every later issue");
    let mut client = pg::connect(&url);
    let mut version = |id: &TokenId| -> i64 {
        client
            .query_one(
                "SELECT version FROM tokencache_tokens WHERE id = $1",
                &[&id.to_string()],
            )
            .unwrap()
            .get(0)
    };
    let slow_version = version(&slow.id());
    assert!(fast.iter().all(|t| version(&t.id()) > slow_version));
}

#[test]
fn max_staleness_refuses_once_the_replica_is_too_far_behind_and_the_default_keeps_serving() {
    let cluster = Cluster::start();
    let url = cluster.fresh_db();
    let poll = Duration::from_millis(100);
    let staleness = Duration::from_millis(800);
    let strict = TokenStore::builder(&url)
        .poll_interval(poll)
        .max_staleness(staleness)
        .open()
        .unwrap();
    let lenient = open(&url, poll);
    let issued = lenient.issue(NewToken::new("ci-bot")).unwrap();
    pg::within(BOUND, || strict.validate(issued.secret()).is_ok()).unwrap();
    let lag = lenient
        .stats()
        .replica_lag
        .expect("a replica reports its lag");
    assert!(lag < Duration::from_secs(1), "{lag:?}");

    let stopped = Instant::now();
    cluster.stop();
    let refused = pg::within(staleness + BOUND, || {
        strict.validate(issued.secret()).err() == Some(Rejection::Unavailable)
    })
    .expect("the strict replica refuses once too stale");
    eprintln!("max_staleness {staleness:?}: refused {refused:?} after the stop");
    assert!(stopped.elapsed() >= staleness - poll);
    assert!(
        lenient.validate(issued.secret()).is_ok(),
        "the default serves"
    );
    let stats = lenient.stats();
    assert!(stats.replica_lag.unwrap() >= staleness - poll, "{stats:?}");
    assert!(stats.last_catch_up_at.is_some());
    assert_eq!(strict.stats().rejections.unavailable, 1);
    // Through `TokenLayer`, the same refusal is a 503 without a bearer challenge (the
    // client should try again, not authenticate again).
    #[cfg(feature = "axum")]
    {
        use tower::{Layer, ServiceExt};
        let inner = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
        });
        let request = http::Request::builder()
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", issued.secret()),
            )
            .body(())
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let layer = tokencache::TokenLayer::new(strict.clone());
        let response = runtime
            .block_on(layer.layer(inner).oneshot(request))
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(response
            .headers()
            .get(http::header::WWW_AUTHENTICATE)
            .is_none());
        assert_eq!(strict.stats().rejections.unavailable, 2);
    }

    cluster.start_again();
    let back = pg::within(Duration::from_secs(15), || {
        strict.validate(issued.secret()).is_ok()
    })
    .expect("the strict replica serves again once caught up");
    eprintln!("strict replica serving again {back:?} after the restart");
}

/// Replicas opening a new database together do not race its creation: each migration runs
/// once (under the advisory lock), every `open` succeeds, and they share one store.
#[test]
fn replicas_opening_a_new_database_together_migrate_it_once() {
    const REPLICAS: usize = 6;
    let url = pg::fresh_db();
    let start = std::sync::Barrier::new(REPLICAS);
    let stores: Vec<TokenStore> = thread::scope(|scope| {
        let opening: Vec<_> = (0..REPLICAS)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    open(&url, Duration::from_millis(200))
                })
            })
            .collect();
        opening
            .into_iter()
            .map(|h| h.join().expect("every concurrent open succeeds"))
            .collect()
    });
    let mut client = pg::connect(&url);
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM tokencache_migrations ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2, 3, 4], "each migration once");
    let issued = stores[0].issue(NewToken::new("shared")).unwrap();
    for store in &stores {
        pg::within(BOUND, || store.validate(issued.secret()).is_ok())
            .expect("every replica sees the one store");
    }
    for store in stores {
        store.close().unwrap();
    }
}

#[test]
fn the_schema_is_versioned_and_a_newer_one_is_refused() {
    let url = pg::fresh_db();
    drop(open(&url, Duration::from_secs(1)));
    let mut client = pg::connect(&url);
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM tokencache_migrations ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2, 3, 4]);
    // Opening again applies nothing.
    drop(open(&url, Duration::from_secs(1)));
    client
        .execute(
            "INSERT INTO tokencache_migrations (version) VALUES (99)",
            &[],
        )
        .unwrap();
    let error = TokenStore::open(&url).unwrap_err().to_string();
    assert!(
        error.contains("version 99") && error.contains("upgrade"),
        "{error}"
    );
}

#[test]
fn a_password_never_appears_in_errors_or_debug() {
    let url = "postgres://someone:hunter2@127.0.0.1:1/db?password=hunter2";
    let error = TokenStore::open(url).unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("someone:***@127.0.0.1:1"), "{text}");

    // An open store (the test server trusts any password) names itself without it.
    let url = pg::fresh_db().replace("postgres://postgres@", "postgres://postgres:hunter2@");
    if url.contains("hunter2") {
        let store = open(&url, Duration::from_secs(1));
        let shown = format!("{store:?} {}", store.path().display());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("postgres:***@"), "{shown}");
    }
}

#[cfg(feature = "cli")]
#[test]
fn the_cli_issues_and_lists_with_a_database_url() {
    let url = pg::fresh_db();
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_tokencache"))
            .env("TOKENCACHE_STORE", &url)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let issued: serde_json::Value =
        serde_json::from_str(&cli(&["issue", "ci-bot", "--json"])).unwrap();
    let secret = issued["token"].as_str().expect("the secret").to_owned();
    let id = issued["id"].as_str().unwrap().to_owned();
    let listed = cli(&["list", "--json"]);
    assert!(listed.contains(&id), "{listed}");
    let store = open(&url, Duration::from_secs(1));
    assert!(store.validate(&secret).is_ok());
    let other = std::process::Command::new(env!("CARGO_BIN_EXE_tokencache"))
        .args(["--store", &url, "revoke", &id])
        .env_remove("TOKENCACHE_STORE")
        .output()
        .unwrap();
    assert!(other.status.success());
    pg::within(BOUND, || {
        store.validate(&secret).err() == Some(Rejection::Revoked)
    })
    .unwrap();
}

/// `stress --store postgres://...` runs the main job with tokencache's store on the
/// database: the tokens it issued are in the table, and it reports the store matching memory.
#[cfg(feature = "cli")]
#[test]
fn stress_runs_on_a_database_url() {
    let url = pg::fresh_db();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tokencache"))
        .args([
            "--store",
            &url,
            "stress",
            "--tokens",
            "2000",
            "--seconds",
            "0.5",
            "--json",
        ])
        .env_remove("TOKENCACHE_STORE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let row = &rows[0];
    assert_eq!(row["design"], "tokencache", "{rows}");
    assert_eq!(row["verified"], true, "{rows}");
    assert!(row["ops"].as_u64().unwrap() > 0, "{rows}");
    assert!(!stderr.contains("tokens.snap"), "{stderr}");
    let on_db: i64 = pg::connect(&url)
        .query_one(
            "SELECT count(*) FROM tokencache_tokens WHERE NOT deleted",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(on_db, 2000);
}

/// The sync client panics if its runtime starts on a thread running another: `open` and
/// every call must keep it off the caller's thread (a service's async `main`).
#[test]
fn a_store_opens_and_works_inside_an_async_runtime() {
    let url = pg::fresh_db();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = open(&url, Duration::from_secs(1));
        let issued = store.issue_async(NewToken::new("async")).await.unwrap();
        assert!(store.validate(issued.secret()).is_ok());
        store.revoke_async(&issued.id()).await.unwrap();
        store.close_async().await.unwrap();
    });
    let again = open(&url, Duration::from_secs(1));
    assert_eq!(listing(&again).len(), 1);
}

#[test]
fn a_replica_holds_every_definition_as_issued_and_follows_limits_and_purges() {
    let url = pg::fresh_db();
    let a = open(&url, Duration::from_secs(1));
    let b = open(&url, Duration::from_secs(1));
    let requests = (0..500).map(|n| {
        let mut request = NewToken::new(format!("token {n}"));
        request = request.scopes((0..n % 4).map(|s| format!("scope:{s}")));
        if n % 3 == 0 {
            request = request.expires_in(Duration::from_secs(3600 + n));
        }
        if n % 5 == 0 {
            request = request.rate_limit(RateLimit::per_second(10 + n as u32).burst(3));
        }
        request
    });
    let issued = a.issue_many(requests).unwrap();
    let same = pg::within(BOUND, || a.list() == b.list());
    assert!(
        same.is_some(),
        "B holds every definition exactly as A issued it"
    );
    eprintln!(
        "issue_many of 500 reached the other store in {:?}",
        same.unwrap()
    );

    // A rate limit set on A reaches B; A's own copy coming back does not refill A's quota.
    let limited = &issued[1];
    a.set_rate_limit(&limited.id(), Some(RateLimit::per_minute(1)))
        .unwrap();
    assert!(a.validate(limited.secret()).is_ok());
    pg::within(BOUND, || {
        b.get(&limited.id()).unwrap().rate_limit == Some(RateLimit::per_minute(1))
    })
    .expect("B has the new limit");
    thread::sleep(Duration::from_millis(100)); // A's own notification is back by now
    assert!(matches!(
        a.validate(limited.secret()),
        Err(Rejection::RateLimited { .. })
    ));

    // A purge on A is a delete everywhere.
    let old = &issued[2];
    a.revoke(&old.id()).unwrap();
    assert_eq!(a.purge(Duration::ZERO).unwrap(), 1);
    pg::within(BOUND, || b.get(&old.id()).is_none()).expect("B forgets the purged token");
    assert_eq!(b.validate(old.secret()).err(), Some(Rejection::Unknown));
    // (A validated a token: only `last_used` may differ until a flush and a later change.)
    pg::within(BOUND, || pg::definitions(&a) == pg::definitions(&b)).expect("the same tokens");
}

/// Keeps the rows and the counter as they are now, as the standby a failover will promote
/// has them (it will miss every commit after this).
fn standby_has_up_to_here(url: &str) {
    pg::connect(url)
        .batch_execute(
            "CREATE TABLE standby_tokens AS SELECT * FROM tokencache_tokens;
             CREATE TABLE standby_version AS SELECT version FROM tokencache_version;",
        )
        .unwrap();
}

/// The failover: the database becomes the standby [`standby_has_up_to_here`] kept, which
/// missed the commits since (rows, counter and, where there is one, the commit log).
fn fail_over_to_the_standby(url: &str) {
    pg::connect(url)
        .batch_execute(
            "BEGIN;
             LOCK TABLE tokencache_version;
             DELETE FROM tokencache_tokens;
             INSERT INTO tokencache_tokens SELECT * FROM standby_tokens;
             UPDATE tokencache_version SET version = (SELECT version FROM standby_version);
             DO $$ BEGIN
                 IF to_regclass('tokencache_commits') IS NOT NULL THEN
                     DELETE FROM tokencache_commits
                     WHERE version > (SELECT version FROM standby_version);
                 END IF;
             END $$;
             DROP TABLE standby_tokens, standby_version;
             COMMIT;",
        )
        .unwrap();
}

/// Until the table, `a` and every replica process list the same tokens (id, revoked).
fn converged(url: &str, stores: &[&TokenStore], replicas: &mut [&mut Replica]) -> bool {
    pg::within(Duration::from_secs(15), || {
        let t = printed(&table(url));
        stores.iter().all(|s| printed(&listing(s)) == t)
            && replicas.iter_mut().all(|r| r.ask("list") == t)
    })
    .is_some()
}

#[test]
fn a_lagging_replica_does_not_rotate_a_token_revoked_or_deleted_elsewhere() {
    // B polls once an hour: a change whose notification it missed stays unseen, unless a
    // catch-up for B's own commits (their notifications) runs after the hand-made ones;
    // on a loaded machine it can, so the setup is tried again on a fresh database until
    // B lags.
    let lagging = (0..5).find_map(|_| {
        let url = pg::fresh_db();
        let b = open(&url, Duration::from_secs(3600));
        let revoked = b.issue(NewToken::new("revoked elsewhere")).unwrap();
        let deleted = b.issue(NewToken::new("deleted elsewhere")).unwrap();
        // Room for the catch-ups of B's own commits to run first.
        std::thread::sleep(Duration::from_millis(300));
        let revoke = "UPDATE tokencache_tokens SET revoked_at = 1, version = $2 WHERE id = $1";
        let delete = "UPDATE tokencache_tokens SET deleted = true, version = $2 WHERE id = $1";
        pg::commit_by_hand(&url, revoke, &revoked.id(), false);
        pg::commit_by_hand(&url, delete, &deleted.id(), false);
        let lags = b.validate(revoked.secret()).is_ok() && b.validate(deleted.secret()).is_ok();
        lags.then_some((url, b, revoked, deleted))
    });
    let (url, b, revoked, deleted) = lagging.expect("B lags behind in one of five tries");
    for (token, what) in [(&revoked, "revoked"), (&deleted, "deleted")] {
        let error = b
            .rotate(&token.id(), Duration::ZERO)
            .expect_err("no replacement for a token revoked or deleted elsewhere");
        assert!(error.to_string().contains(what), "{error}");
    }
    let t = table(&url);
    assert_eq!(t.len(), 1, "no replacement reached the table: {t:?}");
    assert!(t[&revoked.id().to_string()]);
    // B's memory is unchanged by the refused rotations: nothing of them joined it.
    assert_eq!(b.list().len(), 2);
}

#[test]
fn a_database_that_went_back_is_reloaded_and_loses_nothing_a_replica_held() {
    let url = pg::fresh_db();
    let poll = Duration::from_millis(100);
    let a = open(&url, poll);
    let mut b = Replica::spawn(&url, poll);
    let kept = a.issue(NewToken::new("kept")).unwrap();
    let revoked = a.issue(NewToken::new("revoked after")).unwrap();
    let deleted = a.issue(NewToken::new("deleted after")).unwrap();
    standby_has_up_to_here(&url);
    let lost = a.issue(NewToken::new("issued after")).unwrap();
    a.revoke(&revoked.id()).unwrap();
    a.delete(&deleted.id()).unwrap();
    pg::within(BOUND, || b.ask("list") == printed(&listing(&a))).expect("B caught up");

    fail_over_to_the_standby(&url);
    // A change after the failover takes a version B has already read past.
    let after = a.issue(NewToken::new("after the failover")).unwrap();
    b.until(after.secret(), "ok", BOUND)
        .expect("B sees a change committed after the failover");
    assert!(converged(&url, &[&a], &mut [&mut b]), "memory and table");
    let t = table(&url);
    assert!(t[&revoked.id().to_string()], "the revoke is written back");
    assert!(!t.contains_key(&deleted.id().to_string()), "the delete too");
    assert!(t.contains_key(&lost.id().to_string()), "and the lost issue");
    for secret in [kept.secret(), lost.secret(), after.secret()] {
        assert_eq!(b.validate(secret), "ok");
        assert!(a.validate(secret).is_ok());
    }
    assert_eq!(b.validate(revoked.secret()), "revoked");
    assert_eq!(b.validate(deleted.secret()), "unknown");
    // A replica opened now loads what the table holds: the same.
    let c = open(&url, poll);
    assert_eq!(printed(&listing(&c)), printed(&t));
}

/// Makes `replica` stop (SIGSTOP) inside the transaction of `command`, a change to
/// `token`: a row lock held here keeps the transaction waiting after it took the counter
/// row, the process is stopped, then the lock is released, so the transaction sits idle,
/// holding the counter row, with nobody to commit it.
fn freeze_in_transaction(url: &str, replica: &mut Replica, command: &str, token: &str) {
    let mut admin = pg::connect(url);
    let mut held = admin.transaction().unwrap();
    held.execute(
        "SELECT 1 FROM tokencache_tokens WHERE id = $1 FOR UPDATE",
        &[&token],
    )
    .unwrap();
    replica.tell(command);
    let mut watch = pg::connect(url);
    let waiting = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                   AND application_name = 'tokencache' AND wait_event_type = 'Lock'";
    let mut pid: Option<i32> = None;
    pg::within(BOUND, || {
        let rows = watch.query(waiting, &[]).unwrap();
        pid = (rows.len() == 1).then(|| rows[0].get(0));
        pid.is_some()
    })
    .expect("the replica's transaction waits for the row");
    replica.signal("STOP");
    held.commit().unwrap();
    // Idle in its transaction, holding the counter row; on a loaded machine this look may
    // come after the idle-in-transaction timeout already ended the session, which is the
    // same state one step later.
    let state = "SELECT state FROM pg_stat_activity WHERE pid = $1";
    pg::within(BOUND, || {
        let rows = watch.query(state, &[&pid]).unwrap();
        let state: Option<String> = rows.first().and_then(|r| r.get(0));
        rows.is_empty() || state.as_deref() == Some("idle in transaction")
    })
    .expect("the frozen replica's transaction sits idle");
}

#[test]
fn a_replica_frozen_inside_its_transaction_blocks_the_others_only_until_its_session_ends() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let url = pg::fresh_db();
    let poll = Duration::from_millis(200);
    let a = open(&url, poll);
    let mut b = Replica::spawn(&url, poll);
    let answer = b.ask("issue frozen");
    let (secret, id) = answer.split_once(' ').unwrap();
    let (secret, id) = (secret.to_owned(), id.to_owned());
    pg::within(BOUND, || a.validate(&secret).is_ok()).unwrap();

    freeze_in_transaction(&url, &mut b, &format!("revoke {id}"), &id);
    let done = AtomicBool::new(false);
    let (issued, unblocked) = thread::scope(|s| {
        let issuing = s.spawn(|| {
            let issued = a.issue(NewToken::new("behind the frozen one"));
            done.store(true, Ordering::SeqCst);
            issued
        });
        // Far beyond the default idle-in-transaction timeout (5 s); before the fix the
        // issue waited until the frozen process was woken.
        let unblocked = pg::within(Duration::from_secs(30), || done.load(Ordering::SeqCst));
        b.signal("CONT");
        (issuing.join().unwrap(), unblocked)
    });
    let took = unblocked.expect("the issue went on while the other replica was still frozen");
    eprintln!("an issue behind a frozen replica's transaction: {took:?}");
    issued.expect("the issue went through once the database ended the frozen session");
    // B's revoke lost its session: an error, and memory keeps it, written again.
    let revoke = b.read();
    eprintln!("the frozen replica's revoke: {revoke}");
    assert!(converged(&url, &[&a], &mut [&mut b]), "memory and table");
    assert!(table(&url)[&id], "the revoke reached the table");
    assert_eq!(a.validate(&secret).err(), Some(Rejection::Revoked));
}

#[test]
fn a_row_that_does_not_load_still_revokes_and_deletes_and_open_skips_it() {
    let url = pg::fresh_db();
    let a = open(&url, Duration::from_millis(100));
    let revoked = a.issue(NewToken::new("revoked by hand")).unwrap();
    let deleted = a.issue(NewToken::new("deleted by hand")).unwrap();
    let scoped = a.issue(NewToken::new("scopes by hand")).unwrap();
    let fine = a.issue(NewToken::new("fine")).unwrap();
    // An operator's hand-made UPDATEs break a row's digest as they revoke or delete it.
    let broken = "UPDATE tokencache_tokens SET digest = '\\x00', revoked_at = 1, version = $2 \
                  WHERE id = $1";
    pg::commit_by_hand(&url, broken, &revoked.id(), true);
    let broken = "UPDATE tokencache_tokens SET digest = '\\x00', deleted = true, version = $2 \
                  WHERE id = $1";
    pg::commit_by_hand(&url, broken, &deleted.id(), true);
    pg::within(BOUND, || {
        a.validate(revoked.secret()).err() == Some(Rejection::Revoked)
            && a.validate(deleted.secret()).err() == Some(Rejection::Unknown)
    })
    .expect("the revocation and the tombstone of rows that do not load still apply");
    // More than a token may hold.
    let many = "UPDATE tokencache_tokens SET scopes = array_fill('s'::text, ARRAY[1000]), \
                version = $2 WHERE id = $1";
    pg::commit_by_hand(&url, many, &scoped.id(), true);

    let b = TokenStore::builder(&url)
        .open()
        .expect("a replica opens beside rows that do not load");
    assert!(b.validate(fine.secret()).is_ok());
    for token in [&revoked, &scoped] {
        assert_eq!(b.validate(token.secret()).err(), Some(Rejection::Unknown));
    }
    assert_eq!(b.list().len(), 1);
}

#[test]
fn a_rate_count_over_i32_max_reaches_every_replica_as_set() {
    let url = pg::fresh_db();
    let poll = Duration::from_millis(100);
    let a = open(&url, poll);
    let b = open(&url, poll);
    let token = a.issue(NewToken::new("fast")).unwrap();
    let limit = RateLimit::per_hour(3_000_000_000).burst(10);
    a.set_rate_limit(&token.id(), Some(limit)).unwrap();
    pg::within(BOUND, || {
        b.get(&token.id()).and_then(|t| t.rate_limit) == Some(limit)
    })
    .expect("B enforces the limit A set, not a clamped one");
    let stored: i64 = pg::connect(&url)
        .query_one(
            "SELECT rate_count::bigint FROM tokencache_tokens WHERE id = $1",
            &[&token.id().to_string()],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored, 3_000_000_000);
}

#[test]
fn max_staleness_below_twice_the_poll_interval_is_refused_at_open() {
    let url = pg::fresh_db();
    let refused = TokenStore::builder(&url)
        .poll_interval(Duration::from_secs(1))
        .max_staleness(Duration::from_millis(500))
        .open()
        .expect_err("a bound a healthy idle replica cannot meet");
    let text = refused.to_string();
    assert!(
        text.contains("max_staleness") && text.contains("poll_interval"),
        "{text}"
    );
    TokenStore::builder(&url)
        .poll_interval(Duration::from_secs(1))
        .max_staleness(Duration::from_secs(2))
        .open()
        .expect("twice the poll interval is accepted");
}

#[test]
fn a_failed_rate_limit_is_not_undone_by_a_catch_up_while_its_retry_is_pending() {
    let url = pg::fresh_db();
    let a = TokenStore::builder(&url)
        .poll_interval(Duration::from_millis(100))
        .flush_interval(Duration::from_secs(3600))
        .open()
        .unwrap();
    let token = a
        .issue(NewToken::new("limited").rate_limit(RateLimit::per_minute(100)))
        .unwrap();
    let sentinel = a.issue(NewToken::new("sentinel")).unwrap();
    let mut admin = pg::connect(&url);
    // The database refuses this one limit: A's transaction fails.
    admin
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
             CREATE TRIGGER refuse BEFORE UPDATE ON tokencache_tokens FOR EACH ROW
                 WHEN (NEW.rate_count = 7) EXECUTE FUNCTION refuse();",
        )
        .unwrap();
    let seven = RateLimit::per_minute(7);
    a.set_rate_limit(&token.id(), Some(seven))
        .expect_err("the database refused the transaction");
    assert_eq!(a.get(&token.id()).unwrap().rate_limit, Some(seven));
    // Another replica changes the same row (its last catch-up brings the old limit).
    let touch = "UPDATE tokencache_tokens SET version = $2 WHERE id = $1";
    pg::commit_by_hand(&url, touch, &token.id(), true);
    let revoke = "UPDATE tokencache_tokens SET revoked_at = 1, version = $2 WHERE id = $1";
    pg::commit_by_hand(&url, revoke, &sentinel.id(), true);
    pg::within(BOUND, || {
        a.validate(sentinel.secret()).err() == Some(Rejection::Revoked)
    })
    .expect("A caught up");
    assert_eq!(
        a.get(&token.id()).unwrap().rate_limit,
        Some(seven),
        "the limit A holds and has yet to write stands"
    );
    admin
        .batch_execute("DROP TRIGGER refuse ON tokencache_tokens")
        .unwrap();
    a.flush().expect("the retry commits");
    let count: i64 = admin
        .query_one(
            "SELECT rate_count::bigint FROM tokencache_tokens WHERE id = $1",
            &[&token.id().to_string()],
        )
        .unwrap()
        .get(0);
    assert_eq!(count, 7);
}

#[test]
fn close_joins_the_listener_and_its_connection_is_gone() {
    let url = pg::fresh_db();
    let a = open(&url, Duration::from_secs(60));
    let mut watch = pg::connect(&url);
    let mut listeners = || -> i64 {
        watch
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = 'tokencache-listener'",
                &[],
            )
            .unwrap()
            .get(0)
    };
    pg::within(BOUND, || listeners() == 1).expect("the listener connected");
    a.close().unwrap();
    // The server notes a client's goodbye a moment after it is sent.
    pg::within(BOUND, || listeners() == 0)
        .expect("no listener outlives close (the poll interval is a minute)");
}

#[cfg(feature = "cli")]
#[test]
fn list_on_a_database_runs_no_migration_and_says_what_to_do() {
    let url = pg::fresh_db();
    let list = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokencache"))
            .args(["--store", &url, "list"])
            .env_remove("TOKENCACHE_STORE")
            .output()
            .unwrap()
    };
    let output = list();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "list on an empty database");
    assert!(stderr.contains("no tokencache schema"), "{stderr}");
    let tables: i64 = pg::connect(&url)
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'tokencache%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "a read-only command created no table");
    drop(open(&url, Duration::from_secs(1)));
    assert!(list().status.success());
}

#[test]
fn a_schema_1_database_is_upgraded_on_open_to_bigint_counts_and_the_commit_log() {
    let url = pg::fresh_db();
    // Schema version 1, as the previous build created it, with a rate-limited token.
    pg::connect(&url)
        .batch_execute(
            "CREATE TABLE tokencache_migrations (version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO tokencache_migrations (version) VALUES (1);
             CREATE TABLE tokencache_tokens (id text PRIMARY KEY, name text NOT NULL,
                 digest bytea NOT NULL, scopes text[] NOT NULL, created_at bigint NOT NULL,
                 expires_at bigint, revoked_at bigint, last_used bigint, rate_period_ms bigint,
                 rate_count integer, rate_burst integer, version bigint NOT NULL,
                 deleted boolean NOT NULL DEFAULT false);
             CREATE INDEX tokencache_tokens_version ON tokencache_tokens (version);
             CREATE TABLE tokencache_version (one boolean PRIMARY KEY DEFAULT true CHECK (one),
                 version bigint NOT NULL);
             INSERT INTO tokencache_version (one, version) VALUES (true, 0);
             INSERT INTO tokencache_tokens (id, name, digest, scopes, created_at, version, deleted)
                 VALUES ('tombston', 'old', '\\x00', '{}', 0, 0, true);",
        )
        .unwrap();
    // A read-only open does not upgrade it, and says so.
    let refused = TokenStore::builder(&url)
        .migrate_schema(false)
        .open()
        .expect_err("an old schema, read-only");
    assert!(refused.to_string().contains("older"), "{refused}");
    let a = open(&url, Duration::from_secs(1));
    let token = a
        .issue(NewToken::new("big").rate_limit(RateLimit::per_hour(3_000_000_000).burst(10)))
        .unwrap();
    let mut client = pg::connect(&url);
    let types: Vec<String> = client
        .query(
            "SELECT data_type::text FROM information_schema.columns \
             WHERE table_name = 'tokencache_tokens' AND column_name IN ('rate_count', 'rate_burst')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(types, ["bigint", "bigint"]);
    let stamped: i64 = client
        .query_one("SELECT count(*) FROM tokencache_commits", &[])
        .unwrap()
        .get(0);
    assert_eq!(stamped, 2, "version 0 (at the upgrade) and the issue");
    // Schema 3: the tombstone already there is dated at the upgrade (so it is kept one
    // horizon from now), and the pruned mark starts at 0.
    let (dated, mark): (bool, i64) = (
        client
            .query_one(
                "SELECT deleted_at > 0 FROM tokencache_tokens WHERE id = 'tombston'",
                &[],
            )
            .unwrap()
            .get(0),
        client
            .query_one("SELECT version FROM tokencache_pruned", &[])
            .unwrap()
            .get(0),
    );
    assert!(dated && mark == 0, "dated {dated}, mark {mark}");
    let b = open(&url, Duration::from_secs(1));
    assert_eq!(b.get(&token.id()), a.get(&token.id()));
}

/// Every replica (this process's store and the replica processes) refuses every token in
/// `refused` (revoked, or deleted), and memory equals the table everywhere.
fn check_after(
    phase: &str,
    url: &str,
    a: &TokenStore,
    replicas: &mut [&mut Replica],
    refused: &[String],
) {
    assert!(
        converged(url, &[a], replicas),
        "{phase}: memory never matched the table"
    );
    for secret in refused {
        assert!(
            a.validate(secret).is_err(),
            "{phase}: A accepts a revoked token"
        );
        for replica in replicas.iter_mut() {
            let verdict = replica.validate(secret);
            assert!(
                verdict == "revoked" || verdict == "unknown",
                "{phase}: a replica process says {verdict} to a revoked or deleted token"
            );
        }
    }
    eprintln!(
        "{phase}: converged; {} refused tokens refused everywhere",
        refused.len()
    );
}

/// The replica fault test: two replica processes and this one go through a failover to a
/// standby that missed commits (the counter set back), a restore of a `pg_dump` taken
/// earlier, a replica frozen (SIGSTOP) inside its transaction, and a replica rotating the
/// tokens another is revoking at the same moment. After each, every replica's memory
/// equals the table and no revoked or deleted token is accepted anywhere.
#[test]
fn replicas_converge_after_a_failover_a_restore_a_frozen_writer_and_a_racing_rotate() {
    let url = pg::fresh_db();
    let poll = Duration::from_millis(200);
    let a = open(&url, poll);
    let mut r1 = Replica::spawn(&url, poll);
    let mut r2 = Replica::spawn(&url, poll);
    let mut refused: Vec<String> = Vec::new();
    let issue = |r: &mut Replica, name: &str| -> (String, String) {
        let answer = r.ask(&format!("issue {name}"));
        let (secret, id) = answer.split_once(' ').expect(&answer);
        (secret.to_owned(), id.to_owned())
    };

    // 1. A failover to a standby that missed the last commits.
    let (k1, k1_id) = issue(&mut r1, "k1");
    standby_has_up_to_here(&url);
    let (lost1, _) = issue(&mut r1, "lost1");
    assert_eq!(r2.until(&lost1, "ok", BOUND).map(drop), Some(()));
    assert_eq!(r2.ask(&format!("revoke {k1_id}")), "ok");
    refused.push(k1);
    assert!(converged(&url, &[&a], &mut [&mut r1, &mut r2]));
    fail_over_to_the_standby(&url);
    let (after1, _) = issue(&mut r2, "after1");
    check_after("failover", &url, &a, &mut [&mut r1, &mut r2], &refused);
    assert_eq!(r1.validate(&lost1), "ok", "the lost issue is back");
    assert_eq!(r1.validate(&after1), "ok");

    // 2. A restore of a backup taken earlier.
    let backup = pg::dump(&url);
    let (k2, k2_id) = issue(&mut r1, "k2");
    let (gone, gone_id) = issue(&mut r2, "gone");
    assert!(converged(&url, &[&a], &mut [&mut r1, &mut r2]));
    assert_eq!(r2.ask(&format!("revoke {k2_id}")), "ok");
    assert_eq!(r1.ask(&format!("delete {gone_id}")), "ok");
    refused.extend([k2.clone(), gone]);
    let (backup_token, backup_id) = issue(&mut r2, "after the backup");
    assert!(converged(&url, &[&a], &mut [&mut r1, &mut r2]));
    pg::restore(&url, &backup);
    let (after2, _) = issue(&mut r1, "after2");
    check_after("restore", &url, &a, &mut [&mut r1, &mut r2], &refused);
    assert!(table(&url)[&k2_id], "the revoke is back in the table");
    assert_eq!(r2.validate(&backup_token), "ok");
    assert!(table(&url).contains_key(&backup_id));
    assert_eq!(r2.validate(&after2), "ok");

    // 3. A replica frozen inside its transaction.
    let (k3, k3_id) = issue(&mut r2, "k3");
    assert!(converged(&url, &[&a], &mut [&mut r1, &mut r2]));
    freeze_in_transaction(&url, &mut r1, &format!("revoke {k3_id}"), &k3_id);
    let (during, _) = issue(&mut r2, "while r1 is frozen");
    r1.signal("CONT");
    let revoke = r1.read();
    eprintln!("frozen: r2 issued meanwhile; r1's revoke answered {revoke}");
    refused.push(k3);
    check_after("frozen writer", &url, &a, &mut [&mut r1, &mut r2], &refused);
    assert_eq!(r1.validate(&during), "ok");

    // 4. One replica rotates the tokens another revokes, at the same moment.
    let racing = a
        .issue_many((0..30).map(|n| NewToken::new(format!("race-{n}"))))
        .unwrap();
    assert!(converged(&url, &[&a], &mut [&mut r1, &mut r2]));
    let ids: Vec<String> = racing.iter().map(|t| t.id().to_string()).collect();
    let rotated: Vec<(String, String)> = thread::scope(|s| {
        let (r1, r2, ids) = (&mut r1, &mut r2, &ids);
        s.spawn(move || {
            for id in ids {
                assert_eq!(r1.ask(&format!("revoke {id}")), "ok");
            }
        });
        let rotating = s.spawn(move || {
            let mut rotated = Vec::new();
            for id in ids {
                let answer = r2.ask(&format!("rotate {id}"));
                if let Some((_, new)) = answer
                    .split_once(' ')
                    .filter(|_| !answer.starts_with("error"))
                {
                    rotated.push((id.clone(), new.to_owned()));
                }
            }
            rotated
        });
        rotating.join().unwrap()
    });
    refused.extend(racing.iter().map(|t| t.secret().to_owned()));
    check_after("racing rotate", &url, &a, &mut [&mut r1, &mut r2], &refused);
    // A replacement is legitimate only if its rotation committed before the revoke: then
    // the revoke was the old token's last change, at a later version.
    let mut client = pg::connect(&url);
    let version = |client: &mut postgres::Client, id: &str| -> i64 {
        client
            .query_one(
                "SELECT version FROM tokencache_tokens WHERE id = $1",
                &[&id],
            )
            .unwrap()
            .get(0)
    };
    for (old, new) in &rotated {
        assert!(
            version(&mut client, old) > version(&mut client, new),
            "token {old} got a replacement {new} after it was revoked"
        );
    }
    eprintln!(
        "racing rotate: {} of {} rotations went through, each before its token's revoke",
        rotated.len(),
        ids.len()
    );
}

/// `pg_try_advisory_xact_lock` key of the tombstone prune (`src/pg/prune.rs`, REPLICAS.md).
const PRUNE_LOCK: i64 = 0x7463_7072_756e_6531;

/// Every row of the table, tombstones included: id and whether deleted.
fn rows(url: &str) -> BTreeMap<String, bool> {
    pg::connect(url)
        .query("SELECT id, deleted FROM tokencache_tokens", &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// Waits until `store` reports a catch-up at `clock`'s time or later: its listener has then
/// also tried to prune at that time (it tries just before the catch-up, at one clock
/// reading).
fn caught_up_at(store: &TokenStore, clock: &ManualClock) {
    use tokencache::Clock;
    let now = clock.now_ms() as i64;
    pg::within(BOUND, || {
        store
            .stats()
            .last_catch_up_at
            .is_some_and(|at| at.timestamp_millis() >= now)
    })
    .expect("a catch-up at the clock's time");
}

/// A manual clock at the real time (child replicas run on the system clock, and must not
/// find this store's tombstones a horizon old).
fn clock_at_now() -> ManualClock {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    ManualClock::new(now.as_millis() as u64)
}

/// Tombstones older than the horizon are removed, newer ones stay, and nobody prunes while
/// another holds the prune's advisory lock; the pruned mark holds the removed version.
#[test]
fn tombstones_older_than_the_horizon_are_removed_by_one_replica_at_a_time() {
    let url = pg::fresh_db();
    let clock = ManualClock::default();
    let a = TokenStore::builder(&url)
        .clock(clock.clone())
        .poll_interval(Duration::from_millis(20))
        .tombstone_horizon(Duration::from_secs(3600))
        .open()
        .unwrap();
    let old = a.issue(NewToken::new("deleted first")).unwrap();
    let young = a.issue(NewToken::new("deleted later")).unwrap();
    let live = a.issue(NewToken::new("live")).unwrap();
    a.delete(&old.id()).unwrap();
    clock.advance(Duration::from_secs(30 * 60));
    a.delete(&young.id()).unwrap();
    let expected = |old_row: bool| {
        let mut m = BTreeMap::from([
            (young.id().to_string(), true),
            (live.id().to_string(), false),
        ]);
        if old_row {
            m.insert(old.id().to_string(), true);
        }
        m
    };

    // Another replica (here a plain session) holds the lock: the old tombstone stays.
    let mut holder = pg::connect(&url);
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&PRUNE_LOCK])
        .unwrap();
    clock.advance(Duration::from_secs(31 * 60));
    caught_up_at(&a, &clock);
    assert_eq!(
        rows(&url),
        expected(true),
        "nobody prunes while the lock is held"
    );

    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&PRUNE_LOCK])
        .unwrap();
    clock.advance(Duration::from_secs(60));
    caught_up_at(&a, &clock);
    assert_eq!(
        rows(&url),
        expected(false),
        "61 minutes old: removed; 31 minutes old: kept"
    );
    let mut client = pg::connect(&url);
    let (mark, old_version): (i64, i64) = (
        client
            .query_one("SELECT version FROM tokencache_pruned", &[])
            .unwrap()
            .get(0),
        client
            .query_one("SELECT version FROM tokencache_version", &[])
            .unwrap()
            .get::<_, i64>(0)
            - 1,
    );
    assert_eq!(
        mark, old_version,
        "the mark is the removed tombstone's version"
    );
    assert!(a.validate(live.secret()).is_ok());
    assert_eq!(a.validate(old.secret()).unwrap_err(), Rejection::Unknown);
}

/// A replica stopped (SIGSTOP) while another deletes a token and, a horizon later, removes
/// its tombstone: at its next catch-up it finds the tombstone gone, reloads, and refuses the
/// token (replaying the versions since would not tell it), without writing it back.
#[test]
fn a_replica_stopped_past_the_tombstone_horizon_reloads_and_refuses_a_token_deleted_meanwhile() {
    let url = pg::fresh_db();
    let poll = Duration::from_millis(50);
    let clock = clock_at_now();
    let a = TokenStore::builder(&url)
        .clock(clock.clone())
        .poll_interval(poll)
        .tombstone_horizon(Duration::from_secs(3600))
        .open()
        .unwrap();
    let doomed = a.issue(NewToken::new("doomed")).unwrap();
    let kept = a.issue(NewToken::new("kept")).unwrap();
    let mut b = Replica::spawn(&url, poll);
    b.until(doomed.secret(), "ok", BOUND)
        .expect("B has the token");

    b.signal("STOP");
    a.delete(&doomed.id()).unwrap();
    clock.advance(Duration::from_secs(2 * 3600));
    caught_up_at(&a, &clock);
    assert!(
        !rows(&url).contains_key(&doomed.id().to_string()),
        "A removed the tombstone"
    );
    b.signal("CONT");

    let took = b
        .until(doomed.secret(), "unknown", BOUND)
        .expect("B reloads and drops the token whose tombstone it never read");
    println!(
        "a replica stopped past the horizon refuses the deleted token {took:?} after it resumes"
    );
    assert_eq!(b.validate(kept.secret()), "ok");
    assert!(
        !rows(&url).contains_key(&doomed.id().to_string()),
        "B did not write the token back"
    );
    assert_eq!(a.validate(doomed.secret()).unwrap_err(), Rejection::Unknown);
    assert!(converged(&url, &[&a], &mut [&mut b]), "memory and table");
}

#[test]
fn a_tombstone_horizon_shorter_than_max_staleness_is_refused_at_open() {
    let url = pg::fresh_db();
    let refused = TokenStore::builder(&url)
        .poll_interval(Duration::from_secs(1))
        .max_staleness(Duration::from_secs(60))
        .tombstone_horizon(Duration::from_secs(30))
        .open()
        .expect_err("a horizon shorter than max_staleness");
    let text = refused.to_string();
    assert!(
        text.contains("tombstone_horizon") && text.contains("max_staleness"),
        "{text}"
    );
    TokenStore::builder(&url)
        .poll_interval(Duration::from_secs(1))
        .max_staleness(Duration::from_secs(60))
        .tombstone_horizon(Duration::from_secs(60))
        .open()
        .expect("a horizon equal to max_staleness is accepted");
}

/// A token validated on a replica in another process: this process's replica learns its
/// `last_used` without any change to the token's definition (flush intervals of 100 ms,
/// held to the generous `BOUND`), and the other way; `get` and `list` agree with the table.
#[test]
fn last_used_reaches_every_replica_within_two_flush_intervals() {
    let url = pg::fresh_db();
    let interval = Duration::from_millis(100);
    let a = TokenStore::builder(&url)
        .poll_interval(interval)
        .flush_interval(interval)
        .open()
        .unwrap();
    let token = a.issue(NewToken::new("shared")).unwrap();
    let id = token.id();
    let mut b = Replica::spawn(&url, interval);
    b.until(token.secret(), "ok", BOUND)
        .expect("B has the token");
    let b_used = b.ask(&format!("used {id}"));
    assert_ne!(b_used, "none");
    let table_used = |url: &str| -> String {
        let at: Option<i64> = pg::connect(url)
            .query_one(
                "SELECT last_used FROM tokencache_tokens WHERE id = $1",
                &[&id.to_string()],
            )
            .unwrap()
            .get(0);
        at.map_or("none".into(), |at| at.to_string())
    };

    let took = pg::within(BOUND, || last_used_ms(&a, &id) == b_used)
        .expect("A learns the last_used of a validation on B");
    println!("B's last_used reached A in {took:?} (flush and poll intervals 100 ms)");
    let listed = a.list().into_iter().find(|t| t.id == id).unwrap();
    assert_eq!(
        listed.last_used.map(|at| at.timestamp_millis().to_string()),
        Some(b_used.clone())
    );
    assert_eq!(table_used(&url), b_used);

    thread::sleep(Duration::from_millis(5));
    a.validate(token.secret()).unwrap();
    let a_used = last_used_ms(&a, &id);
    assert!(a_used.parse::<i64>().unwrap() > b_used.parse::<i64>().unwrap());
    pg::within(BOUND, || b.ask(&format!("used {id}")) == a_used)
        .expect("B learns A's later last_used");
    assert_eq!(table_used(&url), a_used);
    assert_eq!(last_used_ms(&a, &id), a_used, "never moved back");
}

/// After a rollback of the database (a failover to a standby that missed commits), a token
/// memory holds and the table lacks is written back only if issued less than one horizon
/// ago: an older one's row may be missing because it was deleted and its tombstone
/// removed, so it is dropped (the safe side), never made valid again.
#[test]
fn after_a_rollback_a_lost_token_older_than_the_horizon_is_dropped_not_written_back() {
    let url = pg::fresh_db();
    let clock = ManualClock::default();
    let replica = || {
        TokenStore::builder(&url)
            .clock(clock.clone())
            .poll_interval(Duration::from_millis(50))
            .tombstone_horizon(Duration::from_secs(3600))
            .open()
            .unwrap()
    };
    let (a, b) = (replica(), replica());
    standby_has_up_to_here(&url);
    let old = a.issue(NewToken::new("issued two hours before")).unwrap();
    clock.advance(Duration::from_secs(2 * 3600));
    let young = a.issue(NewToken::new("issued just now")).unwrap();
    pg::within(BOUND, || b.validate(young.secret()).is_ok()).expect("B has both");
    assert!(b.validate(old.secret()).is_ok());

    fail_over_to_the_standby(&url);
    let after = a.issue(NewToken::new("after the failover")).unwrap();
    pg::within(BOUND, || b.validate(after.secret()).is_ok()).expect("B reloaded");
    assert!(converged(&url, &[&a, &b], &mut []), "memory and table");
    let t = table(&url);
    assert!(
        t.contains_key(&young.id().to_string()),
        "the young token is written back"
    );
    assert!(!t.contains_key(&old.id().to_string()), "the old one is not");
    for store in [&a, &b] {
        assert!(store.validate(young.secret()).is_ok());
        assert_eq!(
            store.validate(old.secret()).unwrap_err(),
            Rejection::Unknown
        );
    }
}
