//! `#[cleanup_handler("name")]`: registers an async fn as a named cleanup handler at link time.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitStr, ReturnType, Token, Type};

use crate::attr::{Arg, Attr, Vocabulary, key_of, keys, string_forms};
use crate::errors::Errors;

keys! {
    /// The keys after the handler's name.
    enum HandlerKey {
        Crate = "crate",
    }
}

/// `"name"` optionally followed by `, crate = "path"`.
pub(crate) struct HandlerArgs {
    name: LitStr,
    krate: syn::Path,
}

impl Parse for HandlerArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.is_empty() {
            return Err(input
                .error("expected the handler's name: `#[cleanup_handler(\"financial_audit\")]`"));
        }
        let name: LitStr = input.parse().map_err(|e| {
            syn::Error::new(
                e.span(),
                "expected the handler's name as a string literal: `#[cleanup_handler(\"financial_audit\")]`",
            )
        })?;
        if name.value().trim().is_empty() {
            return Err(syn::Error::new(
                name.span(),
                "the handler name must not be empty",
            ));
        }
        let mut errors = Errors::default();
        let mut krate = Attr::<syn::Path>::default();
        if input.parse::<Option<Token![,]>>()?.is_some() {
            for arg in Arg::parse_list(input)? {
                let key = key_of(&arg, &mut errors, |k| {
                    format!(
                        "unknown argument `{k}`: expected {}",
                        string_forms(HandlerKey::ALL.iter().copied())
                    )
                });
                if let Some(key) = key {
                    match key {
                        HandlerKey::Crate => krate.set(&arg, &mut errors),
                    }
                }
            }
        }
        if !input.is_empty() {
            return Err(input.error("unexpected tokens after the handler's arguments"));
        }
        errors.finish()?;
        let krate = krate
            .into_inner()
            .map_or_else(|| syn::parse_quote!(::conflict_runtime), |(k, _)| k);
        Ok(Self { name, krate })
    }
}

pub(crate) fn expand(args: &HandlerArgs, func: &ItemFn) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        errors.spanned(sig.fn_token, "a cleanup handler must be an `async fn`");
    }
    if !sig.generics.params.is_empty() {
        errors.spanned(&sig.generics, "a cleanup handler cannot be generic");
    }
    match sig.inputs.len() {
        1 => match &sig.inputs[0] {
            FnArg::Typed(pt) if matches!(&*pt.ty, Type::Reference(r) if r.mutability.is_none()) => {
            }
            other => errors.spanned(
                other,
                "a cleanup handler takes the record by shared reference: `op: &OperationRecord`",
            ),
        },
        _ => errors.push(syn::Error::new(
            sig.paren_token.span.join(),
            "a cleanup handler takes exactly one parameter: `op: &OperationRecord`",
        )),
    }
    errors.finish()?;

    let p = {
        let k = &args.krate;
        quote!(#k::__private)
    };
    let name = &args.name;
    let ident = &sig.ident;
    // Spanned at the return type, so a handler returning the wrong type is reported there.
    let ret_span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => sig.ident.span(),
    };
    let call = quote_spanned! {ret_span=> #p::cleanup_result(#ident(&record).await) };
    Ok(quote! {
        #func

        const _: () = {
            fn __conflict_cleanup_handler(record: #p::OperationRecord) -> #p::HandlerFuture {
                ::std::boxed::Box::pin(async move { #call })
            }
            #p::inventory::submit! {
                #p::CleanupHandlerRegistration {
                    name: #name,
                    path: ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                    handler: __conflict_cleanup_handler,
                }
            }
        };
    })
}
