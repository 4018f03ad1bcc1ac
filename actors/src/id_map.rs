//! `IdMap`: a hash map for lookups by string id. An ordered map pays a string comparison, often
//! a cache miss, at every step down ten thousand keys, and the admission path looks tenants and
//! lines up on every call.
//!
//! Its hasher has fixed keys, so runs repeat, but its order is the hash's, and the determinism
//! rules forbid leaking it: iterate only through [`sorted`].

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher};

pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<DefaultHasher>>;

/// `map`'s entries in key order: the only way to iterate an `IdMap`.
pub fn sorted<K: Ord, V>(map: &IdMap<K, V>) -> Vec<(&K, &V)> {
    let mut entries: Vec<(&K, &V)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_is_in_key_order_whatever_the_insertion_order() {
        let map: IdMap<String, u32> = (0..500u32).map(|n| (format!("tenant-{:03}", (n * 7919) % 500), n)).collect();
        let keys: Vec<&String> = sorted(&map).into_iter().map(|(k, _)| k).collect();
        let expected: Vec<String> = (0..500).map(|n| format!("tenant-{n:03}")).collect();
        assert_eq!(keys, expected.iter().collect::<Vec<_>>());
    }
}
