//! Named cleanup handlers: registered at link time by `#[cleanup_handler("name")]` (through
//! `inventory`) or in code on [`RuntimeBuilder::cleanup_handler`](crate::RuntimeBuilder::cleanup_handler).

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use conflict_core::{CleanupAction, CleanupError, CleanupStrategy, ConfigError, OperationRecord};
use futures_util::FutureExt;

use crate::registry::linked_operations;

/// What a handler returns, boxed.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<CleanupAction, CleanupError>> + Send>>;

/// A handler registered at link time by `#[cleanup_handler("name")]`.
#[derive(Debug)]
pub struct CleanupHandlerRegistration {
    /// The name functions refer to in `cleanup(custom_cleanup_handler = "...")`.
    pub name: &'static str,
    /// Where it is defined (`module::function`).
    pub path: &'static str,
    /// Runs the handler on one record.
    pub handler: fn(OperationRecord) -> HandlerFuture,
}

inventory::collect!(CleanupHandlerRegistration);

type RunFn = Arc<dyn Fn(OperationRecord) -> HandlerFuture + Send + Sync>;

/// A registered handler.
#[derive(Clone)]
pub(crate) struct Handler {
    pub(crate) name: String,
    pub(crate) path: String,
    run: RunFn,
}

impl Handler {
    pub(crate) fn new<F, Fut, T>(name: &str, path: &str, f: F) -> Self
    where
        F: Fn(OperationRecord) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, CleanupError>> + Send + 'static,
        T: Into<CleanupAction>,
    {
        Self {
            name: name.to_string(),
            path: path.to_string(),
            run: Arc::new(move |rec| {
                let fut = f(rec);
                Box::pin(async move { fut.await.map(Into::into) })
            }),
        }
    }

    fn linked(r: &CleanupHandlerRegistration) -> Self {
        let f = r.handler;
        Self {
            name: r.name.to_string(),
            path: r.path.to_string(),
            run: Arc::new(f),
        }
    }
}

/// The handlers of one runtime, by name.
#[derive(Clone, Default)]
pub(crate) struct Handlers {
    by_name: BTreeMap<String, Handler>,
}

impl Handlers {
    /// The linked handlers plus `extra`, checked: unique names, and every function that uses
    /// the custom strategy names a handler that exists.
    pub(crate) fn collect(extra: Vec<Handler>) -> Result<Self, ConfigError> {
        let mut by_name: BTreeMap<String, Handler> = BTreeMap::new();
        let linked = inventory::iter::<CleanupHandlerRegistration>
            .into_iter()
            .map(Handler::linked);
        for h in linked.chain(extra) {
            if let Some(first) = by_name.get(&h.name) {
                return Err(ConfigError::DuplicateCleanupHandler {
                    name: h.name.clone(),
                    first: first.path.clone(),
                    second: h.path.clone(),
                });
            }
            by_name.insert(h.name.clone(), h);
        }
        for op in linked_operations() {
            let c = &op.config.cleanup;
            if c.strategy == CleanupStrategy::Custom {
                if let Some(name) = &c.custom_cleanup_handler {
                    if !by_name.contains_key(name.as_ref()) {
                        return Err(ConfigError::UnknownCleanupHandler {
                            function: op.path(),
                            handler: name.to_string(),
                        });
                    }
                }
            }
        }
        Ok(Self { by_name })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Handler> {
        self.by_name.get(name)
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }
}

/// How many times a failing handler runs before its record is kept and reported.
pub(crate) const MAX_HANDLER_ATTEMPTS: u32 = 3;
const HANDLER_BACKOFF: Duration = Duration::from_millis(10);

/// The end of a handler's runs on one record.
pub(crate) enum HandlerOutcome {
    Done(CleanupAction),
    Failed { error: String, attempts: u32 },
}

/// Runs a handler on a record, retrying failures and panics with exponential backoff.
pub(crate) async fn run_handler(handler: &Handler, record: &OperationRecord) -> HandlerOutcome {
    let mut last = String::new();
    for attempt in 1..=MAX_HANDLER_ATTEMPTS {
        match AssertUnwindSafe((handler.run)(record.clone()))
            .catch_unwind()
            .await
        {
            Ok(Ok(action)) => return HandlerOutcome::Done(action),
            Ok(Err(e)) => last = e.message,
            Err(panic) => {
                last = match panic.downcast_ref::<&str>() {
                    Some(s) => format!("panicked: {s}"),
                    None => match panic.downcast_ref::<String>() {
                        Some(s) => format!("panicked: {s}"),
                        None => "panicked".to_string(),
                    },
                }
            }
        }
        if attempt < MAX_HANDLER_ATTEMPTS {
            tokio::time::sleep(HANDLER_BACKOFF * 2u32.pow(attempt - 1)).await;
        }
    }
    HandlerOutcome::Failed {
        error: last,
        attempts: MAX_HANDLER_ATTEMPTS,
    }
}
