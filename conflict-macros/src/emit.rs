//! Configuration values as constant expressions of the runtime's `__private` items.
//!
//! `conflict_core` cannot depend on `quote`, so each value type gets [`ConstExpr`] here, and
//! [`Const`] (a value with the path of `__private`) is the `ToTokens` that `quote!` interpolates.
//! Structs are destructured and enums matched exhaustively: a field or variant added in core
//! without its tokens here does not compile.

use conflict_core::{
    CleanupConfig, CleanupStrategy, OccConfig, OnLose, OpClass, OperationConfig, OperationPriority,
    PreEcsConfig, PrioritySet, ResolutionMode,
};
use proc_macro2::{Literal, TokenStream};
use quote::{ToTokens, quote};

/// A value that can be written as a constant expression, naming types through `private`
/// (`#krate::__private`).
pub(crate) trait ConstExpr {
    /// The expression that rebuilds `self`.
    fn const_expr(&self, private: &TokenStream) -> TokenStream;
}

/// `value`, interpolated into `quote!` as its constant expression.
pub(crate) struct Const<'a, T> {
    value: &'a T,
    private: &'a TokenStream,
}

impl<'a, T: ConstExpr> Const<'a, T> {
    /// `value`, naming types through `private` (`#krate::__private`).
    pub(crate) fn new(value: &'a T, private: &'a TokenStream) -> Self {
        Self { value, private }
    }
}

impl<T: ConstExpr> ToTokens for Const<'_, T> {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        tokens.extend(self.value.const_expr(self.private));
    }
}

/// Plain numbers and bools are their own (suffixed) literals.
macro_rules! literal {
    ($($t:ty),*) => {$(
        impl ConstExpr for $t {
            fn const_expr(&self, _: &TokenStream) -> TokenStream {
                self.to_token_stream()
            }
        }
    )*};
}
literal!(u32, u64, bool);

impl ConstExpr for f64 {
    fn const_expr(&self, _: &TokenStream) -> TokenStream {
        Literal::f64_suffixed(*self).to_token_stream()
    }
}

/// Enums: one variant path per variant.
macro_rules! unit_enum {
    ($($t:ident { $($variant:ident),* })*) => {$(
        impl ConstExpr for $t {
            fn const_expr(&self, p: &TokenStream) -> TokenStream {
                match self {
                    $($t::$variant => quote!(#p::$t::$variant),)*
                }
            }
        }
    )*};
}
unit_enum! {
    OpClass { Structural, Normal, LowPriority }
    ResolutionMode { None, PreEcs, Occ, Both }
    OnLose { Reject, Requeue }
    CleanupStrategy { None, Immediate, Deferred, Lazy, Custom }
}

impl ConstExpr for OperationPriority {
    fn const_expr(&self, p: &TokenStream) -> TokenStream {
        let v = self.get();
        quote!(#p::priority(#v))
    }
}

impl ConstExpr for PrioritySet {
    fn const_expr(&self, p: &TokenStream) -> TokenStream {
        let items = self.iter().map(|x| x.const_expr(p));
        quote!(#p::PrioritySet::EMPTY #(.with(#items))*)
    }
}

impl ConstExpr for OperationConfig {
    fn const_expr(&self, p: &TokenStream) -> TokenStream {
        let Self {
            priority,
            op_class,
            mode,
            pre_ecs,
            occ,
            cleanup,
        } = self;
        let [priority, op_class, mode, pre_ecs, occ, cleanup] = [
            priority.const_expr(p),
            op_class.const_expr(p),
            mode.const_expr(p),
            pre_ecs.const_expr(p),
            occ.const_expr(p),
            cleanup.const_expr(p),
        ];
        quote! {
            #p::OperationConfig {
                priority: #priority,
                op_class: #op_class,
                mode: #mode,
                pre_ecs: #pre_ecs,
                occ: #occ,
                cleanup: #cleanup,
            }
        }
    }
}

impl ConstExpr for PreEcsConfig {
    fn const_expr(&self, p: &TokenStream) -> TokenStream {
        let Self {
            staging_timeout_ms,
            on_lose,
            max_staged_per_target,
            grace_period_ms,
        } = self;
        let on_lose = Const::new(on_lose, p);
        quote! {
            #p::PreEcsConfig {
                staging_timeout_ms: #staging_timeout_ms,
                on_lose: #on_lose,
                max_staged_per_target: #max_staged_per_target,
                grace_period_ms: #grace_period_ms,
            }
        }
    }
}

impl ConstExpr for OccConfig {
    fn const_expr(&self, p: &TokenStream) -> TokenStream {
        let Self {
            max_retries,
            base_delay_ms,
            backoff_factor,
            max_delay_ms,
        } = self;
        let backoff_factor = Const::new(backoff_factor, p);
        quote! {
            #p::OccConfig {
                max_retries: #max_retries,
                base_delay_ms: #base_delay_ms,
                backoff_factor: #backoff_factor,
                max_delay_ms: #max_delay_ms,
            }
        }
    }
}

impl ConstExpr for CleanupConfig {
    fn const_expr(&self, p: &TokenStream) -> TokenStream {
        let Self {
            strategy,
            retention_minutes,
            cleanup_check_interval_seconds,
            aggressive_on_memory_pressure,
            memory_pressure_threshold,
            immediate_cleanup_priorities,
            debug_retention_priorities,
            custom_cleanup_handler,
            max_zombie_count_per_target,
            force_cleanup_threshold,
        } = self;
        let strategy = Const::new(strategy, p);
        let memory_pressure_threshold = Const::new(memory_pressure_threshold, p);
        let immediate_cleanup_priorities = Const::new(immediate_cleanup_priorities, p);
        let debug_retention_priorities = Const::new(debug_retention_priorities, p);
        let custom_cleanup_handler = match custom_cleanup_handler {
            Some(h) => {
                let h = h.as_ref();
                quote!(::core::option::Option::Some(#p::Cow::Borrowed(#h)))
            }
            None => quote!(::core::option::Option::None),
        };
        quote! {
            #p::CleanupConfig {
                strategy: #strategy,
                retention_minutes: #retention_minutes,
                cleanup_check_interval_seconds: #cleanup_check_interval_seconds,
                aggressive_on_memory_pressure: #aggressive_on_memory_pressure,
                memory_pressure_threshold: #memory_pressure_threshold,
                immediate_cleanup_priorities: #immediate_cleanup_priorities,
                debug_retention_priorities: #debug_retention_priorities,
                custom_cleanup_handler: #custom_cleanup_handler,
                max_zombie_count_per_target: #max_zombie_count_per_target,
                force_cleanup_threshold: #force_cleanup_threshold,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr<T: ConstExpr>(v: &T) -> String {
        v.const_expr(&quote!(p)).to_string()
    }

    /// Every variant names its own path (a swapped arm would name another variant).
    #[test]
    fn enums_name_their_variant() {
        for s in CleanupStrategy::ALL {
            let want = format!("{s:?}");
            assert_eq!(
                expr(&s),
                quote!(p::CleanupStrategy::).to_string() + " " + &want
            );
        }
        assert_eq!(
            expr(&OnLose::Requeue),
            quote!(p::OnLose::Requeue).to_string()
        );
        assert_eq!(
            expr(&ResolutionMode::PreEcs),
            quote!(p::ResolutionMode::PreEcs).to_string()
        );
        assert_eq!(
            expr(&OpClass::LowPriority),
            quote!(p::OpClass::LowPriority).to_string()
        );
    }

    /// A set is rebuilt from exactly its members.
    #[test]
    fn priority_set_lists_its_members() {
        let set = PrioritySet::EMPTY
            .with(OperationPriority::LOW)
            .with(OperationPriority::CRITICAL);
        assert_eq!(
            expr(&set),
            quote!(
                p::PrioritySet::EMPTY
                    .with(p::priority(2u8))
                    .with(p::priority(10u8))
            )
            .to_string()
        );
    }

    /// Non-default values reach their fields (the struct tokens are not the defaults').
    #[test]
    fn config_carries_every_non_default_value() {
        let mut cfg = OperationConfig::DEFAULT;
        cfg.occ.backoff_factor = 2.5;
        cfg.pre_ecs.grace_period_ms = 7;
        cfg.cleanup.custom_cleanup_handler = Some("audit".into());
        let s = expr(&cfg);
        assert!(s.contains("backoff_factor : 2.5f64"), "{s}");
        assert!(s.contains("grace_period_ms : 7u64"), "{s}");
        assert!(s.contains("Cow :: Borrowed (\"audit\")"), "{s}");
    }
}
