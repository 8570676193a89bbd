//! The inflight I/O tracking region (vhost-user spec, "Inflight I/O
//! tracking", split virtqueues): the backend hands it out with
//! GET_INFLIGHT_FD, the frontend keeps the fd and gives it back with
//! SET_INFLIGHT_FD at every (re)connection, so a restarted backend finds the
//! requests its predecessor had taken but not completed.
//!
//! Layout, per queue `i` at `i * queue_stride(queue_size)`:
//!
//! ```text
//! u64 features; u16 version; u16 desc_num; u16 last_batch_head; u16 used_idx;
//! desc[j] at 16 + 16*j: u8 inflight; u8 padding[5]; u16 next; u64 counter
//! ```
//!
//! This module maps the region for inspection (tests: how many requests
//! were in flight when a backend died) and for deliberate edits (tests: a
//! torn used-ring update, a hostile region).

use std::fs::File;
use std::sync::atomic::Ordering;

use vhost::vhost_user::message::VhostUserInflight;
use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory};

use super::{Error, Result};

/// Bytes of a queue region's header.
pub const HEADER_SIZE: u64 = 16;
/// Bytes of one `DescStateSplit`.
pub const DESC_STATE_SIZE: u64 = 16;
/// Alignment of each queue's region (QEMU's and libvhost-user's
/// `INFLIGHT_ALIGNMENT`).
pub const QUEUE_ALIGN: u64 = 64;

/// Offsets inside a queue region's header.
pub const OFF_FEATURES: u64 = 0;
pub const OFF_VERSION: u64 = 8;
pub const OFF_DESC_NUM: u64 = 10;
pub const OFF_LAST_BATCH_HEAD: u64 = 12;
pub const OFF_USED_IDX: u64 = 14;
/// Offsets inside a `DescStateSplit`.
pub const DESC_OFF_INFLIGHT: u64 = 0;
pub const DESC_OFF_NEXT: u64 = 6;
pub const DESC_OFF_COUNTER: u64 = 8;

/// Bytes of one queue's region for `queue_size` descriptors (64-aligned).
pub fn queue_stride(queue_size: u16) -> u64 {
    (HEADER_SIZE + DESC_STATE_SIZE * u64::from(queue_size)).div_ceil(QUEUE_ALIGN) * QUEUE_ALIGN
}

/// Bytes a region for `num_queues` queues of `queue_size` needs at least.
pub fn required_size(num_queues: u16, queue_size: u16) -> u64 {
    u64::from(num_queues) * queue_stride(queue_size)
}

/// Offset of queue `queue`'s header in a region for `queue_size`.
pub fn queue_offset(queue: usize, queue_size: u16) -> u64 {
    queue as u64 * queue_stride(queue_size)
}

/// Offset of descriptor state `head` of queue `queue`.
pub fn desc_offset(queue: usize, queue_size: u16, head: u16) -> u64 {
    queue_offset(queue, queue_size) + HEADER_SIZE + DESC_STATE_SIZE * u64::from(head)
}

/// One `DescStateSplit` as read from the region.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DescState {
    pub inflight: u8,
    /// The five padding bytes (a backend may keep its own record there).
    pub padding: [u8; 5],
    pub next: u16,
    pub counter: u64,
}

/// A snapshot of one queue's region.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueRegion {
    pub features: u64,
    pub version: u16,
    pub desc_num: u16,
    pub last_batch_head: u16,
    pub used_idx: u16,
    /// `queue_size` entries (whatever `desc_num` says).
    pub desc: Vec<DescState>,
}

impl QueueRegion {
    /// Heads whose `inflight` byte is non-zero, in order of their counter.
    pub fn inflight_heads(&self) -> Vec<u16> {
        let mut v: Vec<(u64, u16)> = self
            .desc
            .iter()
            .enumerate()
            .filter(|(_, d)| d.inflight != 0)
            .map(|(j, d)| (d.counter, j as u16))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, j)| j).collect()
    }
}

/// The inflight region: the fd (kept for every reconnection), the
/// description sent with SET_INFLIGHT_FD, and a shared mapping (absent for
/// a hand-made region that was not mapped).
pub struct InflightRegion {
    file: File,
    desc: VhostUserInflight,
    map: Option<MmapRegion<()>>,
}

impl std::fmt::Debug for InflightRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflightRegion")
            .field("mmap_size", &self.desc.mmap_size)
            .field("mmap_offset", &self.desc.mmap_offset)
            .field("num_queues", &self.desc.num_queues)
            .field("queue_size", &self.desc.queue_size)
            .field("mapped", &self.map.is_some())
            .finish()
    }
}

fn bad(what: String) -> Error {
    Error::Inflight(what)
}

impl InflightRegion {
    /// Take the backend's GET_INFLIGHT_FD answer for `num_queues` queues of
    /// `queue_size`: checks that the region is large enough and lies in the
    /// file (a mapping beyond the end of the file would fault on access),
    /// then maps it shared.
    pub fn from_backend(
        file: File,
        reply: &VhostUserInflight,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Self> {
        let need = required_size(num_queues, queue_size);
        if reply.mmap_size < need {
            return Err(bad(format!(
                "backend's region has {} bytes, {num_queues} queues of {queue_size} need {need}",
                reply.mmap_size
            )));
        }
        let mut r = InflightRegion {
            file,
            desc: VhostUserInflight {
                mmap_size: reply.mmap_size,
                mmap_offset: reply.mmap_offset,
                num_queues,
                queue_size,
            },
            map: None,
        };
        r.map()?;
        Ok(r)
    }

    /// A region described by the caller, sent as is with SET_INFLIGHT_FD
    /// (hostile-region tests). Not mapped: see [`InflightRegion::map`].
    pub fn custom(file: File, desc: VhostUserInflight) -> Self {
        InflightRegion {
            file,
            desc,
            map: None,
        }
    }

    /// Map `mmap_size` bytes at `mmap_offset` of the file, shared (after
    /// checking that they lie in the file).
    pub fn map(&mut self) -> Result<()> {
        if self.map.is_some() {
            return Ok(());
        }
        let len = self
            .file
            .metadata()
            .map_err(|e| bad(format!("fstat: {e}")))?
            .len();
        let fits = match self.desc.mmap_offset.checked_add(self.desc.mmap_size) {
            Some(end) => end <= len,
            None => false,
        };
        if !fits {
            return Err(bad(format!(
                "{} bytes at offset {} are beyond the end of the {len}-byte file",
                self.desc.mmap_size, self.desc.mmap_offset
            )));
        }
        let size = usize::try_from(self.desc.mmap_size)
            .map_err(|_| bad(format!("mmap size {}", self.desc.mmap_size)))?;
        let file = self
            .file
            .try_clone()
            .map_err(|e| bad(format!("dup: {e}")))?;
        let map = MmapRegion::<()>::from_file(FileOffset::new(file, self.desc.mmap_offset), size)
            .map_err(|e| bad(format!("mmap: {e}")))?;
        self.map = Some(map);
        Ok(())
    }

    /// The description sent with SET_INFLIGHT_FD.
    pub fn message(&self) -> VhostUserInflight {
        self.desc
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn mmap_size(&self) -> u64 {
        self.desc.mmap_size
    }

    pub fn mmap_offset(&self) -> u64 {
        self.desc.mmap_offset
    }

    pub fn num_queues(&self) -> u16 {
        self.desc.num_queues
    }

    pub fn queue_size(&self) -> u16 {
        self.desc.queue_size
    }

    fn slice(&self, off: u64, len: usize) -> Result<vm_memory::VolatileSlice<'_, ()>> {
        let map = self
            .map
            .as_ref()
            .ok_or_else(|| bad("region not mapped".into()))?;
        let off = usize::try_from(off).map_err(|_| bad(format!("offset {off}")))?;
        map.get_slice(off, len)
            .map_err(|e| bad(format!("{len} bytes at {off}: {e}")))
    }

    fn check_queue(&self, queue: usize) -> Result<()> {
        if queue >= usize::from(self.desc.num_queues) {
            return Err(bad(format!(
                "queue {queue} is not in a region of {} queues",
                self.desc.num_queues
            )));
        }
        Ok(())
    }

    /// Read `buf.len()` bytes at `off` from the start of the mapping.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.slice(off, buf.len())?
            .read_slice(buf, 0)
            .map_err(|e| bad(format!("read at {off}: {e}")))
    }

    /// Write `data` at `off` from the start of the mapping.
    pub fn write(&self, off: u64, data: &[u8]) -> Result<()> {
        self.slice(off, data.len())?
            .write_slice(data, 0)
            .map_err(|e| bad(format!("write at {off}: {e}")))
    }

    fn load16(&self, off: u64) -> Result<u16> {
        self.slice(off, 2)?
            .load::<u16>(0, Ordering::Acquire)
            .map(u16::from_le)
            .map_err(|e| bad(format!("load at {off}: {e}")))
    }

    fn store16(&self, off: u64, v: u16) -> Result<()> {
        self.slice(off, 2)?
            .store(v.to_le(), 0, Ordering::Release)
            .map_err(|e| bad(format!("store at {off}: {e}")))
    }

    /// A snapshot of queue `queue` (header and every descriptor state).
    pub fn queue(&self, queue: usize) -> Result<QueueRegion> {
        self.check_queue(queue)?;
        let qs = self.desc.queue_size;
        let base = queue_offset(queue, qs);
        let mut raw = vec![0u8; (HEADER_SIZE + DESC_STATE_SIZE * u64::from(qs)) as usize];
        self.read(base, &mut raw)?;
        let u16_at = |o: usize| u16::from_le_bytes([raw[o], raw[o + 1]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let desc = (0..usize::from(qs))
            .map(|j| {
                let o = (HEADER_SIZE + DESC_STATE_SIZE * j as u64) as usize;
                let mut padding = [0u8; 5];
                padding.copy_from_slice(&raw[o + 1..o + 6]);
                DescState {
                    inflight: raw[o],
                    padding,
                    next: u16_at(o + DESC_OFF_NEXT as usize),
                    counter: u64_at(o + DESC_OFF_COUNTER as usize),
                }
            })
            .collect();
        Ok(QueueRegion {
            features: u64_at(OFF_FEATURES as usize),
            version: u16_at(OFF_VERSION as usize),
            desc_num: u16_at(OFF_DESC_NUM as usize),
            last_batch_head: u16_at(OFF_LAST_BATCH_HEAD as usize),
            used_idx: u16_at(OFF_USED_IDX as usize),
            desc,
        })
    }

    /// Number of heads of queue `queue` marked in flight.
    pub fn inflight_count(&self, queue: usize) -> Result<usize> {
        Ok(self
            .queue(queue)?
            .desc
            .iter()
            .filter(|d| d.inflight != 0)
            .count())
    }

    /// The region's `used_idx` of queue `queue`.
    pub fn used_idx(&self, queue: usize) -> Result<u16> {
        self.check_queue(queue)?;
        self.load16(queue_offset(queue, self.desc.queue_size) + OFF_USED_IDX)
    }

    /// Set the region's `used_idx` of queue `queue`.
    pub fn set_used_idx(&self, queue: usize, v: u16) -> Result<()> {
        self.check_queue(queue)?;
        self.store16(queue_offset(queue, self.desc.queue_size) + OFF_USED_IDX, v)
    }

    /// Set the region's `last_batch_head` of queue `queue`.
    pub fn set_last_batch_head(&self, queue: usize, head: u16) -> Result<()> {
        self.check_queue(queue)?;
        self.store16(
            queue_offset(queue, self.desc.queue_size) + OFF_LAST_BATCH_HEAD,
            head,
        )
    }

    /// Set the `inflight` byte of `head` of queue `queue`.
    pub fn set_inflight(&self, queue: usize, head: u16, inflight: u8) -> Result<()> {
        self.check_queue(queue)?;
        if head >= self.desc.queue_size {
            return Err(bad(format!("head {head} beyond {}", self.desc.queue_size)));
        }
        self.write(
            desc_offset(queue, self.desc.queue_size, head) + DESC_OFF_INFLIGHT,
            &[inflight],
        )
    }

    /// Set the `next` link of `head` of queue `queue`.
    pub fn set_next(&self, queue: usize, head: u16, next: u16) -> Result<()> {
        self.check_queue(queue)?;
        if head >= self.desc.queue_size {
            return Err(bad(format!("head {head} beyond {}", self.desc.queue_size)));
        }
        self.store16(
            desc_offset(queue, self.desc.queue_size, head) + DESC_OFF_NEXT,
            next,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        // 16 + 16 * 128 = 2064 -> 2112 (64-aligned).
        assert_eq!(queue_stride(128), 2112);
        assert_eq!(queue_stride(1), 64);
        assert_eq!(queue_stride(2), 64);
        assert_eq!(queue_stride(3), 64);
        assert_eq!(queue_stride(4), 128);
        assert_eq!(required_size(4, 128), 4 * 2112);
        assert_eq!(desc_offset(1, 128, 2), 2112 + 16 + 32);
    }

    #[test]
    fn read_and_edit_a_region() {
        let fd = nix::sys::memfd::memfd_create(
            c"inflight-test",
            nix::sys::memfd::MemFdCreateFlag::empty(),
        )
        .unwrap();
        let file = File::from(fd);
        let size = required_size(2, 4);
        file.set_len(size).unwrap();
        let mut r = InflightRegion::custom(file, VhostUserInflight::new(size, 0, 2, 4));
        r.map().unwrap();
        r.write(queue_offset(1, 4) + OFF_VERSION, &[1, 0, 4, 0])
            .unwrap();
        r.set_inflight(1, 3, 1).unwrap();
        r.set_inflight(1, 0, 1).unwrap();
        r.write(desc_offset(1, 4, 3) + DESC_OFF_COUNTER, &5u64.to_le_bytes())
            .unwrap();
        r.write(desc_offset(1, 4, 0) + DESC_OFF_COUNTER, &9u64.to_le_bytes())
            .unwrap();
        r.set_used_idx(1, 7).unwrap();
        r.set_last_batch_head(1, 2).unwrap();
        r.set_next(1, 2, 3).unwrap();
        let q = r.queue(1).unwrap();
        assert_eq!((q.version, q.desc_num, q.used_idx), (1, 4, 7));
        assert_eq!(q.last_batch_head, 2);
        assert_eq!(q.desc[2].next, 3);
        assert_eq!(q.inflight_heads(), vec![3, 0]);
        assert_eq!(r.inflight_count(0).unwrap(), 0);
        assert_eq!(r.used_idx(1).unwrap(), 7);
        assert!(r.queue(2).is_err());
        assert!(r.set_inflight(0, 4, 1).is_err());
    }

    #[test]
    fn a_region_beyond_its_file_is_refused() {
        let fd = nix::sys::memfd::memfd_create(
            c"inflight-short",
            nix::sys::memfd::MemFdCreateFlag::empty(),
        )
        .unwrap();
        let file = File::from(fd);
        file.set_len(4096).unwrap();
        let reply = VhostUserInflight::new(8192, 0, 2, 128);
        assert!(matches!(
            InflightRegion::from_backend(file.try_clone().unwrap(), &reply, 2, 128),
            Err(Error::Inflight(_))
        ));
        // Too small for the queues.
        let reply = VhostUserInflight::new(4096, 0, 2, 128);
        assert!(InflightRegion::from_backend(file, &reply, 2, 128).is_err());
    }
}
