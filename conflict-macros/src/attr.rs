//! What every attribute of the crate is read with: a small syntax tree, one typed slot per key,
//! closed vocabularies for keys and values, and the conversions from literals to typed values.
//!
//! ```text
//! args     := arg (',' arg)* ','?
//! arg      := key | key '=' value | key '(' args ')'
//! value    := int | '-' int | float | string | bool | ident | '[' value,* ']'
//! ```
//!
//! Reading is two steps: tokens into [`Arg`]s (a syntax error stops here, at the unexpected
//! token), then each `Arg` into the [`Attr`] of its key (a wrong value is reported and reading
//! goes on), so that every semantic mistake of an attribute is reported in one build.

use conflict_core::{
    CleanupStrategy, OnLose, OpClass, OperationPriority, PrioritySet, ResolutionMode,
};
use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Ident, LitBool, LitFloat, LitInt, LitStr, Token, bracketed, parenthesized};

use crate::errors::Errors;

/// A literal value, with its tokens for error spans.
#[derive(Clone)]
pub(crate) enum Value {
    Int(i128, TokenStream),
    Float(f64, TokenStream),
    Str(String, TokenStream),
    Bool(bool, TokenStream),
    Ident(Ident),
    List(Vec<Value>, TokenStream),
}

impl Value {
    /// The tokens as written, for an error about this value.
    pub(crate) fn tokens(&self) -> TokenStream {
        match self {
            Self::Int(_, t)
            | Self::Float(_, t)
            | Self::Str(_, t)
            | Self::Bool(_, t)
            | Self::List(_, t) => t.clone(),
            Self::Ident(i) => i.to_token_stream(),
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Self::Int(..) => "an integer",
            Self::Float(..) => "a float",
            Self::Str(..) => "a string",
            Self::Bool(..) => "a bool",
            Self::Ident(_) => "an identifier",
            Self::List(..) => "a list",
        }
    }
}

impl Parse for Value {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let la = input.lookahead1();
        // `-` first: a negative literal is two tokens, and keeping both gives the error span
        // `-1` rather than `-`.
        if la.peek(Token![-]) {
            let minus: Token![-] = input.parse()?;
            let la = input.lookahead1();
            if la.peek(LitInt) {
                let lit: LitInt = input.parse()?;
                let v: i128 = lit.base10_parse()?;
                Ok(Self::Int(-v, quote!(#minus #lit)))
            } else if la.peek(LitFloat) {
                let lit: LitFloat = input.parse()?;
                let v: f64 = lit.base10_parse()?;
                Ok(Self::Float(-v, quote!(#minus #lit)))
            } else {
                Err(la.error())
            }
        } else if la.peek(LitInt) {
            let lit: LitInt = input.parse()?;
            Ok(Self::Int(lit.base10_parse()?, lit.to_token_stream()))
        } else if la.peek(LitFloat) {
            let lit: LitFloat = input.parse()?;
            Ok(Self::Float(lit.base10_parse()?, lit.to_token_stream()))
        } else if la.peek(LitStr) {
            let lit: LitStr = input.parse()?;
            Ok(Self::Str(lit.value(), lit.to_token_stream()))
        } else if la.peek(LitBool) {
            let lit: LitBool = input.parse()?;
            Ok(Self::Bool(lit.value, lit.to_token_stream()))
        } else if la.peek(syn::token::Bracket) {
            let content;
            let bracket = bracketed!(content in input);
            let items = Punctuated::<Value, Token![,]>::parse_terminated(&content)?;
            let mut tokens = TokenStream::new();
            bracket.surround(&mut tokens, |t| {
                for pair in items.pairs() {
                    t.extend(pair.value().tokens());
                    pair.punct().to_tokens(t);
                }
            });
            Ok(Self::List(items.into_iter().collect(), tokens))
        } else if la.peek(Ident::peek_any) {
            Ok(Self::Ident(input.call(Ident::parse_any)?))
        } else {
            Err(la.error())
        }
    }
}

/// One `key`, `key = value` or `key(...)`.
#[derive(Clone)]
pub(crate) struct Arg {
    pub(crate) key: Ident,
    pub(crate) kind: ArgKind,
}

/// What follows an argument's key.
#[derive(Clone)]
pub(crate) enum ArgKind {
    /// Nothing: `key`.
    Flag,
    /// `key = value`.
    Value(Value),
    /// `key(...)`, with the parenthesised tokens.
    List(Vec<Arg>, TokenStream),
}

impl Arg {
    /// The tokens as written, for an error about the whole argument.
    pub(crate) fn tokens(&self) -> TokenStream {
        let key = &self.key;
        match &self.kind {
            ArgKind::Flag => key.to_token_stream(),
            ArgKind::Value(v) => {
                let v = v.tokens();
                quote!(#key = #v)
            }
            ArgKind::List(_, t) => quote!(#key #t),
        }
    }

    /// `arg, arg, ...` up to the end of `input`.
    pub(crate) fn parse_list(input: ParseStream<'_>) -> syn::Result<Vec<Self>> {
        Ok(Punctuated::<Self, Token![,]>::parse_terminated(input)?
            .into_iter()
            .collect())
    }
}

impl Parse for Arg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let key = input.call(Ident::parse_any)?;
        let kind = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            ArgKind::Value(input.parse()?)
        } else if input.peek(syn::token::Paren) {
            let content;
            let paren = parenthesized!(content in input);
            let items = Punctuated::<Self, Token![,]>::parse_terminated(&content)?;
            let mut tokens = TokenStream::new();
            paren.surround(&mut tokens, |t| {
                for pair in items.pairs() {
                    t.extend(pair.value().tokens());
                    pair.punct().to_tokens(t);
                }
            });
            ArgKind::List(items.into_iter().collect(), tokens)
        } else if input.is_empty() || input.peek(Token![,]) {
            ArgKind::Flag
        } else {
            return Err(input.error("expected `=`, `(...)`, `,` or the end of the arguments"));
        };
        Ok(Self { key, kind })
    }
}

/// The value of one key, set at most once across every attribute it is read from (the shape of
/// `serde_derive`'s `Attr<T>`): a repeat is reported at its key, its value is not read, and the
/// first value stays.
pub(crate) struct Attr<T> {
    /// Whether the key was given at all (even with a value that was refused).
    given: bool,
    /// The value and its tokens, which later errors about the value (ranges) point at.
    value: Option<(T, TokenStream)>,
}

impl<T> Default for Attr<T> {
    fn default() -> Self {
        Self {
            given: false,
            value: None,
        }
    }
}

impl<T: FromArg> Attr<T> {
    /// Reads `arg` into this slot, or reports "`key` given twice" at its key.
    pub(crate) fn set(&mut self, arg: &Arg, errors: &mut Errors) {
        if self.given {
            errors.spanned(&arg.key, format!("`{}` given twice", arg.key.unraw()));
            return;
        }
        self.given = true;
        self.value = T::from_arg(arg, errors);
    }
}

impl<T> Attr<T> {
    /// The value, if it was given and well-formed.
    pub(crate) fn get(&self) -> Option<&T> {
        self.value.as_ref().map(|(v, _)| v)
    }

    /// The value's tokens, if it was given and well-formed.
    pub(crate) fn tokens(&self) -> Option<&TokenStream> {
        self.value.as_ref().map(|(_, t)| t)
    }

    /// The value with its tokens.
    pub(crate) fn into_inner(self) -> Option<(T, TokenStream)> {
        self.value
    }
}

/// A closed set of names: the keys of an attribute, or the values a key accepts. The tables
/// are generated from the enums, so a name and its variant cannot drift apart.
pub(crate) trait Vocabulary: Copy + 'static {
    /// Every member.
    const ALL: &'static [Self];

    /// How the member is written.
    fn name(self) -> &'static str;

    /// The member written `name`.
    fn find(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|m| m.name() == name)
    }

    /// Every member, each between `quote`s: `` `a`, `b` `` or `"a", "b"`.
    fn list(quote: char) -> String {
        Self::ALL
            .iter()
            .map(|m| format!("{quote}{}{quote}", m.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Declares the keys of one attribute (or section) as an enum with its [`Vocabulary`], so that
/// reading them is an exhaustive `match`: a key added here without its arm does not compile.
macro_rules! keys {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $key:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Copy, Clone, PartialEq, Eq, Debug)]
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $crate::attr::Vocabulary for $name {
            const ALL: &'static [Self] = &[$(Self::$variant,)+];

            fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $key,)+
                }
            }
        }
    };
}
pub(crate) use keys;

/// The key `arg` names in the vocabulary `K`, or `unknown(written key)` reported at the key.
pub(crate) fn key_of<K: Vocabulary>(
    arg: &Arg,
    errors: &mut Errors,
    unknown: impl FnOnce(&Ident) -> String,
) -> Option<K> {
    let found = K::find(&arg.key.unraw().to_string());
    if found.is_none() {
        errors.spanned(&arg.key, unknown(&arg.key));
    }
    found
}

/// `keys` as string-valued forms: `` `a = "..."` or `b = "..."` ``.
pub(crate) fn string_forms<K: Vocabulary>(keys: impl IntoIterator<Item = K>) -> String {
    keys.into_iter()
        .map(|k| format!("`{} = \"...\"`", k.name()))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// A key's value type: how it is read from the argument that sets it.
pub(crate) trait FromArg: Sized {
    /// Reads the value, reporting what is wrong with it. The tokens returned are where later
    /// errors about the value (a range check) point.
    fn from_arg(arg: &Arg, errors: &mut Errors) -> Option<(Self, TokenStream)>;
}

/// A value written `key = value`.
pub(crate) trait FromValue: Sized {
    /// How the value is written, for "expected `key = ...`".
    fn form() -> String;

    /// Reads the literal, reporting what is wrong with it.
    fn from_value(key: &Ident, v: &Value, errors: &mut Errors) -> Option<Self>;
}

impl<T: FromValue> FromArg for T {
    fn from_arg(arg: &Arg, errors: &mut Errors) -> Option<(Self, TokenStream)> {
        match &arg.kind {
            ArgKind::Value(v) => T::from_value(&arg.key, v, errors).map(|x| (x, v.tokens())),
            ArgKind::Flag | ArgKind::List(..) => {
                errors.spanned(
                    arg.tokens(),
                    format!("expected `{} = {}`", arg.key, T::form()),
                );
                None
            }
        }
    }
}

fn wrong(errors: &mut Errors, v: &Value, expected: &str, key: &Ident) {
    errors.spanned(
        v.tokens(),
        format!("expected {expected} for `{key}`, found {}", v.describe()),
    );
}

/// Non-negative integers, checked against the field's type.
macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn form() -> String {
                "<integer>".into()
            }

            fn from_value(key: &Ident, v: &Value, errors: &mut Errors) -> Option<Self> {
                let Value::Int(i, t) = v else {
                    wrong(errors, v, "an integer", key);
                    return None;
                };
                if *i < 0 {
                    errors.spanned(t, format!("`{key}` must not be negative, got {i}"));
                    return None;
                }
                let x = Self::try_from(*i).ok();
                if x.is_none() {
                    errors.spanned(t, format!("`{key}` = {i} is too large"));
                }
                x
            }
        }
    )*};
}
unsigned!(u32, u64);

impl FromValue for f64 {
    fn form() -> String {
        "<number>".into()
    }

    #[allow(clippy::cast_precision_loss)] // attribute literals are small
    fn from_value(key: &Ident, v: &Value, errors: &mut Errors) -> Option<Self> {
        match v {
            Value::Float(f, _) => Some(*f),
            Value::Int(i, _) => Some(*i as f64),
            other => {
                wrong(errors, other, "a number", key);
                None
            }
        }
    }
}

impl FromValue for bool {
    fn form() -> String {
        "true | false".into()
    }

    fn from_value(key: &Ident, v: &Value, errors: &mut Errors) -> Option<Self> {
        if let Value::Bool(b, _) = v {
            return Some(*b);
        }
        wrong(errors, v, "`true` or `false`", key);
        None
    }
}

impl FromValue for String {
    fn form() -> String {
        "\"...\"".into()
    }

    fn from_value(key: &Ident, v: &Value, errors: &mut Errors) -> Option<Self> {
        if let Value::Str(s, _) = v {
            return Some(s.clone());
        }
        wrong(errors, v, "a string literal", key);
        None
    }
}

/// `name = "..."`: an operation's name, an identifier or identifiers joined by `::`
/// (`"add_line"`, `"Cart::add"`), so that its path `module::name` stays a path.
pub(crate) struct OpName(pub(crate) String);

impl FromValue for OpName {
    fn form() -> String {
        "\"operation_name\"".into()
    }

    fn from_value(key: &Ident, v: &Value, errors: &mut Errors) -> Option<Self> {
        let s = String::from_value(key, v, errors)?;
        // Written exactly as it will appear (no spaces), each segment a plain identifier: not a
        // keyword (`self`, `super`, `type`), not raw (`r#type`).
        let ok = s.split("::").all(|seg| {
            !seg.starts_with("r#") && syn::parse_str::<Ident>(seg).is_ok_and(|i| i == seg)
        });
        if !ok {
            errors.spanned(
                v.tokens(),
                format!(
                    "`{key}` must be an identifier or identifiers joined by `::` (like \"add_line\" or \"Cart::add\"), got \"{s}\""
                ),
            );
            return None;
        }
        Some(Self(s))
    }
}

/// `crate = "path::to::conflict_runtime"`.
impl FromValue for syn::Path {
    fn form() -> String {
        "\"path::to::conflict_runtime\"".into()
    }

    fn from_value(key: &Ident, v: &Value, errors: &mut Errors) -> Option<Self> {
        let s = String::from_value(key, v, errors)?;
        let path = syn::parse_str(&s).ok();
        if path.is_none() {
            errors.spanned(v.tokens(), format!("`{s}` is not a path"));
        }
        path
    }
}

/// The value vocabularies, taken from `conflict_core`: the names a user may write are exactly
/// the ones the runtime knows, and the "expected one of" lists are generated from them.
macro_rules! core_vocabulary {
    ($($t:ty),*) => {$(
        impl Vocabulary for $t {
            const ALL: &'static [Self] = &<$t>::ALL;

            fn name(self) -> &'static str {
                <$t>::name(self)
            }
        }

        impl FromValue for $t {
            fn form() -> String {
                Self::ALL
                    .iter()
                    .map(|m| format!("\"{}\"", m.name()))
                    .collect::<Vec<_>>()
                    .join(" | ")
            }

            fn from_value(key: &Ident, v: &Value, errors: &mut Errors) -> Option<Self> {
                let s = String::from_value(key, v, errors)?;
                let found = Self::find(&s);
                if found.is_none() {
                    errors.spanned(
                        v.tokens(),
                        format!("unknown `{key}` \"{s}\": expected one of {}", Self::list('"')),
                    );
                }
                found
            }
        }
    )*};
}
core_vocabulary!(CleanupStrategy, OnLose, OpClass, ResolutionMode);

/// What `priority = ...` accepts, from `conflict_core`'s range and named levels:
/// `1..=10 or one of CRITICAL (10), ...`.
fn priority_help() -> String {
    let named = OperationPriority::NAMED
        .iter()
        .filter_map(|p| p.name().map(|n| format!("{n} ({})", p.get())))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{}..={} or one of {named}",
        OperationPriority::MIN.get(),
        OperationPriority::MAX.get()
    )
}

/// `5`, `"high"` or `HIGH`.
impl FromValue for OperationPriority {
    fn form() -> String {
        let named = OperationPriority::NAMED
            .iter()
            .filter_map(|p| p.name())
            .collect::<Vec<_>>()
            .join("/");
        format!(
            "<{}..={} or {named}>",
            OperationPriority::MIN.get(),
            OperationPriority::MAX.get()
        )
    }

    fn from_value(key: &Ident, v: &Value, errors: &mut Errors) -> Option<Self> {
        let found = match v {
            Value::Int(i, _) => u8::try_from(*i).ok().and_then(|p| Self::new(p).ok()),
            Value::Str(s, _) => Self::from_name(s),
            Value::Ident(i) => Self::from_name(&i.to_string()),
            Value::Float(..) | Value::Bool(..) | Value::List(..) => None,
        };
        if found.is_none() {
            let shown = match v {
                Value::Int(i, _) => i.to_string(),
                Value::Str(s, _) => format!("\"{s}\""),
                Value::Ident(i) => i.to_string(),
                other => other.describe().to_string(),
            };
            errors.spanned(
                v.tokens(),
                format!(
                    "invalid priority {shown} for `{key}`: expected {}",
                    priority_help()
                ),
            );
        }
        found
    }
}

/// `[CRITICAL, 8]`.
impl FromValue for PrioritySet {
    fn form() -> String {
        "[<priority>, ...]".into()
    }

    fn from_value(key: &Ident, v: &Value, errors: &mut Errors) -> Option<Self> {
        let Value::List(items, _) = v else {
            errors.spanned(
                v.tokens(),
                format!("expected a list of priorities for `{key}`, e.g. `{key} = [CRITICAL, 8]`"),
            );
            return None;
        };
        let mut set = Some(Self::EMPTY);
        for item in items {
            // Every item is checked, so each bad one is reported.
            let p = OperationPriority::from_value(key, item, errors);
            set = set.zip(p).map(|(s, p)| s.with(p));
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn arg(tokens: TokenStream) -> Arg {
        syn::parse2(tokens).unwrap()
    }

    fn messages(errors: Errors) -> Vec<String> {
        match errors.finish() {
            Ok(()) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    /// A repeat is refused at its second occurrence and does not overwrite the first value.
    #[test]
    fn attr_keeps_the_first_value_and_reports_the_repeat() {
        let mut errors = Errors::default();
        let mut slot = Attr::<u32>::default();
        slot.set(&arg(quote!(n = 1)), &mut errors);
        slot.set(&arg(quote!(n = 2)), &mut errors);
        assert_eq!(slot.get(), Some(&1));
        assert_eq!(messages(errors), ["`n` given twice"]);
    }

    /// A key given with a refused value still counts as given: the repeat is a second mistake.
    #[test]
    fn a_refused_value_still_claims_its_key() {
        let mut errors = Errors::default();
        let mut slot = Attr::<u32>::default();
        slot.set(&arg(quote!(n = "x")), &mut errors);
        slot.set(&arg(quote!(n = 2)), &mut errors);
        assert_eq!(slot.get(), None);
        assert_eq!(
            messages(errors),
            [
                "expected an integer for `n`, found a string",
                "`n` given twice"
            ]
        );
    }

    /// The value vocabularies are core's: every name core knows is accepted and listed.
    #[test]
    fn core_vocabularies_accept_and_list_every_core_name() {
        for s in CleanupStrategy::ALL {
            assert_eq!(<CleanupStrategy as Vocabulary>::find(s.name()), Some(s));
            assert!(
                <CleanupStrategy as Vocabulary>::list('"').contains(&format!("\"{}\"", s.name()))
            );
        }
        for m in ResolutionMode::ALL {
            assert_eq!(<ResolutionMode as Vocabulary>::find(m.name()), Some(m));
        }
        assert_eq!(<OnLose as Vocabulary>::list('"'), "\"reject\", \"requeue\"");
        assert_eq!(
            priority_help(),
            "1..=10 or one of CRITICAL (10), HIGH (8), NORMAL (5), LOW (2), BACKGROUND (1)"
        );
    }

    /// Each bad item of a priority list is reported, and the list is refused as a whole.
    #[test]
    fn priority_list_reports_every_bad_item() {
        let mut errors = Errors::default();
        let a = arg(quote!(p = [0, HIGH, urgent]));
        assert!(PrioritySet::from_arg(&a, &mut errors).is_none());
        assert_eq!(messages(errors).len(), 2);
        let mut errors = Errors::default();
        let (set, _) = PrioritySet::from_arg(&arg(quote!(p = [CRITICAL, 8])), &mut errors).unwrap();
        assert!(set.contains(OperationPriority::CRITICAL) && set.contains(OperationPriority::HIGH));
        assert!(messages(errors).is_empty());
    }
}
