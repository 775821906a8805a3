//! `#[with_conflict_resolution(...)]`: the user's body becomes an inner function; the public
//! function takes a `&Handle<E>` and hands everything to `__private::execute`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Type};

use crate::args::ConflictArgs;
use crate::emit::Const;
use crate::errors::Errors;

/// How the body's return type maps onto the generated one.
enum Returns {
    /// `Result<T, E>` spelled out: `Committed<T>`, `ConflictError<E>`.
    Result(Box<Type>, Box<Type>),
    /// A path ending in `Result` with other arguments (an alias): use its `BodyResult` types.
    ResultAlias(Type),
    /// Anything else: `Committed<T>`, `ConflictError<Infallible>`.
    Value(Type),
}

fn classify(output: &ReturnType) -> Returns {
    let ty = match output {
        ReturnType::Default => return Returns::Value(syn::parse_quote!(())),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    if let Type::Path(tp) = &ty {
        if tp.qself.is_none() {
            if let Some(last) = tp.path.segments.last() {
                if last.ident == "Result" {
                    if let PathArguments::AngleBracketed(ab) = &last.arguments {
                        let types: Vec<&Type> = ab
                            .args
                            .iter()
                            .filter_map(|a| match a {
                                GenericArgument::Type(t) => Some(t),
                                _ => None,
                            })
                            .collect();
                        if types.len() == 2 && ab.args.len() == 2 {
                            return Returns::Result(
                                Box::new(types[0].clone()),
                                Box::new(types[1].clone()),
                            );
                        }
                    }
                    return Returns::ResultAlias(ty);
                }
            }
        }
    }
    Returns::Value(ty)
}

/// `ts` with every token at `span`.
fn respan(ts: TokenStream, span: Span) -> TokenStream {
    ts.into_iter()
        .map(|tt| match tt {
            proc_macro2::TokenTree::Group(g) => {
                let mut out = proc_macro2::Group::new(g.delimiter(), respan(g.stream(), span));
                out.set_span(span);
                proc_macro2::TokenTree::Group(out)
            }
            mut other => {
                other.set_span(span);
                other
            }
        })
        .collect()
}

/// Whether a type contains an `impl Trait` anywhere.
fn contains_impl_trait(ty: &Type) -> bool {
    fn walk(ts: TokenStream) -> bool {
        ts.into_iter().any(|tt| match tt {
            proc_macro2::TokenTree::Ident(i) => i == "impl",
            proc_macro2::TokenTree::Group(g) => walk(g.stream()),
            _ => false,
        })
    }
    walk(quote!(#ty))
}

/// The type parameter a return type is, bare or through a projection (`T`, `T::Out`), if any.
fn bare_type_param(ty: &Type, generics: &syn::Generics) -> Option<Ident> {
    let Type::Path(tp) = ty else { return None };
    let first = match &tp.qself {
        Some(q) => match &*q.ty {
            Type::Path(inner) => inner.path.segments.first()?,
            _ => return None,
        },
        None => tp.path.segments.first()?,
    };
    generics
        .type_params()
        .find(|p| p.ident == first.ident)
        .map(|p| p.ident.clone())
}

/// A non-entity argument: the name the outer function uses, the original for the inner one.
struct Param {
    outer: Ident,
    ty: Type,
}

/// An entity parameter: the handle's name in the generated function, the entity type, and
/// whether the call writes it (`&mut`) or only reads it (`#[read] &`).
struct EntityParam {
    outer: Ident,
    ty: Type,
    write: bool,
}

/// A parameter's place: the index of its entity or plain argument.
enum Slot {
    Entity(usize),
    Plain(usize),
}

#[allow(
    clippy::too_many_lines,
    reason = "one expansion read top to bottom: checks of the signature, then the generated items"
)]
pub(crate) fn expand(args: &ConflictArgs, func: &ItemFn) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        errors.spanned(
            sig.fn_token,
            "#[with_conflict_resolution] requires an `async fn`: write `async fn`",
        );
    }
    if let Some(c) = &sig.constness {
        errors.spanned(
            c,
            "#[with_conflict_resolution] cannot be applied to a `const fn`",
        );
    }
    if let Some(v) = &sig.variadic {
        errors.spanned(
            v,
            "#[with_conflict_resolution] does not support variadic functions",
        );
    }

    // Every parameter in order: an entity (`&mut E` written, `#[read] &E` read, a method's
    // `&mut self`) or a plain argument.
    let mut slots: Vec<Slot> = Vec::new();
    let mut entities: Vec<EntityParam> = Vec::new();
    let mut params: Vec<Param> = Vec::new();
    // A method (`&mut self`) is generated as an associated function taking `this: &Handle<Self>`;
    // its body stays a method, emitted beside it.
    let mut method = false;
    for (i, arg) in sig.inputs.iter().enumerate() {
        match arg {
            FnArg::Receiver(r) if r.attrs.iter().any(|a| a.path().is_ident("read")) => {
                let attr = r.attrs.iter().find(|a| a.path().is_ident("read"));
                errors.spanned(
                    attr,
                    "`#[read]` cannot mark `self`: a method operation's receiver is `&mut self`, the entity it changes; take the entity to read as another parameter, `#[read] other: &Self`",
                );
            }
            FnArg::Typed(pt)
                if pt
                    .attrs
                    .iter()
                    .any(|a| a.path().is_ident("cfg") || a.path().is_ident("cfg_attr")) =>
            {
                let attr = pt
                    .attrs
                    .iter()
                    .find(|a| a.path().is_ident("cfg") || a.path().is_ident("cfg_attr"));
                errors.spanned(
                    attr,
                    "`#[cfg]` on a parameter of a #[with_conflict_resolution] function is not supported: the generated function, the staging and the commit would each need it; write two functions, or pass an `Option`",
                );
            }
            FnArg::Receiver(r) if i == 0 => {
                let by_mut_ref = matches!(r.kind, syn::ReceiverKind::Reference(_, _, Some(_)));
                if by_mut_ref {
                    method = true;
                    slots.push(Slot::Entity(entities.len()));
                    entities.push(EntityParam {
                        outer: format_ident!("this"),
                        ty: syn::parse_quote!(Self),
                        write: true,
                    });
                    if let Some(named_this) = sig.inputs.iter().skip(1).find_map(|a| match a {
                        FnArg::Typed(pt) => match &*pt.pat {
                            Pat::Ident(pi) if pi.ident == "this" => Some(pi.ident.clone()),
                            _ => None,
                        },
                        FnArg::Receiver(_) => None,
                    }) {
                        errors.spanned(
                            named_this,
                            "a method operation's generated function takes `this: &Handle<Self>` first: rename this parameter",
                        );
                    }
                } else {
                    errors.spanned(
                        r,
                        "a method's receiver must be `&mut self` (the entity the operation changes); it is generated as an associated function taking `this: &Handle<Self>`",
                    );
                }
            }
            FnArg::Receiver(r) => errors.spanned(r, "`self` must be the first parameter"),
            FnArg::Typed(pt) => {
                let read_attr = pt.attrs.iter().find(|a| a.path().is_ident("read"));
                if let Some(attr) = read_attr {
                    if !matches!(attr.meta, syn::Meta::Path(_)) {
                        errors.spanned(attr, "`#[read]` takes no arguments");
                        continue;
                    }
                }
                let reference = match &*pt.ty {
                    Type::Reference(r) => Some(r),
                    _ => None,
                };
                let entity_kind = match (read_attr, reference) {
                    (None, Some(r)) if r.mutability.is_some() => Some(true),
                    (None, _) => None,
                    (Some(_), Some(r)) if r.mutability.is_none() => Some(false),
                    (Some(attr), Some(_)) => {
                        errors.spanned(
                            attr,
                            "`#[read]` marks an entity the call only reads (`#[read] name: &E`); a `&mut` parameter is an entity the call writes: remove `#[read]`",
                        );
                        // Taken as what it is (a written entity): one error, not two.
                        Some(true)
                    }
                    (Some(_), None) => {
                        errors.spanned(
                            &pt.ty,
                            "`#[read]` needs a shared reference to an entity: `#[read] name: &E`",
                        );
                        None
                    }
                };
                match (entity_kind, reference) {
                    (Some(write), Some(r)) => {
                        let outer = match &*pt.pat {
                            Pat::Ident(pi) if pi.subpat.is_none() && pi.by_ref.is_none() => {
                                pi.ident.clone()
                            }
                            _ => format_ident!("__conflict_entity{}", i + 1),
                        };
                        slots.push(Slot::Entity(entities.len()));
                        entities.push(EntityParam {
                            outer,
                            ty: (*r.elem).clone(),
                            write,
                        });
                    }
                    _ => {
                        let outer = match &*pt.pat {
                            Pat::Ident(pi) if pi.subpat.is_none() && pi.by_ref.is_none() => {
                                pi.ident.clone()
                            }
                            _ => format_ident!("__conflict_arg{}", i + 1),
                        };
                        slots.push(Slot::Plain(params.len()));
                        params.push(Param {
                            outer,
                            ty: (*pt.ty).clone(),
                        });
                    }
                }
            }
        }
    }
    if entities.is_empty() && !sig.inputs.iter().any(|a| matches!(a, FnArg::Receiver(_))) {
        let msg = "expected an entity parameter: `account: &mut Account` to change it, or `#[read] account: &Account` to read it (E: Entity)";
        match sig.inputs.first() {
            Some(FnArg::Typed(pt)) => errors.spanned(&pt.ty, msg),
            _ => errors.push(syn::Error::new(sig.paren_token.span.join(), msg)),
        }
    }
    errors.finish()?;
    // Errors found while expanding (the return type).
    let mut errors = Errors::default();
    if entities.is_empty() {
        return Err(syn::Error::new(
            Span::call_site(),
            "missing entity parameter",
        ));
    }
    // The one-entity shape (`&mut E` first) keeps the single-entity executor's fast path.
    let single =
        entities.len() == 1 && entities[0].write && matches!(slots.first(), Some(Slot::Entity(0)));

    let krate = &args.krate;
    let p = quote!(#krate::__private);
    let config = Const::new(&args.config, &p);

    let attrs = &func.attrs;
    let vis = &func.vis;
    let name = &sig.ident;
    let generics = &sig.generics;
    let where_clause = &generics.where_clause;
    let block = &func.block;
    let inner_output = &sig.output;
    // The body's own signature, without the `#[read]` markers (not attributes Rust knows).
    let mut inner_inputs = sig.inputs.clone();
    for arg in &mut inner_inputs {
        if let FnArg::Typed(pt) = arg {
            pt.attrs.retain(|a| !a.path().is_ident("read"));
        }
    }
    let inner_inputs = &inner_inputs;

    // A plain value's type may still be a `Result` under another name (`type Outcome<T> =
    // Result<T, E>`): the macro cannot see through aliases, so the generated code asks the type
    // checker, and refuses to compile rather than commit an `Err` as a value.
    let mut not_a_result = quote!();
    let (ok_ty, err_ty, wrap) = match classify(&sig.output) {
        Returns::Result(t, e) => (quote!(#t), quote!(#e), quote!(__conflict_out)),
        Returns::ResultAlias(ty) => (
            quote!(<#ty as #p::BodyResult>::Ok),
            quote!(<#ty as #p::BodyResult>::Err),
            quote!(__conflict_out),
        ),
        Returns::Value(t) => {
            let msg = "this return type is a `Result` under another name (an alias), which the macro would treat as a plain value and commit even when it is an `Err`: spell it `Result<T, E>`, or as a path whose last segment is `Result` (e.g. `io::Result<T>`)";
            let check = quote_spanned! {t.span()=>
                {
                    #[allow(unused_imports)]
                    use #p::NotAResult as _;
                    ::core::assert!(!<#p::ResultProbe<#t>>::IS_RESULT, #msg);
                }
            };
            not_a_result = if contains_impl_trait(&t) {
                // An opaque type cannot be named in a path, and cannot be a `Result` a caller
                // could match on either.
                quote!()
            } else if let Some(param) = bare_type_param(&t, &sig.generics) {
                // A type parameter can be instantiated with a `Result`, which the type checker
                // cannot rule out here: ask for an explicit choice.
                errors.spanned(
                    &t,
                    format!(
                        "the return type is the type parameter `{param}`, which could be instantiated with a `Result` and then committed as a value: return `Result<T, E>` for a fallible body, or a concrete type"
                    ),
                );
                quote!()
            } else if sig.generics.params.is_empty() && !method {
                // A constant item is checked whether or not the function is ever called.
                quote_spanned!(t.span()=> const _: () = #check;)
            } else {
                // A generic function's (or a method's) return type can name parameters (or
                // `Self`, or the impl's parameters) that an item nested in it cannot: an inline
                // constant can, and is checked when the function is compiled into the program.
                quote_spanned!(t.span()=> const #check;)
            };
            (
                quote!(#t),
                quote!(::core::convert::Infallible),
                quote!(#p::infallible(__conflict_out)),
            )
        }
    };
    errors.finish()?;

    // In parameter order: each entity as its handle, each plain argument as it is.
    let outer_params: Vec<TokenStream> = slots
        .iter()
        .map(|slot| match slot {
            Slot::Entity(i) => {
                let (id, ty) = (&entities[*i].outer, &entities[*i].ty);
                quote!(#id: &#p::Handle<#ty>)
            }
            Slot::Plain(i) => {
                let (id, ty) = (&params[*i].outer, &params[*i].ty);
                quote!(#id: #ty)
            }
        })
        .collect();
    // A plain argument whose type is an entity is almost certainly a mistake (the call would
    // neither stage, read nor commit it): refused, spanned at its type. Only concrete types
    // can be checked; a generic one is taken as a plain value.
    let entity_checks = params.iter().filter_map(|prm| {
        let ty = match &prm.ty {
            Type::Reference(r) => &*r.elem,
            other => other,
        };
        if contains_impl_trait(ty) {
            return None;
        }
        // Every token at the type, so that the error points there (and two mistakes are two
        // errors, not one merged at the attribute).
        Some(respan(
            quote! {
                {
                    #[allow(unused_imports)]
                    use #p::{EntityArg as _, NotAnEntityArg as _};
                    (&#p::EntityProbe::<#ty>::new()).not_an_entity();
                }
            },
            ty.span(),
        ))
    });
    let ids: Vec<&Ident> = params.iter().map(|prm| &prm.outer).collect();
    // Each attempt gets fresh clones; the helper's bound carries the "must be Clone" message,
    // spanned at the argument's type.
    let clones = params.iter().map(|prm| {
        let id = &prm.outer;
        quote_spanned!(prm.ty.span()=> let #id = #p::clone_arg(&#id);)
    });
    let name_str = args.name.clone().unwrap_or_else(|| name.to_string());
    let (body_item, body_call) = if method {
        let inner = format_ident!("__conflict_body_{}", name);
        // The user's lint and cfg attributes apply to the body, which lives in this method.
        let body_attrs = attrs.iter().filter(|a| {
            [
                "allow", "warn", "deny", "expect", "forbid", "cfg", "cfg_attr",
            ]
            .iter()
            .any(|k| a.path().is_ident(k))
        });
        (
            quote! {
                #(#body_attrs)*
                #[doc(hidden)]
                #[allow(clippy::needless_pass_by_value, clippy::unused_async, non_snake_case)]
                async fn #inner #generics (#inner_inputs) #inner_output #where_clause #block
            },
            quote!(Self::#inner),
        )
    } else {
        (quote!(), quote!(__conflict_body))
    };
    let nested_body = if method {
        quote!()
    } else {
        quote! {
            #[allow(clippy::needless_pass_by_value, clippy::unused_async)]
            async fn __conflict_body #generics (#inner_inputs) #inner_output #where_clause #block
        }
    };

    // On a method, `expect` goes with the body only (the generated function would not meet it).
    let outer_attrs = attrs
        .iter()
        .filter(|a| !(method && a.path().is_ident("expect")));
    let run = if single {
        let (entity_ident, ty) = (&entities[0].outer, &entities[0].ty);
        let execute = quote_spanned!(ty.span()=> <#ty as #p::EntityParam>::execute);
        quote! {
            #execute(
                &__CONFLICT_SPEC,
                #entity_ident,
                move |mut __conflict_entity| {
                    #(#clones)*
                    async move {
                        let __conflict_out =
                            #body_call(&mut __conflict_entity, #(#ids),*).await;
                        (__conflict_entity, #wrap)
                    }
                },
            )
            .await
        }
    } else {
        let targets = entities.iter().map(|e| {
            let (id, ty) = (&e.outer, &e.ty);
            if e.write {
                quote_spanned!(ty.span()=> <#ty as #p::EntityParam>::write(#id))
            } else {
                quote_spanned!(ty.span()=> <#ty as #p::EntityParam>::read(#id))
            }
        });
        let copy = |i: usize| format_ident!("__conflict_e{}", i);
        let takes = entities.iter().enumerate().map(|(i, e)| {
            let (c, ty) = (copy(i), &e.ty);
            if e.write {
                quote_spanned!(ty.span()=> let mut #c = <#ty as #p::EntityParam>::copy_at(__conflict_snaps, #i)?;)
            } else {
                quote_spanned!(ty.span()=> let #c = <#ty as #p::EntityParam>::share_at(__conflict_snaps, #i)?;)
            }
        });
        let call_args = slots.iter().map(|slot| match slot {
            Slot::Entity(i) => {
                let c = copy(*i);
                if entities[*i].write {
                    quote!(&mut #c)
                } else {
                    quote!(&*#c)
                }
            }
            Slot::Plain(i) => {
                let id = &params[*i].outer;
                quote!(#id)
            }
        });
        let written = entities
            .iter()
            .enumerate()
            .filter(|(_, e)| e.write)
            .map(|(i, e)| {
                let (c, ty) = (copy(i), &e.ty);
                quote_spanned!(ty.span()=> <#ty as #p::EntityParam>::erase(#c))
            });
        quote! {
            #p::execute_many(
                &__CONFLICT_SPEC,
                [#(#targets),*],
                move |__conflict_snaps: &[#p::Snapshot]| -> ::core::result::Result<_, #p::StoreError> {
                    #(#takes)*
                    #(#clones)*
                    ::core::result::Result::Ok(async move {
                        let __conflict_out = #body_call(#(#call_args),*).await;
                        (::std::vec![#(#written),*], #wrap)
                    })
                },
            )
            .await
        }
    };
    Ok(quote! {
        #body_item

        #(#outer_attrs)*
        #vis async fn #name #generics (
            #(#outer_params),*
        ) -> ::core::result::Result<#p::Committed<#ok_ty>, #p::ConflictError<#err_ty>>
        #where_clause
        {
            #nested_body

            static __CONFLICT_SPEC: #p::OperationSpec = #p::OperationSpec {
                name: #name_str,
                module: ::core::module_path!(),
                config: #config,
            };
            #p::inventory::submit! {
                #p::OperationRegistration(&__CONFLICT_SPEC)
            }

            #not_a_result
            #(#entity_checks)*

            #run
        }
    })
}
