//! The driver side of a split virtqueue (virtio 1.2, 2.7) built by hand in
//! guest memory: descriptor table, available ring, used ring.

use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::memory::GuestMem;
use super::{io_err, Error, Result};

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
pub const VRING_DESC_F_INDIRECT: u16 = 4;
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;
pub const DESC_SIZE: u64 = 16;

/// Offsets of the three parts of a split ring from its (4096-aligned) start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub total: u64,
}

impl RingLayout {
    /// Descriptor table (16-byte aligned, 16*n), then the available ring
    /// (2-byte aligned: flags, idx, ring[n], used_event), then the used ring
    /// (4-byte aligned: flags, idx, ring[n] of 8 bytes, avail_event).
    pub fn new(size: u16) -> Self {
        let n = u64::from(size);
        let desc = 0;
        let avail = desc + DESC_SIZE * n;
        let avail_end = avail + 4 + 2 * n + 2;
        let used = (avail_end + 3) & !3;
        let total = used + 4 + 8 * n + 2;
        RingLayout {
            desc,
            avail,
            used,
            total,
        }
    }
}

/// virtio's `vring_need_event`: must the other side be notified when the
/// index moved from `old` to `new` and it asked for an event at `event_idx`?
pub fn vring_need_event(event_idx: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event_idx).wrapping_sub(1) < new.wrapping_sub(old)
}

/// One descriptor as written in a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }

    /// Read descriptor `i` of the table at `table`.
    pub fn read(mem: &GuestMem, table: u64, i: u16) -> Result<Desc> {
        let mut b = [0u8; 16];
        mem.read(table + DESC_SIZE * u64::from(i), &mut b)?;
        Ok(Desc {
            addr: u64::from_le_bytes(b[0..8].try_into().unwrap_or_default()),
            len: u32::from_le_bytes(b[8..12].try_into().unwrap_or_default()),
            flags: u16::from_le_bytes(b[12..14].try_into().unwrap_or_default()),
            next: u16::from_le_bytes(b[14..16].try_into().unwrap_or_default()),
        })
    }
}

/// A descriptor-chain segment: guest address, length, device-writable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seg {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// Free list of descriptor ids (a stack: the most recently freed id is
/// reused first, like Linux).
#[derive(Debug)]
pub struct FreeList {
    free: Vec<u16>,
}

impl FreeList {
    pub fn new(size: u16) -> Self {
        FreeList {
            free: (0..size).rev().collect(),
        }
    }
    pub fn len(&self) -> usize {
        self.free.len()
    }
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }
    /// Take `n` ids, or none if fewer are free.
    pub fn take(&mut self, n: usize) -> Option<Vec<u16>> {
        if n > self.free.len() {
            return None;
        }
        let at = self.free.len() - n;
        let mut ids = self.free.split_off(at);
        ids.reverse();
        Some(ids)
    }
    /// Fill `ids` with free ids (as [`FreeList::take`] would return them),
    /// without allocating; false (nothing taken) if too few are free.
    pub fn take_into(&mut self, ids: &mut [u16]) -> bool {
        let n = ids.len();
        if n > self.free.len() {
            return false;
        }
        let at = self.free.len() - n;
        for (k, id) in ids.iter_mut().enumerate() {
            *id = self.free[self.free.len() - 1 - k];
        }
        self.free.truncate(at);
        true
    }
    pub fn put(&mut self, ids: &[u16]) {
        self.free.extend(ids.iter().rev());
    }
}

/// A used element returned by the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    pub id: u16,
    pub len: u32,
}

/// The driver side of one split virtqueue.
pub struct SplitQueue {
    /// vhost-user queue index.
    pub index: usize,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    event_idx: bool,
    always_kick: bool,
    free: FreeList,
    /// Shadow of each descriptor's chain successor (as the frontend built
    /// it), to free a chain without reading guest memory or allocating.
    chain_next: Vec<u16>,
    /// Number of descriptors of the chain headed by each id (0: not an
    /// in-flight head).
    chain_len: Vec<u16>,
    /// Shadow of avail->idx (what has been added).
    avail_idx: u16,
    /// avail->idx as last published (stored to memory).
    published: u16,
    /// avail->idx at the last kick decision.
    kicked: u16,
    last_used: u16,
    kick: EventFd,
    call: EventFd,
    /// Statistics: kicks sent and kicks suppressed.
    pub kicks: u64,
    pub kicks_suppressed: u64,
}

impl SplitQueue {
    /// Set up a queue of `size` entries whose rings start at guest-physical
    /// `ring_gpa` (4096-aligned, `RingLayout::new(size).total` bytes).
    pub fn new(
        mem: &GuestMem,
        index: usize,
        size: u16,
        ring_gpa: u64,
        event_idx: bool,
        always_kick: bool,
    ) -> Result<Self> {
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return Err(Error::Config(format!(
                "queue size {size} is not a power of two <= 32768"
            )));
        }
        let l = RingLayout::new(size);
        mem.write(ring_gpa, &vec![0u8; l.total as usize])?;
        Ok(SplitQueue {
            index,
            size,
            desc: ring_gpa + l.desc,
            avail: ring_gpa + l.avail,
            used: ring_gpa + l.used,
            event_idx,
            always_kick,
            free: FreeList::new(size),
            chain_next: vec![0; usize::from(size)],
            chain_len: vec![0; usize::from(size)],
            avail_idx: 0,
            published: 0,
            kicked: 0,
            last_used: 0,
            kick: EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?,
            call: EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?,
            kicks: 0,
            kicks_suppressed: 0,
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }
    /// Guest-physical addresses of (descriptor table, avail ring, used ring).
    pub fn ring_addrs(&self) -> (u64, u64, u64) {
        (self.desc, self.avail, self.used)
    }
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }
    /// Replace the kick eventfd with a new one, already signalled if
    /// `signalled` (QEMU's host notifiers start at 1 at every device start,
    /// so a backend always finds a kick on a ring it is handed).
    pub fn new_kick(&mut self, signalled: bool) -> Result<()> {
        let kick = EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?;
        if signalled {
            kick.write(1).map_err(io_err("kick eventfd write"))?;
        }
        self.kick = kick;
        Ok(())
    }
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }
    pub fn in_flight(&self) -> usize {
        self.chain_len.iter().filter(|&&n| n != 0).count()
    }
    /// The avail index published so far (what GET_VRING_BASE should return
    /// once everything was consumed).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }
    /// avail->idx as stored in guest memory (chains added since are not
    /// yet visible to the device).
    pub fn published_idx(&self) -> u16 {
        self.published
    }
    /// Number of used elements taken so far (the next one is at this index).
    pub fn last_used(&self) -> u16 {
        self.last_used
    }

    /// used->idx as the device wrote it in guest memory.
    pub fn device_used_idx(&self, mem: &GuestMem) -> Result<u16> {
        self.load16(mem, self.used + 2)
    }

    /// The used element in slot `idx % size`, as found in guest memory.
    pub fn used_entry(&self, mem: &GuestMem, idx: u16) -> Result<Used> {
        let elem = self.used + 4 + 8 * u64::from(idx % self.size);
        let mut b = [0u8; 8];
        mem.read(elem, &mut b)?;
        Ok(Used {
            id: u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u16,
            len: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        })
    }

    /// Store `used_event` (EVENT_IDX): the device must signal once used->idx
    /// moves past `idx`. [`SplitQueue::pop_used`] and [`SplitQueue::arm`]
    /// overwrite it with the next index to take.
    pub fn set_used_event(&self, mem: &GuestMem, idx: u16) -> Result<()> {
        self.store16(mem, self.avail + 4 + 2 * u64::from(self.size), idx)
    }

    /// Whether `head` sits on the avail ring but is not published yet.
    fn unpublished(&self, mem: &GuestMem, head: u16) -> Result<bool> {
        let mut i = self.published;
        while i != self.avail_idx {
            let mut b = [0u8; 2];
            mem.read(self.avail + 4 + 2 * u64::from(i % self.size), &mut b)?;
            if u16::from_le_bytes(b) == head {
                return Ok(true);
            }
            i = i.wrapping_add(1);
        }
        Ok(false)
    }

    fn take(&mut self, n: usize) -> Result<Vec<u16>> {
        if n == 0 {
            return Err(Error::Config("empty descriptor chain".into()));
        }
        self.free.take(n).ok_or(Error::QueueFull {
            queue: self.index,
            needed: n,
            free: self.free.len(),
        })
    }

    fn write_desc(&self, mem: &GuestMem, table: u64, i: u16, d: Desc) -> Result<()> {
        mem.write(table + DESC_SIZE * u64::from(i), &d.to_bytes())
    }

    /// Make `ids` (a chain, head first) in flight and put the head on the
    /// avail ring. On error the ids go back to the free list.
    fn push_avail(&mut self, mem: &GuestMem, ids: &[u16]) -> Result<()> {
        let head = ids[0];
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        if let Err(e) = mem.write(slot, &head.to_le_bytes()) {
            self.free.put(ids);
            return Err(e);
        }
        for w in ids.windows(2) {
            self.chain_next[usize::from(w[0])] = w[1];
        }
        self.chain_len[usize::from(head)] = ids.len() as u16;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Ok(())
    }

    /// Add a chain of direct descriptors (NEXT-linked) to the avail ring
    /// (not yet published: call [`SplitQueue::notify`]). Returns the head id.
    /// Allocates nothing (chains of up to 16 descriptors).
    pub fn add_chain(&mut self, mem: &GuestMem, segs: &[Seg]) -> Result<u16> {
        const MAX_ON_STACK: usize = 16;
        if segs.len() > MAX_ON_STACK {
            let ids = self.take(segs.len())?;
            return self.write_chain(mem, segs, &ids);
        }
        let mut buf = [0u16; MAX_ON_STACK];
        let ids = &mut buf[..segs.len()];
        if segs.is_empty() {
            return Err(Error::Config("empty descriptor chain".into()));
        }
        if !self.free.take_into(ids) {
            return Err(Error::QueueFull {
                queue: self.index,
                needed: segs.len(),
                free: self.free.len(),
            });
        }
        self.write_chain(mem, segs, &buf[..segs.len()])
    }

    fn write_chain(&mut self, mem: &GuestMem, segs: &[Seg], ids: &[u16]) -> Result<u16> {
        for (k, s) in segs.iter().enumerate() {
            let last = k + 1 == segs.len();
            let d = Desc {
                addr: s.addr,
                len: s.len,
                flags: if s.write { VRING_DESC_F_WRITE } else { 0 }
                    | if last { 0 } else { VRING_DESC_F_NEXT },
                next: if last { 0 } else { ids[k + 1] },
            };
            if let Err(e) = self.write_desc(mem, self.desc, ids[k], d) {
                self.free.put(ids);
                return Err(e);
            }
        }
        self.push_avail(mem, ids)?;
        Ok(ids[0])
    }

    /// Add a chain placed in an indirect table at `table` (the caller owns
    /// `16 * segs.len()` bytes there until completion). Returns the head id.
    pub fn add_indirect(&mut self, mem: &GuestMem, table: u64, segs: &[Seg]) -> Result<u16> {
        if segs.is_empty() {
            return Err(Error::Config("empty indirect table".into()));
        }
        for (k, s) in segs.iter().enumerate() {
            let last = k + 1 == segs.len();
            let d = Desc {
                addr: s.addr,
                len: s.len,
                flags: if s.write { VRING_DESC_F_WRITE } else { 0 }
                    | if last { 0 } else { VRING_DESC_F_NEXT },
                next: if last { 0 } else { (k + 1) as u16 },
            };
            self.write_desc(mem, table, k as u16, d)?;
        }
        let mut ids = [0u16; 1];
        if !self.free.take_into(&mut ids) {
            return Err(Error::QueueFull {
                queue: self.index,
                needed: 1,
                free: 0,
            });
        }
        let d = Desc {
            addr: table,
            len: (DESC_SIZE as usize * segs.len()) as u32,
            flags: VRING_DESC_F_INDIRECT,
            next: 0,
        };
        if let Err(e) = self.write_desc(mem, self.desc, ids[0], d) {
            self.free.put(&ids);
            return Err(e);
        }
        self.push_avail(mem, &ids)?;
        Ok(ids[0])
    }

    /// Write arbitrary descriptors (for malformed-chain tests): `descs[k].next`
    /// is an index into `descs`, translated to the real descriptor id (an
    /// out-of-range index is written unchanged, e.g. to point a chain at a
    /// descriptor that is not part of it). Flags are written as given (loops,
    /// INDIRECT, missing NEXT...). The head is `descs[0]`.
    pub fn add_raw(&mut self, mem: &GuestMem, descs: &[Desc]) -> Result<u16> {
        let ids = self.take(descs.len())?;
        for (k, d) in descs.iter().enumerate() {
            let next = ids.get(usize::from(d.next)).copied().unwrap_or(d.next);
            let d = Desc { next, ..*d };
            if let Err(e) = self.write_desc(mem, self.desc, ids[k], d) {
                self.free.put(&ids);
                return Err(e);
            }
        }
        self.push_avail(mem, &ids)?;
        Ok(ids[0])
    }

    /// Publish what was added (Release fence before the idx store), then
    /// kick if the device wants it (EVENT_IDX: `avail_event`; otherwise the
    /// used ring's NO_NOTIFY flag). Returns whether a kick was sent.
    pub fn notify(&mut self, mem: &GuestMem) -> Result<bool> {
        if self.avail_idx == self.published {
            return Ok(false);
        }
        fence(Ordering::Release);
        self.store16(mem, self.avail + 2, self.avail_idx)?;
        self.published = self.avail_idx;
        // The idx store must be visible before we read the device's
        // suppression state.
        fence(Ordering::SeqCst);
        let old = self.kicked;
        self.kicked = self.avail_idx;
        let need = self.always_kick
            || if self.event_idx {
                let avail_event = self.load16(mem, self.used + 4 + 8 * u64::from(self.size))?;
                vring_need_event(avail_event, self.avail_idx, old)
            } else {
                self.load16(mem, self.used)? & VRING_USED_F_NO_NOTIFY == 0
            };
        if need {
            self.kick.write(1).map_err(io_err("kick eventfd write"))?;
            self.kicks += 1;
        } else {
            self.kicks_suppressed += 1;
        }
        Ok(need)
    }

    fn store16(&self, mem: &GuestMem, gpa: u64, v: u16) -> Result<()> {
        mem.mem()
            .store(v.to_le(), GuestAddress(gpa), Ordering::Release)
            .map_err(|e| Error::Memory(format!("store at {gpa:#x}: {e}")))
    }

    fn load16(&self, mem: &GuestMem, gpa: u64) -> Result<u16> {
        mem.mem()
            .load::<u16>(GuestAddress(gpa), Ordering::Acquire)
            .map(u16::from_le)
            .map_err(|e| Error::Memory(format!("load at {gpa:#x}: {e}")))
    }

    fn bad(&self, what: String) -> Error {
        Error::BadUsedRing {
            queue: self.index,
            what,
        }
    }

    /// Take the next used element, if any; frees its descriptors and keeps
    /// `used_event` at the next index so the device signals the next one.
    ///
    /// Protocol violations are errors: a used index ahead of the published
    /// avail index (more completions than requests the device could see),
    /// an id that is not the head of an outstanding chain (never submitted,
    /// or completed twice), or the head of a chain not yet published.
    pub fn pop_used(&mut self, mem: &GuestMem) -> Result<Option<Used>> {
        let idx = self.load16(mem, self.used + 2)?;
        if idx == self.last_used {
            return Ok(None);
        }
        let pending = idx.wrapping_sub(self.last_used);
        let outstanding = self.published.wrapping_sub(self.last_used);
        if pending > outstanding {
            return Err(self.bad(format!(
                "used idx {idx} is ahead of the avail idx {}: {pending} new used elements \
                 after {}, only {outstanding} chains outstanding",
                self.published, self.last_used
            )));
        }
        // Read the element only after seeing the index.
        fence(Ordering::Acquire);
        let elem = self.used + 4 + 8 * u64::from(self.last_used % self.size);
        let mut b = [0u8; 8];
        mem.read(elem, &mut b)?;
        let id32 = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let outstanding_head = usize::try_from(id32)
            .ok()
            .and_then(|i| self.chain_len.get(i))
            .is_some_and(|&n| n != 0);
        if !outstanding_head {
            return Err(self.bad(format!(
                "used element {} has id {id32}, which is not an in-flight head \
                 (never submitted, or completed twice)",
                self.last_used
            )));
        }
        if self.unpublished(mem, id32 as u16)? {
            return Err(self.bad(format!(
                "used element {} has id {id32}, a chain not yet published",
                self.last_used
            )));
        }
        let n = std::mem::take(&mut self.chain_len[id32 as usize]);
        let mut id = id32 as u16;
        for k in 0..n {
            self.free.free.push(id);
            if k + 1 < n {
                id = self.chain_next[usize::from(id)];
            }
        }
        // Like `put`: the head is reused first.
        let l = self.free.free.len();
        self.free.free[l - usize::from(n)..].reverse();
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx {
            self.store16(
                mem,
                self.avail + 4 + 2 * u64::from(self.size),
                self.last_used,
            )?;
        }
        Ok(Some(Used {
            id: id32 as u16,
            len,
        }))
    }

    /// Before sleeping: ask for an interrupt at the next used index and
    /// re-check. Returns true if something is already there.
    pub fn arm(&mut self, mem: &GuestMem) -> Result<bool> {
        if self.event_idx {
            self.store16(
                mem,
                self.avail + 4 + 2 * u64::from(self.size),
                self.last_used,
            )?;
        }
        fence(Ordering::SeqCst);
        Ok(self.load16(mem, self.used + 2)? != self.last_used)
    }

    /// Wait up to `timeout` for the call eventfd. Returns whether it fired.
    pub fn wait_call(&self, timeout: Duration) -> Result<bool> {
        let fired = poll_in(&self.call, timeout)?;
        if fired {
            // Consume the counter (nonblocking; EAGAIN if another reader won).
            let _ = self.call.read();
        }
        Ok(fired)
    }
}

/// poll(2) one fd for POLLIN.
pub(crate) fn poll_in(fd: &impl AsRawFd, timeout: Duration) -> Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: `pfd` is a valid pollfd for the duration of the call and
        // we pass a count of 1.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r >= 0 {
            return Ok(r > 0);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::Io {
                op: "poll",
                source: e,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_math() {
        let l = RingLayout::new(128);
        assert_eq!(l.desc, 0);
        assert_eq!(l.avail, 2048);
        // avail: 4 + 256 + 2 = 262 bytes -> ends at 2310, used at 2312.
        assert_eq!(l.used, 2312);
        assert_eq!(l.total, 2312 + 4 + 1024 + 2);
        let l = RingLayout::new(1);
        assert_eq!((l.avail, l.used), (16, 24));
        assert_eq!(l.used % 4, 0);
    }

    #[test]
    fn need_event() {
        // Device asked for an event when idx passes 5.
        assert!(vring_need_event(5, 6, 5));
        assert!(vring_need_event(5, 10, 0));
        assert!(!vring_need_event(5, 5, 0));
        assert!(!vring_need_event(10, 8, 6));
        // Wrapping.
        assert!(vring_need_event(0xffff, 1, 0xfffe));
        assert!(!vring_need_event(3, 1, 0xfffe));
    }

    #[test]
    fn free_list() {
        let mut f = FreeList::new(4);
        assert_eq!(f.take(2), Some(vec![0, 1]));
        assert_eq!(f.take(3), None);
        assert_eq!(f.take(2), Some(vec![2, 3]));
        assert!(f.is_empty());
        f.put(&[1, 0]);
        assert_eq!(f.take(2), Some(vec![1, 0]));
    }

    #[test]
    fn chains_and_used() {
        let mem = GuestMem::new(1 << 20, 0x10000, 0).unwrap();
        let mut q = SplitQueue::new(&mem, 2, 8, 0x10000, true, false).unwrap();
        let segs = [
            Seg {
                addr: 0x20000,
                len: 51,
                write: false,
            },
            Seg {
                addr: 0x21000,
                len: 108,
                write: true,
            },
        ];
        let head = q.add_chain(&mem, &segs).unwrap();
        assert_eq!(head, 0);
        let d0 = Desc::read(&mem, 0x10000, 0).unwrap();
        assert_eq!(
            d0,
            Desc {
                addr: 0x20000,
                len: 51,
                flags: VRING_DESC_F_NEXT,
                next: 1
            }
        );
        let d1 = Desc::read(&mem, 0x10000, 1).unwrap();
        assert_eq!(d1.flags, VRING_DESC_F_WRITE);
        // Device asks for a kick at idx 0 (avail_event 0): 0 -> 1 needs one.
        assert!(q.notify(&mem).unwrap());
        let l = RingLayout::new(8);
        assert_eq!(mem.read_vec(0x10000 + l.avail + 2, 2).unwrap(), [1, 0]);
        // Avail_event stays 0: the next publish is suppressed.
        let h2 = q
            .add_indirect(
                &mem,
                0x30000,
                &[Seg {
                    addr: 0x22000,
                    len: 4,
                    write: true,
                }],
            )
            .unwrap();
        assert!(!q.notify(&mem).unwrap());
        assert_eq!(
            Desc::read(&mem, 0x10000, h2).unwrap().flags,
            VRING_DESC_F_INDIRECT
        );
        assert_eq!(q.free_descriptors(), 5);
        // Device completes the first chain.
        assert!(q.pop_used(&mem).unwrap().is_none());
        mem.write(0x10000 + l.used + 4, &[0, 0, 0, 0, 108, 0, 0, 0])
            .unwrap();
        mem.write(0x10000 + l.used + 2, &[1, 0]).unwrap();
        assert_eq!(q.pop_used(&mem).unwrap(), Some(Used { id: 0, len: 108 }));
        assert_eq!(q.free_descriptors(), 7);
        // used_event now 1.
        assert_eq!(mem.read_vec(0x10000 + l.avail + 4 + 16, 2).unwrap(), [1, 0]);
        // A bogus id is an error, not a panic.
        mem.write(0x10000 + l.used + 12, &[7, 0, 0, 0, 0, 0, 0, 0])
            .unwrap();
        mem.write(0x10000 + l.used + 2, &[2, 0]).unwrap();
        assert!(matches!(q.pop_used(&mem), Err(Error::BadUsedRing { .. })));
    }

    /// A device writing used element `slot` = (id, len) and used->idx.
    fn device_uses(mem: &GuestMem, ring: u64, size: u16, slot: u16, id: u16, idx: u16) {
        let l = RingLayout::new(size);
        let mut e = [0u8; 8];
        e[0..4].copy_from_slice(&u32::from(id).to_le_bytes());
        mem.write(ring + l.used + 4 + 8 * u64::from(slot % size), &e)
            .unwrap();
        mem.write(ring + l.used + 2, &idx.to_le_bytes()).unwrap();
    }

    fn one_seg() -> [Seg; 1] {
        [Seg {
            addr: 0x20000,
            len: 16,
            write: true,
        }]
    }

    #[test]
    fn used_ahead_of_avail_is_an_error() {
        let mem = GuestMem::new(1 << 20, 0x10000, 0).unwrap();
        let mut q = SplitQueue::new(&mem, 2, 8, 0x10000, true, false).unwrap();
        let a = q.add_chain(&mem, &one_seg()).unwrap();
        let b = q.add_chain(&mem, &one_seg()).unwrap();
        q.notify(&mem).unwrap();
        // Two published, the device claims three completions.
        device_uses(&mem, 0x10000, 8, 0, a, 1);
        device_uses(&mem, 0x10000, 8, 1, b, 3);
        let e = q.pop_used(&mem).unwrap_err();
        assert!(
            matches!(&e, Error::BadUsedRing { what, .. } if what.contains("ahead of the avail idx")),
            "{e}"
        );
    }

    #[test]
    fn a_head_completed_twice_is_an_error() {
        let mem = GuestMem::new(1 << 20, 0x10000, 0).unwrap();
        let mut q = SplitQueue::new(&mem, 2, 8, 0x10000, true, false).unwrap();
        let a = q.add_chain(&mem, &one_seg()).unwrap();
        q.add_chain(&mem, &one_seg()).unwrap();
        q.notify(&mem).unwrap();
        device_uses(&mem, 0x10000, 8, 0, a, 1);
        assert_eq!(q.pop_used(&mem).unwrap().map(|u| u.id), Some(a));
        device_uses(&mem, 0x10000, 8, 1, a, 2);
        let e = q.pop_used(&mem).unwrap_err();
        assert!(
            matches!(&e, Error::BadUsedRing { what, .. } if what.contains("completed twice")),
            "{e}"
        );
    }

    #[test]
    fn an_unpublished_head_completed_is_an_error() {
        let mem = GuestMem::new(1 << 20, 0x10000, 0).unwrap();
        let mut q = SplitQueue::new(&mem, 2, 8, 0x10000, true, false).unwrap();
        let a = q.add_chain(&mem, &one_seg()).unwrap();
        q.notify(&mem).unwrap();
        let b = q.add_chain(&mem, &one_seg()).unwrap();
        assert_eq!((q.published_idx(), q.avail_idx()), (1, 2));
        // The device completes b, which it cannot have seen.
        device_uses(&mem, 0x10000, 8, 0, b, 1);
        let e = q.pop_used(&mem).unwrap_err();
        assert!(
            matches!(&e, Error::BadUsedRing { what, .. } if what.contains("not yet published")),
            "{e}"
        );
        // The ring itself is fine once the right head shows up.
        device_uses(&mem, 0x10000, 8, 0, a, 1);
        assert_eq!(q.pop_used(&mem).unwrap().map(|u| u.id), Some(a));
        assert_eq!(q.last_used(), 1);
        assert_eq!(q.device_used_idx(&mem).unwrap(), 1);
        assert_eq!(q.used_entry(&mem, 0).unwrap().id, a);
    }
}
