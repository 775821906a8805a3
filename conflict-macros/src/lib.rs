//! Proc macros of the `conflict` framework. Use them through `conflict-runtime`, which
//! re-exports them and provides the `__private` module their expansions call.
//!
//! Each macro parses its input into typed structs (module `args`), validates literals with spanned
//! errors, and expands into calls of `::conflict_runtime::__private`. On a bad attribute argument
//! the function is still expanded into its generated shape (with the default configuration), so
//! call sites keep type-checking against the signature they will have and one mistake gives one
//! message; only when the signature itself cannot be expanded is the original item emitted.

mod args;
mod cleanup_handler;
mod entity;
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

/// Turns an `async fn` that mutates an entity into a conflict-resolved operation.
///
/// See the `conflict_runtime` crate documentation for the generated signature and the
/// attribute reference in `docs/attributes.md`.
#[proc_macro_attribute]
pub fn with_conflict_resolution(args: TokenStream, item: TokenStream) -> TokenStream {
    attribute_on_fn(
        args,
        item,
        with_conflict_resolution::expand,
        Some(args::ConflictArgs::default),
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
    expand: fn(A, syn::ItemFn) -> syn::Result<proc_macro2::TokenStream>,
    fallback: Option<fn() -> A>,
) -> TokenStream {
    let original = proc_macro2::TokenStream::from(item.clone());
    let func = syn::parse::<syn::ItemFn>(item);
    let (arg_error, expanded) = match (syn::parse::<A>(args), func) {
        (Ok(a), Ok(f)) => (None, expand(a, f)),
        (Err(e), Ok(f)) => match fallback {
            Some(default) => (Some(e), expand(default(), f)),
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
            out.extend(original);
        }
    }
    out.into()
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
