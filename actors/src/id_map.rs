//! `IdMap`: a hash map for lookups by string id. An ordered map pays a string comparison, often
//! a cache miss, at every step down ten thousand keys, and the admission path looks tenants and
//! lines up on every call.
//!
//! Its hasher is fixed, so runs repeat, but its order is the hash's, and the determinism rules
//! forbid leaking it: iterate only through [`sorted`], and serialize through
//! [`serialize_sorted`].

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::Serialize;

pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// The multiply-rotate hash of rustc's `FxHasher`, eight bytes at a time, with a final rotation
/// that brings the product's well-mixed high bits down to the bucket index.
///
/// SipHash (std's default) spent about 1 % of a simulation hashing ids. Keys here are ids the
/// admin API created, not attacker-chosen strings, and a fixed-key SipHash would not resist
/// flooding either; what matters is that it is fast, fixed, and spreads similar ids
/// (`tenant-00041`, `tenant-00042`) apart, which the unit test below checks.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHasher {
    hash: u64,
}

const MULTIPLIER: u64 = 0xf135_7aea_2e62_a9c5;

impl IdHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(MULTIPLIER);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("eight bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.hash.rotate_left(26)
    }
}

/// Serializes an `IdMap` as a map in key order, so equal maps give equal bytes whatever their
/// history (a snapshot from a replayed state equals one from the live state).
pub fn serialize_sorted<K, V, S>(map: &IdMap<K, V>, serializer: S) -> Result<S::Ok, S::Error>
where
    K: Ord + Serialize,
    V: Serialize,
    S: serde::Serializer,
{
    serializer.collect_map(sorted(map))
}

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

    /// Ten thousand ids that differ only in their last digits land in distinct buckets of a
    /// table sized for them: the low bits (the bucket index) are well mixed.
    #[test]
    fn similar_ids_spread_over_the_buckets() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<IdHasher>::default();
        let buckets = 16_384u64;
        let mut used = std::collections::HashSet::new();
        for n in 0..10_000 {
            used.insert(build.hash_one(format!("tenant-{n:05}")) % buckets);
        }
        // A uniform hash fills 1 - e^(-10000/16384) = 46 % of them; allow a little less.
        assert!(used.len() > 7_000, "{} distinct buckets of {buckets}", used.len());
    }

    #[test]
    fn serialized_like_an_ordered_map_whatever_the_insertion_order() {
        struct Sorted<'a>(&'a IdMap<String, u32>);
        impl Serialize for Sorted<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serialize_sorted(self.0, serializer)
            }
        }
        let forward: IdMap<String, u32> = (0..100u32).map(|n| (format!("t-{n:03}"), n)).collect();
        let backward: IdMap<String, u32> = (0..100u32).rev().map(|n| (format!("t-{n:03}"), n)).collect();
        let ordered: std::collections::BTreeMap<String, u32> = forward.clone().into_iter().collect();
        let config = bincode::config::standard();
        let expected = bincode::serde::encode_to_vec(&ordered, config).unwrap();
        assert_eq!(bincode::serde::encode_to_vec(Sorted(&forward), config).unwrap(), expected);
        assert_eq!(bincode::serde::encode_to_vec(Sorted(&backward), config).unwrap(), expected);
    }
}
