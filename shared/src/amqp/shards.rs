//! Which receipts queue ("shard") a receipt goes to.
//!
//! A quorum queue's leader does its hot-path work on one core of one node
//! (<https://www.rabbitmq.com/docs/quorum-queues>), so one queue caps the
//! receipt rate however many nodes the cluster has. With
//! `AMQP_RECEIPT_SHARDS` = N > 1 receipts are spread over N queues, and the
//! choice is made here, by the publisher, from the provider's message id:
//!
//! - every receipt of one message lands on one shard (and so is handled in
//!   order by one queue, which narrows races the status store resolves
//!   anyway);
//! - the shard is a pure function of the id and N, the same in every pod,
//!   every release and every Rust version: FNV-1a 64 (offset basis
//!   `0xcbf29ce484222325`, prime `0x100000001b3`, the fixed "seed"; spec:
//!   <https://datatracker.ietf.org/doc/html/draft-eastlake-fnv>) of the id's
//!   UTF-8 bytes, mapped to a shard by Jump Consistent Hash (Lamping and
//!   Veach, <https://arxiv.org/abs/1406.2294>). Never `DefaultHasher`:
//!   its output may change between Rust releases.
//!
//! Jump Consistent Hash rather than `hash % N`: going from N to N + 1
//! shards moves only about 1/(N + 1) of the ids, so re-sharding keeps most
//! messages' receipts where their earlier receipts are. It also uses the
//! high bits of the hash, which FNV-1a mixes well (its lowest bit is only
//! the parity of the input's lowest bits, so `% 2` alone would be poor).

use std::sync::LazyLock;

/// Most shards supported: far more than a cluster needs (the guidance is
/// a small multiple of the node count), and few enough that the KEDA
/// trigger's management-API query (100 queues a page) always sees them all.
pub const MAX_SHARDS: u16 = 64;

/// FNV-1a 64 offset basis: the hash's fixed starting state.
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bits, of `bytes`.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME))
}

/// Jump Consistent Hash: the bucket in `0..buckets` for `key` (0 when
/// `buckets` is 0 or 1). Transcribed from the paper's C++ listing.
pub fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    let buckets = i64::from(buckets.max(1));
    let (mut b, mut j) = (-1_i64, 0_i64);
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // (key >> 33) + 1 is at most 2^31, so the float division is exact
        // enough and the product stays far below i64::MAX for j < 2^31.
        j = ((b + 1) as f64 * ((1_u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    u32::try_from(b).unwrap_or(0)
}

/// The shard (`0..shards`) of a receipt for the provider's `message_id`.
pub fn shard_of(message_id: &str, shards: u16) -> u16 {
    let shard = jump_consistent_hash(fnv1a_64(message_id.as_bytes()), u32::from(shards));
    u16::try_from(shard).unwrap_or(0)
}

/// Routing key that binds shard `shard` to the intake exchange:
/// `receipt.<shard>`. Static strings so that a message being published can
/// borrow its routing key for as long as it likes.
pub fn shard_routing_key(shard: u16) -> &'static str {
    static KEYS: LazyLock<Vec<String>> = LazyLock::new(|| {
        (0..MAX_SHARDS).map(|shard| format!("{}.{shard}", super::topology::RECEIPT_ROUTING_KEY)).collect()
    });
    KEYS.get(usize::from(shard)).map_or(super::topology::RECEIPT_ROUTING_KEY, String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_64_matches_the_published_test_vectors() {
        // From the FNV reference test suite (draft-eastlake-fnv, test vectors).
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn jump_consistent_hash_matches_published_values() {
        // ClickHouse's jumpConsistentHash test (same algorithm, same constants).
        assert_eq!(jump_consistent_hash(1, 1), 0);
        assert_eq!(jump_consistent_hash(42, 57), 43);
        assert_eq!(jump_consistent_hash(256, 1024), 520);
        assert_eq!(jump_consistent_hash(3_735_883_980, 1), 0);
        assert_eq!(jump_consistent_hash(3_735_883_980, 666), 361);
        assert_eq!(jump_consistent_hash(16_045_690_984_833_335_023, 255), 237);
    }

    #[test]
    fn one_shard_is_always_shard_zero_and_keys_are_named_after_shards() {
        assert_eq!(shard_of("anything", 1), 0);
        assert_eq!(shard_of("", 1), 0);
        assert_eq!(shard_routing_key(0), "receipt.0");
        assert_eq!(shard_routing_key(MAX_SHARDS - 1), "receipt.63");
    }

    #[test]
    fn growing_by_one_shard_moves_only_ids_to_the_new_shard() {
        for n in 1..12_u16 {
            for i in 0..2000 {
                let id = format!("SM{i:032x}");
                let (before, after) = (shard_of(&id, n), shard_of(&id, n + 1));
                assert!(after == before || after == n, "{id}: {before} -> {after} with {n} -> {}", n + 1);
            }
        }
    }
}
