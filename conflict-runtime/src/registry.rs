//! What the macros register at link time: entity types and annotated functions.

use std::collections::BTreeMap;

use conflict_core::{ConfigError, OperationConfig};
use serde::Serialize;

/// An entity type, registered by `#[derive(Entity)]`.
#[derive(Debug)]
pub struct EntityRegistration {
    /// [`Entity::TYPE_NAME`](conflict_core::Entity::TYPE_NAME).
    pub type_name: &'static str,
    /// The Rust path of the type.
    pub rust_type: &'static str,
}

inventory::collect!(EntityRegistration);

/// An annotated function: its name, where it is, and its configuration.
///
/// The macro writes one `static` of this type per function and registers it, so the runtime can
/// validate every configuration at start-up and list the operations it can run.
#[derive(Debug, Serialize)]
pub struct OperationSpec {
    /// The function's name (the operation type).
    pub name: &'static str,
    /// The module it is defined in.
    pub module: &'static str,
    /// Its configuration.
    pub config: OperationConfig,
}

impl OperationSpec {
    /// `module::name`.
    #[must_use]
    pub fn path(&self) -> String {
        format!("{}::{}", self.module, self.name)
    }
}

/// The link-time registration of an [`OperationSpec`].
#[derive(Debug)]
pub struct OperationRegistration(pub &'static OperationSpec);

inventory::collect!(OperationRegistration);

/// Every annotated function linked into the program.
pub fn linked_operations() -> impl Iterator<Item = &'static OperationSpec> {
    inventory::iter::<OperationRegistration>
        .into_iter()
        .map(|r| r.0)
}

/// Every entity type linked into the program.
pub fn linked_entities() -> impl Iterator<Item = &'static EntityRegistration> {
    inventory::iter::<EntityRegistration>.into_iter()
}

/// Start-up validation of everything the macros registered.
pub(crate) fn validate_linked() -> Result<(), ConfigError> {
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    for e in linked_entities() {
        if let Some(first) = names.insert(e.type_name, e.rust_type) {
            if first != e.rust_type {
                return Err(ConfigError::DuplicateEntityType {
                    name: e.type_name.to_string(),
                    first: first.to_string(),
                    second: e.rust_type.to_string(),
                });
            }
        }
    }
    let mut paths: BTreeMap<(&str, &str), *const OperationSpec> = BTreeMap::new();
    for op in linked_operations() {
        // By identity: two registrations of one function's spec (were the linker ever to
        // keep two) are not two operations; only two distinct functions under one path are.
        if let Some(first) = paths.insert((op.module, op.name), std::ptr::from_ref(op)) {
            if !std::ptr::eq(first, op) {
                return Err(ConfigError::DuplicateOperation { path: op.path() });
            }
        }
        op.config.validate().map_err(|e| ConfigError::InOperation {
            function: op.path(),
            source: Box::new(e),
        })?;
    }
    Ok(())
}
