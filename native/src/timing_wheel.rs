//! Hierarchical timing wheel with exact results.
//!
//! Ticks are `deadline_ms / tick_ms`. An entry's placement tick is
//! `p = max(deadline tick, elapsed)`; it lives at level
//! `l = highest differing bit of (p ^ elapsed) / log2(slots)` in slot
//! `(p >> (l * log2(slots))) & (slots - 1)`, or in the overflow list when
//! `l >= levels`. Because `p` and `elapsed` agree on every bit above level
//! l, slots never wrap: every occupied slot of level l is at or after the
//! level's current position, and every entry of a lower level is earlier
//! than every entry of a higher level.
//!
//! Invariants (numbered as in docs/native.md, "TimingWheel"):
//! T1 `advance(now)` returns exactly the scheduled keys with deadline <= now,
//!    sorted by (deadline, key), and forgets them; nothing else fires.
//! T2 `now < last now` returns [] and changes nothing.
//! T3 each key is in at most one slot, and `entries[key]` records that slot
//!    and its position in it (cancel/reschedule are O(1)).
//! T4 every wheel entry satisfies the placement rule above relative to the
//!    current `elapsed`; overflow entries differ from `elapsed` above the
//!    top level.
//! T5 the tick size, slot count and level count change cost, never results.

use hashbrown::HashMap;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyList;

use crate::keys::u64_arg;

pub const MAX_SLOTS: i64 = 4096;
pub const MAX_LEVELS: i64 = 16;
const OVERFLOW: u32 = u32::MAX;

#[inline]
fn shr(x: u64, n: u32) -> u64 {
    if n >= 64 {
        0
    } else {
        x >> n
    }
}

#[inline]
fn shl(x: u64, n: u32) -> u64 {
    if n >= 64 {
        0
    } else {
        x << n
    }
}

/// Mask of the low `n` bits.
#[inline]
fn low_mask(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

#[derive(Clone, Copy)]
struct Entry {
    deadline: u64,
    /// Flat slot index `level * slots + slot`, or OVERFLOW.
    loc: u32,
    /// Position inside that slot's vector.
    pos: u32,
}

pub struct WheelCore {
    tick_ms: u64,
    bits: u32,
    levels: u32,
    slots: u32,
    elapsed: u64,
    last_now: u64,
    buckets: Vec<Vec<u64>>,
    /// Occupancy bitmap, `words_per_level` u64 per level.
    occupied: Vec<u64>,
    words_per_level: usize,
    overflow: Vec<u64>,
    entries: HashMap<u64, Entry>,
}

impl WheelCore {
    fn new(tick_ms: u64, slots: u32, levels: u32) -> Self {
        let words_per_level = (slots as usize).div_ceil(64);
        WheelCore {
            tick_ms,
            bits: slots.trailing_zeros(),
            levels,
            slots,
            elapsed: 0,
            last_now: 0,
            buckets: (0..(slots as usize) * (levels as usize))
                .map(|_| Vec::new())
                .collect(),
            occupied: vec![0; words_per_level * levels as usize],
            words_per_level,
            overflow: Vec::new(),
            entries: HashMap::new(),
        }
    }

    fn level_slot(&self, p: u64) -> Option<(u32, u32)> {
        let x = p ^ self.elapsed;
        let level = if x == 0 {
            0
        } else {
            (63 - x.leading_zeros()) / self.bits
        };
        if level >= self.levels {
            return None;
        }
        let slot = (shr(p, level * self.bits) as u32) & (self.slots - 1);
        Some((level, slot))
    }

    fn set_bit(&mut self, flat: u32) {
        let level = (flat / self.slots) as usize;
        let s = (flat % self.slots) as usize;
        self.occupied[level * self.words_per_level + s / 64] |= 1u64 << (s % 64);
    }

    fn clear_bit(&mut self, flat: u32) {
        let level = (flat / self.slots) as usize;
        let s = (flat % self.slots) as usize;
        self.occupied[level * self.words_per_level + s / 64] &= !(1u64 << (s % 64));
    }

    /// Place `key` (already absent from every slot) according to T4.
    fn place(&mut self, key: u64, deadline: u64) {
        let p = (deadline / self.tick_ms).max(self.elapsed);
        let (loc, vec) = match self.level_slot(p) {
            Some((l, s)) => {
                let flat = l * self.slots + s;
                self.set_bit(flat);
                (flat, &mut self.buckets[flat as usize])
            }
            None => (OVERFLOW, &mut self.overflow),
        };
        let pos = vec.len() as u32;
        vec.push(key);
        self.entries.insert(key, Entry { deadline, loc, pos });
    }

    /// Remove `key` from its slot (T3); the caller removes it from `entries`.
    fn unslot(&mut self, e: Entry) {
        let vec = if e.loc == OVERFLOW {
            &mut self.overflow
        } else {
            &mut self.buckets[e.loc as usize]
        };
        let pos = e.pos as usize;
        vec.swap_remove(pos);
        let moved = vec.get(pos).copied();
        let now_empty = vec.is_empty();
        if let Some(m) = moved {
            if let Some(me) = self.entries.get_mut(&m) {
                me.pos = e.pos;
            }
        }
        if now_empty && e.loc != OVERFLOW {
            self.clear_bit(e.loc);
        }
    }

    pub fn schedule(&mut self, key: u64, deadline: u64) {
        if let Some(e) = self.entries.remove(&key) {
            self.unslot(e);
        }
        self.place(key, deadline);
    }

    pub fn cancel(&mut self, key: u64) -> bool {
        match self.entries.remove(&key) {
            Some(e) => {
                self.unslot(e);
                true
            }
            None => false,
        }
    }

    /// First occupied slot of `level` at or after the level's position.
    fn next_in_level(&self, level: u32) -> Option<u32> {
        let pos = (shr(self.elapsed, level * self.bits) as u32) & (self.slots - 1);
        let base = level as usize * self.words_per_level;
        let words = &self.occupied[base..base + self.words_per_level];
        let mut w = (pos / 64) as usize;
        let mut bits = words[w] & (u64::MAX << (pos % 64));
        loop {
            if bits != 0 {
                let s = w as u32 * 64 + bits.trailing_zeros();
                return (s < self.slots).then_some(s);
            }
            w += 1;
            if w >= words.len() {
                return None;
            }
            bits = words[w];
        }
    }

    /// Lowest level with an occupied slot: (level, slot, first tick of slot).
    fn next_slot(&self) -> Option<(u32, u32, u64)> {
        for level in 0..self.levels {
            if let Some(s) = self.next_in_level(level) {
                let above = level * self.bits + self.bits;
                let start = (self.elapsed & !low_mask(above)) | shl(s as u64, level * self.bits);
                return Some((level, s, start));
            }
        }
        None
    }

    fn take_bucket(&mut self, flat: u32) -> Vec<u64> {
        self.clear_bit(flat);
        std::mem::take(&mut self.buckets[flat as usize])
    }

    pub fn advance(&mut self, now_ms: u64) -> Vec<u64> {
        if now_ms < self.last_now {
            return Vec::new(); // T2
        }
        self.last_now = now_ms;
        let now_tick = now_ms / self.tick_ms;
        let mut fired: Vec<(u64, u64)> = Vec::new();
        loop {
            match self.next_slot() {
                Some((level, s, start)) if start <= now_tick => {
                    self.elapsed = start;
                    let flat = level * self.slots + s;
                    let keys = self.take_bucket(flat);
                    if level == 0 && start < now_tick {
                        for k in keys {
                            if let Some(e) = self.entries.remove(&k) {
                                fired.push((e.deadline, k));
                            }
                        }
                    } else if level == 0 {
                        // The current tick: only deadlines <= now fire.
                        let mut rest = Vec::new();
                        for k in keys {
                            let Some(e) = self.entries.get_mut(&k) else {
                                continue;
                            };
                            if e.deadline <= now_ms {
                                fired.push((e.deadline, k));
                                self.entries.remove(&k);
                            } else {
                                e.pos = rest.len() as u32;
                                rest.push(k);
                            }
                        }
                        let keep = !rest.is_empty();
                        self.buckets[flat as usize] = rest;
                        if keep {
                            self.set_bit(flat);
                            break;
                        }
                    } else {
                        // Cascade: entries move to lower levels (T4).
                        for k in keys {
                            if let Some(e) = self.entries.get(&k) {
                                let d = e.deadline;
                                self.place(k, d);
                            }
                        }
                    }
                }
                Some(_) => break,
                None => {
                    if self.overflow.is_empty() {
                        break;
                    }
                    let top = self.levels * self.bits;
                    let first = self
                        .overflow
                        .iter()
                        .filter_map(|k| self.entries.get(k))
                        .map(|e| (e.deadline / self.tick_ms) & !low_mask(top))
                        .min();
                    match first {
                        Some(block) if block <= now_tick => {
                            self.elapsed = block;
                            let keys = std::mem::take(&mut self.overflow);
                            for k in keys {
                                if let Some(e) = self.entries.get(&k) {
                                    let d = e.deadline;
                                    self.place(k, d);
                                }
                            }
                        }
                        _ => break,
                    }
                }
            }
        }
        if now_tick > self.elapsed {
            self.elapsed = now_tick;
        }
        fired.sort_unstable();
        fired.into_iter().map(|(_, k)| k).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn deadline(&self, key: u64) -> Option<u64> {
        self.entries.get(&key).map(|e| e.deadline)
    }
}

/// TimingWheel(tick_ms=10, slots=256, levels=4): exact deadlines for u64 keys.
#[pyclass(module = "chatgw_native")]
pub struct TimingWheel {
    core: WheelCore,
}

#[pymethods]
impl TimingWheel {
    #[new]
    #[pyo3(signature = (tick_ms = 10, slots = 256, levels = 4))]
    fn new(tick_ms: i64, slots: i64, levels: i64) -> PyResult<Self> {
        if tick_ms < 1 {
            return Err(PyValueError::new_err("tick_ms must be > 0"));
        }
        if !(2..=MAX_SLOTS).contains(&slots) || (slots & (slots - 1)) != 0 {
            return Err(PyValueError::new_err(format!(
                "slots must be a power of two in 2..={MAX_SLOTS}"
            )));
        }
        if !(1..=MAX_LEVELS).contains(&levels) {
            return Err(PyValueError::new_err(format!(
                "levels must be in 1..={MAX_LEVELS}"
            )));
        }
        Ok(TimingWheel {
            core: WheelCore::new(tick_ms as u64, slots as u32, levels as u32),
        })
    }

    /// Set or replace the deadline of `key`.
    fn schedule(
        slf: &Bound<'_, Self>,
        key: &Bound<'_, PyAny>,
        deadline_ms: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let key = u64_arg(key)?;
        let deadline = u64_arg(deadline_ms)?;
        slf.try_borrow_mut()?.core.schedule(key, deadline);
        Ok(())
    }

    /// True if `key` was scheduled.
    fn cancel(slf: &Bound<'_, Self>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = u64_arg(key)?;
        Ok(slf.try_borrow_mut()?.core.cancel(key))
    }

    /// Keys with deadline <= now_ms, sorted by (deadline, key); they are removed.
    fn advance<'py>(
        slf: &Bound<'py, Self>,
        now_ms: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let now = u64_arg(now_ms)?;
        let keys = slf.try_borrow_mut()?.core.advance(now);
        PyList::new(slf.py(), keys)
    }

    fn deadline(slf: &Bound<'_, Self>, key: &Bound<'_, PyAny>) -> PyResult<Option<u64>> {
        let key = u64_arg(key)?;
        Ok(slf.try_borrow()?.core.deadline(key))
    }

    fn __len__(&self) -> usize {
        self.core.len()
    }

    fn __contains__(slf: &Bound<'_, Self>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(key) = u64_arg(key) else {
            return Ok(false);
        };
        Ok(slf.try_borrow()?.core.deadline(key).is_some())
    }

    fn __repr__(&self) -> String {
        format!(
            "chatgw_native.TimingWheel(len={}, tick_ms={}, slots={}, levels={})",
            self.core.len(),
            self.core.tick_ms,
            self.core.slots,
            self.core.levels
        )
    }
}
