//! The `tracing` contract: one span per operation carrying op id, function name, target and
//! attempt; one event per conflict and per retry.

use std::sync::{Arc, Mutex};

use conflict_runtime::prelude::*;
use conflict_tests::Counter;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

#[derive(Default, Debug, Clone)]
struct SpanSeen {
    name: String,
    fields: Vec<(String, String)>,
}

#[derive(Default)]
struct Seen {
    spans: Vec<SpanSeen>,
    events: Vec<String>,
}

struct Capture(Arc<Mutex<Seen>>);

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .push((field.name().to_string(), format!("{value:?}")));
    }
}

impl<S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut seen = SpanSeen {
            name: attrs.metadata().name().to_string(),
            ..SpanSeen::default()
        };
        attrs.record(&mut Fields(&mut seen.fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut()
                .insert(self.0.lock().unwrap().spans.len());
        }
        self.0.lock().unwrap().spans.push(seen);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(i) = span.extensions().get::<usize>().copied() else {
            return;
        };
        let mut seen = self.0.lock().unwrap();
        values.record(&mut Fields(&mut seen.spans[i].fields));
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Vec::new();
        event.record(&mut Fields(&mut fields));
        let msg = fields
            .iter()
            .find(|(k, _)| k == "message")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        self.0.lock().unwrap().events.push(msg);
    }
}

#[with_conflict_resolution(occ(max_retries = 0), pre_ecs = false)]
async fn sneak(c: &mut Counter) -> u64 {
    c.value += 100;
    c.value
}

#[with_conflict_resolution(
    occ(max_retries = 5, base_delay_ms = 0, max_delay_ms = 0),
    pre_ecs = false
)]
async fn conflicting(c: &mut Counter, same: Handle<Counter>) -> u64 {
    if c.value < 200 {
        conflict_runtime::operation::scope()
            .detached()
            .run(sneak(&same))
            .await
            .unwrap();
    }
    c.value += 1;
    c.value
}

#[test]
fn one_span_per_operation_and_an_event_per_conflict_and_retry() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let subscriber = tracing_subscriber::registry().with(Capture(seen.clone()));
    tracing::subscriber::with_default(subscriber, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let rt = Runtime::in_memory();
                let h = rt.insert(Counter::new()).await.unwrap();
                let done = conflicting(&h, h.clone()).await.unwrap();
                assert_eq!(done.attempts, 3);
                let seen = seen.lock().unwrap();
                let ops: Vec<_> = seen
                    .spans
                    .iter()
                    .filter(|s| s.name == "conflict.op")
                    .collect();
                // The outer op and its two detached sneaks: one span each.
                assert_eq!(ops.len(), 3);
                let outer = ops
                    .iter()
                    .find(|s| {
                        s.fields
                            .iter()
                            .any(|(k, v)| k == "op" && v == "\"conflicting\"")
                    })
                    .expect("a span for `conflicting`");
                let get = |k: &str| -> Vec<String> {
                    outer
                        .fields
                        .iter()
                        .filter(|(key, _)| key == k)
                        .map(|(_, v)| v.clone())
                        .collect()
                };
                assert_eq!(get("op_id"), vec![done.op_id.to_string()]);
                assert_eq!(get("target"), vec![h.key().to_string()]);
                assert_eq!(get("attempt"), vec!["1", "2", "3"]);
                let conflicts = seen
                    .events
                    .iter()
                    .filter(|m| *m == "conflict at commit")
                    .count();
                let retries = seen.events.iter().filter(|m| *m == "retrying").count();
                assert_eq!((conflicts, retries), (2, 2));
            });
    });
}
