//! PostgreSQL stores (feature `postgres`): the database is the system of record, and every
//! replica keeps the whole store in memory, validating as a file store does.
//!
//! Changes go through the persister as for a file store, to [`sink::PgSink`] instead of a
//! journal: one transaction per group commit, returning after COMMIT, with one version from
//! a counter row and a `NOTIFY`. Each replica's [`listen`] thread reads what others
//! committed (`LISTEN`, catch-up on each notification, on a poll timer and after each
//! reconnect) and hands it to the persister, which alone changes the map. `docs/REPLICAS.md`
//! has the schema, the protocol and what each failure does.

mod listen;
mod open;
mod prune;
mod rows;
mod schema;
mod sink;
mod tls;

pub(crate) use open::{open, Settings};

/// The `NOTIFY` channel every commit signals on.
const CHANNEL: &str = "tokencache";
/// `application_name` of a replica's writing connection.
const WRITER_NAME: &str = "tokencache";
/// `application_name` of a replica's listening connection.
const LISTENER_NAME: &str = "tokencache-listener";

/// A client error with its causes ("error connecting to server: Connection refused"): the
/// client's own message leaves them out. The URL, and so the password, is in none of them.
fn describe(error: &postgres::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    if let Some(hint) = tls::hint(&text) {
        text.push_str("; ");
        text.push_str(hint);
    }
    text
}
