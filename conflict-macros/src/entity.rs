//! `#[derive(Entity)]`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, LitStr};

use crate::args::Errors;

/// What `#[entity(...)]` on the struct says.
struct EntityAttrs {
    name: Option<LitStr>,
    krate: syn::Path,
}

impl Default for EntityAttrs {
    fn default() -> Self {
        Self {
            name: None,
            krate: syn::parse_quote!(::conflict_runtime),
        }
    }
}

fn struct_attrs(input: &DeriveInput, errors: &mut Errors) -> EntityAttrs {
    let mut out = EntityAttrs::default();
    // Across every `#[entity(..)]` on the struct: a key repeated in a second attribute is as
    // much a mistake as one repeated inside the first.
    let mut seen_name = false;
    let mut seen_crate = false;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("entity")) {
        let r = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("name") {
                if seen_name {
                    return Err(meta.error("`name` given twice"));
                }
                seen_name = true;
                let lit: LitStr = meta.value()?.parse().map_err(|e| {
                    syn::Error::new(e.span(), "expected a string literal: `name = \"TypeName\"`")
                })?;
                if lit.value().trim().is_empty() {
                    return Err(syn::Error::new(
                        lit.span(),
                        "the entity name must not be empty",
                    ));
                }
                out.name = Some(lit);
                Ok(())
            } else if meta.path.is_ident("crate") {
                if seen_crate {
                    return Err(meta.error("`crate` given twice"));
                }
                seen_crate = true;
                let lit: LitStr = meta.value()?.parse()?;
                out.krate = lit.parse()?;
                Ok(())
            } else if meta.path.is_ident("id") {
                Err(meta.error("`#[entity(id)]` belongs on the id field, not on the struct"))
            } else {
                Err(meta.error(format!(
                    "unknown entity attribute `{}`: expected `name = \"...\"` or `crate = \"...\"`",
                    path_name(&meta.path)
                )))
            }
        });
        if let Err(e) = r {
            errors.push(e);
        }
    }
    out
}

fn path_name(p: &syn::Path) -> String {
    quote!(#p).to_string().replace(' ', "")
}

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
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("entity")) {
            let r = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("id") {
                    if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                        return Err(meta.error("`id` takes no value: write `#[entity(id)]`"));
                    }
                    id_fields.push((field, meta.path.span()));
                    Ok(())
                } else {
                    Err(meta.error(format!(
                        "unknown field attribute `{}`: expected `#[entity(id)]`",
                        path_name(&meta.path)
                    )))
                }
            });
            if let Err(e) = r {
                errors.push(e);
            }
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
    errors.finish()?;

    let (field, _) = id_fields[0];
    let id_ident = field
        .ident
        .as_ref()
        .ok_or_else(|| syn::Error::new(field.span(), "the id field must be named"))?;
    let krate = &attrs.krate;
    let p = quote!(#krate::__private);
    let name = attrs
        .name
        .as_ref()
        .map_or_else(|| ident.to_string(), LitStr::value);
    let id_ty = &field.ty;
    // Spanned at the field's type, so a wrong type is reported there.
    // Through the associated type, whose bound is checked once, at `type Id` (one error for a
    // wrong field type, at the type).
    let id_expr = quote_spanned! {id_ty.span()=>
        { #p::raw_id::<Self>(&self.#id_ident) }
    };
    let id_assoc = quote_spanned!(id_ty.span()=> type Id = #id_ty;);
    Ok(quote! {
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
