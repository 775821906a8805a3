//! Identities: entities, operations and the (type, id) key the stores use.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The identity of an entity: a UUID, unique across entity types in practice.
///
/// ```
/// use conflict_core::EntityId;
/// let a = EntityId::new();
/// let b: EntityId = a.to_string().parse().unwrap();
/// assert_eq!(a, b);
/// ```
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EntityId(Uuid);

impl EntityId {
    /// A fresh random (version 4) id.
    #[must_use]
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    /// Wraps an existing UUID, e.g. one read from another system.
    #[must_use]
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID inside.
    #[must_use]
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for EntityId {
    /// Same as [`EntityId::new`]: a fresh random id, never a shared nil value.
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntityId({})", self.0)
    }
}

/// Returned when a string is not a UUID.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not a valid id: {0}")]
pub struct ParseIdError(String);

impl FromStr for EntityId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|e| ParseIdError(e.to_string()))
    }
}

/// The identity of one operation (one call of an annotated function).
///
/// The runtime builds op ids from a random per-runtime prefix and a per-runtime submission counter
/// ([`OpId::from_parts`]), so ids are unique across processes and ids of one runtime sort in
/// submission order. An op id never changes over the operation's life.
///
/// ```
/// use conflict_core::OpId;
/// let a = OpId::from_parts(7, 1);
/// let b = OpId::from_parts(7, 2);
/// assert!(a < b);
/// assert_eq!(b.sequence(), 2);
/// ```
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpId(Uuid);

impl OpId {
    /// Builds an id from a per-runtime prefix and a per-runtime sequence number.
    #[must_use]
    pub const fn from_parts(prefix: u64, sequence: u64) -> Self {
        Self(Uuid::from_u64_pair(prefix, sequence))
    }

    /// Wraps an existing UUID (e.g. read back from a ledger).
    #[must_use]
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID inside.
    #[must_use]
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// The per-runtime sequence number this id was built from (its low 64 bits).
    #[must_use]
    pub const fn sequence(&self) -> u64 {
        self.0.as_u64_pair().1
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpId({})", self.0)
    }
}

impl FromStr for OpId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|e| ParseIdError(e.to_string()))
    }
}

/// The key of a stored entity: its type name ([`Entity::TYPE_NAME`](crate::Entity::TYPE_NAME))
/// and its id. Staging, stores, records and events all name targets by this key.
///
/// ```
/// use conflict_core::{EntityId, EntityKey};
/// let id = EntityId::new();
/// let key = EntityKey::new("Account", id);
/// assert_eq!(key.to_string(), format!("Account/{id}"));
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntityKey {
    /// The entity's type name.
    pub entity_type: Cow<'static, str>,
    /// The entity's id.
    pub id: EntityId,
}

impl EntityKey {
    /// A key for a type known at compile time (no allocation).
    #[must_use]
    pub const fn new(entity_type: &'static str, id: EntityId) -> Self {
        Self {
            entity_type: Cow::Borrowed(entity_type),
            id,
        }
    }
}

impl fmt::Display for EntityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.entity_type, self.id)
    }
}

impl fmt::Debug for EntityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntityKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_id_round_trips_through_string_and_serde() {
        let id = EntityId::new();
        assert_eq!(id, id.to_string().parse().unwrap());
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(id, serde_json::from_str(&json).unwrap());
        assert!("nope".parse::<EntityId>().is_err());
    }

    #[test]
    fn op_ids_sort_by_sequence_within_one_prefix() {
        let ids: Vec<OpId> = (0..100).map(|s| OpId::from_parts(42, s)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(ids[17].sequence(), 17);
    }

    #[test]
    fn default_entity_ids_are_distinct() {
        assert_ne!(EntityId::default(), EntityId::default());
    }
}
