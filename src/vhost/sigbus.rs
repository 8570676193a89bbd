//! Containing SIGBUS on guest memory.
//!
//! Guest memory is a file the frontend shares with us (a memfd, a file on
//! tmpfs or hugetlbfs). If the frontend shrinks that file under our mapping,
//! or a hugetlbfs pool runs dry, touching the lost pages raises SIGBUS,
//! which would kill the daemon and every other VM's disks with it. Two
//! defences (docs/architecture.md, "One VM cannot take the others down"):
//!
//! 1. At SET_MEM_TABLE / ADD_MEM_REG a region must lie inside its file
//!    (checked with fstat), so an honest table never faults.
//! 2. Every mapped region is registered here with the connection that owns
//!    it. The SIGBUS handler looks the faulting address up, maps a private
//!    zero page over it (so the faulting access completes and reads zeros),
//!    flags the owning connection and wakes it through its eventfd; the
//!    connection then logs the fault and disconnects. A fault outside every
//!    registered region is a real bug: the default action runs (core dump).
//!
//! The handler is async-signal-safe: it only reads and writes atomics in a
//! fixed table and calls mmap(2) and write(2).

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};

/// Regions that can be registered at once (all connections together).
const SLOTS: usize = 4096;

struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    /// The owning connection's fault cell, as a raw pointer (0: free).
    owner: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    owner: AtomicUsize::new(0),
};

static TABLE: [Slot; SLOTS] = [FREE; SLOTS];
static INSTALL: Once = Once::new();

/// What a connection learns of faults on its memory.
#[derive(Debug)]
pub struct FaultCell {
    /// Faults so far.
    faults: AtomicU64,
    /// The last faulting address.
    addr: AtomicUsize,
    /// Written (8 bytes) on every fault; -1 when none.
    wake_fd: AtomicI32,
}

impl FaultCell {
    pub fn new(wake_fd: RawFd) -> Arc<Self> {
        Arc::new(FaultCell {
            faults: AtomicU64::new(0),
            addr: AtomicUsize::new(0),
            wake_fd: AtomicI32::new(wake_fd),
        })
    }

    /// Faults so far and the last faulting address.
    pub fn faults(&self) -> (u64, usize) {
        (
            self.faults.load(Ordering::SeqCst),
            self.addr.load(Ordering::SeqCst),
        )
    }
}

/// A registered region; unregistered on drop.
#[derive(Debug)]
pub struct Registration {
    slot: usize,
    // Keeps the cell alive as long as the handler may dereference it.
    _cell: Arc<FaultCell>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(s) = TABLE.get(self.slot) {
            // Hide the slot from the handler, clear it, then free it.
            s.owner.store(usize::MAX, Ordering::SeqCst);
            s.len.store(0, Ordering::SeqCst);
            s.start.store(0, Ordering::SeqCst);
            s.owner.store(0, Ordering::SeqCst);
        }
    }
}

/// Install the process-wide SIGBUS handler (once).
pub fn install() -> io::Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is a valid starting point; we fill in
        // a handler with the SA_SIGINFO signature and an empty mask.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut()) != 0 {
                result = Err(io::Error::last_os_error());
            }
        }
    });
    result
}

/// Register `[start, start + len)` (a guest memory mapping) as owned by
/// `cell`'s connection.
pub fn register(start: usize, len: usize, cell: &Arc<FaultCell>) -> io::Result<Registration> {
    let owner = Arc::as_ptr(cell) as usize;
    for (i, s) in TABLE.iter().enumerate() {
        if s.owner
            .compare_exchange(0, usize::MAX, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            s.start.store(start, Ordering::SeqCst);
            s.len.store(len, Ordering::SeqCst);
            s.owner.store(owner, Ordering::SeqCst);
            return Ok(Registration {
                slot: i,
                _cell: cell.clone(),
            });
        }
    }
    Err(io::Error::other("too many guest memory regions registered"))
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in TABLE.iter() {
        let owner = s.owner.load(Ordering::SeqCst);
        if owner == 0 || owner == usize::MAX {
            continue;
        }
        let start = s.start.load(Ordering::SeqCst);
        let len = s.len.load(Ordering::SeqCst);
        if addr < start || addr - start >= len {
            continue;
        }
        // SAFETY: sysconf is async-signal-safe in practice (a constant
        // read for _SC_PAGESIZE).
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let base = addr & !(page - 1);
        // SAFETY: `base` lies inside a guest memory mapping this process
        // made (registered above); replacing one of its pages with a
        // private zero page only changes what that mapping reads, and the
        // registration keeps the mapping (and the owner cell) alive.
        let p = unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            break;
        }
        // SAFETY: `owner` is the address of a FaultCell kept alive by the
        // Registration that owns this slot (a slot is freed before its
        // cell is dropped).
        let cell = unsafe { &*(owner as *const FaultCell) };
        cell.addr.store(addr, Ordering::SeqCst);
        cell.faults.fetch_add(1, Ordering::SeqCst);
        let fd = cell.wake_fd.load(Ordering::SeqCst);
        if fd >= 0 {
            let one: u64 = 1;
            // SAFETY: write(2) is async-signal-safe; 8 bytes from a live u64.
            unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
        }
        return;
    }
    // Not guest memory: a real fault. Take the default action.
    // SAFETY: restoring the default disposition and re-raising is the
    // standard way to die of the signal (async-signal-safe calls only).
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_fault_on_registered_memory_is_contained_and_reported() {
        install().unwrap();
        let page = 4096usize;
        let file = tempfile::tempfile().unwrap();
        file.set_len(2 * page as u64).unwrap();
        // SAFETY: a fresh shared mapping of our own temp file.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let wake =
            vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let cell = FaultCell::new(wake.as_raw_fd());
        let reg = register(p as usize, 2 * page, &cell).unwrap();
        // Shrink the file under the mapping and touch the lost page.
        file.set_len(page as u64).unwrap();
        // SAFETY: reading our own mapping; the second page is gone, the
        // handler maps a zero page over it.
        let v = unsafe { std::ptr::read_volatile((p as *const u8).add(page + 10)) };
        assert_eq!(v, 0);
        let (faults, addr) = cell.faults();
        assert_eq!(faults, 1);
        assert_eq!(addr, p as usize + page + 10);
        assert_eq!(wake.read().unwrap(), 1);
        drop(reg);
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(p, 2 * page) };
    }
}
