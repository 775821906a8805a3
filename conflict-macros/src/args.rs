//! The grammar of `#[with_conflict_resolution(...)]`: the top level and its three sections as
//! typed structs, one [`Attr`] per key, resolved into an [`OperationConfig`].
//!
//! Each section's keys are an enum read by an exhaustive `match`, and the value vocabularies are
//! `conflict_core`'s (see [`crate::attr`]). Every mistake is collected (unknown or repeated keys,
//! wrong literal types, values out of range, contradictions) and reported together, each at the
//! span of the offending tokens. Ranges are checked by `conflict_core`'s own `validate()`, so
//! compile-time and start-up checks agree.

use conflict_core::{
    CleanupConfig, CleanupStrategy, ConfigError, OccConfig, OnLose, OpClass, OperationConfig,
    OperationPriority, PreEcsConfig, PrioritySet, ResolutionMode,
};
use proc_macro2::TokenStream;
use syn::parse::{Parse, ParseStream};

use crate::attr::{Arg, ArgKind, Attr, FromArg, OpName, Value, Vocabulary, key_of, keys};
use crate::errors::Errors;

/// The arguments of `#[with_conflict_resolution(...)]`.
pub(crate) struct ConflictArgs {
    /// The resolved configuration.
    pub(crate) config: OperationConfig,
    /// The path of the runtime crate (`crate = "..."`), `::conflict_runtime` by default.
    pub(crate) krate: syn::Path,
    /// The operation's name (`name = "..."`), the function's name by default.
    pub(crate) name: Option<String>,
}

impl Default for ConflictArgs {
    fn default() -> Self {
        Self {
            config: OperationConfig::DEFAULT,
            krate: syn::parse_quote!(::conflict_runtime),
            name: None,
        }
    }
}

impl Parse for ConflictArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let args = Arg::parse_list(input)?;
        let mut errors = Errors::default();
        let out = Top::read(&args, &mut errors).resolve(&mut errors);
        errors.finish()?;
        Ok(out)
    }
}

impl ConflictArgs {
    /// What to expand with when the arguments have errors: the defaults, but the `crate = ".."`
    /// path if one is given and well-formed, so that the fallback names the right crate.
    pub(crate) fn fallback(args: TokenStream) -> Self {
        let mut out = Self::default();
        if let Ok(items) = syn::parse::Parser::parse2(Arg::parse_list, args) {
            // The errors were reported by the failed parse already.
            let top = Top::read(&items, &mut Errors::default());
            if let Some(path) = top.krate.get() {
                out.krate = path.clone();
            }
        }
        out
    }
}

/// A list of keys with one slot each: the top level, or a section such as `occ(...)`.
trait Section: Default {
    /// The keys.
    type Key: Vocabulary;
    /// Where the keys are, for "unknown argument `x` in `occ(...)`" (empty at the top level).
    const PLACE: &'static str;

    /// Reads `arg` into the slot of `key`.
    fn set(&mut self, key: Self::Key, arg: &Arg, errors: &mut Errors);

    /// The tokens of `key`'s value, if it was given and well-formed.
    fn tokens(&self, key: Self::Key) -> Option<&TokenStream>;

    /// Reads every argument, reporting unknown and repeated keys and malformed values.
    fn read(items: &[Arg], errors: &mut Errors) -> Self {
        let mut section = Self::default();
        for arg in items {
            let key = key_of::<Self::Key>(arg, errors, |k| {
                format!(
                    "unknown argument `{k}`{}: expected one of {}",
                    Self::PLACE,
                    Self::Key::list('`')
                )
            });
            if let Some(key) = key {
                section.set(key, arg, errors);
            }
        }
        section
    }

    /// Reports a failed `validate()` at the value of the key it names, or at the whole section.
    fn report(&self, err: &ConfigError, section: &TokenStream, errors: &mut Errors) {
        let at = err
            .field()
            .and_then(Self::Key::find)
            .and_then(|k| self.tokens(k));
        errors.spanned(at.unwrap_or(section), err);
    }
}

/// Writes a given value over its field of the configuration.
fn write<T: Clone>(attr: &Attr<T>, field: &mut T) {
    if let Some(v) = attr.get() {
        *field = v.clone();
    }
}

/// How a stage was named: `stage`, `stage(...)` or `stage = true` turn it on (with options),
/// `stage = false` turns it off. The tokens are the whole argument.
enum Stage {
    On(Vec<Arg>),
    Off,
}

impl FromArg for Stage {
    fn from_arg(arg: &Arg, errors: &mut Errors) -> Option<(Self, TokenStream)> {
        let stage = match &arg.kind {
            ArgKind::Flag | ArgKind::Value(Value::Bool(true, _)) => Self::On(Vec::new()),
            ArgKind::List(items, _) => Self::On(items.clone()),
            ArgKind::Value(Value::Bool(false, _)) => Self::Off,
            ArgKind::Value(_) => {
                let key = &arg.key;
                errors.spanned(
                    arg.tokens(),
                    format!("expected `{key}`, `{key}(...)` or `{key} = false`"),
                );
                return None;
            }
        };
        Some((stage, arg.tokens()))
    }
}

keys! {
    /// The keys of `#[with_conflict_resolution(...)]`.
    enum TopKey {
        Priority = "priority",
        OpClass = "op_class",
        Mode = "mode",
        PreEcs = "pre_ecs",
        Occ = "occ",
        Cleanup = "cleanup",
        Crate = "crate",
        Name = "name",
    }
}

/// The top level.
#[derive(Default)]
struct Top {
    priority: Attr<OperationPriority>,
    op_class: Attr<OpClass>,
    mode: Attr<ResolutionMode>,
    pre_ecs: Attr<Stage>,
    occ: Attr<Stage>,
    cleanup: Attr<Stage>,
    krate: Attr<syn::Path>,
    name: Attr<OpName>,
}

impl Section for Top {
    type Key = TopKey;
    const PLACE: &'static str = "";

    fn set(&mut self, key: TopKey, arg: &Arg, errors: &mut Errors) {
        match key {
            TopKey::Priority => self.priority.set(arg, errors),
            TopKey::OpClass => self.op_class.set(arg, errors),
            TopKey::Mode => self.mode.set(arg, errors),
            TopKey::PreEcs => self.pre_ecs.set(arg, errors),
            TopKey::Occ => self.occ.set(arg, errors),
            TopKey::Cleanup => self.cleanup.set(arg, errors),
            TopKey::Crate => self.krate.set(arg, errors),
            TopKey::Name => self.name.set(arg, errors),
        }
    }

    fn tokens(&self, key: TopKey) -> Option<&TokenStream> {
        match key {
            TopKey::Priority => self.priority.tokens(),
            TopKey::OpClass => self.op_class.tokens(),
            TopKey::Mode => self.mode.tokens(),
            TopKey::PreEcs => self.pre_ecs.tokens(),
            TopKey::Occ => self.occ.tokens(),
            TopKey::Cleanup => self.cleanup.tokens(),
            TopKey::Crate => self.krate.tokens(),
            TopKey::Name => self.name.tokens(),
        }
    }
}

impl Top {
    /// The configuration: defaults from `op_class`, then the given values, then the sections.
    fn resolve(self, errors: &mut Errors) -> ConflictArgs {
        let mut out = ConflictArgs::default();
        write(&self.krate, &mut out.krate);
        out.name = self.name.get().map(|n| n.0.clone());
        let cfg = &mut out.config;
        let class = self.op_class.get().copied().unwrap_or_default();
        cfg.op_class = class;
        cfg.priority = class.default_priority();
        write(&self.priority, &mut cfg.priority);
        cfg.occ.max_retries = class.default_max_retries();
        cfg.mode = self.mode(errors);

        let Self {
            pre_ecs,
            occ,
            cleanup,
            ..
        } = self;
        if let Some((Stage::On(items), tokens)) = occ.into_inner() {
            Occ::read(&items, errors).apply(&mut cfg.occ, &tokens, errors);
        }
        if let Some((Stage::On(items), tokens)) = pre_ecs.into_inner() {
            PreEcs::read(&items, errors).apply(&mut cfg.pre_ecs, &tokens, errors);
        }
        match cleanup.into_inner() {
            Some((Stage::On(items), tokens)) => {
                Cleanup::read(&items, errors).apply(&mut cfg.cleanup, &tokens, errors);
            }
            Some((Stage::Off, _)) => cfg.cleanup = CleanupConfig::DISABLED,
            None => {}
        }
        out
    }

    /// Which stages run: both, unless `mode` says otherwise or a stage is switched off with
    /// `stage = false`. Naming a stage's options only configures it; it never turns the other
    /// stage off. A stage named against `mode` is a contradiction.
    fn mode(&self, errors: &mut Errors) -> ResolutionMode {
        let Some(&mode) = self.mode.get() else {
            let on = |s: &Attr<Stage>| !matches!(s.get(), Some(Stage::Off));
            return ResolutionMode::from_stages(on(&self.pre_ecs), on(&self.occ));
        };
        let stages = match mode {
            ResolutionMode::None => "neither stage",
            ResolutionMode::PreEcs => "pre_ecs only",
            ResolutionMode::Occ => "occ only",
            ResolutionMode::Both => "both stages",
        };
        for (key, stage, enabled) in [
            (TopKey::PreEcs, &self.pre_ecs, mode.staging()),
            (TopKey::Occ, &self.occ, mode.occ()),
        ] {
            let contradicts = match stage.get() {
                Some(Stage::On(_)) => !enabled,
                Some(Stage::Off) => enabled,
                None => false,
            };
            if let (true, Some(tokens)) = (contradicts, stage.tokens()) {
                errors.spanned(
                    tokens,
                    format!(
                        "`{}` contradicts `mode = \"{}\"`, which runs {stages}: remove one of them",
                        key.name(),
                        mode.name()
                    ),
                );
            }
        }
        mode
    }
}

keys! {
    /// The keys of `occ(...)`.
    enum OccKey {
        MaxRetries = "max_retries",
        BaseDelayMs = "base_delay_ms",
        BackoffFactor = "backoff_factor",
        MaxDelayMs = "max_delay_ms",
    }
}

/// `occ(...)`.
#[derive(Default)]
struct Occ {
    max_retries: Attr<u32>,
    base_delay_ms: Attr<u64>,
    backoff_factor: Attr<f64>,
    max_delay_ms: Attr<u64>,
}

impl Section for Occ {
    type Key = OccKey;
    const PLACE: &'static str = " in `occ(...)`";

    fn set(&mut self, key: OccKey, arg: &Arg, errors: &mut Errors) {
        match key {
            OccKey::MaxRetries => self.max_retries.set(arg, errors),
            OccKey::BaseDelayMs => self.base_delay_ms.set(arg, errors),
            OccKey::BackoffFactor => self.backoff_factor.set(arg, errors),
            OccKey::MaxDelayMs => self.max_delay_ms.set(arg, errors),
        }
    }

    fn tokens(&self, key: OccKey) -> Option<&TokenStream> {
        match key {
            OccKey::MaxRetries => self.max_retries.tokens(),
            OccKey::BaseDelayMs => self.base_delay_ms.tokens(),
            OccKey::BackoffFactor => self.backoff_factor.tokens(),
            OccKey::MaxDelayMs => self.max_delay_ms.tokens(),
        }
    }
}

impl Occ {
    /// Writes the given values over `occ` and checks them: each alone against the defaults
    /// first, so that every range error is reported, then (if those pass) the combination.
    fn apply(&self, occ: &mut OccConfig, section: &TokenStream, errors: &mut Errors) {
        write(&self.max_retries, &mut occ.max_retries);
        write(&self.base_delay_ms, &mut occ.base_delay_ms);
        write(&self.backoff_factor, &mut occ.backoff_factor);
        write(&self.max_delay_ms, &mut occ.max_delay_ms);
        let mut alone_failed = false;
        for &key in OccKey::ALL.iter().filter(|k| self.tokens(**k).is_some()) {
            let mut probe = OccConfig::DEFAULT;
            match key {
                OccKey::MaxRetries => probe.max_retries = occ.max_retries,
                OccKey::BaseDelayMs => {
                    probe.base_delay_ms = occ.base_delay_ms;
                    probe.max_delay_ms = OccConfig::MAX_DELAY_MS;
                }
                OccKey::BackoffFactor => probe.backoff_factor = occ.backoff_factor,
                OccKey::MaxDelayMs => {
                    probe.max_delay_ms = occ.max_delay_ms.max(probe.base_delay_ms);
                }
            }
            if let Err(e) = probe.validate() {
                alone_failed = true;
                self.report(&e, section, errors);
            }
        }
        if let (false, Err(e)) = (alone_failed, occ.validate()) {
            self.report(&e, section, errors);
        }
    }
}

keys! {
    /// The keys of `pre_ecs(...)`.
    enum PreEcsKey {
        StagingTimeoutMs = "staging_timeout_ms",
        OnLose = "on_lose",
        MaxStagedPerTarget = "max_staged_per_target",
        GracePeriodMs = "grace_period_ms",
    }
}

/// `pre_ecs(...)`.
#[derive(Default)]
struct PreEcs {
    staging_timeout_ms: Attr<u64>,
    on_lose: Attr<OnLose>,
    max_staged_per_target: Attr<u32>,
    grace_period_ms: Attr<u64>,
}

impl Section for PreEcs {
    type Key = PreEcsKey;
    const PLACE: &'static str = " in `pre_ecs(...)`";

    fn set(&mut self, key: PreEcsKey, arg: &Arg, errors: &mut Errors) {
        match key {
            PreEcsKey::StagingTimeoutMs => self.staging_timeout_ms.set(arg, errors),
            PreEcsKey::OnLose => self.on_lose.set(arg, errors),
            PreEcsKey::MaxStagedPerTarget => self.max_staged_per_target.set(arg, errors),
            PreEcsKey::GracePeriodMs => self.grace_period_ms.set(arg, errors),
        }
    }

    fn tokens(&self, key: PreEcsKey) -> Option<&TokenStream> {
        match key {
            PreEcsKey::StagingTimeoutMs => self.staging_timeout_ms.tokens(),
            PreEcsKey::OnLose => self.on_lose.tokens(),
            PreEcsKey::MaxStagedPerTarget => self.max_staged_per_target.tokens(),
            PreEcsKey::GracePeriodMs => self.grace_period_ms.tokens(),
        }
    }
}

impl PreEcs {
    /// Writes the given values over `pre` and checks them. No rule spans two staging fields, so
    /// checking each given field alone reports them all.
    fn apply(&self, pre: &mut PreEcsConfig, section: &TokenStream, errors: &mut Errors) {
        write(&self.staging_timeout_ms, &mut pre.staging_timeout_ms);
        write(&self.on_lose, &mut pre.on_lose);
        write(&self.max_staged_per_target, &mut pre.max_staged_per_target);
        write(&self.grace_period_ms, &mut pre.grace_period_ms);
        for &key in PreEcsKey::ALL.iter().filter(|k| self.tokens(**k).is_some()) {
            let mut probe = PreEcsConfig::DEFAULT;
            match key {
                PreEcsKey::StagingTimeoutMs => probe.staging_timeout_ms = pre.staging_timeout_ms,
                PreEcsKey::MaxStagedPerTarget => {
                    probe.max_staged_per_target = pre.max_staged_per_target;
                }
                PreEcsKey::GracePeriodMs => probe.grace_period_ms = pre.grace_period_ms,
                // Any member of the vocabulary is valid.
                PreEcsKey::OnLose => continue,
            }
            if let Err(e) = probe.validate() {
                self.report(&e, section, errors);
            }
        }
    }
}

keys! {
    /// The keys of `cleanup(...)`.
    enum CleanupKey {
        Strategy = "strategy",
        RetentionMinutes = "retention_minutes",
        CleanupCheckIntervalSeconds = "cleanup_check_interval_seconds",
        AggressiveOnMemoryPressure = "aggressive_on_memory_pressure",
        MemoryPressureThreshold = "memory_pressure_threshold",
        ImmediateCleanupPriorities = "immediate_cleanup_priorities",
        DebugRetentionPriorities = "debug_retention_priorities",
        CustomCleanupHandler = "custom_cleanup_handler",
        MaxZombieCountPerTarget = "max_zombie_count_per_target",
        ForceCleanupThreshold = "force_cleanup_threshold",
    }
}

/// `cleanup(...)`.
#[derive(Default)]
#[allow(
    clippy::struct_field_names,
    reason = "one field per key, named as the key is written (`cleanup_check_interval_seconds`)"
)]
struct Cleanup {
    strategy: Attr<CleanupStrategy>,
    retention_minutes: Attr<u32>,
    cleanup_check_interval_seconds: Attr<u32>,
    aggressive_on_memory_pressure: Attr<bool>,
    memory_pressure_threshold: Attr<f64>,
    immediate_cleanup_priorities: Attr<PrioritySet>,
    debug_retention_priorities: Attr<PrioritySet>,
    custom_cleanup_handler: Attr<String>,
    max_zombie_count_per_target: Attr<u32>,
    force_cleanup_threshold: Attr<u32>,
}

impl Section for Cleanup {
    type Key = CleanupKey;
    const PLACE: &'static str = " in `cleanup(...)`";

    fn set(&mut self, key: CleanupKey, arg: &Arg, errors: &mut Errors) {
        use CleanupKey as K;
        match key {
            K::Strategy => self.strategy.set(arg, errors),
            K::RetentionMinutes => self.retention_minutes.set(arg, errors),
            K::CleanupCheckIntervalSeconds => self.cleanup_check_interval_seconds.set(arg, errors),
            K::AggressiveOnMemoryPressure => self.aggressive_on_memory_pressure.set(arg, errors),
            K::MemoryPressureThreshold => self.memory_pressure_threshold.set(arg, errors),
            K::ImmediateCleanupPriorities => self.immediate_cleanup_priorities.set(arg, errors),
            K::DebugRetentionPriorities => self.debug_retention_priorities.set(arg, errors),
            K::CustomCleanupHandler => self.custom_cleanup_handler.set(arg, errors),
            K::MaxZombieCountPerTarget => self.max_zombie_count_per_target.set(arg, errors),
            K::ForceCleanupThreshold => self.force_cleanup_threshold.set(arg, errors),
        }
    }

    fn tokens(&self, key: CleanupKey) -> Option<&TokenStream> {
        use CleanupKey as K;
        match key {
            K::Strategy => self.strategy.tokens(),
            K::RetentionMinutes => self.retention_minutes.tokens(),
            K::CleanupCheckIntervalSeconds => self.cleanup_check_interval_seconds.tokens(),
            K::AggressiveOnMemoryPressure => self.aggressive_on_memory_pressure.tokens(),
            K::MemoryPressureThreshold => self.memory_pressure_threshold.tokens(),
            K::ImmediateCleanupPriorities => self.immediate_cleanup_priorities.tokens(),
            K::DebugRetentionPriorities => self.debug_retention_priorities.tokens(),
            K::CustomCleanupHandler => self.custom_cleanup_handler.tokens(),
            K::MaxZombieCountPerTarget => self.max_zombie_count_per_target.tokens(),
            K::ForceCleanupThreshold => self.force_cleanup_threshold.tokens(),
        }
    }
}

impl Cleanup {
    /// Writes the given values over `c` and reports every failing rule: validate, blame the
    /// field, neutralise it, repeat.
    fn apply(&self, c: &mut CleanupConfig, section: &TokenStream, errors: &mut Errors) {
        use CleanupKey as K;
        write(&self.strategy, &mut c.strategy);
        write(&self.retention_minutes, &mut c.retention_minutes);
        write(
            &self.cleanup_check_interval_seconds,
            &mut c.cleanup_check_interval_seconds,
        );
        write(
            &self.aggressive_on_memory_pressure,
            &mut c.aggressive_on_memory_pressure,
        );
        write(
            &self.memory_pressure_threshold,
            &mut c.memory_pressure_threshold,
        );
        write(
            &self.immediate_cleanup_priorities,
            &mut c.immediate_cleanup_priorities,
        );
        write(
            &self.debug_retention_priorities,
            &mut c.debug_retention_priorities,
        );
        if let Some(name) = self.custom_cleanup_handler.get() {
            c.custom_cleanup_handler = Some(name.clone().into());
        }
        write(
            &self.max_zombie_count_per_target,
            &mut c.max_zombie_count_per_target,
        );
        write(
            &self.force_cleanup_threshold,
            &mut c.force_cleanup_threshold,
        );

        let mut probe = c.clone();
        for _ in 0..=K::ALL.len() {
            let Err(e) = probe.validate() else { break };
            let Some(key) = e.field().and_then(K::find) else {
                errors.spanned(section, &e);
                break;
            };
            // "custom needs a handler" and "deferred needs retention": blame what was written.
            let blame = match key {
                K::CustomCleanupHandler | K::RetentionMinutes if self.tokens(key).is_none() => {
                    K::Strategy
                }
                other => other,
            };
            errors.spanned(self.tokens(blame).unwrap_or(section), &e);
            let d = CleanupConfig::DEFAULT;
            match key {
                K::RetentionMinutes => probe.retention_minutes = d.retention_minutes,
                K::CleanupCheckIntervalSeconds => {
                    probe.cleanup_check_interval_seconds = d.cleanup_check_interval_seconds;
                }
                K::MemoryPressureThreshold => {
                    probe.memory_pressure_threshold = d.memory_pressure_threshold;
                }
                K::MaxZombieCountPerTarget => {
                    probe.max_zombie_count_per_target = d.max_zombie_count_per_target;
                }
                K::ForceCleanupThreshold => {
                    probe.force_cleanup_threshold = d.force_cleanup_threshold;
                }
                K::CustomCleanupHandler => {
                    probe.strategy = CleanupStrategy::Custom;
                    probe.custom_cleanup_handler = Some("_".into());
                }
                // No rule is about these alone: nothing to neutralise, stop.
                K::Strategy
                | K::AggressiveOnMemoryPressure
                | K::ImmediateCleanupPriorities
                | K::DebugRetentionPriorities => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn parse(tokens: TokenStream) -> Result<OperationConfig, Vec<String>> {
        syn::parse2::<ConflictArgs>(tokens)
            .map(|a| a.config)
            .map_err(|e| e.into_iter().map(|e| e.to_string()).collect())
    }

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

    /// Every key of every section reaches its own field (a swapped arm would move a value).
    #[test]
    fn every_key_reaches_its_field() {
        let cfg = parse(quote!(
            priority = HIGH,
            op_class = "structural",
            mode = "pre_ecs",
            pre_ecs(
                staging_timeout_ms = 7,
                on_lose = "requeue",
                max_staged_per_target = 9,
                grace_period_ms = 11
            ),
            cleanup(
                strategy = "custom",
                retention_minutes = 3,
                cleanup_check_interval_seconds = 13,
                aggressive_on_memory_pressure = false,
                memory_pressure_threshold = 0.5,
                immediate_cleanup_priorities = [8],
                debug_retention_priorities = [1, 2],
                custom_cleanup_handler = "audit",
                max_zombie_count_per_target = 17,
                force_cleanup_threshold = 190
            ),
        ))
        .unwrap();
        assert_eq!(cfg.priority, OperationPriority::HIGH);
        assert_eq!(cfg.op_class, OpClass::Structural);
        assert_eq!(cfg.mode, ResolutionMode::PreEcs);
        assert_eq!(cfg.occ.max_retries, 20, "structural's default");
        let p = cfg.pre_ecs;
        assert_eq!(
            (
                p.staging_timeout_ms,
                p.on_lose,
                p.max_staged_per_target,
                p.grace_period_ms
            ),
            (7, OnLose::Requeue, 9, 11)
        );
        let c = cfg.cleanup;
        assert_eq!(c.strategy, CleanupStrategy::Custom);
        assert_eq!(
            (c.retention_minutes, c.cleanup_check_interval_seconds),
            (3, 13)
        );
        assert!(!c.aggressive_on_memory_pressure);
        assert!((c.memory_pressure_threshold - 0.5).abs() < f64::EPSILON);
        assert_eq!(
            c.immediate_cleanup_priorities,
            PrioritySet::EMPTY.with(OperationPriority::HIGH)
        );
        assert_eq!(c.debug_retention_priorities.iter().count(), 2);
        assert_eq!(c.custom_cleanup_handler.as_deref(), Some("audit"));
        assert_eq!(
            (c.max_zombie_count_per_target, c.force_cleanup_threshold),
            (17, 190)
        );

        let o = parse(quote!(occ(
            max_retries = 2,
            base_delay_ms = 3,
            backoff_factor = 2,
            max_delay_ms = 4
        )))
        .unwrap()
        .occ;
        assert_eq!((o.max_retries, o.base_delay_ms, o.max_delay_ms), (2, 3, 4));
        assert!((o.backoff_factor - 2.0).abs() < f64::EPSILON);
    }

    /// A repeat is one error at its key, in a section and of a whole section alike.
    #[test]
    fn repeats_are_refused_everywhere() {
        assert_eq!(
            parse(quote!(occ(max_retries = 1, max_retries = 2))).unwrap_err(),
            ["`max_retries` given twice"]
        );
        assert_eq!(
            parse(quote!(occ(max_retries = 1), occ(base_delay_ms = 2))).unwrap_err(),
            ["`occ` given twice"]
        );
    }

    /// Only `= false` or `mode` turn a stage off; naming one stage's options keeps the other.
    #[test]
    fn stage_selection() {
        assert_eq!(
            parse(quote!(occ(max_retries = 1))).unwrap().mode,
            ResolutionMode::Both
        );
        assert_eq!(
            parse(quote!(pre_ecs = false)).unwrap().mode,
            ResolutionMode::Occ
        );
        assert_eq!(
            parse(quote!(occ = false, pre_ecs)).unwrap().mode,
            ResolutionMode::PreEcs
        );
        assert_eq!(
            parse(quote!(cleanup = false)).unwrap().cleanup,
            CleanupConfig::DISABLED
        );
        assert_eq!(
            parse(quote!(mode = "none", occ = true)).unwrap_err(),
            ["`occ` contradicts `mode = \"none\"`, which runs neither stage: remove one of them"]
        );
    }
}
