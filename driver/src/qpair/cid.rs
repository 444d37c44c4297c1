//! The command-id table: one slot per command a queue can hold, each with a generation.
//!
//! A command id is `slot | generation << SLOT_BITS`. The generation changes every time a slot is
//! reused, so a completion for a slot's earlier command (a stale id), for a free slot (a duplicate
//! completion) or for a slot past the table (an unknown id) is recognised and refused instead of
//! completing the wrong command.

/// Bits of a command id that index the slot (queues hold at most 4096 commands).
pub const SLOT_BITS: u32 = 12;
const SLOT_MASK: u16 = (1 << SLOT_BITS) - 1;
const GEN_MOD: u16 = 1 << (16 - SLOT_BITS);

/// What is wrong with a completion's command id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CidFault {
    /// The slot is past the table.
    Unknown,
    /// The slot holds no command (already completed: a duplicate completion).
    NotInFlight,
    /// The slot holds a newer command than the one this id named.
    Stale,
}

/// Slot-and-generation table of in-flight commands, with a free stack. `T` is the per-command
/// record (kept small: the design allows at most 256 bytes of host memory per command).
pub struct CidTable<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u16>,
}

struct Slot<T> {
    gen: u16,
    busy: bool,
    value: T,
}

impl<T: Default> CidTable<T> {
    /// A table with `n` slots (at most 4096).
    ///
    /// # Panics
    /// If `n` is 0 or above 4096 (a caller bug: queue sizes are checked before).
    pub fn new(n: usize) -> Self {
        assert!(n > 0 && n <= 1 << SLOT_BITS, "cid table size {n}");
        CidTable {
            slots: (0..n)
                .map(|_| Slot {
                    gen: 0,
                    busy: false,
                    value: T::default(),
                })
                .collect(),
            free: (0..n as u16).rev().collect(),
        }
    }
}

impl<T> CidTable<T> {
    /// Slots in use.
    #[inline]
    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Total slots.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Free command ids.
    #[inline]
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Takes a free slot, stores `value` and returns the command id, or `None` when full.
    #[inline]
    pub fn alloc(&mut self, value: T) -> Option<u16> {
        let (cid, v) = self.alloc_in_place()?;
        *v = value;
        Some(cid)
    }

    /// Takes a free slot and returns the command id and the slot's record, for the caller to
    /// write in place (it holds the record of the slot's last command), or `None` when full.
    #[inline(always)]
    pub fn alloc_in_place(&mut self) -> Option<(u16, &mut T)> {
        let slot = self.free.pop()?;
        let s = &mut self.slots[slot as usize];
        s.gen = (s.gen + 1) % GEN_MOD;
        s.busy = true;
        Some((slot | (s.gen << SLOT_BITS), &mut s.value))
    }

    /// Checks a command id from the device without changing anything.
    #[inline]
    pub fn check(&self, cid: u16) -> Result<usize, CidFault> {
        let slot = (cid & SLOT_MASK) as usize;
        let s = self.slots.get(slot).ok_or(CidFault::Unknown)?;
        if !s.busy {
            return Err(CidFault::NotInFlight);
        }
        if s.gen != cid >> SLOT_BITS {
            return Err(CidFault::Stale);
        }
        Ok(slot)
    }

    /// The record of an in-flight slot.
    #[inline]
    pub fn get_mut(&mut self, slot: usize) -> &mut T {
        &mut self.slots[slot].value
    }

    /// The record of a slot.
    #[inline]
    pub fn get(&self, slot: usize) -> &T {
        &self.slots[slot].value
    }

    /// The current command id of an in-flight slot.
    #[inline]
    pub fn cid_of(&self, slot: usize) -> u16 {
        slot as u16 | (self.slots[slot].gen << SLOT_BITS)
    }

    /// Frees a slot checked by [`CidTable::check`] and returns (a copy of) its record, which
    /// stays in the free slot until the next `alloc` overwrites it: nothing reads a free slot's
    /// record, so it is not cleared.
    #[inline]
    pub fn free(&mut self, slot: usize) -> T
    where
        T: Copy,
    {
        *self.free_in_place(slot)
    }

    /// Frees a slot checked by [`CidTable::check`], as [`CidTable::free`], and lends its record
    /// where it lies: a caller that reads only some of it loads only that, when it needs it.
    #[inline]
    pub fn free_in_place(&mut self, slot: usize) -> &T {
        let s = &mut self.slots[slot];
        debug_assert!(s.busy);
        s.busy = false;
        self.free.push(slot as u16);
        &s.value
    }

    /// True if `slot` holds a command in flight.
    #[inline]
    pub fn is_busy(&self, slot: usize) -> bool {
        self.slots.get(slot).is_some_and(|s| s.busy)
    }

    /// Indices of the slots in flight (for timeout scans and failing everything at a reset).
    pub fn busy_slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.busy)
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_checked() {
        let mut t: CidTable<u64> = CidTable::new(4);
        let ids: Vec<u16> = (0..4).map(|i| t.alloc(i).unwrap()).collect();
        assert_eq!(t.alloc(9), None, "full table refuses");
        assert_eq!(t.free_count(), 0, "full");
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 4);
        let slot = t.check(ids[2]).unwrap();
        assert_eq!(*t.get(slot), 2);
        assert_eq!(t.free(slot), 2);
        assert_eq!(
            t.check(ids[2]),
            Err(CidFault::NotInFlight),
            "duplicate completion"
        );
        let again = t.alloc(7).unwrap();
        assert_eq!(again & SLOT_MASK, ids[2] & SLOT_MASK, "slot reused");
        assert_ne!(again, ids[2], "with a new generation");
        assert_eq!(t.check(ids[2]), Err(CidFault::Stale));
        assert_eq!(t.check(again).map(|s| *t.get(s)), Ok(7));
        assert_eq!(t.check(100), Err(CidFault::Unknown));
        assert_eq!(t.check(0xffff), Err(CidFault::Unknown));
        assert_eq!(t.in_flight(), 4);
    }

    #[test]
    fn freeing_in_place_frees_as_freeing_does_and_lends_the_record() {
        let mut t: CidTable<[u64; 3]> = CidTable::new(2);
        let a = t.alloc([1, 2, 3]).unwrap();
        let b = t.alloc([4, 5, 6]).unwrap();
        let slot = t.check(b).unwrap();
        assert_eq!(*t.free_in_place(slot), [4, 5, 6]);
        assert_eq!(t.check(b), Err(CidFault::NotInFlight), "freed");
        assert_eq!((t.free_count(), t.in_flight()), (1, 1));
        assert_eq!(
            t.check(a).map(|s| *t.get(s)),
            Ok([1, 2, 3]),
            "the other untouched"
        );
        let c = t.alloc([7, 8, 9]).unwrap();
        assert_eq!(c & SLOT_MASK, b & SLOT_MASK, "the slot is taken again");
        assert_eq!(t.check(c).map(|s| *t.get(s)), Ok([7, 8, 9]));
    }

    #[test]
    fn generations_wrap_without_colliding_with_the_live_id() {
        let mut t: CidTable<()> = CidTable::new(1);
        let mut prev = t.alloc(()).unwrap();
        for _ in 0..100 {
            let s = t.check(prev).unwrap();
            t.free(s);
            let id = t.alloc(()).unwrap();
            assert_ne!(id, prev);
            assert_eq!(t.check(prev), Err(CidFault::Stale));
            prev = id;
        }
    }

    #[test]
    #[should_panic]
    fn oversized_table_is_a_bug() {
        let _t: CidTable<()> = CidTable::new(4097);
    }
}
