//! The attribute grammar: `#[with_conflict_resolution(...)]` parsed into typed configuration.
//!
//! ```text
//! args     := arg (',' arg)* ','?
//! arg      := key | key '=' value | key '(' args ')'
//! value    := int | '-' int | float | string | bool | ident | '[' value,* ']'
//! ```
//!
//! Parsing is two steps: tokens into a small tree of [`Arg`]s (syntax errors stop here, with
//! the span of the unexpected token), then the tree into an [`OperationConfig`], collecting
//! every semantic error (unknown or repeated keys, wrong literal types, values out of range,
//! contradictions) into one combined error, each with the span of the offending tokens. Ranges
//! are checked by `conflict_core`'s own `validate()` so compile-time and start-up checks agree.

use std::collections::HashMap;

use conflict_core::{
    CleanupConfig, CleanupStrategy, ConfigError, OccConfig, OnLose, OpClass, OperationConfig,
    OperationPriority, PreEcsConfig, PrioritySet, ResolutionMode,
};
use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Ident, LitBool, LitFloat, LitInt, LitStr, Token, bracketed, parenthesized};

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
    fn tokens(&self) -> TokenStream {
        match self {
            Self::Int(_, t) | Self::Float(_, t) | Self::Str(_, t) | Self::Bool(_, t) => t.clone(),
            Self::Ident(i) => i.to_token_stream(),
            Self::List(_, t) => t.clone(),
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
            bracket.surround(&mut tokens, |t| items.to_tokens_with(t));
            Ok(Self::List(items.into_iter().collect(), tokens))
        } else if la.peek(Ident::peek_any) {
            Ok(Self::Ident(input.call(Ident::parse_any)?))
        } else {
            Err(la.error())
        }
    }
}

trait ToTokensWith {
    fn to_tokens_with(&self, tokens: &mut TokenStream);
}

impl ToTokensWith for Punctuated<Value, Token![,]> {
    fn to_tokens_with(&self, tokens: &mut TokenStream) {
        for pair in self.pairs() {
            tokens.extend(pair.value().tokens());
            if let Some(p) = pair.punct() {
                p.to_tokens(tokens);
            }
        }
    }
}

/// One `key`, `key = value` or `key(...)`.
pub(crate) struct Arg {
    key: Ident,
    kind: ArgKind,
}

enum ArgKind {
    Flag,
    Value(Value),
    List(Vec<Arg>, TokenStream),
}

impl Arg {
    fn tokens(&self) -> TokenStream {
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
            let items = Punctuated::<Arg, Token![,]>::parse_terminated(&content)?;
            let mut tokens = TokenStream::new();
            paren.surround(&mut tokens, |t| {
                for pair in items.pairs() {
                    t.extend(pair.value().tokens());
                    if let Some(p) = pair.punct() {
                        p.to_tokens(t);
                    }
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

/// Collects errors so that all of them are reported together.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, msg: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, msg));
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

/// Rejects keys given twice, at the second occurrence.
fn check_duplicates(args: &[Arg], errors: &mut Errors) {
    let mut seen: HashMap<String, ()> = HashMap::new();
    for a in args {
        let k = a.key.unraw().to_string();
        if seen.insert(k.clone(), ()).is_some() {
            errors.spanned(&a.key, format!("`{k}` given twice"));
        }
    }
}

fn unknown(errors: &mut Errors, key: &Ident, place: &str, expected: &[&str]) {
    let list = expected
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    errors.spanned(
        key,
        format!("unknown argument `{key}`{place}: expected one of {list}"),
    );
}

/// Reads `key = value`; reports a shape error otherwise.
fn value_of<'a>(arg: &'a Arg, errors: &mut Errors, form: &str) -> Option<&'a Value> {
    match &arg.kind {
        ArgKind::Value(v) => Some(v),
        _ => {
            errors.spanned(arg.tokens(), format!("expected `{} = {form}`", arg.key));
            None
        }
    }
}

fn int<T: TryFrom<i128>>(key: &Ident, v: &Value, errors: &mut Errors) -> Option<T> {
    match v {
        Value::Int(i, t) => {
            if *i < 0 {
                errors.spanned(t, format!("`{key}` must not be negative, got {i}"));
                return None;
            }
            match T::try_from(*i) {
                Ok(x) => Some(x),
                Err(_) => {
                    errors.spanned(t, format!("`{key}` = {i} is too large"));
                    None
                }
            }
        }
        other => {
            errors.spanned(
                other.tokens(),
                format!(
                    "expected an integer for `{key}`, found {}",
                    other.describe()
                ),
            );
            None
        }
    }
}

fn float(key: &Ident, v: &Value, errors: &mut Errors) -> Option<f64> {
    match v {
        Value::Float(f, _) => Some(*f),
        Value::Int(i, _) => Some(*i as f64),
        other => {
            errors.spanned(
                other.tokens(),
                format!("expected a number for `{key}`, found {}", other.describe()),
            );
            None
        }
    }
}

fn boolean(key: &Ident, v: &Value, errors: &mut Errors) -> Option<bool> {
    match v {
        Value::Bool(b, _) => Some(*b),
        other => {
            errors.spanned(
                other.tokens(),
                format!(
                    "expected `true` or `false` for `{key}`, found {}",
                    other.describe()
                ),
            );
            None
        }
    }
}

fn string<'a>(key: &Ident, v: &'a Value, errors: &mut Errors) -> Option<&'a str> {
    match v {
        Value::Str(s, _) => Some(s),
        other => {
            errors.spanned(
                other.tokens(),
                format!(
                    "expected a string literal for `{key}`, found {}",
                    other.describe()
                ),
            );
            None
        }
    }
}

/// A string naming one of a fixed set of choices.
fn choice<T>(
    key: &Ident,
    v: &Value,
    errors: &mut Errors,
    parse: fn(&str) -> Option<T>,
    choices: &[&str],
) -> Option<T> {
    let s = string(key, v, errors)?;
    let r = parse(s);
    if r.is_none() {
        let list = choices
            .iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ");
        errors.spanned(
            v.tokens(),
            format!("unknown `{key}` \"{s}\": expected one of {list}"),
        );
    }
    r
}

fn priority(key: &Ident, v: &Value, errors: &mut Errors) -> Option<OperationPriority> {
    const HELP: &str =
        "1..=10 or one of CRITICAL (10), HIGH (8), NORMAL (5), LOW (2), BACKGROUND (1)";
    let r = match v {
        Value::Int(i, _) => u8::try_from(*i)
            .ok()
            .and_then(|p| OperationPriority::new(p).ok()),
        Value::Str(s, _) => OperationPriority::from_name(s),
        Value::Ident(i) => OperationPriority::from_name(&i.to_string()),
        _ => None,
    };
    if r.is_none() {
        let shown = match v {
            Value::Int(i, _) => i.to_string(),
            Value::Str(s, _) => format!("\"{s}\""),
            Value::Ident(i) => i.to_string(),
            other => other.describe().to_string(),
        };
        errors.spanned(
            v.tokens(),
            format!("invalid priority {shown} for `{key}`: expected {HELP}"),
        );
    }
    r
}

fn priority_list(key: &Ident, v: &Value, errors: &mut Errors) -> Option<PrioritySet> {
    match v {
        Value::List(items, _) => {
            let mut set = PrioritySet::EMPTY;
            let mut ok = true;
            for item in items {
                match priority(key, item, errors) {
                    Some(p) => set = set.with(p),
                    None => ok = false,
                }
            }
            ok.then_some(set)
        }
        other => {
            errors.spanned(
                other.tokens(),
                format!("expected a list of priorities for `{key}`, e.g. `{key} = [CRITICAL, 8]`"),
            );
            None
        }
    }
}

/// How a stage was named: `stage`, `stage(...)`, `stage = false`.
pub(crate) enum Stage {
    On(Vec<Arg>),
    Off,
}

fn stage(arg: Arg, errors: &mut Errors) -> Option<(Stage, TokenStream)> {
    let tokens = arg.tokens();
    let key = arg.key;
    match arg.kind {
        ArgKind::Flag => Some((Stage::On(Vec::new()), tokens)),
        ArgKind::List(items, _) => Some((Stage::On(items), tokens)),
        ArgKind::Value(Value::Bool(true, _)) => Some((Stage::On(Vec::new()), tokens)),
        ArgKind::Value(Value::Bool(false, _)) => Some((Stage::Off, tokens)),
        ArgKind::Value(_) => {
            errors.spanned(
                &tokens,
                format!("expected `{key}`, `{key}(...)` or `{key} = false`"),
            );
            None
        }
    }
}

/// Where each configured field came from, to point errors from `validate()` at it.
#[derive(Default)]
struct Spans(HashMap<&'static str, TokenStream>);

impl Spans {
    fn set(&mut self, field: &'static str, tokens: TokenStream) {
        self.0.insert(field, tokens);
    }
    fn get(&self, field: &str, fallback: &TokenStream) -> TokenStream {
        self.0
            .get(field)
            .cloned()
            .unwrap_or_else(|| fallback.clone())
    }
}

/// Reports a failed `validate()` at the field it names.
fn report(err: ConfigError, spans: &Spans, fallback: &TokenStream, errors: &mut Errors) {
    let at = err
        .field()
        .map_or_else(|| fallback.clone(), |f| spans.get(f, fallback));
    errors.spanned(at, err);
}

/// The arguments of `#[with_conflict_resolution(...)]`.
pub(crate) struct ConflictArgs {
    /// The resolved configuration.
    pub(crate) config: OperationConfig,
    /// The path of the runtime crate (`crate = "..."`), `::conflict_runtime` by default.
    pub(crate) krate: syn::Path,
}

impl ConflictArgs {
    /// What to expand with when the arguments have errors: the defaults, but the `crate = ".."`
    /// path if one is given and well-formed, so that the fallback names the right crate.
    pub(crate) fn fallback(args: proc_macro2::TokenStream) -> Self {
        let mut out = Self::default();
        let parsed =
            syn::parse::Parser::parse2(Punctuated::<Arg, Token![,]>::parse_terminated, args);
        if let Ok(items) = parsed {
            for arg in items {
                if let (true, ArgKind::Value(Value::Str(s, _))) = (arg.key == "crate", &arg.kind) {
                    if let Ok(path) = syn::parse_str::<syn::Path>(s) {
                        out.krate = path;
                    }
                }
            }
        }
        out
    }
}

impl Default for ConflictArgs {
    fn default() -> Self {
        Self {
            config: OperationConfig::DEFAULT,
            krate: syn::parse_quote!(::conflict_runtime),
        }
    }
}

const TOP_KEYS: &[&str] = &[
    "priority", "op_class", "mode", "pre_ecs", "occ", "cleanup", "crate",
];
const OCC_KEYS: &[&str] = &[
    "max_retries",
    "base_delay_ms",
    "backoff_factor",
    "max_delay_ms",
];
const PRE_ECS_KEYS: &[&str] = &[
    "staging_timeout_ms",
    "on_lose",
    "max_staged_per_target",
    "grace_period_ms",
];
const CLEANUP_KEYS: &[&str] = &[
    "strategy",
    "retention_minutes",
    "cleanup_check_interval_seconds",
    "aggressive_on_memory_pressure",
    "memory_pressure_threshold",
    "immediate_cleanup_priorities",
    "debug_retention_priorities",
    "custom_cleanup_handler",
    "max_zombie_count_per_target",
    "force_cleanup_threshold",
];

impl Parse for ConflictArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let args: Vec<Arg> = Punctuated::<Arg, Token![,]>::parse_terminated(input)?
            .into_iter()
            .collect();
        let mut errors = Errors::default();
        check_duplicates(&args, &mut errors);
        let mut out = Self::default();
        let mut priority_set = None;
        let mut op_class = None;
        let mut mode: Option<ResolutionMode> = None;
        let mut pre_ecs = None;
        let mut occ = None;
        let mut cleanup = None;

        for arg in args {
            match arg.key.unraw().to_string().as_str() {
                "priority" => {
                    if let Some(v) = value_of(
                        &arg,
                        &mut errors,
                        "<1..=10 or CRITICAL/HIGH/NORMAL/LOW/BACKGROUND>",
                    ) {
                        priority_set = priority(&arg.key, v, &mut errors);
                    }
                }
                "op_class" => {
                    if let Some(v) = value_of(
                        &arg,
                        &mut errors,
                        "\"structural\" | \"normal\" | \"low_priority\"",
                    ) {
                        op_class = choice(
                            &arg.key,
                            v,
                            &mut errors,
                            OpClass::from_name,
                            &["structural", "normal", "low_priority"],
                        );
                    }
                }
                "mode" => {
                    if let Some(v) = value_of(
                        &arg,
                        &mut errors,
                        "\"none\" | \"pre_ecs\" | \"occ\" | \"both\"",
                    ) {
                        mode = choice(
                            &arg.key,
                            v,
                            &mut errors,
                            ResolutionMode::from_name,
                            &["none", "pre_ecs", "occ", "both"],
                        );
                    }
                }
                "pre_ecs" => pre_ecs = stage(arg, &mut errors),
                "occ" => occ = stage(arg, &mut errors),
                "cleanup" => cleanup = stage(arg, &mut errors),
                "crate" => {
                    if let Some(v) = value_of(&arg, &mut errors, "\"path::to::conflict_runtime\"") {
                        if let Some(s) = string(&arg.key, v, &mut errors) {
                            match syn::parse_str::<syn::Path>(s) {
                                Ok(p) => out.krate = p,
                                Err(_) => {
                                    errors.spanned(v.tokens(), format!("`{s}` is not a path"))
                                }
                            }
                        }
                    }
                }
                _ => unknown(&mut errors, &arg.key, "", TOP_KEYS),
            }
        }

        let cfg = &mut out.config;
        let class = op_class.unwrap_or_default();
        cfg.op_class = class;
        cfg.priority = priority_set.unwrap_or(class.default_priority());
        cfg.occ.max_retries = class.default_max_retries();

        // Which stages run: both, unless `mode` says otherwise or a stage is switched off with
        // `stage = false`. Naming a stage's options only configures it; it never turns the
        // other stage off.
        let off = |s: &Option<(Stage, TokenStream)>| matches!(s, Some((Stage::Off, _)));
        cfg.mode = match &mode {
            Some(m) => {
                for (name, s, enabled) in
                    [("pre_ecs", &pre_ecs, m.staging()), ("occ", &occ, m.occ())]
                {
                    if let Some((st, tokens)) = s {
                        let contradicts = match st {
                            Stage::On(_) => !enabled,
                            Stage::Off => enabled,
                        };
                        if contradicts {
                            let stages = match m {
                                ResolutionMode::None => "neither stage",
                                ResolutionMode::PreEcs => "pre_ecs only",
                                ResolutionMode::Occ => "occ only",
                                ResolutionMode::Both => "both stages",
                            };
                            errors.spanned(
                                tokens,
                                format!(
                                    "`{name}` contradicts `mode = \"{}\"`, which runs {stages}: remove one of them",
                                    m.name()
                                ),
                            );
                        }
                    }
                }
                *m
            }
            None => ResolutionMode::from_stages(!off(&pre_ecs), !off(&occ)),
        };

        if let Some((Stage::On(items), tokens)) = occ {
            parse_occ(items, &mut cfg.occ, &tokens, &mut errors);
        }
        if let Some((Stage::On(items), tokens)) = pre_ecs {
            parse_pre_ecs(items, &mut cfg.pre_ecs, &tokens, &mut errors);
        }
        match cleanup {
            Some((Stage::On(items), tokens)) => {
                parse_cleanup(items, &mut cfg.cleanup, &tokens, &mut errors);
            }
            Some((Stage::Off, _)) => cfg.cleanup = CleanupConfig::DISABLED,
            None => {}
        }
        errors.finish()?;
        Ok(out)
    }
}

fn parse_occ(items: Vec<Arg>, occ: &mut OccConfig, tokens: &TokenStream, errors: &mut Errors) {
    check_duplicates(&items, errors);
    let mut spans = Spans::default();
    let mut given = Vec::new();
    for arg in &items {
        let key = arg.key.unraw().to_string();
        let Some(field) = OCC_KEYS.iter().find(|k| **k == key) else {
            unknown(errors, &arg.key, " in `occ(...)`", OCC_KEYS);
            continue;
        };
        let Some(v) = value_of(arg, errors, "<number>") else {
            continue;
        };
        spans.set(field, v.tokens());
        let ok = match *field {
            "max_retries" => int(&arg.key, v, errors).map(|x| occ.max_retries = x),
            "base_delay_ms" => int(&arg.key, v, errors).map(|x| occ.base_delay_ms = x),
            "backoff_factor" => float(&arg.key, v, errors).map(|x| occ.backoff_factor = x),
            _ => int(&arg.key, v, errors).map(|x| occ.max_delay_ms = x),
        };
        if ok.is_some() {
            given.push(*field);
        }
    }
    // Each field alone against the defaults first, so every range error is reported, then the
    // combination.
    let mut alone_failed = false;
    for field in &given {
        let mut probe = OccConfig::DEFAULT;
        match *field {
            "max_retries" => probe.max_retries = occ.max_retries,
            "base_delay_ms" => {
                probe.base_delay_ms = occ.base_delay_ms;
                probe.max_delay_ms = OccConfig::MAX_DELAY_MS;
            }
            "backoff_factor" => probe.backoff_factor = occ.backoff_factor,
            _ => probe.max_delay_ms = occ.max_delay_ms.max(probe.base_delay_ms),
        }
        if let Err(e) = probe.validate() {
            alone_failed = true;
            report(e, &spans, tokens, errors);
        }
    }
    if !alone_failed {
        if let Err(e) = occ.validate() {
            report(e, &spans, tokens, errors);
        }
    }
}

fn parse_pre_ecs(
    items: Vec<Arg>,
    pre: &mut PreEcsConfig,
    tokens: &TokenStream,
    errors: &mut Errors,
) {
    check_duplicates(&items, errors);
    let mut spans = Spans::default();
    let mut given = Vec::new();
    for arg in &items {
        let key = arg.key.unraw().to_string();
        let Some(field) = PRE_ECS_KEYS.iter().find(|k| **k == key) else {
            unknown(errors, &arg.key, " in `pre_ecs(...)`", PRE_ECS_KEYS);
            continue;
        };
        let Some(v) = value_of(arg, errors, "<value>") else {
            continue;
        };
        spans.set(field, v.tokens());
        let ok = match *field {
            "staging_timeout_ms" => int(&arg.key, v, errors).map(|x| pre.staging_timeout_ms = x),
            "on_lose" => choice(
                &arg.key,
                v,
                errors,
                OnLose::from_name,
                &["reject", "requeue"],
            )
            .map(|x| pre.on_lose = x),
            "max_staged_per_target" => {
                int(&arg.key, v, errors).map(|x| pre.max_staged_per_target = x)
            }
            _ => int(&arg.key, v, errors).map(|x| pre.grace_period_ms = x),
        };
        if ok.is_some() {
            given.push(*field);
        }
    }
    // No rule spans two staging fields, so checking each given field alone reports them all.
    for field in given {
        let mut probe = PreEcsConfig::DEFAULT;
        match field {
            "staging_timeout_ms" => probe.staging_timeout_ms = pre.staging_timeout_ms,
            "max_staged_per_target" => probe.max_staged_per_target = pre.max_staged_per_target,
            "grace_period_ms" => probe.grace_period_ms = pre.grace_period_ms,
            _ => continue,
        }
        if let Err(e) = probe.validate() {
            report(e, &spans, tokens, errors);
        }
    }
}

fn parse_cleanup(
    items: Vec<Arg>,
    c: &mut CleanupConfig,
    tokens: &TokenStream,
    errors: &mut Errors,
) {
    check_duplicates(&items, errors);
    let mut spans = Spans::default();
    for arg in &items {
        let key = arg.key.unraw().to_string();
        let Some(field) = CLEANUP_KEYS.iter().find(|k| **k == key) else {
            unknown(errors, &arg.key, " in `cleanup(...)`", CLEANUP_KEYS);
            continue;
        };
        let Some(v) = value_of(arg, errors, "<value>") else {
            continue;
        };
        spans.set(field, v.tokens());
        let k = &arg.key;
        match *field {
            "strategy" => {
                if let Some(s) = choice(
                    k,
                    v,
                    errors,
                    CleanupStrategy::from_name,
                    &["none", "immediate", "deferred", "lazy", "custom"],
                ) {
                    c.strategy = s;
                }
            }
            "retention_minutes" => {
                if let Some(x) = int(k, v, errors) {
                    c.retention_minutes = x;
                }
            }
            "cleanup_check_interval_seconds" => {
                if let Some(x) = int(k, v, errors) {
                    c.cleanup_check_interval_seconds = x;
                }
            }
            "aggressive_on_memory_pressure" => {
                if let Some(x) = boolean(k, v, errors) {
                    c.aggressive_on_memory_pressure = x;
                }
            }
            "memory_pressure_threshold" => {
                if let Some(x) = float(k, v, errors) {
                    c.memory_pressure_threshold = x;
                }
            }
            "immediate_cleanup_priorities" => {
                if let Some(x) = priority_list(k, v, errors) {
                    c.immediate_cleanup_priorities = x;
                }
            }
            "debug_retention_priorities" => {
                if let Some(x) = priority_list(k, v, errors) {
                    c.debug_retention_priorities = x;
                }
            }
            "custom_cleanup_handler" => {
                if let Some(x) = string(k, v, errors) {
                    c.custom_cleanup_handler = Some(x.to_string().into());
                }
            }
            "max_zombie_count_per_target" => {
                if let Some(x) = int(k, v, errors) {
                    c.max_zombie_count_per_target = x;
                }
            }
            _ => {
                if let Some(x) = int(k, v, errors) {
                    c.force_cleanup_threshold = x;
                }
            }
        }
    }
    // Report every failing rule: validate, blame the field, neutralise it, repeat.
    let mut probe = c.clone();
    for _ in 0..=CLEANUP_KEYS.len() {
        let Err(e) = probe.validate() else { break };
        let field = e.field();
        // For "custom needs a handler" and "deferred needs retention", blame what was written.
        let blame = match field {
            Some("custom_cleanup_handler") if !spans.0.contains_key("custom_cleanup_handler") => {
                Some("strategy")
            }
            Some("retention_minutes") if !spans.0.contains_key("retention_minutes") => {
                Some("strategy")
            }
            f => f,
        };
        let at = blame.map_or_else(|| tokens.clone(), |f| spans.get(f, tokens));
        errors.spanned(at, &e);
        let d = CleanupConfig::DEFAULT;
        match field {
            Some("retention_minutes") => probe.retention_minutes = d.retention_minutes,
            Some("cleanup_check_interval_seconds") => {
                probe.cleanup_check_interval_seconds = d.cleanup_check_interval_seconds;
            }
            Some("memory_pressure_threshold") => {
                probe.memory_pressure_threshold = d.memory_pressure_threshold;
            }
            Some("max_zombie_count_per_target") => {
                probe.max_zombie_count_per_target = d.max_zombie_count_per_target;
            }
            Some("force_cleanup_threshold") => {
                probe.force_cleanup_threshold = d.force_cleanup_threshold
            }
            Some("custom_cleanup_handler") => {
                probe.strategy = CleanupStrategy::Custom;
                probe.custom_cleanup_handler = Some("_".into());
            }
            _ => break,
        }
    }
}

/// The configuration as a constant expression of `#krate::__private` types.
pub(crate) fn config_tokens(cfg: &OperationConfig, krate: &syn::Path) -> TokenStream {
    let p = quote!(#krate::__private);
    let prio = |x: OperationPriority| {
        let v = x.get();
        quote!(#p::priority(#v))
    };
    let set = |s: PrioritySet| {
        let items = s.iter().map(prio);
        quote!(#p::PrioritySet::EMPTY #(.with(#items))*)
    };
    let priority = prio(cfg.priority);
    let op_class = match cfg.op_class {
        OpClass::Structural => quote!(Structural),
        OpClass::Normal => quote!(Normal),
        OpClass::LowPriority => quote!(LowPriority),
    };
    let mode = match cfg.mode {
        ResolutionMode::None => quote!(None),
        ResolutionMode::PreEcs => quote!(PreEcs),
        ResolutionMode::Occ => quote!(Occ),
        ResolutionMode::Both => quote!(Both),
    };
    let PreEcsConfig {
        staging_timeout_ms,
        on_lose,
        max_staged_per_target,
        grace_period_ms,
    } = cfg.pre_ecs;
    let on_lose = match on_lose {
        OnLose::Reject => quote!(Reject),
        OnLose::Requeue => quote!(Requeue),
    };
    let OccConfig {
        max_retries,
        base_delay_ms,
        backoff_factor,
        max_delay_ms,
    } = cfg.occ;
    let backoff_factor = proc_macro2::Literal::f64_suffixed(backoff_factor);
    let c = &cfg.cleanup;
    let strategy = Ident::new(
        match c.strategy {
            CleanupStrategy::None => "None",
            CleanupStrategy::Immediate => "Immediate",
            CleanupStrategy::Deferred => "Deferred",
            CleanupStrategy::Lazy => "Lazy",
            CleanupStrategy::Custom => "Custom",
        },
        Span::call_site(),
    );
    let retention_minutes = c.retention_minutes;
    let interval = c.cleanup_check_interval_seconds;
    let aggressive = c.aggressive_on_memory_pressure;
    let threshold = proc_macro2::Literal::f64_suffixed(c.memory_pressure_threshold);
    let immediate = set(c.immediate_cleanup_priorities);
    let debug = set(c.debug_retention_priorities);
    let handler = match &c.custom_cleanup_handler {
        Some(h) => {
            let h = h.as_ref();
            quote!(::core::option::Option::Some(#p::Cow::Borrowed(#h)))
        }
        None => quote!(::core::option::Option::None),
    };
    let max_zombies = c.max_zombie_count_per_target;
    let force = c.force_cleanup_threshold;
    quote! {
        #p::OperationConfig {
            priority: #priority,
            op_class: #p::OpClass::#op_class,
            mode: #p::ResolutionMode::#mode,
            pre_ecs: #p::PreEcsConfig {
                staging_timeout_ms: #staging_timeout_ms,
                on_lose: #p::OnLose::#on_lose,
                max_staged_per_target: #max_staged_per_target,
                grace_period_ms: #grace_period_ms,
            },
            occ: #p::OccConfig {
                max_retries: #max_retries,
                base_delay_ms: #base_delay_ms,
                backoff_factor: #backoff_factor,
                max_delay_ms: #max_delay_ms,
            },
            cleanup: #p::CleanupConfig {
                strategy: #p::CleanupStrategy::#strategy,
                retention_minutes: #retention_minutes,
                cleanup_check_interval_seconds: #interval,
                aggressive_on_memory_pressure: #aggressive,
                memory_pressure_threshold: #threshold,
                immediate_cleanup_priorities: #immediate,
                debug_retention_priorities: #debug,
                custom_cleanup_handler: #handler,
                max_zombie_count_per_target: #max_zombies,
                force_cleanup_threshold: #force,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConflictArgs;
    use quote::quote;

    /// The fallback after an argument error keeps a well-formed `crate = ".."`, so the
    /// generated code names the re-exported crate and adds no error of its own.
    #[test]
    fn fallback_keeps_the_crate_path() {
        let f = ConflictArgs::fallback(quote!(crate = "rt", priority = 11));
        let k = &f.krate;
        assert_eq!(quote!(#k).to_string(), quote!(rt).to_string());
        let f = ConflictArgs::fallback(quote!(priority = 11, occ(max_retries = "x")));
        let k = &f.krate;
        assert_eq!(
            quote!(#k).to_string(),
            quote!(::conflict_runtime).to_string()
        );
    }
}
