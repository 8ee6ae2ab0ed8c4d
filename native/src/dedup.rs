//! Idempotency cache: a time-windowed, bit-sliced bloom filter of
//! `generations` rotating generations in front of an exact bounded LRU.
//!
//! Invariants (numbered as in docs/native.md, "Dedup"):
//! D1 `get` answers `Some(seq)` iff the key is in the LRU and its last `put`
//!    happened at generation g with `cur_gen - g < generations`.
//! D2 the bloom has no false negatives for keys satisfying D1, so answering
//!    `None` on a bloom negative never changes a result (D1 stays exact; the
//!    bloom is only a fast path for misses).
//! D3 `len() <= capacity` after every call; memory is bounded by the
//!    configuration (capacity * (key + node) + bloom).
//! D4 `cur_gen` never decreases (a clock going backwards is ignored).

use std::alloc::{alloc_zeroed, Layout};

use hashbrown::HashTable;
use pyo3::exceptions::{PyMemoryError, PyValueError};
use pyo3::prelude::*;
use xxhash_rust::xxh3::xxh3_128_with_seed;

use crate::keys::{dedup_key, u64_arg};

/// Number of bloom probes per key.
const PROBES: u64 = 4;
pub const MAX_GENERATIONS: i64 = 64;
pub const MAX_BITS_PER_GENERATION: i64 = 1 << 32;
pub const MAX_CAPACITY: i64 = 1 << 31;
const NIL: u32 = u32::MAX;

// ---------------------------------------------------------------- bloom ---

/// A word of the bit-sliced bloom: bit `s` of word `i` is bit `i` of the
/// bloom of generation slot `s`.
trait Word: Copy + Eq {
    const ZERO: Self;
    fn bit(slot: u32) -> Self;
    fn and(self, o: Self) -> Self;
    fn or(self, o: Self) -> Self;
    fn andnot(self, o: Self) -> Self;
    fn from_mask(m: u64) -> Self;
}

macro_rules! impl_word {
    ($t:ty) => {
        impl Word for $t {
            const ZERO: Self = 0;
            #[inline(always)]
            fn bit(slot: u32) -> Self {
                1 << slot
            }
            #[inline(always)]
            fn and(self, o: Self) -> Self {
                self & o
            }
            #[inline(always)]
            fn or(self, o: Self) -> Self {
                self | o
            }
            #[inline(always)]
            fn andnot(self, o: Self) -> Self {
                self & !o
            }
            #[inline(always)]
            fn from_mask(m: u64) -> Self {
                m as $t
            }
        }
    };
}
impl_word!(u8);
impl_word!(u16);
impl_word!(u32);
impl_word!(u64);

/// Zeroed boxed slice whose allocation failure is a Python MemoryError
/// rather than a process abort.
fn try_zeroed<W: Word>(n: usize) -> PyResult<Box<[W]>> {
    let layout = Layout::array::<W>(n).map_err(|_| PyMemoryError::new_err("bloom too large"))?;
    if layout.size() == 0 {
        return Ok(Vec::new().into_boxed_slice());
    }
    // SAFETY: non-zero layout; all-zero bits are a valid value for the
    // unsigned integer words; the pointer comes from the global allocator
    // with exactly `layout`, which is what Box<[W]> of length n uses.
    unsafe {
        let p = alloc_zeroed(layout) as *mut W;
        if p.is_null() {
            return Err(PyMemoryError::new_err("cannot allocate bloom filter"));
        }
        Ok(Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n)))
    }
}

struct Sliced<W: Word> {
    words: Box<[W]>,
}

impl<W: Word> Sliced<W> {
    #[inline]
    fn maybe(&self, idx: &[usize; PROBES as usize]) -> bool {
        let mut acc = W::from_mask(u64::MAX);
        for &i in idx {
            acc = acc.and(self.words[i]);
        }
        acc != W::ZERO
    }
    #[inline]
    fn set(&mut self, idx: &[usize; PROBES as usize], slot: u32) {
        let b = W::bit(slot);
        for &i in idx {
            self.words[i] = self.words[i].or(b);
        }
    }
    fn clear(&mut self, slots_mask: u64) {
        let m = W::from_mask(slots_mask);
        for w in self.words.iter_mut() {
            *w = w.andnot(m);
        }
    }
}

enum Bloom {
    W8(Sliced<u8>),
    W16(Sliced<u16>),
    W32(Sliced<u32>),
    W64(Sliced<u64>),
}

macro_rules! dispatch {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Bloom::W8($s) => $e,
            Bloom::W16($s) => $e,
            Bloom::W32($s) => $e,
            Bloom::W64($s) => $e,
        }
    };
}

impl Bloom {
    fn new(bits: usize, generations: u32) -> PyResult<Self> {
        Ok(match generations {
            0..=8 => Bloom::W8(Sliced {
                words: try_zeroed(bits)?,
            }),
            9..=16 => Bloom::W16(Sliced {
                words: try_zeroed(bits)?,
            }),
            17..=32 => Bloom::W32(Sliced {
                words: try_zeroed(bits)?,
            }),
            _ => Bloom::W64(Sliced {
                words: try_zeroed(bits)?,
            }),
        })
    }
    fn maybe(&self, idx: &[usize; PROBES as usize]) -> bool {
        dispatch!(self, s => s.maybe(idx))
    }
    fn set(&mut self, idx: &[usize; PROBES as usize], slot: u32) {
        dispatch!(self, s => s.set(idx, slot))
    }
    fn clear(&mut self, slots_mask: u64) {
        dispatch!(self, s => s.clear(slots_mask))
    }
}

// ------------------------------------------------------------------ lru ---

struct Node {
    key: Box<[u8]>,
    hash: u64,
    seq: u64,
    gen: u64,
    prev: u32,
    next: u32,
}

// ---------------------------------------------------------------- dedup ---

/// Pure-Rust core, independent of Python.
pub struct DedupCore {
    capacity: usize,
    generations: u64,
    gen_len: u64,
    bits: u64,
    seed: u64,
    cur_gen: u64,
    bloom: Bloom,
    nodes: Vec<Node>,
    table: HashTable<u32>,
    head: u32, // most recently used
    tail: u32, // least recently used
}

struct Hashed {
    table_hash: u64,
    probes: [usize; PROBES as usize],
}

impl DedupCore {
    fn new(
        capacity: usize,
        window_ms: u64,
        generations: u64,
        bits: u64,
        seed: u64,
    ) -> PyResult<Self> {
        let bits_usize =
            usize::try_from(bits).map_err(|_| PyMemoryError::new_err("bloom too large"))?;
        Ok(DedupCore {
            capacity,
            generations,
            gen_len: window_ms / generations,
            bits,
            seed,
            cur_gen: 0,
            bloom: Bloom::new(bits_usize, generations as u32)?,
            nodes: Vec::new(),
            table: HashTable::new(),
            head: NIL,
            tail: NIL,
        })
    }

    fn hash(&self, key: &[u8]) -> Hashed {
        let h = xxh3_128_with_seed(key, self.seed);
        let h1 = h as u64;
        let h2 = ((h >> 64) as u64) | 1;
        let mut probes = [0usize; PROBES as usize];
        for (i, p) in probes.iter_mut().enumerate() {
            let x = h1.wrapping_add((i as u64).wrapping_mul(h2));
            // Lemire's multiply-shift range reduction into [0, bits).
            *p = ((x as u128 * self.bits as u128) >> 64) as usize;
        }
        Hashed {
            table_hash: h1,
            probes,
        }
    }

    /// Move the current generation forward to the one containing `now_ms`,
    /// clearing the bloom slots that get reused (D4: never backwards).
    fn advance(&mut self, now_ms: u64) {
        let gen = now_ms / self.gen_len;
        if gen <= self.cur_gen {
            return;
        }
        let g = self.generations;
        let mask = if gen - self.cur_gen >= g {
            if g == 64 {
                u64::MAX
            } else {
                (1u64 << g) - 1
            }
        } else {
            let mut m = 0u64;
            for x in self.cur_gen + 1..=gen {
                m |= 1u64 << (x % g);
            }
            m
        };
        self.bloom.clear(mask);
        self.cur_gen = gen;
    }

    fn slot(&self) -> u32 {
        (self.cur_gen % self.generations) as u32
    }

    fn find(&self, key: &[u8], hash: u64) -> Option<u32> {
        let nodes = &self.nodes;
        self.table
            .find(hash, |&i| &*nodes[i as usize].key == key)
            .copied()
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = {
            let n = &self.nodes[i as usize];
            (n.prev, n.next)
        };
        if prev == NIL {
            self.head = next
        } else {
            self.nodes[prev as usize].next = next
        }
        if next == NIL {
            self.tail = prev
        } else {
            self.nodes[next as usize].prev = prev
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let n = &mut self.nodes[i as usize];
            n.prev = NIL;
            n.next = old;
        }
        if old == NIL {
            self.tail = i
        } else {
            self.nodes[old as usize].prev = i
        }
        self.head = i;
    }

    fn touch(&mut self, i: u32) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    pub fn get(&mut self, key: &[u8], now_ms: u64) -> Option<u64> {
        self.advance(now_ms);
        let h = self.hash(key);
        if !self.bloom.maybe(&h.probes) {
            return None; // D2
        }
        let i = self.find(key, h.table_hash)?;
        let n = &self.nodes[i as usize];
        if self.cur_gen - n.gen >= self.generations {
            return None; // bloom false positive on an expired entry (D1)
        }
        let seq = n.seq;
        self.touch(i);
        Some(seq)
    }

    pub fn bloom_maybe(&mut self, key: &[u8], now_ms: u64) -> bool {
        self.advance(now_ms);
        let h = self.hash(key);
        self.bloom.maybe(&h.probes)
    }

    pub fn put(&mut self, key: &[u8], seq: u64, now_ms: u64) -> PyResult<()> {
        self.advance(now_ms);
        let h = self.hash(key);
        let slot = self.slot();
        self.bloom.set(&h.probes, slot);
        let gen = self.cur_gen;
        if let Some(i) = self.find(key, h.table_hash) {
            let n = &mut self.nodes[i as usize];
            n.seq = seq;
            n.gen = gen;
            self.touch(i);
            return Ok(());
        }
        let node = Node {
            key: key.into(),
            hash: h.table_hash,
            seq,
            gen,
            prev: NIL,
            next: NIL,
        };
        let i = if self.nodes.len() >= self.capacity {
            // Full: recycle the least recently used node (D3).
            let victim = self.tail;
            self.unlink(victim);
            let vhash = self.nodes[victim as usize].hash;
            if let Ok(e) = self.table.find_entry(vhash, |&j| j == victim) {
                e.remove();
            }
            self.nodes[victim as usize] = node;
            victim
        } else {
            self.nodes
                .try_reserve(1)
                .map_err(|_| PyMemoryError::new_err("cannot grow dedup LRU"))?;
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        };
        let nodes = &self.nodes;
        self.table
            .try_reserve(1, |&j| nodes[j as usize].hash)
            .map_err(|_| PyMemoryError::new_err("cannot grow dedup table"))?;
        let nodes = &self.nodes;
        self.table
            .insert_unique(h.table_hash, i, |&j| nodes[j as usize].hash);
        self.push_front(i);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

/// Any Python int reduced modulo 2**64 (TypeError if not an int).
pub struct Seed(u64);

impl<'a, 'py> FromPyObject<'a, 'py> for Seed {
    type Error = PyErr;
    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        // SAFETY: `obj` is a live object; NULL + exception -> PyErr.
        let idx = unsafe {
            Bound::from_owned_ptr_or_err(obj.py(), pyo3::ffi::PyNumber_Index(obj.as_ptr()))?
        };
        Ok(Seed(idx.bitand(u64::MAX)?.extract::<u64>()?))
    }
}

/// Dedup(capacity, window_ms, generations=4, bits_per_generation=1<<20, seed=0)
///
/// Idempotency cache (conv, sender, cid) -> first seq. Time is passed explicitly.
#[pyclass(module = "chatgw_native")]
pub struct Dedup {
    core: DedupCore,
}

#[pymethods]
impl Dedup {
    #[new]
    #[pyo3(signature = (capacity, window_ms, generations = 4, bits_per_generation = 1 << 20, seed = Seed(0)))]
    fn new(
        capacity: i64,
        window_ms: i64,
        generations: i64,
        bits_per_generation: i64,
        seed: Seed,
    ) -> PyResult<Self> {
        let bits = bits_per_generation;
        let seed = seed.0;
        if !(1..=MAX_CAPACITY).contains(&capacity) {
            return Err(PyValueError::new_err(format!(
                "capacity must be in 1..={MAX_CAPACITY}"
            )));
        }
        if window_ms < 1 {
            return Err(PyValueError::new_err("window_ms must be > 0"));
        }
        if !(1..=MAX_GENERATIONS).contains(&generations) {
            return Err(PyValueError::new_err(format!(
                "generations must be in 1..={MAX_GENERATIONS}"
            )));
        }
        if generations > window_ms {
            return Err(PyValueError::new_err("generations must be <= window_ms"));
        }
        if !(1..=MAX_BITS_PER_GENERATION).contains(&bits) {
            return Err(PyValueError::new_err(format!(
                "bits_per_generation must be in 1..={MAX_BITS_PER_GENERATION}"
            )));
        }
        Ok(Dedup {
            core: DedupCore::new(
                capacity as usize,
                window_ms as u64,
                generations as u64,
                bits as u64,
                seed,
            )?,
        })
    }

    /// Seq stored for (conv, sender, cid) if present and within the window, else None.
    fn get(
        slf: &Bound<'_, Self>,
        conv: &Bound<'_, PyAny>,
        sender: &Bound<'_, PyAny>,
        cid: &Bound<'_, PyAny>,
        now_ms: &Bound<'_, PyAny>,
    ) -> PyResult<Option<u64>> {
        let key = dedup_key(conv, sender, cid)?;
        let now = u64_arg(now_ms)?;
        let mut this = slf.try_borrow_mut()?;
        Ok(this.core.get(key.as_bytes(), now))
    }

    /// Record (conv, sender, cid) -> seq at now_ms.
    fn put(
        slf: &Bound<'_, Self>,
        conv: &Bound<'_, PyAny>,
        sender: &Bound<'_, PyAny>,
        cid: &Bound<'_, PyAny>,
        seq: &Bound<'_, PyAny>,
        now_ms: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let key = dedup_key(conv, sender, cid)?;
        let seq = u64_arg(seq)?;
        let now = u64_arg(now_ms)?;
        let mut this = slf.try_borrow_mut()?;
        this.core.put(key.as_bytes(), seq, now)
    }

    /// Test hook: does the bloom filter say "maybe" for (conv, sender, cid)?
    fn _bloom_maybe(
        slf: &Bound<'_, Self>,
        conv: &Bound<'_, PyAny>,
        sender: &Bound<'_, PyAny>,
        cid: &Bound<'_, PyAny>,
        now_ms: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let key = dedup_key(conv, sender, cid)?;
        let now = u64_arg(now_ms)?;
        let mut this = slf.try_borrow_mut()?;
        Ok(this.core.bloom_maybe(key.as_bytes(), now))
    }

    fn __len__(&self) -> usize {
        self.core.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "chatgw_native.Dedup(len={}, capacity={}, generations={}, bits_per_generation={})",
            self.core.len(),
            self.core.capacity,
            self.core.generations,
            self.core.bits
        )
    }
}
