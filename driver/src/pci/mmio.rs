//! BAR mappings: volatile 32-bit MMIO into an mmapped VFIO region, and the SIGBUS guard that
//! turns a vanished device's BAR into all-ones memory.
//!
//! When a device is surprise-removed (or its memory decoding is turned off), the kernel's VFIO
//! fault handler answers an access to the BAR mapping with SIGBUS. A polled driver would die on
//! its next doorbell. The guard ([`install_sigbus_guard`], done by the first [`Bar::map`]) catches
//! SIGBUS at an address inside a registered BAR, replaces the whole BAR mapping with anonymous
//! memory filled with 0xFF (`mmap(MAP_FIXED)`), and returns: the faulting load re-executes and
//! reads all-ones, which the controller code already treats as "device gone". A SIGBUS anywhere
//! else goes to the previous handler (or the default action).
//!
//! The table of registered BARs is a fixed array of atomics, so the handler reads it without
//! locks or allocation (async-signal-safe).
//!
//! Ordering: [`Bar::write32`] is a plain volatile store. Callers that publish memory before a
//! doorbell issue `fence(Release)` themselves (the queue-pair code does).
#![expect(unsafe_code)]
// UNSAFETY: mmap/munmap of device regions, volatile loads and stores into them, and a SIGBUS
// handler installed with sigaction; each block states its invariant.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

/// Most BARs the guard can watch at once (one per open function in practice).
pub const MAX_GUARDED_BARS: usize = 64;

struct Slot {
    /// Start address, 0 when the slot is free.
    start: AtomicUsize,
    /// Length in bytes.
    len: AtomicUsize,
    /// Set by the handler (or [`Bar::detach`]) once the range is anonymous 0xFF memory.
    gone: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE_SLOT: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    gone: AtomicBool::new(false),
};

static SLOTS: [Slot; MAX_GUARDED_BARS] = [FREE_SLOT; MAX_GUARDED_BARS];
/// Serializes slot registration (never taken by the handler).
static REGISTER: Mutex<()> = Mutex::new(());
static INSTALL: Once = Once::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The handler that was installed before ours, saved once before ours goes in.
struct PrevAction(std::cell::UnsafeCell<libc::sigaction>);
// SAFETY: written once inside `INSTALL.call_once` before our handler is installed (so before any
// reader can run), read-only afterwards.
unsafe impl Sync for PrevAction {}
// SAFETY: an all-zero sigaction is SIG_DFL with an empty mask, a valid value.
static PREV: PrevAction = PrevAction(std::cell::UnsafeCell::new(unsafe { std::mem::zeroed() }));

/// Installs the SIGBUS guard for this process (idempotent; [`Bar::map`] calls it).
///
/// # Errors
/// The error of `sigaction`.
pub fn install_sigbus_guard() -> io::Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: an all-zero sigaction is a valid value to fill in.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = sigbus_handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
        // SAFETY: sa_mask is a valid sigset_t inside `sa`.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: PREV is written only here, once, before our handler exists; both pointers are
        // valid sigaction structs.
        let r = unsafe { libc::sigaction(libc::SIGBUS, &sa, PREV.0.get()) };
        if r != 0 {
            result = Err(io::Error::last_os_error());
        } else {
            INSTALLED.store(true, Ordering::Release);
        }
    });
    if result.is_ok() && !INSTALLED.load(Ordering::Acquire) {
        return Err(io::Error::other(
            "installing the SIGBUS handler failed earlier",
        ));
    }
    result
}

/// Replaces `[start, start+len)` with anonymous memory filled with 0xFF. Async-signal-safe
/// (mmap and a byte loop only).
///
/// # Safety
/// `[start, start+len)` must be a mapping this module owns (a registered BAR), and no Rust
/// reference may point into it.
unsafe fn replace_with_ones(start: usize, len: usize) -> bool {
    // SAFETY: MAP_FIXED atomically replaces the caller's own BAR mapping with fresh anonymous
    // memory of the same size; nothing else lives in that range.
    let p = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return false;
    }
    // SAFETY: the range is now our private anonymous memory of `len` bytes.
    unsafe { ptr::write_bytes(start as *mut u8, 0xff, len) };
    true
}

extern "C" fn sigbus_handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    for slot in &SLOTS {
        let start = slot.start.load(Ordering::Acquire);
        let len = slot.len.load(Ordering::Acquire);
        if start != 0 && addr >= start && addr < start + len {
            // SAFETY: the slot names a live BAR mapping (a slot is cleared before its munmap),
            // accessed only through raw pointers.
            if unsafe { replace_with_ones(start, len) } {
                slot.gone.store(true, Ordering::Release);
                return; // the faulting access re-executes on the 0xFF page
            }
            break;
        }
    }
    // Not ours: chain to whatever was there before.
    // SAFETY: PREV was written before this handler was installed and is never written again.
    let prev = unsafe { &*PREV.0.get() };
    let h = prev.sa_sigaction;
    if h == libc::SIG_DFL || h == libc::SIG_IGN {
        // Restore the default action and return: the access faults again and the process dies
        // with SIGBUS as it would have without us (ignoring a fault SIGBUS would spin forever).
        // SAFETY: an all-zero sigaction is SIG_DFL.
        let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
        dfl.sa_sigaction = libc::SIG_DFL;
        // SAFETY: valid sigaction pointer; sigaction is async-signal-safe.
        unsafe { libc::sigaction(libc::SIGBUS, &dfl, ptr::null_mut()) };
    } else if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this signature.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(h) };
        f(sig, info, ctx);
    } else {
        // SAFETY: a handler installed without SA_SIGINFO takes only the signal number.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
        f(sig);
    }
}

/// One BAR, mmapped from a VFIO device fd and registered with the SIGBUS guard.
///
/// Reads and writes are single volatile 32-bit accesses, bounds- and alignment-checked. After the
/// device vanishes (SIGBUS caught) or after [`Bar::detach`], reads return all-ones and writes land
/// in anonymous memory. Dropping the bar unmaps it; do that before closing the device, or the
/// kernel cannot finish removing an unplugged function.
pub struct Bar {
    ptr: *mut u8,
    len: usize,
    slot: usize,
}

// SAFETY: `ptr` is a process-wide mapping owned by this struct; all access is volatile through
// raw pointers, which any thread may do.
unsafe impl Send for Bar {}
// SAFETY: as above; no method hands out references into the mapping.
unsafe impl Sync for Bar {}

impl std::fmt::Debug for Bar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bar")
            .field("va", &self.ptr)
            .field("len", &self.len)
            .field("gone", &self.is_gone())
            .finish()
    }
}

impl Bar {
    /// Maps `len` bytes at `offset` of `device` (a VFIO region's offset) shared, read-write, and
    /// registers the mapping with the SIGBUS guard (installing it on first use).
    ///
    /// # Errors
    /// The error of `sigaction` or `mmap`; `OutOfMemory` when [`MAX_GUARDED_BARS`] are mapped.
    pub fn map(device: BorrowedFd<'_>, offset: u64, len: usize) -> io::Result<Bar> {
        install_sigbus_guard()?;
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty BAR"));
        }
        // SAFETY: a new shared mapping of the device region at an address the kernel picks; it
        // aliases nothing in this process.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                device.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let _g = REGISTER.lock().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = SLOTS
            .iter()
            .position(|s| s.start.load(Ordering::Relaxed) == 0)
        else {
            // SAFETY: unmapping the mapping made above, which nothing else knows of.
            unsafe { libc::munmap(p, len) };
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "too many BARs mapped for the SIGBUS guard",
            ));
        };
        SLOTS[slot].gone.store(false, Ordering::Relaxed);
        SLOTS[slot].len.store(len, Ordering::Release);
        SLOTS[slot].start.store(p as usize, Ordering::Release);
        Ok(Bar {
            ptr: p.cast(),
            len,
            slot,
        })
    }

    /// Length of the mapping.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (an empty BAR cannot be mapped).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// True once the mapping was replaced by all-ones memory (SIGBUS caught, or detached).
    pub fn is_gone(&self) -> bool {
        SLOTS[self.slot].gone.load(Ordering::Acquire)
    }

    #[inline]
    fn at(&self, offset: usize) -> *mut u32 {
        assert!(
            offset & 3 == 0 && offset.checked_add(4).is_some_and(|e| e <= self.len),
            "BAR access out of bounds or misaligned: offset {offset:#x}, BAR {:#x} bytes",
            self.len
        );
        // SAFETY: in bounds (checked above).
        unsafe { self.ptr.add(offset).cast() }
    }

    /// One volatile 32-bit load.
    ///
    /// # Panics
    /// If `offset` is misaligned or outside the BAR (a caller bug, never device input).
    #[inline]
    pub fn read32(&self, offset: usize) -> u32 {
        let p = self.at(offset);
        // SAFETY: `p` is 4-aligned inside the live mapping (the device BAR, or the 0xFF page that
        // replaced it: the mapping itself stays until drop).
        unsafe { ptr::read_volatile(p) }
    }

    /// One volatile 32-bit store.
    ///
    /// # Panics
    /// If `offset` is misaligned or outside the BAR.
    #[inline]
    pub fn write32(&self, offset: usize, value: u32) {
        let p = self.at(offset);
        // SAFETY: as in `read32`.
        unsafe { ptr::write_volatile(p, value) }
    }

    /// Lets go of the device: the mapping is atomically replaced with all-ones anonymous memory,
    /// so the device fd can be closed while other threads may still touch the BAR (they read
    /// all-ones). Idempotent.
    ///
    /// # Errors
    /// The error of `mmap`.
    pub fn detach(&self) -> io::Result<()> {
        let slot = &SLOTS[self.slot];
        if slot.gone.load(Ordering::Acquire) {
            return Ok(());
        }
        // SAFETY: our own mapping, only ever accessed through raw pointers.
        if !unsafe { replace_with_ones(self.ptr as usize, self.len) } {
            return Err(io::Error::last_os_error());
        }
        slot.gone.store(true, Ordering::Release);
        Ok(())
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        {
            let _g = REGISTER.lock().unwrap_or_else(|e| e.into_inner());
            // Unregister first, so the handler never remaps a range we are about to give back.
            SLOTS[self.slot].start.store(0, Ordering::Release);
            SLOTS[self.slot].len.store(0, Ordering::Release);
        }
        // SAFETY: exactly the mapping made in `map` (or its anonymous replacement, same range);
        // `&mut self` means no access is in progress through this Bar.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A fresh `len`-byte file `dir/bar` (the directory is created), to map as a fake BAR.
    fn bar_file(dir: &std::path::Path, len: u64) -> std::fs::File {
        std::fs::create_dir_all(dir).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("bar"))
            .unwrap();
        f.set_len(len).unwrap();
        f
    }

    /// A file-backed mapping past the end of the file faults with SIGBUS, as a vanished device's
    /// BAR does: the guard must turn it into all-ones.
    #[test]
    fn sigbus_in_a_guarded_bar_reads_all_ones() {
        let dir = std::env::temp_dir().join(format!("vfnvme-mmio-{}", std::process::id()));
        let f = bar_file(&dir, 16384);
        let bar = Bar::map(f.as_fd(), 0, 16384).unwrap();
        bar.write32(0x14, 0x1234_5678);
        assert_eq!(bar.read32(0x14), 0x1234_5678);
        assert!(!bar.is_gone());
        // "Surprise removal": the pages behind the mapping disappear.
        f.set_len(0).unwrap();
        assert_eq!(bar.read32(0x1c), u32::MAX);
        assert!(bar.is_gone());
        assert_eq!(bar.read32(0x14), u32::MAX);
        bar.write32(0x1000, 1); // lands in anonymous memory, no fault
        drop(bar);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn detach_reads_all_ones() {
        let dir = std::env::temp_dir().join(format!("vfnvme-mmio-d-{}", std::process::id()));
        let f = bar_file(&dir, 4096);
        let bar = Bar::map(f.as_fd(), 0, 4096).unwrap();
        bar.write32(0, 7);
        bar.detach().unwrap();
        assert!(bar.is_gone());
        assert_eq!(bar.read32(0), u32::MAX);
        drop(bar);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn out_of_bounds_access_panics() {
        let dir = std::env::temp_dir().join(format!("vfnvme-mmio-o-{}", std::process::id()));
        let f = bar_file(&dir, 4096);
        let bar = Bar::map(f.as_fd(), 0, 4096).unwrap();
        bar.read32(4096);
    }
}
