// Pedantic lints are enforced (CI denies warnings). Allowed crate-wide only where the lint does
// not fit this crate; single sites are allowed at the item with a reason.
#![warn(clippy::pedantic)]
// A two-armed `match` on an `Option` names both cases side by side (`Some(h) => .., None => ..`);
// `if let .. else` would hide the `None` case in an `else`.
#![allow(clippy::single_match_else)]

//! Proc macros of the `conflict` framework. Use them through `conflict-runtime`, which
//! re-exports them and provides the `__private` module their expansions call.
//!
//! Each macro parses its attribute into typed structs (module `attr`: one slot per key, which
//! refuses repeats; key and value vocabularies generated from enums, the values' from
//! `conflict_core`; module `args`: the grammar of `#[with_conflict_resolution]`), collects every
//! mistake with its span (module `errors`), and expands into calls of
//! `::conflict_runtime::__private`, configuration values written by module `emit`. On a bad attribute argument
//! the function is still expanded into its generated shape (with the default configuration), so
//! call sites keep type-checking against the signature they will have and one mistake gives one
//! message; only when the signature itself cannot be expanded is the original item emitted.

mod args;
mod attr;
mod cleanup_handler;
mod emit;
mod entity;
mod errors;
mod with_conflict_resolution;

use proc_macro::TokenStream;

/// Implements `Entity` for a struct with named fields and registers the type.
///
/// Exactly one field must carry `#[entity(id)]` and have type `EntityId`. The type name defaults
/// to the struct's name; `#[entity(name = "...")]` on the struct sets another. Use
/// `#[entity(crate = "path")]` when `conflict_runtime` is re-exported under another path.
#[proc_macro_derive(Entity, attributes(entity))]
pub fn derive_entity(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    entity::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Turns an `async fn` that changes an entity into a conflict-resolved operation.
///
/// The first parameter is the entity, `&mut E` (or `&mut self` in an `impl` block of the entity);
/// in the generated function it becomes `&Handle<E>` (`this: &Handle<Self>`). Other parameters stay
/// and must be `Clone` (the body may run once per OCC attempt). A return type `Result<T, E>` (or
/// a path whose last segment is `Result`, e.g. `io::Result<T>`) makes the body fallible: `Err`
/// commits nothing. The generated function returns `Result<Committed<T>, ConflictError<E>>`.
///
/// Every call goes through two stages: **staging**, called *pre-ECS* here (conflicts settled
/// before execution: competing calls on one entity are ranked by priority *before* any of them runs,
/// and only the winner executes) and **optimistic concurrency control** (the winner runs on a
/// snapshot and commits with a version compare, retrying on a conflict).
///
/// ```text
/// #[with_conflict_resolution(
///     priority = "high",                  // or 1..=10, or CRITICAL/HIGH/NORMAL/LOW/BACKGROUND
///     op_class = "normal",                // structural | normal | low_priority
///     mode = "both",                      // none | pre_ecs | occ | both
///     pre_ecs(staging_timeout_ms = 0, on_lose = "reject", max_staged_per_target = 1024, grace_period_ms = 100),
///     occ(max_retries = 5, base_delay_ms = 1, backoff_factor = 1.5, max_delay_ms = 100),
///     cleanup(strategy = "deferred", retention_minutes = 30 /* ... */),
///     name = "operation_name",            // default: the function's name
///     crate = "conflict_runtime",
/// )]
/// async fn f(entity: &mut E, other: A /* Clone */) -> R
/// ```
///
/// # Top level
///
/// | key | default | accepted | notes |
/// |---|---|---|---|
/// | `priority` | from `op_class` (NORMAL = 5) | `1..=10`, `"critical"`…, `CRITICAL`… | the call's own priority; `scope().priority(..)` overrides it per call |
/// | `op_class` | `"normal"` | `"structural"` (10, 20 retries), `"normal"` (5, 5), `"low_priority"` (2, 3) | defaults of `priority` and `max_retries` |
/// | `mode` | `"both"` | `"none"`, `"pre_ecs"`, `"occ"`, `"both"` | alternative to naming stages |
/// | `pre_ecs` | on | `pre_ecs`, `pre_ecs(...)`, `pre_ecs = false` | staging stage |
/// | `occ` | on | `occ`, `occ(...)`, `occ = false` | OCC retries |
/// | `cleanup` | defaults below | `cleanup`, `cleanup(...)`, `cleanup = false` (strategy `none`) | zombie records |
/// | `name` | the function's name | an identifier, or identifiers joined by `::` (`"Cart::add"`) | the operation type in metrics, events and records, `module::name`; must be unique in the program (checked at start-up): two same-named methods in one module need one |
/// | `crate` | `::conflict_runtime` | a path string | for re-exporters |
///
/// **Which stages run.** Both, always, unless you switch one off: `pre_ecs = false` (OCC only),
/// `occ = false` (staging only, a conflict ends the call), or `mode = "..."`, which sets both at once
/// and may not contradict a named stage. Naming a stage's options — `pre_ecs(...)`, `occ(...)` —
/// only configures that stage; it never turns the other one off. So
/// `#[with_conflict_resolution(priority = 5, occ(max_retries = 10))]` stages its calls by priority
/// *and* retries conflicts.
///
/// # `pre_ecs(...)`
///
/// | key | default | range | meaning |
/// |---|---|---|---|
/// | `staging_timeout_ms` | 0 | 0..=60000 | window a group collects arrivals for; 0: an idle target runs a call at once, later arrivals form the next group. Default 0 because a window makes every call, even uncontended, wait it out. |
/// | `on_lose` | `"reject"` | `"reject"`, `"requeue"` | losers end with `Rejected`, or wait for the next round |
/// | `max_staged_per_target` | 1024 | 1..=100000 | bound of a target's staging area (`Overloaded` beyond, unless outranking the weakest) |
/// | `grace_period_ms` | 100 | 0..=3600000 | protection of an executing call from preemption |
///
/// # `occ(...)`
///
/// | key | default | range | meaning |
/// |---|---|---|---|
/// | `max_retries` | 5 (from `op_class`) | 0..=1000 | retries after the first attempt |
/// | `base_delay_ms` | 1 | 0..=60000 | ceiling of the first backoff (0: retry at once) |
/// | `backoff_factor` | 1.5 | 1.0..=10.0 | growth of the ceiling per retry |
/// | `max_delay_ms` | 100 | `base_delay_ms`..=600000 | cap of the ceiling |
///
/// The wait before retry n is uniform in `[0, min(max_delay_ms, base_delay_ms × backoff_factor^(n−1))]`
/// (zero at every retry when `base_delay_ms = 0`).
///
/// # `cleanup(...)`
///
/// | key | default | range |
/// |---|---|---|
/// | `strategy` | `"deferred"` | `"none"`, `"immediate"`, `"deferred"`, `"lazy"`, `"custom"` |
/// | `retention_minutes` | 30 | 0..=1440; `deferred` needs > 0 |
/// | `cleanup_check_interval_seconds` | 60 | 10..=3600 |
/// | `aggressive_on_memory_pressure` | `true` | bool |
/// | `memory_pressure_threshold` | 0.8 | 0.1..=1.0 |
/// | `immediate_cleanup_priorities` | `[CRITICAL]` | list of priorities |
/// | `debug_retention_priorities` | `[LOW]` | list of priorities |
/// | `custom_cleanup_handler` | none | a handler name; required by, and only allowed with, `"custom"` |
/// | `max_zombie_count_per_target` | 100 | 1..=10000 |
/// | `force_cleanup_threshold` | 1000 | 100..=100000 |
///
/// Above `force_cleanup_threshold` kept zombies (all functions together), every new zombie is
/// removed at once, whatever its strategy and priority; `debug_retention_priorities` keeps records
/// for `retention_minutes` under `immediate` only while the count is at or under the threshold. So
/// at most `force_cleanup_threshold + 1` zombies are kept (see the guide's *Cleanup* section).
///
/// The same configuration can be built in code with `CleanupConfig::builder()`, whose `build()`
/// applies the same validation and returns the error.
///
/// # Example
///
/// ```
/// use conflict_runtime::prelude::*;
///
/// #[derive(Debug, Clone, Serialize, Deserialize, Entity)]
/// struct Account { #[entity(id)] id: EntityId, balance: i64 }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("insufficient funds")]
/// struct Insufficient;
///
/// // Staged by priority (HIGH) and retried on conflicts: naming `occ(...)` does not turn staging off.
/// #[with_conflict_resolution(priority = HIGH, pre_ecs(on_lose = "requeue"), occ(max_retries = 10))]
/// async fn withdraw(account: &mut Account, amount: i64) -> Result<i64, Insufficient> {
///     if account.balance < amount {
///         return Err(Insufficient); // commits nothing
///     }
///     account.balance -= amount;
///     Ok(account.balance)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let rt = Runtime::in_memory();
/// let acct = rt.insert(Account { id: EntityId::new(), balance: 10 }).await.unwrap();
/// // The generated function takes `&Handle<Account>` and returns
/// // `Result<Committed<i64>, ConflictError<Insufficient>>`.
/// assert_eq!(withdraw(&acct, 4).await.unwrap().value, 6);
/// assert!(matches!(withdraw(&acct, 40).await, Err(ConflictError::Body(Insufficient))));
/// # }
/// ```
///
/// Every compile-time error, with its message and span, is listed in `docs/attributes.md` of the
/// repository, each with its trybuild case.
///
#[proc_macro_attribute]
pub fn with_conflict_resolution(args: TokenStream, item: TokenStream) -> TokenStream {
    attribute_on_fn(
        args,
        item,
        with_conflict_resolution::expand,
        Some(args::ConflictArgs::fallback),
    )
}

/// An attribute on a function: parse its arguments and the function, expand.
///
/// On errors in the arguments, the errors and then — if `fallback` gives default arguments and
/// the function expands with them — the generated item, so that callers see the generated
/// signature and no follow-up type errors (tokio-macros does the same). Otherwise (the function
/// itself cannot be expanded) the errors and the user's item unchanged.
fn attribute_on_fn<A: syn::parse::Parse>(
    args: TokenStream,
    item: TokenStream,
    expand: fn(&A, &syn::ItemFn) -> syn::Result<proc_macro2::TokenStream>,
    fallback: Option<fn(proc_macro2::TokenStream) -> A>,
) -> TokenStream {
    let original = proc_macro2::TokenStream::from(item.clone());
    let raw_args = proc_macro2::TokenStream::from(args.clone());
    let func = syn::parse::<syn::ItemFn>(item);
    let (arg_error, expanded) = match (syn::parse::<A>(args), func) {
        (Ok(a), Ok(f)) => (None, expand(&a, &f)),
        (Err(e), Ok(f)) => match fallback {
            Some(default) => (Some(e), expand(&default(raw_args), &f)),
            None => (Some(e), Ok(original.clone())),
        },
        (Ok(_), Err(e)) => (None, Err(e)),
        (Err(mut e), Err(e2)) => {
            e.combine(e2);
            (None, Err(e))
        }
    };
    let mut out = proc_macro2::TokenStream::new();
    if let Some(e) = arg_error {
        out.extend(e.into_compile_error());
    }
    match expanded {
        Ok(ts) => out.extend(ts),
        Err(e) => {
            out.extend(e.into_compile_error());
            out.extend(without_read_markers(original));
        }
    }
    out.into()
}

/// The user's function as written, minus the `#[read]` parameter markers (which only the
/// attribute understands): what is emitted when it cannot be expanded.
fn without_read_markers(original: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    match syn::parse2::<syn::ItemFn>(original.clone()) {
        Ok(mut f) => {
            for arg in &mut f.sig.inputs {
                let attrs = match arg {
                    syn::FnArg::Typed(pt) => &mut pt.attrs,
                    syn::FnArg::Receiver(r) => &mut r.attrs,
                };
                attrs.retain(|a| !a.path().is_ident("read"));
            }
            quote::ToTokens::into_token_stream(f)
        }
        Err(_) => original,
    }
}

/// Registers an `async fn(&OperationRecord) -> Result<(), CleanupError>` (or
/// `Result<CleanupAction, CleanupError>`) as the cleanup handler named by the literal, at link
/// time. Functions select it with
/// `cleanup(strategy = "custom", custom_cleanup_handler = "name")`; `Runtime::build()` fails if
/// a name is used twice or a function names a handler that does not exist.
#[proc_macro_attribute]
pub fn cleanup_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    // No default name to register under: on a bad argument the function stays as written.
    attribute_on_fn(args, item, cleanup_handler::expand, None)
}
