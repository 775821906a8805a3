//! Proc macros of the `conflict` framework. Use them through `conflict-runtime`, which
//! re-exports them and provides the `__private` module their expansions call.
//!
//! Each macro parses its input into typed structs (module `args`), validates literals with spanned
//! errors, and expands into calls of `::conflict_runtime::__private`. On a bad attribute the
//! original item is still emitted after the error, so one mistake gives one message.

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
    attribute_on_fn(args, item, with_conflict_resolution::expand)
}

/// An attribute on a function: parse its arguments and the function, expand; on any error,
/// the errors and then the user's item unchanged, so the rest of the crate still type-checks.
fn attribute_on_fn<A: syn::parse::Parse>(
    args: TokenStream,
    item: TokenStream,
    expand: fn(A, syn::ItemFn) -> syn::Result<proc_macro2::TokenStream>,
) -> TokenStream {
    let original = proc_macro2::TokenStream::from(item.clone());
    let expanded = syn::parse::<A>(args)
        .and_then(|a| Ok((a, syn::parse::<syn::ItemFn>(item)?)))
        .and_then(|(a, f)| expand(a, f));
    match expanded {
        Ok(ts) => ts.into(),
        Err(e) => {
            let mut out = e.into_compile_error();
            out.extend(original);
            out.into()
        }
    }
}

/// Registers an `async fn(&OperationRecord) -> Result<(), CleanupError>` (or
/// `Result<CleanupAction, CleanupError>`) as the cleanup handler named by the literal, at link
/// time. Functions select it with
/// `cleanup(strategy = "custom", custom_cleanup_handler = "name")`; `Runtime::build()` fails if
/// a name is used twice or a function names a handler that does not exist.
#[proc_macro_attribute]
pub fn cleanup_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    attribute_on_fn(args, item, cleanup_handler::expand)
}
