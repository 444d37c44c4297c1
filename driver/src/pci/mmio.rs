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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Once};

/// Most BARs the guard can watch at once (one per open function in practice).
pub const MAX_GUARDED_BARS: usize = 64;

struct Slot {
    /// The mapping, start and length packed in one word ([`pack_range`]) so that the handler
    /// never pairs one BAR's start with another's length; 0 when the slot is free.
    range: AtomicU64,
    /// Set by the handler (or [`Bar::detach`]) once the range is anonymous 0xFF memory.
    gone: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE_SLOT: Slot = Slot {
    range: AtomicU64::new(0),
    gone: AtomicBool::new(false),
};

const PAGE_SHIFT: u32 = 12;
/// Bits of the packed range that hold the start page (a 48-bit address space).
const START_BITS: u32 = 36;

/// One word for a page-aligned mapping: its start page and its length in pages (below 2^28
/// pages, 1 TiB).
fn pack_range(start: usize, len: usize) -> u64 {
    let pages = len.div_ceil(1 << PAGE_SHIFT) as u64;
    debug_assert!(start.is_multiple_of(1 << PAGE_SHIFT) && pages < 1 << (64 - START_BITS));
    (start as u64 >> PAGE_SHIFT) | pages << START_BITS
}

/// `(start, len)` of a packed range (the length rounded up to whole pages).
fn unpack_range(r: u64) -> (usize, usize) {
    let start = ((r & ((1 << START_BITS) - 1)) << PAGE_SHIFT) as usize;
    let len = ((r >> START_BITS) << PAGE_SHIFT) as usize;
    (start, len)
}

static SLOTS: [Slot; MAX_GUARDED_BARS] = [FREE_SLOT; MAX_GUARDED_BARS];
/// Serializes slot registration (never taken by the handler).
static REGISTER: Mutex<()> = Mutex::new(());
static INSTALL: Once = Once::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The handler that was installed before ours, saved once before ours goes in.
struct PrevAction(std::cell::UnsafeCell<libc::sigaction>);
// SAFETY: written once inside `INSTALL.call_once`, by a `sigaction` call that only reads the
// current action, before a second call installs our handler (so before any reader can run);
// read-only afterwards.
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
        // SAFETY: PREV is written only here, once, by a call that installs nothing, before our
        // handler exists; both pointers are valid sigaction structs.
        let r = unsafe {
            if libc::sigaction(libc::SIGBUS, ptr::null(), PREV.0.get()) != 0 {
                -1
            } else {
                libc::sigaction(libc::SIGBUS, &sa, ptr::null_mut())
            }
        };
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

/// Replaces `[start, start+len)` with anonymous memory filled with 0xFF, in one step: the pages
/// are filled elsewhere first and then moved over the range (`mremap`), so another thread reads
/// either the BAR or all-ones, never zeroes. Async-signal-safe in practice (system calls and a
/// byte loop on private memory only).
///
/// # Safety
/// `[start, start+len)` must be a mapping this module owns (a registered BAR), and no Rust
/// reference may point into it.
unsafe fn replace_with_ones(start: usize, len: usize) -> bool {
    // SAFETY: a fresh private anonymous mapping at an address the kernel picks.
    let scratch = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if scratch == libc::MAP_FAILED {
        return false;
    }
    // SAFETY: `scratch` is our own private memory of `len` bytes, which no other thread knows.
    unsafe { ptr::write_bytes(scratch as *mut u8, 0xff, len) };
    // SAFETY: MREMAP_FIXED moves the filled pages over the caller's own BAR mapping, replacing
    // it atomically; nothing else lives in that range.
    let p = unsafe {
        libc::mremap(
            scratch,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            start as *mut libc::c_void,
        )
    };
    if p == libc::MAP_FAILED {
        // SAFETY: our scratch mapping, never shared.
        unsafe { libc::munmap(scratch, len) };
        return false;
    }
    true
}

extern "C" fn sigbus_handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: errno is this thread's; saved so the interrupted code never sees ours.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // Only a fault the kernel raised (not `kill`) names an address.
    if code == libc::BUS_ADRERR || code == libc::BUS_OBJERR {
        for slot in &SLOTS {
            let (start, len) = unpack_range(slot.range.load(Ordering::Acquire));
            if start != 0 && addr >= start && addr < start + len {
                // SAFETY: the slot names a live BAR mapping, start and length from one load (a
                // slot is cleared before its munmap), accessed only through raw pointers.
                if unsafe { replace_with_ones(start, len) } {
                    slot.gone.store(true, Ordering::Release);
                    // SAFETY: as above.
                    unsafe { *libc::__errno_location() = errno };
                    return; // the faulting access re-executes on the 0xFF page
                }
                break;
            }
        }
    }
    // Not ours: chain to whatever was there before.
    // SAFETY: PREV was written before this handler was installed and is never written again.
    let prev = unsafe { &*PREV.0.get() };
    let h = prev.sa_sigaction;
    if h == libc::SIG_DFL || h == libc::SIG_IGN {
        if code <= 0 && h == libc::SIG_IGN {
            // A SIGBUS sent by a process, which was ignored before us: ignore it.
            return;
        }
        // Restore the default action and die of SIGBUS as without us: a fault does when its
        // access re-executes (ignoring a fault SIGBUS would spin forever); a sent signal is
        // raised again.
        // SAFETY: an all-zero sigaction is SIG_DFL.
        let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
        dfl.sa_sigaction = libc::SIG_DFL;
        // SAFETY: valid sigaction pointer; sigaction and raise are async-signal-safe.
        unsafe {
            libc::sigaction(libc::SIGBUS, &dfl, ptr::null_mut());
            if code <= 0 {
                libc::raise(libc::SIGBUS);
            }
        }
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
            .position(|s| s.range.load(Ordering::Relaxed) == 0)
        else {
            // SAFETY: unmapping the mapping made above, which nothing else knows of.
            unsafe { libc::munmap(p, len) };
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "too many BARs mapped for the SIGBUS guard",
            ));
        };
        SLOTS[slot].gone.store(false, Ordering::Relaxed);
        SLOTS[slot]
            .range
            .store(pack_range(p as usize, len), Ordering::Release);
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
            SLOTS[self.slot].range.store(0, Ordering::Release);
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
    fn a_detach_under_a_reading_thread_shows_it_the_bar_or_all_ones_never_zeroes() {
        // Arrange: an 8 MiB BAR whose last dword holds 7 (filled last by a replacement that
        // fills in place), read in a loop by another thread.
        const LEN: usize = 8 << 20;
        let dir = std::env::temp_dir().join(format!("vfnvme-mmio-r-{}", std::process::id()));
        let f = bar_file(&dir, LEN as u64);
        let bar = Bar::map(f.as_fd(), 0, LEN).unwrap();
        bar.write32(LEN - 4, 7);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut seen_ones = false;
                while !stop.load(Ordering::Acquire) || !seen_ones {
                    match bar.read32(LEN - 4) {
                        7 => {}
                        u32::MAX => seen_ones = true,
                        v => panic!("read {v:#x} while the BAR was being replaced"),
                    }
                }
            });
            // Act
            std::thread::sleep(std::time::Duration::from_millis(5));
            bar.detach().unwrap();
            stop.store(true, Ordering::Release);
            reader.join().unwrap();
        });
        // Assert (in the reader): only 7, then all-ones.
        assert!(bar.is_gone());
        drop(bar);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_slot_keeps_start_and_length_in_one_word() {
        for (start, len) in [
            (0x7f12_3456_7000usize, 16 << 10),
            (0x1000, 4096),
            (0x5000, 5000),
        ] {
            let (s, l) = unpack_range(pack_range(start, len));
            assert_eq!((s, l), (start, len.div_ceil(4096) * 4096));
        }
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
