//! `#[derive(Entity)]`.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields};

use crate::attr::{
    Arg, ArgKind, Attr, FromArg, FromValue, Value, Vocabulary, key_of, keys, string_forms,
};
use crate::errors::Errors;

keys! {
    /// The keys of `#[entity(...)]`: `name` and `crate` on the struct, `id` on a field.
    enum EntityKey {
        Name = "name",
        Crate = "crate",
        Id = "id",
    }
}

/// `name = "..."`: a non-empty type name.
struct TypeName(String);

impl FromValue for TypeName {
    fn form() -> String {
        "\"TypeName\"".into()
    }

    fn from_value(_: &syn::Ident, v: &Value, errors: &mut Errors) -> Option<Self> {
        let Value::Str(s, tokens) = v else {
            errors.spanned(
                v.tokens(),
                "expected a string literal: `name = \"TypeName\"`",
            );
            return None;
        };
        if s.trim().is_empty() {
            errors.spanned(tokens, "the entity name must not be empty");
            return None;
        }
        Some(Self(s.clone()))
    }
}

/// `id`, which takes no value.
struct Flag;

impl FromArg for Flag {
    fn from_arg(arg: &Arg, errors: &mut Errors) -> Option<(Self, TokenStream)> {
        if !matches!(arg.kind, ArgKind::Flag) {
            errors.spanned(&arg.key, "`id` takes no value: write `#[entity(id)]`");
        }
        // Even with a value the field is marked as the id, so that the mistake is not reported
        // a second time as a missing id field.
        Some((Self, arg.key.to_token_stream()))
    }
}

/// What `#[entity(...)]` on the struct says, across every such attribute: a key repeated in a
/// second attribute is as much a mistake as one repeated inside the first.
#[derive(Default)]
struct StructAttrs {
    name: Attr<TypeName>,
    krate: Attr<syn::Path>,
}

/// The arguments of every `#[entity(...)]` among `attrs`.
fn entity_args(attrs: &[syn::Attribute], errors: &mut Errors) -> Vec<Arg> {
    let mut args = Vec::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("entity")) {
        match attr.parse_args_with(Arg::parse_list) {
            Ok(a) => args.extend(a),
            Err(e) => errors.push(e),
        }
    }
    args
}

fn struct_attrs(input: &DeriveInput, errors: &mut Errors) -> StructAttrs {
    let mut out = StructAttrs::default();
    for arg in entity_args(&input.attrs, errors) {
        let key = key_of(&arg, errors, |k| {
            let struct_keys = EntityKey::ALL.iter().filter(|k| **k != EntityKey::Id);
            format!(
                "unknown entity attribute `{k}`: expected {}",
                string_forms(struct_keys.copied())
            )
        });
        match key {
            Some(EntityKey::Name) => out.name.set(&arg, errors),
            Some(EntityKey::Crate) => out.krate.set(&arg, errors),
            Some(EntityKey::Id) => errors.spanned(
                &arg.key,
                "`#[entity(id)]` belongs on the id field, not on the struct",
            ),
            None => {}
        }
    }
    out
}

/// Whether a field's `#[entity(...)]` attributes mark it as the id, and where.
fn field_id(field: &syn::Field, errors: &mut Errors) -> Option<proc_macro2::Span> {
    let unknown = |k: &dyn std::fmt::Display| {
        format!("unknown field attribute `{k}`: expected `#[entity(id)]`")
    };
    let mut id = Attr::<Flag>::default();
    for arg in entity_args(&field.attrs, errors) {
        match key_of(&arg, errors, |k| unknown(k)) {
            Some(EntityKey::Id) => id.set(&arg, errors),
            Some(k @ (EntityKey::Name | EntityKey::Crate)) => {
                errors.spanned(&arg.key, unknown(&k.name()));
            }
            None => {}
        }
    }
    id.tokens().map(Spanned::span)
}

#[allow(
    clippy::too_many_lines,
    reason = "one derive read top to bottom: each shape check with its own message, then the impl"
)]
pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let mut errors = Errors::default();
    let attrs = struct_attrs(input, &mut errors);
    let ident = &input.ident;

    let fields = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(named) => Some(&named.named),
            Fields::Unnamed(f) => {
                errors.spanned(
                    f,
                    "Entity can only be derived for structs with named fields, not tuple structs",
                );
                None
            }
            Fields::Unit => {
                errors.spanned(
                    ident,
                    "Entity can only be derived for structs with named fields: a unit struct has no id field",
                );
                None
            }
        },
        Data::Enum(e) => {
            errors.spanned(
                e.enum_token,
                "Entity can only be derived for structs with named fields, not enums",
            );
            None
        }
        Data::Union(u) => {
            errors.spanned(
                u.union_token,
                "Entity can only be derived for structs with named fields, not unions",
            );
            None
        }
    };
    if !input.generics.params.is_empty() {
        errors.spanned(
            &input.generics,
            "Entity cannot be derived for generic structs: every instantiation would share one type name",
        );
    }

    let mut id_fields = Vec::new();
    for field in fields.into_iter().flatten() {
        if let Some(span) = field_id(field, &mut errors) {
            id_fields.push((field, span));
        }
    }
    if fields.is_some() {
        match id_fields.len() {
            0 => errors.spanned(
                ident,
                "missing id field: mark exactly one field of type `EntityId` with `#[entity(id)]`",
            ),
            1 => {}
            _ => {
                for (_, span) in &id_fields[1..] {
                    errors.push(syn::Error::new(
                        *span,
                        "more than one `#[entity(id)]` field: an entity has exactly one id",
                    ));
                }
            }
        }
    }
    // A mistake about a value only (a repeated or malformed `name`/`crate`, an unknown key,
    // `id = ..`) still leaves a well-formed struct with its id field: the impl is emitted with
    // the first or default values beside the errors, so that uses of the type (`Handle<E>`,
    // annotated functions) add no errors of their own. One mistake, one message.
    let well_formed = fields.is_some() && input.generics.params.is_empty();
    let entity_impl = id_fields
        .first()
        .filter(|_| well_formed)
        .and_then(|(field, _)| emit(input, field, &attrs));
    match (errors.finish(), entity_impl) {
        (Ok(()), Some(tokens)) => Ok(tokens),
        (Ok(()), None) => Err(syn::Error::new_spanned(ident, "the id field must be named")),
        (Err(e), tokens) => {
            let mut out = e.into_compile_error();
            out.extend(tokens);
            Ok(out)
        }
    }
}

/// The `Entity` impl and the type's registration, with `field` as the id.
fn emit(input: &DeriveInput, field: &syn::Field, attrs: &StructAttrs) -> Option<TokenStream> {
    let ident = &input.ident;
    let id_ident = field.ident.as_ref()?;
    let krate = attrs
        .krate
        .get()
        .cloned()
        .unwrap_or_else(|| syn::parse_quote!(::conflict_runtime));
    let p = quote!(#krate::__private);
    let name = attrs
        .name
        .get()
        .map_or_else(|| ident.to_string(), |n| n.0.clone());
    let id_ty = &field.ty;
    let id_expr = quote_spanned! {id_ty.span()=>
        { #p::raw_id::<Self>(&self.#id_ident) }
    };
    let id_assoc = quote_spanned!(id_ty.span()=> type Id = #id_ty;);
    Some(quote! {
        #[automatically_derived]
        impl #p::Entity for #ident {
            const TYPE_NAME: &'static str = #name;
            #id_assoc
            #[inline]
            fn entity_id(&self) -> #p::EntityId #id_expr
        }

        #p::inventory::submit! {
            #p::EntityRegistration {
                type_name: #name,
                rust_type: ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
            }
        }
    })
}
