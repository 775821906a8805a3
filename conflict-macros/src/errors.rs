//! The error collector every macro of the crate reports through.
//!
//! A macro checks everything it can before giving up, so a user with three mistakes sees three
//! messages in one build, each at the span of the offending tokens, and no message twice: one
//! mistake is one `push`.

use quote::ToTokens;

/// The errors found so far, combined into one `syn::Error` (rendered as one `compile_error!` per
/// mistake, in the order they were found).
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    /// Adds an error.
    pub(crate) fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    /// Adds an error spanning `tokens`.
    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, msg: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, msg));
    }

    /// `Ok` if nothing was reported, else every error at once.
    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::Errors;
    use proc_macro2::Span;

    /// Every pushed error is kept, in order: none is dropped by a later one.
    #[test]
    fn combines_every_error_in_order() {
        let mut errors = Errors::default();
        errors.push(syn::Error::new(Span::call_site(), "first"));
        errors.spanned(quote::quote!(x), "second");
        let all: Vec<String> = errors
            .finish()
            .unwrap_err()
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(all, ["first", "second"]);
    }

    #[test]
    fn nothing_reported_is_ok() {
        assert!(Errors::default().finish().is_ok());
    }
}
