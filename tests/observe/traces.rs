//! Spans: one per durable write and compaction (and, for replicas, catch-up and reconnect:
//! `replica.rs`), with their fields; none and no event per validation.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use tokencache::{NewToken, TokenStore};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::{manual_builder, one_at_a_time, scratch};

/// A span or event the process-wide subscriber saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The span's name (`"write"`), or `"event"`.
    pub name: &'static str,
    pub target: String,
    /// Each field as its `Debug` text (a string's without quotes).
    pub fields: HashMap<String, String>,
    /// The thread that created the span or sent the event.
    pub thread: Option<String>,
}

impl Seen {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }

    pub fn number(&self, name: &str) -> u64 {
        let text = self
            .field(name)
            .unwrap_or_else(|| panic!("no {name}: {self:?}"));
        text.parse()
            .unwrap_or_else(|_| panic!("{name} is no number: {self:?}"))
    }
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
}

/// Spans (when they close) and events, in the order seen.
static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

fn seen() -> MutexGuard<'static, Vec<Seen>> {
    SEEN.lock().unwrap_or_else(|e| e.into_inner())
}

struct Capture;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut seen = Seen {
            name: attrs.metadata().name(),
            target: attrs.metadata().target().into(),
            fields: HashMap::new(),
            thread: std::thread::current().name().map(String::from),
        };
        attrs.record(&mut Fields(&mut seen.fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(seen);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(seen) = span.extensions_mut().get_mut::<Seen>() {
                values.record(&mut Fields(&mut seen.fields));
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut seen = Seen {
            name: "event",
            target: event.metadata().target().into(),
            fields: HashMap::new(),
            thread: std::thread::current().name().map(String::from),
        };
        event.record(&mut Fields(&mut seen.fields));
        crate::traces::seen().push(seen);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            if let Some(seen) = span.extensions_mut().remove::<Seen>() {
                crate::traces::seen().push(seen);
            }
        }
    }
}

/// Installs the capturing subscriber for the whole process (once) and forgets what it saw
/// so far.
pub fn capture() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(Capture);
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this binary");
    });
    seen().clear();
}

/// The store's closed spans named `name`, seen since [`capture`].
pub fn spans(name: &str) -> Vec<Seen> {
    seen()
        .iter()
        .filter(|s| s.name == name && s.target.starts_with("tokencache"))
        .cloned()
        .collect()
}

/// Issue 20: a durable write leaves one `write` span with the records it held, the bytes
/// it appended and how long it took; a compaction one `compaction` span with the tokens
/// and bytes of its snapshot.
#[test]
fn a_write_and_a_compaction_each_leave_one_span_with_their_fields() {
    let _turn = one_at_a_time();
    let s = scratch();
    let (builder, _clock) = manual_builder(&s.path);
    let store = builder.open().unwrap();
    capture();
    let before = store.stats();
    store.issue(NewToken::new("one")).unwrap();
    store
        .issue_many(vec![NewToken::new("two"), NewToken::new("three")])
        .unwrap();
    let after = store.stats();
    let writes = spans("write");
    assert_eq!(writes.len(), 2, "{writes:#?}");
    assert_eq!(writes[0].number("records"), 1);
    assert_eq!(writes[1].number("records"), 2);
    let bytes: u64 = writes.iter().map(|w| w.number("bytes")).sum();
    assert_eq!(
        bytes,
        after.journal_bytes_written - before.journal_bytes_written
    );
    for write in &writes {
        assert!(write.field("duration").is_some(), "{write:?}");
        assert_eq!(write.thread.as_deref(), Some("tokencache-persister"));
    }
    assert!(spans("compaction").is_empty());

    store.close().unwrap();
    let compactions = spans("compaction");
    assert_eq!(compactions.len(), 1, "{compactions:#?}");
    assert_eq!(compactions[0].number("tokens"), 3);
    let file_len = std::fs::metadata(&s.path).unwrap().len();
    assert_eq!(compactions[0].number("bytes"), file_len);
    assert!(compactions[0].field("duration").is_some());
}

/// Issue 20: validation, the hot path, creates no span and sends no event, whatever its
/// outcome.
#[test]
fn validations_leave_no_span_and_no_event() {
    let _turn = one_at_a_time();
    let s = scratch();
    let (builder, _clock) = manual_builder(&s.path);
    let store: TokenStore = builder.open().unwrap();
    let good = store.issue(NewToken::new("good").scopes(["read"])).unwrap();
    let revoked = store.issue(NewToken::new("revoked")).unwrap();
    store.revoke(&revoked.id()).unwrap();
    capture();
    let me = std::thread::current().name().map(String::from);
    for _ in 0..1_000 {
        assert!(store.validate(good.secret()).is_ok());
        assert!(store.validate_scope(good.secret(), "write").is_err());
        assert!(store.validate(revoked.secret()).is_err());
        assert!(store.validate("tc_not-a-token").is_err());
    }
    let mine: Vec<Seen> = seen().iter().filter(|s| s.thread == me).cloned().collect();
    assert!(mine.is_empty(), "{mine:#?}");
    store.close().unwrap();
}
