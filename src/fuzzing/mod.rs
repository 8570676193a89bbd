//! Fuzz targets (issue 14): one function per target taking the fuzzer's
//! bytes. The libFuzzer binaries in `fuzz/` call these, and
//! `tests/fuzz_corpus.rs` replays the committed corpus and every crash found
//! through the same functions, so a plain `cargo test` keeps them honest.
//!
//! Each target decodes its bytes with [`Input`] (reads past the end yield
//! zeros, so every byte string is a valid input), drives the code under
//! test, and panics only when an invariant it checks is broken: a panic
//! here is a bug in the daemon (or in the invariant). See
//! docs/development.md, "Fuzzing".
//!
//! Not part of the daemon's API: hidden from the docs, no stability.

pub mod chain;
pub mod config;
pub mod inflight;
pub mod rpc;
pub mod scsi;
pub mod vhost_user;

/// A fuzz target: takes any bytes, panics only on a broken invariant.
pub type Target = fn(&[u8]);

/// Every target by name: `fuzz/fuzz_targets/<name>.rs` and
/// `fuzz/corpus/<name>/` use these names.
pub const TARGETS: &[(&str, Target)] = &[
    ("chain", chain::run),
    ("scsi", scsi::run),
    ("inflight", inflight::run),
    ("rpc", rpc::run),
    ("config", config::run),
    ("state", config::run_state),
    ("vhost_user", vhost_user::run),
];

/// A cursor over fuzzer bytes: fixed-size reads return zeros once the
/// bytes run out.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// Bytes not read yet.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }
}

/// Largest single allocation the fuzz binaries allow (see [`LimitedAlloc`]).
pub const MAX_ALLOC: usize = 64 << 20;

/// The fuzz binaries' global allocator: the system allocator, aborting
/// with a backtrace on any single allocation over [`MAX_ALLOC`]. Without
/// AddressSanitizer libFuzzer cannot see allocation sizes, and a zeroed
/// allocation of gigabytes costs no resident memory until touched, so an
/// input that makes the daemon allocate what a guest or a client asked for
/// (a length from a CDB, a descriptor, a JSON number) would go unnoticed.
pub struct LimitedAlloc;

static REPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn check_size(size: usize) {
    use std::sync::atomic::Ordering;
    if size > MAX_ALLOC && !REPORTING.swap(true, Ordering::SeqCst) {
        // The report allocates (small amounts): REPORTING keeps it from
        // recursing here.
        eprintln!(
            "fuzzing: an allocation of {size} bytes (limit {MAX_ALLOC}) at\n{}",
            std::backtrace::Backtrace::force_capture()
        );
        std::process::abort();
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; `check_size` only reads the size.
unsafe impl std::alloc::GlobalAlloc for LimitedAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        check_size(layout.size());
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        check_size(layout.size());
        // SAFETY: the caller's contract for `alloc_zeroed`, passed on.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        check_size(new_size);
        // SAFETY: the caller's contract for `realloc`, passed on.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}
