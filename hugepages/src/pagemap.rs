//! Physical addresses from `/proc/self/pagemap`, for VFIO's no-IOMMU mode where the device sees
//! physical memory. Reading the page frame numbers needs CAP_SYS_ADMIN: without it the kernel
//! reports zero, which is an error here.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::{Error, Result};

const PFN_MASK: u64 = (1 << 55) - 1;
const PAGE_PRESENT: u64 = 1 << 63;

/// Parses one 64-bit pagemap entry: the page frame number, if the page is present and the kernel
/// showed the PFN.
pub fn pfn_of_entry(entry: u64) -> Option<u64> {
    let pfn = entry & PFN_MASK;
    (entry & PAGE_PRESENT != 0 && pfn != 0).then_some(pfn)
}

/// The physical address behind virtual address `va` of this process.
///
/// # Errors
/// [`Error::Io`] if pagemap cannot be read, or if the page is absent or its frame number is hidden
/// (not root).
pub fn virt_to_phys(va: usize) -> Result<u64> {
    let page = page_size();
    let path = "/proc/self/pagemap";
    let f = File::open(path).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })?;
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, (va / page * 8) as u64)
        .map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
    let pfn = pfn_of_entry(u64::from_le_bytes(b)).ok_or_else(|| Error::Io {
        path: path.into(),
        source: std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("no page frame for va {va:#x}: page absent, or not running as root"),
        ),
    })?;
    Ok(pfn * page as u64 + (va % page) as u64)
}

fn page_size() -> usize {
    4096
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_decoding() {
        assert_eq!(pfn_of_entry(0), None);
        assert_eq!(pfn_of_entry(PAGE_PRESENT), None, "hidden pfn");
        assert_eq!(pfn_of_entry(PAGE_PRESENT | 0x1234), Some(0x1234));
        assert_eq!(pfn_of_entry(0x1234), None, "not present");
    }

    #[test]
    fn lookup_of_a_touched_page() {
        let v = vec![1u8; 8192];
        match virt_to_phys(v.as_ptr() as usize + 100) {
            Ok(pa) => assert_eq!(pa % 4096, (v.as_ptr() as u64 + 100) % 4096),
            Err(e) => eprintln!("skipped: pagemap hides frame numbers here ({e})"),
        }
    }
}
