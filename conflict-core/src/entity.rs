//! The entity trait and the OCC metadata the framework keeps beside every value.

use std::time::SystemTime;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{EntityId, EntityKey, OpId};

/// A value the framework stores and protects: implemented by `#[derive(Entity)]`.
///
/// The derive reads the `#[entity(id)]` field for [`Entity::entity_id`] and the struct name (or
/// `#[entity(name = "...")]`) for [`Entity::TYPE_NAME`]. The OCC metadata (version,
/// last-modified) is not part of the struct: the store keeps it and hands it out in
/// [`Versioned`], so user code cannot edit it.
///
/// ```
/// use conflict_core::{Entity, EntityId};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Serialize, Deserialize)]
/// struct Counter { id: EntityId, n: u64 }
///
/// // What the derive writes for you:
/// impl Entity for Counter {
///     const TYPE_NAME: &'static str = "Counter";
///     type Id = EntityId;
///     fn entity_id(&self) -> EntityId { self.id }
/// }
///
/// let c = Counter { id: EntityId::new(), n: 0 };
/// assert_eq!(c.key().entity_type, "Counter");
/// ```
pub trait Entity: Clone + Send + Sync + Serialize + DeserializeOwned + 'static {
    /// The stable name of the type: the namespace of its ids in every store.
    const TYPE_NAME: &'static str;

    /// The type of its `#[entity(id)]` field: [`EntityId`], or a newtype around it
    /// ([`EntityIdType`]) so that ids of different entity types cannot be mixed up.
    type Id: EntityIdType;

    /// The entity's identity.
    fn entity_id(&self) -> EntityId;

    /// The store key of this entity.
    fn key(&self) -> EntityKey {
        EntityKey::new(Self::TYPE_NAME, self.entity_id())
    }
}

/// What an entity's id can be: [`EntityId`] itself, or a newtype around it such as
/// `struct ProductId(EntityId)` (`conflict_runtime::typed_id!` writes one), so that a handle to
/// a `Product` can only be made from a `ProductId`.
///
/// ```
/// use conflict_core::{EntityId, EntityIdType};
///
/// #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
/// struct CartId(EntityId);
///
/// impl EntityIdType for CartId {
///     fn from_entity_id(id: EntityId) -> Self { Self(id) }
///     fn entity_id(&self) -> EntityId { self.0 }
/// }
///
/// let raw = EntityId::new();
/// assert_eq!(CartId::from_entity_id(raw).entity_id(), raw);
/// ```
#[diagnostic::on_unimplemented(
    message = "the `#[entity(id)]` field must have type `EntityId` or a typed id, found `{Self}`",
    label = "not an `EntityId` or a typed id",
    note = "an entity's identity is a framework `EntityId` (a UUID), or a newtype around it implementing `EntityIdType` (`conflict_runtime::typed_id!(ProductId);` writes one)"
)]
pub trait EntityIdType:
    Copy + Eq + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static
{
    /// The typed id of a raw one.
    fn from_entity_id(id: EntityId) -> Self;
    /// The raw id (what stores key by).
    fn entity_id(&self) -> EntityId;
}

impl EntityIdType for EntityId {
    #[inline]
    fn from_entity_id(id: EntityId) -> Self {
        id
    }
    #[inline]
    fn entity_id(&self) -> EntityId {
        *self
    }
}

/// A value read from a store together with its OCC metadata.
///
/// ```
/// # use conflict_core::Versioned;
/// # use std::time::SystemTime;
/// let v = Versioned { value: 5_i64, version: 1, last_modified: SystemTime::now() };
/// assert_eq!(v.version, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Versioned<T> {
    /// The value.
    pub value: T,
    /// The version: 1 after insert, +1 per commit, never reused.
    pub version: u64,
    /// When the version was written.
    pub last_modified: SystemTime,
}

/// The outcome of a committed operation.
///
/// ```
/// # use conflict_core::{Committed, EntityKey, EntityId, OpId, Versions};
/// let key = EntityKey::new("Account", EntityId::new());
/// let c = Committed {
///     value: 50_i64,
///     version: 2,
///     versions: Versions::one(key.clone(), 2),
///     op_id: OpId::from_parts(1, 1),
///     attempts: 1,
/// };
/// assert_eq!(c.attempts, 1);
/// assert_eq!(c.version_of(&key), Some(2));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Committed<T> {
    /// What the body returned on the attempt that committed.
    pub value: T,
    /// The version this commit wrote to the call's first written entity (in parameter order):
    /// for a single-entity call, *the* entity's new version. `0` when the call wrote nothing
    /// (only `#[read]` parameters).
    pub version: u64,
    /// Every entity this commit wrote, with its new version: the call's written parameters in
    /// order, then what nested calls composed into it wrote. Each appears once and was bumped
    /// by exactly one.
    pub versions: Versions,
    /// The operation's id.
    pub op_id: OpId,
    /// How many times the body ran (1 = committed at the first try).
    pub attempts: u32,
}

impl<T> Committed<T> {
    /// The new version of `key`, if this commit wrote it.
    #[must_use]
    pub fn version_of(&self, key: &EntityKey) -> Option<u64> {
        self.versions.get(key)
    }
}

/// The entities a commit wrote, each with its new version, in the order written. A
/// single-entity commit keeps its one entry inline (no allocation).
///
/// ```
/// # use conflict_core::{EntityKey, EntityId, Versions};
/// let (a, b) = (EntityKey::new("Account", EntityId::new()), EntityKey::new("Account", EntityId::new()));
/// let v = Versions::from(vec![(a.clone(), 3), (b.clone(), 8)]);
/// assert_eq!((v.get(&a), v.get(&b), v.len()), (Some(3), Some(8), 2));
/// assert_eq!(v.iter().map(|(_, n)| n).sum::<u64>(), 11);
/// assert!(Versions::default().is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Versions(VersionsRepr);

#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum VersionsRepr {
    #[default]
    None,
    One(EntityKey, u64),
    Many(Vec<(EntityKey, u64)>),
}

impl Versions {
    /// One entity's new version.
    #[must_use]
    pub fn one(key: EntityKey, version: u64) -> Self {
        Self(VersionsRepr::One(key, version))
    }

    /// The new version of `key`, if written.
    #[must_use]
    pub fn get(&self, key: &EntityKey) -> Option<u64> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The written entities and their new versions, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&EntityKey, u64)> + '_ {
        let slice: &[(EntityKey, u64)] = match &self.0 {
            VersionsRepr::None => &[],
            VersionsRepr::One(k, v) => {
                return OneOrMany::One(std::iter::once((k, *v)));
            }
            VersionsRepr::Many(all) => all,
        };
        OneOrMany::Many(slice.iter().map(|(k, v)| (k, *v)))
    }

    /// The first written entity's new version.
    #[must_use]
    pub fn first(&self) -> Option<u64> {
        self.iter().next().map(|(_, v)| v)
    }

    /// How many entities were written.
    #[must_use]
    pub fn len(&self) -> usize {
        match &self.0 {
            VersionsRepr::None => 0,
            VersionsRepr::One(..) => 1,
            VersionsRepr::Many(all) => all.len(),
        }
    }

    /// Whether nothing was written.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

enum OneOrMany<A, B> {
    One(A),
    Many(B),
}

impl<I, A: Iterator<Item = I>, B: Iterator<Item = I>> Iterator for OneOrMany<A, B> {
    type Item = I;
    fn next(&mut self) -> Option<I> {
        match self {
            Self::One(a) => a.next(),
            Self::Many(b) => b.next(),
        }
    }
}

impl From<Vec<(EntityKey, u64)>> for Versions {
    fn from(mut all: Vec<(EntityKey, u64)>) -> Self {
        match all.len() {
            0 => Self(VersionsRepr::None),
            1 => {
                let (k, v) = all.swap_remove(0);
                Self::one(k, v)
            }
            _ => Self(VersionsRepr::Many(all)),
        }
    }
}

impl Serialize for Versions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for (key, version) in self.iter() {
            seq.serialize_element(&(key, version))?;
        }
        seq.end()
    }
}
