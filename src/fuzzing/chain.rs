//! Target `chain`: descriptor-chain parsing with arbitrary descriptor tables
//! and guest memory layouts.
//!
//! The input chooses a guest memory of one to three regions (adjacent or
//! with holes), a queue size, the head index, where the descriptor table and
//! a second table (for `INDIRECT` descriptors to point at) go, their
//! descriptors, and the bytes that fill guest memory. The chain is popped
//! through a real virtio-queue `Queue` and split with [`split_chain`], and
//! the same head is walked again with [`split_chain_at`] (the restart path);
//! the two must agree. An accepted chain is then parsed as a command and as
//! a control request, and its segments are read, written and turned into
//! iovecs, checking the lengths each step promises.

use std::io::Read;
use std::mem::size_of;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use super::Input;
use crate::block::IoVecs;
use crate::virtio_scsi::{
    parse_cmd, parse_ctrl, split_chain, split_chain_at, ChainError, CmdReqHeader, CmdRespHeader,
    CtrlRequest, GuestMem, Segments, SplitChain,
};

const PAGE: u64 = 0x1000;
/// The rings live in a region of their own, far above the fuzzed ones.
const AVAIL: u64 = 0x1000_0000;
const USED: u64 = AVAIL + PAGE;
const RINGS_LEN: usize = 2 * PAGE as usize;

/// `(start, size)` of the fuzzed regions.
type Regions = Vec<(GuestAddress, usize)>;

/// An address `off` bytes into region `sel` (modulo the count); may lie
/// past the region's end, in the next region or a hole.
fn region_addr(regions: &Regions, sel: u8, off: u64) -> u64 {
    let (start, _) = regions[usize::from(sel) % regions.len()];
    start.raw_value().wrapping_add(off)
}

/// Where a table goes: 16-byte aligned inside a region, or (selector 0xff)
/// any address at all.
fn place(inp: &mut Input<'_>, regions: &Regions) -> GuestAddress {
    let sel = inp.u8();
    if sel == 0xff {
        return GuestAddress(inp.u64() & !15);
    }
    let (start, size) = regions[usize::from(sel) % regions.len()];
    let off = u64::from(inp.u16()) % size as u64;
    GuestAddress(start.raw_value() + (off & !15))
}

/// One descriptor: flags (NEXT, WRITE, INDIRECT in bits 0..=2; bit 7: a
/// raw 64-bit address follows; bit 6: a 32-bit length), region and offset
/// (or the raw address), length, next index.
fn descriptor(inp: &mut Input<'_>, regions: &Regions) -> Descriptor {
    let flags = inp.u8();
    let addr = if flags & 0x80 != 0 {
        inp.u64()
    } else {
        let sel = inp.u8();
        region_addr(regions, sel, u64::from(inp.u16()))
    };
    let len = if flags & 0x40 != 0 {
        inp.u32()
    } else {
        u32::from(inp.u16())
    };
    let next = u16::from(inp.u8());
    Descriptor::new(addr, len, u16::from(flags & 7), next)
}

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let mut regions: Regions = Vec::new();
    let count = 1 + inp.u8() % 3;
    let mut at = u64::from(inp.u8()) * PAGE;
    for _ in 0..count {
        let size = (1 + u64::from(inp.u8() % 16)) * PAGE;
        regions.push((GuestAddress(at), size as usize));
        at += size + u64::from(inp.u8() % 4) * PAGE;
    }
    let mut ranges = regions.clone();
    ranges.push((GuestAddress(AVAIL), RINGS_LEN));
    let mem = GuestMem::from_ranges(&ranges).expect("regions are sorted and disjoint");

    let queue_size: u16 = 1 << (inp.u8() % 9);
    let head = inp.u16() % (2 * queue_size);
    let table = place(&mut inp, &regions);
    let indirect = place(&mut inp, &regions);
    let ndesc = usize::from(inp.u8()).min(usize::from(queue_size));
    let descs: Vec<Descriptor> = (0..ndesc).map(|_| descriptor(&mut inp, &regions)).collect();
    let nind = usize::from(inp.u8() % 32);
    let ind: Vec<Descriptor> = (0..nind).map(|_| descriptor(&mut inp, &regions)).collect();
    let split_at = inp.u16();

    // Memory: the rest of the input, region after region, then the tables
    // over it.
    let mut fill = inp.rest();
    for &(start, size) in &regions {
        let (now, later) = fill.split_at(size.min(fill.len()));
        let _ = mem.write_slice(now, start);
        fill = later;
    }
    for (base, table) in [(table, &descs), (indirect, &ind)] {
        for (i, d) in table.iter().enumerate() {
            if let Some(addr) = base.checked_add(16 * i as u64) {
                let _ = mem.write_obj(*d, addr);
            }
        }
    }
    // One available buffer: `head`.
    mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
    mem.write_obj(head, GuestAddress(AVAIL + 4)).unwrap();

    let mut queue = Queue::new(queue_size).unwrap();
    queue.set_desc_table_address(
        Some(table.raw_value() as u32),
        Some((table.raw_value() >> 32) as u32),
    );
    queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    queue.set_ready(true);

    let again = split_chain_at(&mem, table, queue_size, head);
    let Some(chain) = queue.pop_descriptor_chain(&mem) else {
        // virtio-queue refuses a head beyond the queue; so must we.
        assert!(head >= queue_size, "no chain popped for head {head}");
        assert!(again.is_err());
        return;
    };
    assert_eq!(chain.head_index(), head);
    let split = split_chain(chain);
    assert_eq!(
        split.as_ref().map_err(kind),
        again.as_ref().map_err(kind),
        "split_chain and split_chain_at disagree"
    );
    let Ok(split) = split else {
        return;
    };
    check_split(&mem, &split, u64::from(split_at));
    check_cmd(&mem, split.clone());
    check_ctrl(&mem, split);
}

/// An error with the message of `Malformed` dropped: the two walks word
/// their reasons differently.
fn kind(e: &ChainError) -> ChainError {
    match e {
        ChainError::Malformed(_) => ChainError::Malformed(""),
        other => *other,
    }
}

fn check_segments(mem: &GuestMem, segs: &Segments) {
    let total: u64 = segs.segments().iter().map(|s| u64::from(s.len)).sum();
    assert_eq!(total, segs.len());
    assert!(segs.segments().iter().all(|s| s.len > 0));
    // Bounded: a chain may describe up to 4 GiB.
    let len = segs.len().min(1 << 20) as usize;
    let mut buf = vec![0u8; len];
    assert_eq!(segs.read_to(mem, &mut buf), Ok(len));
    let mut streamed = Vec::new();
    segs.reader(mem)
        .take(len as u64)
        .read_to_end(&mut streamed)
        .expect("validated segments read");
    assert_eq!(streamed, buf);
    let mut iov = IoVecs::new();
    segs.iovecs(mem, len as u64, &mut iov)
        .expect("validated segments map");
    let mapped: usize = iov.iter().map(|v| v.0.iov_len).sum();
    assert_eq!(mapped, len);
    assert!(segs.iovecs(mem, segs.len() + 1, &mut iov).is_err());
}

fn check_split(mem: &GuestMem, split: &SplitChain, n: u64) {
    check_segments(mem, &split.readable);
    check_segments(mem, &split.writable);
    let total = split.readable.len();
    let (front, back) = split.readable.clone().split_at(n);
    assert_eq!(front.len(), n.min(total));
    assert_eq!(front.len() + back.len(), total);
}

fn check_cmd(mem: &GuestMem, split: SplitChain) {
    let (readable, writable) = (split.readable.len(), split.writable.len());
    let req_len = size_of::<CmdReqHeader>() as u64;
    let resp_len = size_of::<CmdRespHeader>() as u64;
    match parse_cmd(mem, split) {
        Ok(req) => {
            assert_eq!(req.data_out.len(), readable - req_len);
            assert_eq!(req.resp.len(), resp_len);
            assert_eq!(req.data_in.len(), writable - resp_len);
            check_segments(mem, &req.data_out);
            check_segments(mem, &req.data_in);
            let pattern = vec![0xa5u8; req.data_in.len().min(1 << 16) as usize];
            assert_eq!(req.data_in.write_from(mem, &pattern), Ok(pattern.len()));
            let resp = [0u8; size_of::<CmdRespHeader>()];
            assert_eq!(req.resp.write_from(mem, &resp), Ok(resp.len()));
        }
        Err(bad) => {
            if let Some(resp) = bad.resp {
                assert_eq!(resp.len(), resp_len);
                check_segments(mem, &resp);
            }
        }
    }
}

fn check_ctrl(mem: &GuestMem, split: SplitChain) {
    match parse_ctrl(mem, split) {
        Ok((req, resp)) => {
            let want = match req {
                CtrlRequest::Tmf(_) => 1,
                CtrlRequest::An(_) => 5,
            };
            assert_eq!(resp.len(), want);
            check_segments(mem, &resp);
        }
        Err(bad) => {
            if let Some(resp) = bad.resp {
                assert!(resp.len() == 1 || resp.len() == 5, "{}", resp.len());
            }
        }
    }
}
