//! The per-core requeue ring: slot indices of commands waiting to be (re)sent, in order.
//!
//! It is bounded by the channel's number of command slots, and a slot is on the ring at most once,
//! so pushing never fails: backpressure happens earlier, when a submitter finds no free slot.

/// A bounded FIFO of command slot indices.
pub struct RequeueRing {
    buf: Box<[u32]>,
    head: usize,
    len: usize,
}

impl RequeueRing {
    /// A ring for `capacity` slots.
    pub fn new(capacity: usize) -> RequeueRing {
        RequeueRing {
            buf: vec![0; capacity.max(1)].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    /// Entries waiting.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a slot. Returns false (and changes nothing) when full, which the channel rules out
    /// by construction.
    pub fn push(&mut self, slot: u32) -> bool {
        if self.len == self.buf.len() {
            return false;
        }
        let i = (self.head + self.len) % self.buf.len();
        self.buf[i] = slot;
        self.len += 1;
        true
    }

    /// Takes the oldest slot.
    pub fn pop(&mut self) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let v = self.buf[self.head];
        self.head = (self.head + 1) % self.buf.len();
        self.len -= 1;
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_bounded_and_wrapping() {
        let mut r = RequeueRing::new(3);
        assert!(r.is_empty());
        assert!(r.push(1) && r.push(2) && r.push(3));
        assert!(!r.push(4), "full ring refuses");
        assert_eq!(r.pop(), Some(1));
        assert!(r.push(4));
        assert_eq!(
            (r.pop(), r.pop(), r.pop(), r.pop()),
            (Some(2), Some(3), Some(4), None)
        );
        for i in 0..100 {
            assert!(r.push(i));
            assert_eq!(r.pop(), Some(i));
        }
    }
}
