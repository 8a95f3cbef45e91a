//! Bounded cache of recently seen routed frame ids, the relay's duplicate filter.
//!
//! Layout (allocated once, never grows):
//! - a ring of `capacity` ids (16 bytes each) in insertion order; when full, the oldest id is
//!   evicted and its ring slot reused;
//! - an open-addressing index with linear probing over `2 × capacity` (rounded up to a power of
//!   two) 8-byte slots, each `(32-bit hash tag, ring slot + 1)`, 0 = empty. Deletion shifts the
//!   following entries back (no tombstones), so probe chains stay short at load ≤ 1/2.
//!
//! That is 16 + 2 × 8 = 32 bytes per id (≈ 2 MiB at the default 65 536; up to 48 when the
//! power-of-two rounding doubles the index), against ~96 for the `VecDeque` + SipHash `HashSet`
//! it replaced. Frame ids are 128 random bits, so the hash is a cheap mix (murmur3's finalizer) of
//! the id's two halves with a per-cache seed (from the core's injected randomness), which keeps a peer that
//! picks ids from building long probe chains on purpose.

use crate::proto::FrameId;

/// Default number of ids remembered: at 1 000 frames/s that is a minute of history, far longer
/// than a frame can circulate (TTL 8 × link latency).
pub const DEFAULT_DEDUP_CAPACITY: usize = 65_536;

/// Bytes used per remembered id when the capacity is a power of two (the default): 16 in the
/// ring plus two 8-byte index slots (documented bound, see module docs).
pub const BYTES_PER_ID: usize = 32;

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    k ^= k >> 33;
    k = k.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    k ^ (k >> 33)
}

/// The duplicate filter.
#[derive(Debug)]
pub struct DedupCache {
    /// Remembered ids; `ring.len()` grows to `capacity`, then `head` is the oldest.
    ring: Vec<FrameId>,
    head: usize,
    capacity: usize,
    /// Index slots: `(tag << 32) | (ring slot + 1)`, 0 = empty.
    index: Vec<u64>,
    mask: usize,
    seed: [u64; 2],
}

impl DedupCache {
    /// A cache remembering at most `capacity` (≥ 1) ids; `seed` keys the hash.
    pub fn new(capacity: usize, seed: u64) -> Self {
        let capacity = capacity.clamp(1, u32::MAX as usize / 4);
        let slots = (capacity * 2).next_power_of_two();
        DedupCache {
            ring: Vec::with_capacity(capacity),
            head: 0,
            capacity,
            index: vec![0; slots],
            mask: slots - 1,
            seed: [
                seed ^ 0x243F_6A88_85A3_08D3,
                seed.rotate_left(32) ^ 0x1319_8A2E_0370_7344,
            ],
        }
    }

    fn hash(&self, id: &FrameId) -> u32 {
        let lo = u64::from_le_bytes(id.0[..8].try_into().unwrap_or([0; 8]));
        let hi = u64::from_le_bytes(id.0[8..].try_into().unwrap_or([0; 8]));
        // murmur3's 64-bit finalizer on both halves: every input bit reaches every output bit.
        let h = fmix64(lo ^ self.seed[0] ^ fmix64(hi ^ self.seed[1]));
        h as u32
    }

    /// Index slot holding `id`, if present.
    fn find(&self, id: &FrameId, tag: u32) -> Option<usize> {
        let mut i = tag as usize & self.mask;
        loop {
            let e = self.index[i];
            if e == 0 {
                return None;
            }
            if (e >> 32) as u32 == tag && self.ring[(e as u32 - 1) as usize] == *id {
                return Some(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Empty slot `i` and shift the entries after it back towards their home slots.
    fn remove_at(&mut self, mut i: usize) {
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let e = self.index[j];
            if e == 0 {
                break;
            }
            let home = (e >> 32) as usize & self.mask;
            // The entry at j may move to i unless its home lies cyclically in (i, j].
            if j.wrapping_sub(home) & self.mask >= j.wrapping_sub(i) & self.mask {
                self.index[i] = e;
                i = j;
            }
        }
        self.index[i] = 0;
    }

    /// Remember `id`; `false` if it was already present (a duplicate).
    pub fn insert(&mut self, id: FrameId) -> bool {
        let tag = self.hash(&id);
        if self.find(&id, tag).is_some() {
            return false;
        }
        let slot = if self.ring.len() < self.capacity {
            self.ring.push(id);
            self.ring.len() - 1
        } else {
            let slot = self.head;
            let old = self.ring[slot];
            if let Some(i) = self.find(&old, self.hash(&old)) {
                self.remove_at(i);
            }
            self.ring[slot] = id;
            self.head = (slot + 1) % self.capacity;
            slot
        };
        let mut i = tag as usize & self.mask;
        while self.index[i] != 0 {
            i = (i + 1) & self.mask;
        }
        // slot < capacity ≤ u32::MAX / 4, so slot + 1 fits the low 32 bits.
        self.index[i] = (u64::from(tag) << 32) | (slot as u64 + 1);
        true
    }

    /// Ids currently remembered (≤ capacity).
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    /// The fixed capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes allocated by the ring and the index (for the memory-bound test).
    pub fn allocated_bytes(&self) -> usize {
        self.ring.capacity() * std::mem::size_of::<FrameId>()
            + self.index.capacity() * std::mem::size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> FrameId {
        let mut b = [0u8; 16];
        b[8..].copy_from_slice(&n.to_be_bytes());
        FrameId(b)
    }

    #[test]
    fn a_flood_of_a_million_unique_ids_stays_within_capacity() {
        let mut c = DedupCache::new(DEFAULT_DEDUP_CAPACITY, 7);
        let start = c.allocated_bytes();
        assert!(start <= DEFAULT_DEDUP_CAPACITY * BYTES_PER_ID, "{start}");
        for n in 0..1_000_000 {
            assert!(c.insert(id(n)));
        }
        assert_eq!(c.len(), DEFAULT_DEDUP_CAPACITY);
        // No growth beyond the initial allocation: memory is fixed by the capacity.
        assert_eq!(c.allocated_bytes(), start);
        // Every remembered id is still found, the evicted ones are not.
        for n in 1_000_000 - DEFAULT_DEDUP_CAPACITY as u64..1_000_000 {
            assert!(!c.insert(id(n)), "{n} lost");
        }
        assert!(c.insert(id(0)));
    }

    #[test]
    fn duplicates_are_reported() {
        let mut c = DedupCache::new(4, 0);
        assert!(c.insert(id(1)));
        assert!(!c.insert(id(1)));
    }

    #[test]
    fn eviction_is_oldest_first_with_colliding_ids() {
        // Ids that differ only in a few bits, through many wrap-arounds of a tiny cache, keep
        // the index consistent with the ring (backward-shift deletion).
        let mut c = DedupCache::new(3, 1);
        for round in 0..1_000u64 {
            assert!(c.insert(id(round)));
            assert!(!c.insert(id(round)));
            if round >= 2 {
                assert!(!c.insert(id(round - 2)));
            }
        }
        assert!(c.insert(id(996)));
        assert_eq!(c.len(), 3);
    }
}
