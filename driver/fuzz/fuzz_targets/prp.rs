//! Arbitrary buffer shapes through the PRP builder, checked against a walk of the PRPs the way a
//! device does it: every data page in order, each list entry page-aligned, chains only where
//! more than one page remains.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfnvme::qpair::prp::{build, list_pages_needed, pages_spanned, ENTRIES_PER_LIST, PAGE_SIZE};

fuzz_target!(|input: (u64, u32)| {
    let (iova, len) = input;
    let iova = iova & ((1 << 52) - 1) & !3;
    let len = (len as u64 % (16 << 20)) + 1;
    let base = 1u64 << 60;
    let n = list_pages_needed(pages_spanned(iova, len));
    let mut lists = vec![vec![0u64; ENTRIES_PER_LIST]; n];
    let (p1, p2) = build(iova, len, |i| base + i as u64 * PAGE_SIZE, |i, s, e| lists[i][s] = e)
        .expect("aligned, non-empty input is accepted");
    assert_eq!(p1, iova);
    let pages = pages_spanned(iova, len);
    let first = iova & !(PAGE_SIZE - 1);
    let mut seen = vec![first];
    if pages == 2 {
        seen.push(p2);
    } else if pages > 2 {
        let (mut list, mut slot) = (((p2 - base) / PAGE_SIZE) as usize, 0);
        while (seen.len() as u64) < pages {
            let e = lists[list][slot];
            assert_eq!(e % PAGE_SIZE, 0, "list entries are page addresses");
            if slot == ENTRIES_PER_LIST - 1 && pages - seen.len() as u64 > 1 {
                list = ((e - base) / PAGE_SIZE) as usize;
                slot = 0;
                continue;
            }
            seen.push(e);
            slot += 1;
        }
    }
    for (k, p) in seen.iter().enumerate() {
        assert_eq!(*p, first + k as u64 * PAGE_SIZE);
    }
});
