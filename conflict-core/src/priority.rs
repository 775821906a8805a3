//! Priorities and operation classes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How important an operation is: 1 (background) to 10 (critical). Higher wins.
///
/// ```
/// use conflict_core::OperationPriority;
/// assert_eq!(OperationPriority::new(8).unwrap(), OperationPriority::HIGH);
/// assert!(OperationPriority::new(0).is_err());
/// assert_eq!(OperationPriority::from_name("critical"), Some(OperationPriority::CRITICAL));
/// ```
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct OperationPriority(u8);

/// A priority outside `1..=10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("priority must be between 1 and 10, got {0}")]
pub struct PriorityError(pub i64);

impl OperationPriority {
    /// Must succeed: structural changes (10).
    pub const CRITICAL: Self = Self(10);
    /// More important than usual (8).
    pub const HIGH: Self = Self(8);
    /// The default (5).
    pub const NORMAL: Self = Self(5);
    /// Can yield and fail quickly (2).
    pub const LOW: Self = Self(2);
    /// Only when nothing else wants the target (1).
    pub const BACKGROUND: Self = Self(1);
    /// The lowest valid priority.
    pub const MIN: Self = Self(1);
    /// The highest valid priority.
    pub const MAX: Self = Self(10);
    /// The levels with a name, highest first: the names `priority = ...` accepts besides numbers.
    ///
    /// ```
    /// use conflict_core::OperationPriority;
    /// for p in OperationPriority::NAMED {
    ///     let name = p.name().unwrap();
    ///     assert_eq!(OperationPriority::from_name(name), Some(p));
    /// }
    /// ```
    pub const NAMED: [Self; 5] = [
        Self::CRITICAL,
        Self::HIGH,
        Self::NORMAL,
        Self::LOW,
        Self::BACKGROUND,
    ];

    /// A priority from a number in `1..=10`.
    ///
    /// # Errors
    ///
    /// [`PriorityError`] carrying `value` when it is 0 or greater than 10.
    pub const fn new(value: u8) -> Result<Self, PriorityError> {
        if value >= 1 && value <= 10 {
            Ok(Self(value))
        } else {
            Err(PriorityError(value as i64))
        }
    }

    /// The number, `1..=10`.
    #[must_use]
    pub const fn get(self) -> u8 {
        self.0
    }

    /// A named level, case-insensitive: `critical`, `high`, `normal`, `low`, `background`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "critical" => Self::CRITICAL,
            "high" => Self::HIGH,
            "normal" => Self::NORMAL,
            "low" => Self::LOW,
            "background" => Self::BACKGROUND,
            _ => return None,
        })
    }

    /// The name of this level if it is one of the named ones.
    #[must_use]
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            10 => "CRITICAL",
            8 => "HIGH",
            5 => "NORMAL",
            2 => "LOW",
            1 => "BACKGROUND",
            _ => return None,
        })
    }
}

impl Default for OperationPriority {
    fn default() -> Self {
        Self::NORMAL
    }
}

impl TryFrom<u8> for OperationPriority {
    type Error = PriorityError;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<OperationPriority> for u8 {
    fn from(p: OperationPriority) -> u8 {
        p.0
    }
}

impl fmt::Display for OperationPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{}({name})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

impl fmt::Debug for OperationPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperationPriority({self})")
    }
}

/// A set of priorities (used by cleanup rules), stored as a bit mask so it can live in a `static`.
///
/// ```
/// use conflict_core::{OperationPriority, PrioritySet};
/// let set = PrioritySet::EMPTY.with(OperationPriority::CRITICAL).with(OperationPriority::HIGH);
/// assert!(set.contains(OperationPriority::HIGH));
/// assert!(!set.contains(OperationPriority::NORMAL));
/// assert_eq!(set.iter().count(), 2);
/// ```
#[derive(Copy, Clone, PartialEq, Eq, Hash, Default)]
pub struct PrioritySet(u16);

impl PrioritySet {
    /// No priority.
    pub const EMPTY: Self = Self(0);

    /// This set plus `p`.
    #[must_use]
    pub const fn with(self, p: OperationPriority) -> Self {
        Self(self.0 | (1 << p.0))
    }

    /// Whether `p` is in the set.
    #[must_use]
    pub const fn contains(self, p: OperationPriority) -> bool {
        self.0 & (1 << p.0) != 0
    }

    /// Whether the set is empty.
    #[must_use]
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The priorities in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = OperationPriority> {
        (1..=10u8)
            .filter(move |v| self.0 & (1 << v) != 0)
            .map(OperationPriority)
    }
}

impl FromIterator<OperationPriority> for PrioritySet {
    fn from_iter<I: IntoIterator<Item = OperationPriority>>(iter: I) -> Self {
        iter.into_iter().fold(Self::EMPTY, Self::with)
    }
}

impl fmt::Debug for PrioritySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(|p| p.0)).finish()
    }
}

impl Serialize for PrioritySet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for PrioritySet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<OperationPriority>::deserialize(d)?;
        Ok(v.into_iter().collect())
    }
}

/// Operation classes: defaults for priority and retries.
///
/// | class | priority | max retries |
/// |---|---|---|
/// | `structural` | 10 | 20 |
/// | `normal` | 5 | 5 |
/// | `low_priority` | 2 | 3 |
///
/// ```
/// use conflict_core::{OpClass, OperationPriority};
/// assert_eq!(OpClass::Structural.default_priority(), OperationPriority::CRITICAL);
/// assert_eq!(OpClass::from_name("low_priority"), Some(OpClass::LowPriority));
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OpClass {
    /// Must succeed (priority 10, 20 retries).
    Structural,
    /// The default (priority 5, 5 retries).
    #[default]
    Normal,
    /// Can fail quickly (priority 2, 3 retries).
    LowPriority,
}

impl OpClass {
    /// Every class, in declaration order: the vocabulary of `op_class = "..."`.
    ///
    /// ```
    /// use conflict_core::OpClass;
    /// for c in OpClass::ALL {
    ///     assert_eq!(OpClass::from_name(c.name()), Some(c));
    /// }
    /// ```
    pub const ALL: [Self; 3] = [Self::Structural, Self::Normal, Self::LowPriority];

    /// The class's default priority.
    #[must_use]
    pub const fn default_priority(self) -> OperationPriority {
        match self {
            Self::Structural => OperationPriority::CRITICAL,
            Self::Normal => OperationPriority::NORMAL,
            Self::LowPriority => OperationPriority::LOW,
        }
    }

    /// The class's default `max_retries`.
    #[must_use]
    pub const fn default_max_retries(self) -> u32 {
        match self {
            Self::Structural => 20,
            Self::Normal => 5,
            Self::LowPriority => 3,
        }
    }

    /// Parses `structural`, `normal` or `low_priority`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "structural" => Self::Structural,
            "normal" => Self::Normal,
            "low_priority" => Self::LowPriority,
            _ => return None,
        })
    }

    /// The attribute spelling of the class.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Structural => "structural",
            Self::Normal => "normal",
            Self::LowPriority => "low_priority",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_range_is_one_to_ten() {
        assert!(OperationPriority::new(0).is_err());
        assert!(OperationPriority::new(11).is_err());
        for v in 1..=10 {
            assert_eq!(OperationPriority::new(v).unwrap().get(), v);
        }
    }

    #[test]
    fn named_levels_have_design_values() {
        assert_eq!(OperationPriority::CRITICAL.get(), 10);
        assert_eq!(OperationPriority::HIGH.get(), 8);
        assert_eq!(OperationPriority::NORMAL.get(), 5);
        assert_eq!(OperationPriority::LOW.get(), 2);
        assert_eq!(OperationPriority::BACKGROUND.get(), 1);
        for name in ["critical", "HIGH", "Normal", "low", "background"] {
            let p = OperationPriority::from_name(name).unwrap();
            assert_eq!(
                p.name().unwrap().to_ascii_lowercase(),
                name.to_ascii_lowercase()
            );
        }
        assert_eq!(OperationPriority::from_name("urgent"), None);
        // `NAMED` (the macro's vocabulary) is exactly the levels that have a name, highest first.
        let mut with_name: Vec<_> = (1..=10)
            .filter_map(|v| OperationPriority::new(v).ok())
            .filter(|p| p.name().is_some())
            .collect();
        with_name.reverse();
        assert_eq!(OperationPriority::NAMED.as_slice(), with_name.as_slice());
    }

    #[test]
    fn priority_serde_rejects_out_of_range() {
        assert_eq!(
            serde_json::to_string(&OperationPriority::HIGH).unwrap(),
            "8"
        );
        assert!(serde_json::from_str::<OperationPriority>("11").is_err());
        assert_eq!(
            serde_json::from_str::<OperationPriority>("2").unwrap(),
            OperationPriority::LOW
        );
    }

    #[test]
    fn op_classes_follow_the_design() {
        let table = [
            (OpClass::Structural, 10, 20),
            (OpClass::Normal, 5, 5),
            (OpClass::LowPriority, 2, 3),
        ];
        for (class, prio, retries) in table {
            assert_eq!(class.default_priority().get(), prio);
            assert_eq!(class.default_max_retries(), retries);
            assert_eq!(OpClass::from_name(class.name()), Some(class));
        }
    }

    #[test]
    fn priority_set_round_trips() {
        let set: PrioritySet = [OperationPriority::LOW, OperationPriority::CRITICAL]
            .into_iter()
            .collect();
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, "[2,10]");
        assert_eq!(serde_json::from_str::<PrioritySet>(&json).unwrap(), set);
    }
}
