//! The PRP builder: PRP1/PRP2 and chained PRP lists for a transfer that is contiguous in IOVA
//! space (every `DmaBuf` is), following the spec's rules:
//!
//! * PRP1 is the first byte's address, with its page offset (dword-aligned).
//! * If the data ends inside PRP1's page, PRP2 is unused (0). If it ends in the next page, PRP2 is
//!   that page. Otherwise PRP2 points to a PRP list.
//! * List entries are page addresses. A list page holds `page / 8` entries; its last slot points
//!   to the next list page only when more than one data page remains.

/// Controller memory page size this driver programs (CC.MPS = 0).
pub const PAGE_SIZE: u64 = 4096;
/// PRP entries per list page.
pub const ENTRIES_PER_LIST: usize = (PAGE_SIZE / 8) as usize;

/// Data pages touched by `len` bytes starting at `iova`.
#[inline]
pub fn pages_spanned(iova: u64, len: u64) -> u64 {
    debug_assert!(len > 0);
    ((iova % PAGE_SIZE) + len).div_ceil(PAGE_SIZE)
}

/// PRP list pages needed for a transfer spanning `pages` data pages.
#[inline]
pub fn list_pages_needed(pages: u64) -> usize {
    if pages <= 2 {
        return 0;
    }
    let mut entries = (pages - 1) as usize;
    let mut lists = 1;
    while entries > ENTRIES_PER_LIST {
        // This list page holds ENTRIES_PER_LIST - 1 data entries and a chain pointer.
        entries -= ENTRIES_PER_LIST - 1;
        lists += 1;
    }
    lists
}

/// Why a transfer cannot be described with PRPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrpError {
    /// The first byte is not dword-aligned.
    Misaligned,
    /// Zero-length transfer.
    Empty,
}

/// Builds the PRPs for `len` bytes at `iova`. `list_iova(i)` gives the IOVA of list page `i`
/// (0-based, as many as [`list_pages_needed`] says), and `write(i, slot, entry)` stores one entry
/// into list page `i`. Returns `(prp1, prp2)`.
///
/// # Errors
/// [`PrpError`] for a misaligned start or an empty transfer.
#[inline]
pub fn build(
    iova: u64,
    len: u64,
    list_iova: impl Fn(usize) -> u64,
    mut write: impl FnMut(usize, usize, u64),
) -> Result<(u64, u64), PrpError> {
    if len == 0 {
        return Err(PrpError::Empty);
    }
    if !iova.is_multiple_of(4) {
        return Err(PrpError::Misaligned);
    }
    let pages = pages_spanned(iova, len);
    let first_page = iova & !(PAGE_SIZE - 1);
    match pages {
        1 => Ok((iova, 0)),
        2 => Ok((iova, first_page + PAGE_SIZE)),
        _ => {
            let mut remaining = (pages - 1) as usize;
            let mut next = first_page + PAGE_SIZE;
            let mut list = 0;
            loop {
                if remaining <= ENTRIES_PER_LIST {
                    for slot in 0..remaining {
                        write(list, slot, next);
                        next += PAGE_SIZE;
                    }
                    break;
                }
                for slot in 0..ENTRIES_PER_LIST - 1 {
                    write(list, slot, next);
                    next += PAGE_SIZE;
                }
                write(list, ENTRIES_PER_LIST - 1, list_iova(list + 1));
                remaining -= ENTRIES_PER_LIST - 1;
                list += 1;
            }
            Ok((iova, list_iova(0)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks PRPs the way a device does and returns the data pages, to check `build` against.
    fn walk(prp1: u64, prp2: u64, len: u64, lists: &[Vec<u64>], list_base: u64) -> Vec<u64> {
        let mut pages = vec![prp1 & !(PAGE_SIZE - 1)];
        let n = pages_spanned(prp1, len);
        if n == 2 {
            pages.push(prp2);
        } else if n > 2 {
            let mut list = ((prp2 - list_base) / PAGE_SIZE) as usize;
            let mut slot = 0;
            while (pages.len() as u64) < n {
                let e = lists[list][slot];
                let left = n - pages.len() as u64;
                if slot == ENTRIES_PER_LIST - 1 && left > 1 {
                    list = ((e - list_base) / PAGE_SIZE) as usize;
                    slot = 0;
                    continue;
                }
                pages.push(e);
                slot += 1;
            }
        }
        pages
    }

    fn check(iova: u64, len: u64) {
        let base = 0x7000_0000;
        let n = list_pages_needed(pages_spanned(iova, len));
        let mut lists = vec![vec![0u64; ENTRIES_PER_LIST]; n];
        let (p1, p2) = build(
            iova,
            len,
            |i| base + i as u64 * PAGE_SIZE,
            |i, s, e| lists[i][s] = e,
        )
        .unwrap();
        assert_eq!(p1, iova);
        let pages = walk(p1, p2, len, &lists, base);
        let first = iova & !(PAGE_SIZE - 1);
        let want: Vec<u64> = (0..pages_spanned(iova, len))
            .map(|k| first + k * PAGE_SIZE)
            .collect();
        assert_eq!(pages, want, "iova {iova:#x} len {len}");
        if pages.len() == 1 {
            assert_eq!(p2, 0);
        }
    }

    #[test]
    fn boundary_shapes() {
        let b = 0x1_0000_0000u64;
        check(b, 512); // one page, partial
        check(b, 4096); // exactly one page
        check(b + 4092, 4); // last dword of a page
        check(b + 4092, 8); // straddles into the next page: PRP2 = next page
        check(b, 8192); // two pages
        check(b + 512, 8192); // unaligned: three pages, list
        check(b, 12288); // three pages
        check(b, 512 * 4096); // 512 pages: list of 511
        check(b, 513 * 4096); // 513 pages: list of exactly 512 entries, no chain
        check(b, 514 * 4096); // chain
        check(b + 4, 2 << 20); // 2 MiB unaligned
        check(b, 8 << 20); // several chained lists
    }

    #[test]
    fn list_page_counts() {
        assert_eq!(list_pages_needed(1), 0);
        assert_eq!(list_pages_needed(2), 0);
        assert_eq!(list_pages_needed(3), 1);
        assert_eq!(list_pages_needed(513), 1);
        assert_eq!(list_pages_needed(514), 2);
        assert_eq!(list_pages_needed(1 + 511 + 512), 2);
        assert_eq!(list_pages_needed(1 + 511 + 513), 3);
    }

    #[test]
    fn refusals() {
        assert_eq!(build(2, 4, |_| 0, |_, _, _| {}), Err(PrpError::Misaligned));
        assert_eq!(build(0, 0, |_| 0, |_, _, _| {}), Err(PrpError::Empty));
    }
}
