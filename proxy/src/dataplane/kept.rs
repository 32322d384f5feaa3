//! State a pool keeps across routing tables (rebuilt on every health change), found by
//! the pool's name while some table holds it: its queue, its retry budget.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

/// Every pool's `T`, by pool name.
pub type Registry<T> = Mutex<BTreeMap<String, Weak<T>>>;

/// The `T` of the pool named `pool` in `registry`: the one in use, if any, else a new
/// one (entries no table holds any more are dropped then).
pub fn of<T: Default>(registry: &Registry<T>, pool: &str) -> Arc<T> {
    let mut kept = registry.lock().unwrap();
    if let Some(t) = kept.get(pool).and_then(Weak::upgrade) {
        return t;
    }
    kept.retain(|_, t| t.strong_count() > 0);
    let t = Arc::new(T::default());
    kept.insert(pool.to_string(), Arc::downgrade(&t));
    t
}
