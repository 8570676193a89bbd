//! "Guest" memory: a memfd mapped shared in this process and described to
//! the backend with SET_MEM_TABLE, plus a first-fit buffer allocator.

use std::fs::File;

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::{Error, Result};

/// One memfd-backed region of guest memory at `base` (guest-physical).
pub struct GuestMem {
    mem: GuestMemoryMmap<()>,
    base: u64,
    size: usize,
}

impl GuestMem {
    /// Create `size` bytes of memory at guest-physical `base`, mapped from
    /// offset `mmap_offset` of a fresh memfd. The memfd allows seals (as
    /// QEMU's memfd backend) but has none: a test may add some through
    /// [`GuestMem::file`].
    pub fn new(size: usize, base: u64, mmap_offset: u64) -> Result<Self> {
        if size == 0 || size % 4096 != 0 || mmap_offset % 4096 != 0 {
            return Err(Error::Config(format!(
                "memory size {size} and mmap offset {mmap_offset} must be page multiples"
            )));
        }
        let fd = memfd_create(
            c"vhost-user-scsi-frontend",
            MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING,
        )
        .map_err(|e| Error::Memory(format!("memfd_create: {e}")))?;
        let file = File::from(fd);
        file.set_len(mmap_offset + size as u64)
            .map_err(|e| Error::Memory(format!("ftruncate: {e}")))?;
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(base),
            size,
            Some(FileOffset::new(file, mmap_offset)),
        )])
        .map_err(|e| Error::Memory(format!("mmap: {e}")))?;
        Ok(GuestMem { mem, base, size })
    }

    /// The vm-memory view (write/read/store/load at guest-physical addresses).
    pub fn mem(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    /// The memfd behind the memory (what SET_MEM_TABLE hands the backend):
    /// for tests that seal it or shrink it under the backend. After a
    /// shrink, this process must not touch the lost pages either.
    pub fn file(&self) -> Option<&File> {
        self.mem
            .iter()
            .next()
            .and_then(|r| r.file_offset())
            .map(|f| f.file())
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// The frontend's own virtual address of guest-physical `gpa` (what
    /// SET_VRING_ADDR wants).
    pub fn host_addr(&self, gpa: u64) -> Result<u64> {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|e| Error::Memory(format!("no host address for {gpa:#x}: {e}")))
    }

    /// Region descriptions for SET_MEM_TABLE.
    pub fn region_infos(&self) -> Result<Vec<VhostUserMemoryRegionInfo>> {
        self.mem
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r)
                    .map_err(|e| Error::Memory(format!("region at {:#x}: {e}", r.start_addr().0)))
            })
            .collect()
    }

    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| Error::Memory(format!("write {} bytes at {gpa:#x}: {e}", data.len())))
    }

    pub fn read(&self, gpa: u64, data: &mut [u8]) -> Result<()> {
        self.mem
            .read_slice(data, GuestAddress(gpa))
            .map_err(|e| Error::Memory(format!("read {} bytes at {gpa:#x}: {e}", data.len())))
    }

    pub fn read_vec(&self, gpa: u64, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0; len];
        self.read(gpa, &mut v)?;
        Ok(v)
    }
}

/// First-fit allocator over `[start, start+len)` with coalescing frees.
#[derive(Debug)]
pub struct BufferAllocator {
    /// Free extents (start, len), sorted by start, never adjacent.
    free: Vec<(u64, u64)>,
}

impl BufferAllocator {
    pub fn new(start: u64, len: u64) -> Self {
        BufferAllocator {
            free: if len > 0 { vec![(start, len)] } else { vec![] },
        }
    }

    /// Allocate `len` bytes (at least 1) aligned to `align` (a power of two).
    pub fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        let len = len.max(1);
        let align = align.max(1);
        for i in 0..self.free.len() {
            let (start, flen) = self.free[i];
            let addr = start.checked_add(align - 1)? & !(align - 1);
            let pad = addr - start;
            if pad.checked_add(len)? > flen {
                continue;
            }
            let tail = flen - pad - len;
            match (pad, tail) {
                (0, 0) => {
                    self.free.remove(i);
                }
                (0, _) => self.free[i] = (addr + len, tail),
                (_, 0) => self.free[i] = (start, pad),
                _ => {
                    self.free[i] = (start, pad);
                    self.free.insert(i + 1, (addr + len, tail));
                }
            }
            return Some(addr);
        }
        None
    }

    /// Return `[addr, addr+len)` (exactly as allocated).
    pub fn free(&mut self, addr: u64, len: u64) {
        let len = len.max(1);
        let i = self.free.partition_point(|&(s, _)| s < addr);
        self.free.insert(i, (addr, len));
        // Merge with the next, then with the previous extent.
        if i + 1 < self.free.len() && addr + len == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == addr {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|e| e.1).sum()
    }

    /// Number of free extents (1 when nothing is allocated).
    pub fn extents(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_aligns_and_coalesces() {
        let mut a = BufferAllocator::new(0x1000, 0x10000);
        let x = a.alloc(100, 64).unwrap();
        assert_eq!(x, 0x1000);
        let y = a.alloc(4096, 4096).unwrap();
        assert_eq!(y, 0x2000);
        let z = a.alloc(10, 1).unwrap();
        assert_eq!(z, 0x1064);
        assert!(a.alloc(0x100000, 1).is_none());
        a.free(y, 4096);
        a.free(x, 100);
        a.free(z, 10);
        assert_eq!(a.extents(), 1);
        assert_eq!(a.free_bytes(), 0x10000);
        assert_eq!(a.alloc(0x10000, 4096), Some(0x1000));
        assert_eq!(a.alloc(1, 1), None);
    }

    #[test]
    fn guest_memory_round_trips() {
        let m = GuestMem::new(1 << 20, 0x1_0000_0000, 4096).unwrap();
        m.write(0x1_0000_0010, b"hello").unwrap();
        assert_eq!(m.read_vec(0x1_0000_0010, 5).unwrap(), b"hello");
        assert!(m.write(0x1_0010_0000, b"x").is_err());
        let infos = m.region_infos().unwrap();
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].guest_phys_addr, 0x1_0000_0000);
        assert_eq!(infos[0].mmap_offset, 4096);
        assert_eq!(infos[0].userspace_addr, m.host_addr(0x1_0000_0000).unwrap());
        let file = m.file().unwrap();
        assert_eq!(file.metadata().unwrap().len(), (1 << 20) + 4096);
        // Seals can be added (as QEMU's memfd backend does).
        // SAFETY: fcntl on our own memfd.
        let rc = unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(file),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        assert!(file.set_len(4096).is_err());
    }
}
