//! Memory pressure: how full the machine (or the container) is, from 0 to 1.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A source of memory pressure (used / limit, 0.0..=1.0). The runtime asks it when deciding
/// how to clean a record; tests replace it with a fixed value.
///
/// ```
/// use conflict_runtime::cleanup::MemoryPressure;
/// struct Fixed(f64);
/// impl MemoryPressure for Fixed {
///     fn current(&self) -> f64 { self.0 }
/// }
/// let rt = conflict_runtime::Runtime::builder().memory_pressure(Fixed(0.95)).build().unwrap();
/// assert!(rt.health().memory_pressure > 0.9);
/// ```
pub trait MemoryPressure: Send + Sync + 'static {
    /// The current pressure; 0.0 when unknown.
    fn current(&self) -> f64;
}

/// The machine's memory pressure: the cgroup's limit when the process runs in one that has a
/// limit (cgroup v2 `memory.max`/`memory.current`, or v1 `memory.limit_in_bytes`/
/// `memory.usage_in_bytes`), else `/proc/meminfo` (1 − `MemAvailable` / `MemTotal`). Read at
/// most once per second; 0.0 where none of these exist.
#[derive(Debug, Default)]
pub struct SystemMemory {
    cache: Mutex<Option<(Instant, f64)>>,
}

const REFRESH: Duration = Duration::from_secs(1);

impl SystemMemory {
    /// A reader with an empty cache.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn read() -> Option<f64> {
        Self::cgroup_v2()
            .or_else(Self::cgroup_v1)
            .or_else(Self::meminfo)
    }

    fn number(path: &str) -> Option<f64> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    fn cgroup_v2() -> Option<f64> {
        let max = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?;
        let max: f64 = max.trim().parse().ok()?; // "max" (no limit) does not parse
        let current = Self::number("/sys/fs/cgroup/memory.current")?;
        (max > 0.0).then(|| (current / max).clamp(0.0, 1.0))
    }

    fn cgroup_v1() -> Option<f64> {
        let limit = Self::number("/sys/fs/cgroup/memory/memory.limit_in_bytes")?;
        let usage = Self::number("/sys/fs/cgroup/memory/memory.usage_in_bytes")?;
        // An unlimited v1 cgroup reports a huge page-rounded i64::MAX.
        (limit > 0.0 && limit < 1e18).then(|| (usage / limit).clamp(0.0, 1.0))
    }

    fn meminfo() -> Option<f64> {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let field = |name: &str| -> Option<f64> {
            let line = text.lines().find(|l| l.starts_with(name))?;
            line.split_whitespace().nth(1)?.parse().ok()
        };
        let total = field("MemTotal:")?;
        let available = field("MemAvailable:")?;
        (total > 0.0).then(|| (1.0 - available / total).clamp(0.0, 1.0))
    }
}

impl MemoryPressure for SystemMemory {
    fn current(&self) -> f64 {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match *cache {
            Some((at, v)) if at.elapsed() < REFRESH => v,
            _ => {
                let v = Self::read().unwrap_or(0.0);
                *cache = Some((Instant::now(), v));
                v
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_memory_is_a_fraction() {
        let m = SystemMemory::new();
        let v = m.current();
        assert!((0.0..=1.0).contains(&v), "{v}");
        // This machine has a /proc/meminfo, so the value is a real reading, not the fallback.
        if std::path::Path::new("/proc/meminfo").exists() {
            assert!(v > 0.0);
        }
    }
}
