//! PRP walking, the way a device must do it (NVMe Base 2.0 §4.1.1, "Physical Region Page Entry
//! and List").
//!
//! * PRP1 is a page address plus an offset; the offset must be dword aligned.
//! * Data that fits in PRP1's page leaves PRP2 unused. Data that ends in the next page makes
//!   PRP2 that page's address (offset 0). Longer data makes PRP2 a PRP list pointer, which may
//!   carry a dword-aligned offset.
//! * List entries are page addresses with offset 0. A list page holds `page / 8` entries; its
//!   last entry points to the next list page only if more than one page of data remains.
//!
//! A malformed PRP is 0/13h PRP Offset Invalid; an address outside the controller's DMA domain
//! (including the list pages themselves) is 0/04h Data Transfer Error. The result is a list of
//! segments in the caller's reusable vector, so a command allocates nothing once warm.

use crate::spec::status::{generic, sct};
use crate::spec::Status;

use super::dma::{DmaView, Loc};

/// One contiguous piece of a transfer inside one mapped region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Seg {
    pub(crate) loc: Loc,
    pub(crate) len: usize,
}

pub(crate) const PRP_OFFSET_INVALID: Status =
    Status::new(sct::GENERIC, generic::PRP_OFFSET_INVALID).with_dnr(true);
pub(crate) const DATA_TRANSFER_ERROR: Status =
    Status::new(sct::GENERIC, generic::DATA_TRANSFER_ERROR);

fn push(out: &mut Vec<Seg>, loc: Loc, len: usize) {
    if let Some(last) = out.last_mut() {
        if last.loc.map == loc.map && last.loc.offset + last.len == loc.offset {
            last.len += len;
            return;
        }
    }
    out.push(Seg { loc, len });
}

fn data(view: &mut DmaView, out: &mut Vec<Seg>, iova: u64, len: usize) -> Result<(), Status> {
    let loc = view.translate(iova, len).ok_or(DATA_TRANSFER_ERROR)?;
    push(out, loc, len);
    Ok(())
}

/// Reads one 8-byte list entry at `iova`.
fn entry(view: &mut DmaView, iova: u64) -> Result<u64, Status> {
    let loc = view.translate(iova, 8).ok_or(DATA_TRANSFER_ERROR)?;
    let mut b = [0u8; 8];
    view.region(loc).read(loc.offset, &mut b);
    Ok(u64::from_le_bytes(b))
}

/// Walks the PRPs of a `len`-byte transfer with memory pages of `1 << page_shift` bytes and
/// appends the segments to `out` (cleared first).
///
/// # Errors
/// The status the command completes with: PRP Offset Invalid or Data Transfer Error.
pub(crate) fn walk(
    view: &mut DmaView,
    prp1: u64,
    prp2: u64,
    len: usize,
    page_shift: u32,
    out: &mut Vec<Seg>,
) -> Result<(), Status> {
    out.clear();
    if len == 0 {
        return Ok(());
    }
    let page = 1usize << page_shift;
    let mask = page as u64 - 1;
    let off1 = (prp1 & mask) as usize;
    if off1 & 3 != 0 {
        return Err(PRP_OFFSET_INVALID);
    }
    let first = len.min(page - off1);
    data(view, out, prp1, first)?;
    let mut remaining = len - first;
    if remaining == 0 {
        return Ok(());
    }
    if remaining <= page {
        if prp2 & mask != 0 {
            return Err(PRP_OFFSET_INVALID);
        }
        return data(view, out, prp2, remaining);
    }
    // PRP2 is a list pointer.
    if prp2 & 3 != 0 {
        return Err(PRP_OFFSET_INVALID);
    }
    let mut list = prp2;
    loop {
        let in_page = (page - (list & mask) as usize) / 8;
        if in_page == 0 {
            return Err(PRP_OFFSET_INVALID);
        }
        for i in 0..in_page {
            let e = entry(view, list.wrapping_add(8 * i as u64))?;
            if i == in_page - 1 && remaining > page {
                // Chain to the next list page.
                if e & mask != 0 {
                    return Err(PRP_OFFSET_INVALID);
                }
                list = e;
                break;
            }
            if e & mask != 0 {
                return Err(PRP_OFFSET_INVALID);
            }
            let n = remaining.min(page);
            data(view, out, e, n)?;
            remaining -= n;
            if remaining == 0 {
                return Ok(());
            }
        }
    }
}
