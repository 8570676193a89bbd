//! Tests of descriptor-chain parsing over real virtqueue chains built with
//! virtio-queue's mock driver, on a guest memory of three regions:
//! A [0, 0x10000) and B [0x10000, 0x20000) adjacent, a hole, then
//! C [0x30000, 0x40000).

use std::io::Read;

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::*;
use crate::virtio_scsi::defs::{
    CmdReqHeader, CtrlAnReq, CtrlTmfReq, T_AN_QUERY, T_AN_SUBSCRIBE, T_TMF,
    T_TMF_LOGICAL_UNIT_RESET,
};

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

const QSIZE: u16 = 256;
/// Indirect tables go here (below DATA, above the rings at 0..0x1a10).
const TABLE: u64 = 0x2000;
/// Buffers start here.
const DATA: u64 = 0x4000;
const REGION_B: u64 = 0x10000;
const HOLE: u64 = 0x20000;
const REGION_C: u64 = 0x30000;
const MEM_END: u64 = 0x40000;

fn mem() -> GuestMem {
    GuestMem::from_ranges(&[
        (GuestAddress(0), 0x10000),
        (GuestAddress(REGION_B), 0x10000),
        (GuestAddress(REGION_C), 0x10000),
    ])
    .unwrap()
}

fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// A chain of `descs` (addr, len, flags), linked in order.
fn chain<'a>(mem: &'a GuestMem, descs: &[(u64, u32, u16)]) -> DescriptorChain<&'a GuestMem> {
    let n = descs.len();
    let raws: Vec<_> = descs
        .iter()
        .enumerate()
        .map(|(i, &(a, l, f))| {
            if i + 1 == n {
                raw(a, l, f & !NEXT, 0)
            } else {
                raw(a, l, f | NEXT, i as u16 + 1)
            }
        })
        .collect();
    raw_chain(mem, &raws)
}

/// A chain of raw descriptors written as they are at table index 0.. (head
/// 0), popped through a real `Queue` set up by the mock driver.
fn try_raw_chain<'a>(
    mem: &'a GuestMem,
    descs: &[RawDescriptor],
) -> Option<DescriptorChain<&'a GuestMem>> {
    let q = MockSplitQueue::new(mem, QSIZE);
    q.add_desc_chains(descs, 0).ok()?;
    let mut queue: Queue = q.create_queue().ok()?;
    queue.pop_descriptor_chain(mem)
}

fn raw_chain<'a>(mem: &'a GuestMem, descs: &[RawDescriptor]) -> DescriptorChain<&'a GuestMem> {
    try_raw_chain(mem, descs).unwrap()
}

/// Write an indirect table at `addr`, linking `descs` in order.
fn write_table(mem: &GuestMem, addr: u64, descs: &[(u64, u32, u16)]) -> (u64, u32, u16) {
    for (i, &(a, l, f)) in descs.iter().enumerate() {
        let last = i + 1 == descs.len();
        let (f, n) = if last {
            (f & !NEXT, 0)
        } else {
            (f | NEXT, i as u16 + 1)
        };
        mem.write_obj(raw(a, l, f, n), GuestAddress(addr + 16 * i as u64))
            .unwrap();
    }
    (addr, 16 * descs.len() as u32, INDIRECT)
}

fn split(mem: &GuestMem, descs: &[(u64, u32, u16)]) -> Result<SplitChain, ChainError> {
    split_chain(chain(mem, descs))
}

/// Lay `bytes` out in guest memory as pieces of the given lengths, each at
/// its own address starting from `*at`, 8 bytes apart; return the
/// descriptors (addr, len, flags). Zero-length pieces get a zero-length
/// descriptor.
fn scatter(
    mem: &GuestMem,
    bytes: &[u8],
    lens: &[usize],
    flags: u16,
    at: &mut u64,
) -> Vec<(u64, u32, u16)> {
    assert_eq!(lens.iter().sum::<usize>(), bytes.len());
    let mut off = 0;
    let mut out = Vec::new();
    for &l in lens {
        mem.write_slice(&bytes[off..off + l], GuestAddress(*at))
            .unwrap();
        out.push((*at, l as u32, flags));
        off += l;
        *at += l as u64 + 8;
    }
    out
}

/// The bytes the descriptors point at, concatenated.
fn gather(mem: &GuestMem, descs: &[(u64, u32, u16)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(a, l, _) in descs {
        let mut b = vec![0; l as usize];
        mem.read_slice(&mut b, GuestAddress(a)).unwrap();
        out.extend(b);
    }
    out
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// `sample_header()` as parse_cmd returns it (tag in host byte order).
fn parsed_header() -> CmdReqHeader {
    let mut h = sample_header();
    h.tag = 0x1122_3344_5566_7788;
    h
}

/// A request header with its wire (little-endian) byte order.
fn sample_header() -> CmdReqHeader {
    let mut cdb = [0u8; 32];
    for (i, b) in cdb.iter_mut().enumerate() {
        *b = 0xa0 + i as u8;
    }
    cdb[0] = 0x28; // READ(10)
    CmdReqHeader {
        lun: [1, 0, 0, 3, 0, 0, 0, 0],
        tag: 0x1122_3344_5566_7788u64.to_le(),
        task_attr: 1,
        prio: 2,
        crn: 3,
        cdb,
    }
}

/// `n` pieces of one byte.
fn ones(n: usize) -> Vec<usize> {
    vec![1; n]
}

/// Check a parsed command against the bytes that were laid out.
fn check_cmd(mem: &GuestMem, req: &CmdRequest, data_out: &[u8], wdescs: &[(u64, u32, u16)]) {
    assert_eq!(req.header, parsed_header());
    assert_eq!(req.data_out.len(), data_out.len() as u64);
    let mut got = vec![0; data_out.len()];
    assert_eq!(req.data_out.read_to(mem, &mut got).unwrap(), data_out.len());
    assert_eq!(got, data_out);

    assert_eq!(req.resp.len(), 108);
    let resp = pattern(108, 7);
    assert_eq!(req.resp.write_from(mem, &resp).unwrap(), 108);
    let din = pattern(req.data_in.len() as usize, 99);
    assert_eq!(req.data_in.write_from(mem, &din).unwrap(), din.len());
    let written = gather(mem, wdescs);
    assert_eq!(&written[..108], &resp[..]);
    assert_eq!(&written[108..], &din[..]);
}

// ---------------------------------------------------------------- parse_cmd

#[test]
fn header_and_data_out_split_at_every_byte() {
    let mem = mem();
    let hdr = sample_header();
    let data_out = pattern(10, 1);
    let mut rbytes = hdr.as_slice().to_vec();
    rbytes.extend(&data_out);
    for k in 0..=rbytes.len() {
        let mut at = DATA;
        let mut descs = scatter(&mem, &rbytes, &[k, rbytes.len() - k], 0, &mut at);
        let wdescs = scatter(&mem, &[0; 108 + 64], &[108 + 64], WRITE, &mut at);
        descs.extend(&wdescs);
        let sc = split(&mem, &descs).unwrap();
        assert_eq!(sc.head, 0);
        assert_eq!(sc.readable.len(), 61);
        let req = parse_cmd(&mem, sc).unwrap_or_else(|e| panic!("split {k}: {e:?}"));
        check_cmd(&mem, &req, &data_out, &wdescs);
    }
}

#[test]
fn header_split_in_three_at_every_pair_of_bytes() {
    let mem = mem();
    let rbytes = sample_header().as_slice().to_vec();
    for i in 0..=51 {
        for j in i..=51 {
            let mut at = DATA;
            let mut descs = scatter(&mem, &rbytes, &[i, j - i, 51 - j], 0, &mut at);
            let wdescs = scatter(&mem, &[0; 108], &[108], WRITE, &mut at);
            descs.extend(&wdescs);
            let req = parse_cmd(&mem, split(&mem, &descs).unwrap()).unwrap();
            check_cmd(&mem, &req, &[], &wdescs);
            assert!(req.data_out.is_empty() && req.data_in.is_empty());
        }
    }
}

#[test]
fn response_and_data_in_split_at_every_byte() {
    let mem = mem();
    let wlen = 108 + 20;
    for k in 0..=wlen {
        let mut at = DATA;
        let mut descs = scatter(&mem, sample_header().as_slice(), &[51], 0, &mut at);
        let wdescs = scatter(&mem, &vec![0; wlen], &[k, wlen - k], WRITE, &mut at);
        descs.extend(&wdescs);
        let req = parse_cmd(&mem, split(&mem, &descs).unwrap()).unwrap();
        assert_eq!(req.data_in.len(), 20);
        check_cmd(&mem, &req, &[], &wdescs);
    }
}

#[test]
fn one_byte_descriptors_direct() {
    let mem = mem();
    let mut rbytes = sample_header().as_slice().to_vec();
    let data_out = pattern(10, 3);
    rbytes.extend(&data_out);
    let mut at = DATA;
    let mut descs = scatter(&mem, &rbytes, &ones(61), 0, &mut at);
    let wdescs = scatter(&mem, &[0; 128], &ones(128), WRITE, &mut at);
    descs.extend(&wdescs);
    let sc = split(&mem, &descs).unwrap();
    assert_eq!(sc.readable.segments().len(), 61);
    assert_eq!(sc.writable.segments().len(), 128);
    let req = parse_cmd(&mem, sc).unwrap();
    assert_eq!(req.resp.segments().len(), 108);
    assert_eq!(req.data_in.len(), 20);
    check_cmd(&mem, &req, &data_out, &wdescs);
}

#[test]
fn one_byte_descriptors_indirect() {
    let mem = mem();
    let mut rbytes = sample_header().as_slice().to_vec();
    let data_out = pattern(10, 4);
    rbytes.extend(&data_out);
    let mut at = DATA;
    let mut descs = scatter(&mem, &rbytes, &ones(61), 0, &mut at);
    let wdescs = scatter(&mem, &[0; 128], &ones(128), WRITE, &mut at);
    descs.extend(&wdescs);
    let ind = write_table(&mem, TABLE, &descs);
    let sc = split(&mem, &[ind]).unwrap();
    assert_eq!(sc.readable.segments().len(), 61);
    let req = parse_cmd(&mem, sc).unwrap();
    check_cmd(&mem, &req, &data_out, &wdescs);
}

#[test]
fn direct_descriptors_then_indirect_table() {
    // Zero or more direct descriptors followed by one indirect one
    // (2.7.5.3.2); the table holds the rest of the request.
    let mem = mem();
    let mut at = DATA;
    let data_out = pattern(100, 5);
    let hdr = scatter(&mem, sample_header().as_slice(), &[20, 31], 0, &mut at);
    let dout = scatter(&mem, &data_out, &[60, 40], 0, &mut at);
    let wdescs = scatter(&mem, &[0; 108 + 512], &[100, 8, 512], WRITE, &mut at);
    let mut table = dout.clone();
    table.extend(&wdescs);
    let ind = write_table(&mem, TABLE, &table);
    let mut descs = hdr.clone();
    descs.push(ind);
    let req = parse_cmd(&mem, split(&mem, &descs).unwrap()).unwrap();
    assert_eq!(req.data_in.len(), 512);
    check_cmd(&mem, &req, &data_out, &wdescs);
}

#[test]
fn data_out_and_data_in_across_several_descriptors() {
    let mem = mem();
    let mut at = DATA;
    let data_out = pattern(4096 + 17, 6);
    let mut rbytes = sample_header().as_slice().to_vec();
    rbytes.extend(&data_out);
    let mut descs = scatter(&mem, &rbytes, &[51, 512, 3000, 1, 600], 0, &mut at);
    let wdescs = scatter(&mem, &vec![0; 108 + 1000], &[108, 1, 999], WRITE, &mut at);
    descs.extend(&wdescs);
    let req = parse_cmd(&mem, split(&mem, &descs).unwrap()).unwrap();
    assert_eq!(req.data_out.segments().len(), 4);
    assert_eq!(req.data_in.segments().len(), 2);
    check_cmd(&mem, &req, &data_out, &wdescs);
    // The stream reader sees the same bytes.
    let mut streamed = Vec::new();
    req.data_out
        .reader(&mem)
        .read_to_end(&mut streamed)
        .unwrap();
    assert_eq!(streamed, data_out);
}

#[test]
fn short_header_with_room_for_a_response() {
    let mem = mem();
    let mut at = DATA;
    let mut descs = scatter(&mem, &[0; 50], &[20, 30], 0, &mut at);
    descs.extend(scatter(&mem, &[0; 200], &[50, 150], WRITE, &mut at));
    let bad = parse_cmd(&mem, split(&mem, &descs).unwrap()).unwrap_err();
    assert_eq!(bad.error, ChainError::ShortHeader(50));
    let resp = bad.resp.unwrap();
    assert_eq!(resp.len(), 108);
    assert_eq!(
        resp.segments(),
        &[
            Segment {
                addr: GuestAddress(descs[2].0),
                len: 50
            },
            Segment {
                addr: GuestAddress(descs[3].0),
                len: 58
            }
        ]
    );
}

#[test]
fn short_header_without_room_for_a_response() {
    let mem = mem();
    let descs = [(DATA, 10, 0), (DATA + 0x100, 107, WRITE)];
    let bad = parse_cmd(&mem, split(&mem, &descs).unwrap()).unwrap_err();
    assert_eq!(
        bad,
        BadRequest {
            error: ChainError::ShortHeader(10),
            resp: None
        }
    );
}

#[test]
fn no_readable_part_at_all() {
    let mem = mem();
    let descs = [(DATA, 108, WRITE)];
    let bad = parse_cmd(&mem, split(&mem, &descs).unwrap()).unwrap_err();
    assert_eq!(bad.error, ChainError::ShortHeader(0));
    assert_eq!(bad.resp.unwrap().len(), 108);
}

#[test]
fn short_response() {
    let mem = mem();
    let descs = [
        (DATA, 51, 0),
        (DATA + 0x100, 100, WRITE),
        (DATA + 0x200, 7, WRITE),
    ];
    let bad = parse_cmd(&mem, split(&mem, &descs).unwrap()).unwrap_err();
    assert_eq!(
        bad,
        BadRequest {
            error: ChainError::ShortResponse(107),
            resp: None
        }
    );
}

#[test]
fn missing_response() {
    let mem = mem();
    let descs = [(DATA, 51 + 512, 0)];
    let bad = parse_cmd(&mem, split(&mem, &descs).unwrap()).unwrap_err();
    assert_eq!(
        bad,
        BadRequest {
            error: ChainError::ShortResponse(0),
            resp: None
        }
    );
}

#[test]
fn exact_sizes_have_no_data() {
    let mem = mem();
    mem.write_obj(sample_header(), GuestAddress(DATA)).unwrap();
    let descs = [(DATA, 51, 0), (DATA + 0x100, 108, WRITE)];
    let req = parse_cmd(&mem, split(&mem, &descs).unwrap()).unwrap();
    assert_eq!(req.header, parsed_header());
    assert!(req.data_out.is_empty());
    assert!(req.data_in.is_empty());
    let tag = req.header.tag;
    assert_eq!(tag, 0x1122_3344_5566_7788);
}

// ---------------------------------------------------------------- split_chain

#[test]
fn zero_length_descriptors_are_skipped() {
    let mem = mem();
    mem.write_obj(sample_header(), GuestAddress(DATA)).unwrap();
    let descs = [
        (u64::MAX, 0, 0), // would overflow, but carries no bytes
        (DATA, 20, 0),
        (HOLE, 0, 0), // in the hole
        (DATA + 20, 31, 0),
        (0, 0, WRITE),
        (DATA + 0x100, 108, WRITE),
        (DATA + 0x200, 0, 0), // readable after writable, but empty
        (DATA + 0x300, 0, WRITE),
    ];
    let sc = split(&mem, &descs).unwrap();
    assert_eq!(sc.readable.segments().len(), 2);
    assert_eq!(sc.writable.segments().len(), 1);
    let req = parse_cmd(&mem, sc).unwrap();
    assert_eq!(req.header, parsed_header());
}

#[test]
fn all_zero_length_chain_is_empty_not_malformed() {
    let mem = mem();
    let sc = split(&mem, &[(DATA, 0, 0), (DATA, 0, WRITE)]).unwrap();
    assert!(sc.readable.is_empty() && sc.writable.is_empty());
}

#[test]
fn readable_after_writable_is_rejected() {
    let mem = mem();
    let descs = [
        (DATA, 51, 0),
        (DATA + 0x100, 108, WRITE),
        (DATA + 0x200, 8, 0),
    ];
    assert_eq!(split(&mem, &descs), Err(ChainError::WrongDirection));
    // Also inside an indirect table.
    let ind = write_table(&mem, TABLE, &descs);
    assert_eq!(split(&mem, &[ind]), Err(ChainError::WrongDirection));
}

#[test]
fn descriptors_outside_memory_are_rejected() {
    let mem = mem();
    let cases: &[(u64, u32)] = &[
        (HOLE, 1),                          // in the hole
        (HOLE + 0x100, 0x100),              // inside the hole
        (REGION_B + 0xfff0, 0x20),          // end of B into the hole
        (HOLE + 0xfff0, 0x20),              // from the hole into C
        (MEM_END - 8, 9),                   // one byte past the end of memory
        (MEM_END, 1),                       // just past the end
        (u64::MAX - 4, 16),                 // addr + len overflows u64
        (u64::MAX, 1),                      // last address of the space
        (u64::MAX - 0xffff_ffff, u32::MAX), // ends exactly at 2^64 - 1, unmapped
        (0, u32::MAX),                      // starts in memory, much too long
    ];
    for &(addr, len) in cases {
        for flags in [0, WRITE] {
            assert_eq!(
                split(&mem, &[(addr, len, flags)]),
                Err(ChainError::OutsideMemory { addr, len }),
                "{addr:#x}+{len:#x}"
            );
        }
    }
    // Last byte of memory is fine.
    assert!(split(&mem, &[(MEM_END - 1, 1, 0)]).is_ok());
}

#[test]
fn descriptor_spanning_two_regions() {
    let mem = mem();
    let start = REGION_B - 0x20;
    let hdr = sample_header();
    mem.write_slice(hdr.as_slice(), GuestAddress(start))
        .unwrap();
    // The response overlaps the header (a guest may do that); the header
    // is read before anything is written.
    let descs = [(start, 51, 0), (REGION_B - 4, 108, WRITE)];
    let sc = split(&mem, &descs).unwrap();
    let req = parse_cmd(&mem, sc).unwrap();
    assert_eq!(req.header, parsed_header());

    let mut iov = crate::block::IoVecs::new();
    req.resp.iovecs(&mem, 108, &mut iov).unwrap();
    assert_eq!(iov.len(), 2);
    assert_eq!(iov[0].0.iov_len, 4);
    assert_eq!(iov[1].0.iov_len, 104);
    let resp = pattern(108, 42);
    req.resp.write_from(&mem, &resp).unwrap();
    let mut back = vec![0; 108];
    mem.read_slice(&mut back, GuestAddress(REGION_B - 4))
        .unwrap();
    assert_eq!(back, resp);
}

#[test]
fn malformed_chains() {
    let mem = mem();
    let m = |descs: &[RawDescriptor]| {
        matches!(
            split_chain(raw_chain(&mem, descs)),
            Err(ChainError::Malformed(_))
        )
    };
    // A loop 0 -> 1 -> 0: the walk stops after QSIZE descriptors.
    assert!(m(&[raw(DATA, 8, NEXT, 1), raw(DATA, 8, NEXT, 0)]));
    // A self-loop.
    assert!(m(&[raw(DATA, 8, NEXT, 0)]));
    // Next index out of the table.
    assert!(m(&[raw(DATA, 8, NEXT, QSIZE)]));
    assert!(m(&[raw(DATA, 8, NEXT, u16::MAX)]));

    // Indirect table length not a multiple of 16.
    write_table(&mem, TABLE, &[(DATA, 8, 0)]);
    assert!(m(&[raw(TABLE, 15, INDIRECT, 0)]));
    // Empty indirect table.
    assert!(m(&[raw(TABLE, 0, INDIRECT, 0)]));
    // Indirect table outside memory.
    assert!(m(&[raw(HOLE, 16, INDIRECT, 0)]));
    assert!(m(&[raw(u64::MAX - 7, 16, INDIRECT, 0)]));
    // A table running past the end of memory: fine until the walk needs
    // the entry that is not there.
    mem.write_obj(raw(DATA, 8, 0, 0), GuestAddress(MEM_END - 16))
        .unwrap();
    assert!(split_chain(raw_chain(&mem, &[raw(MEM_END - 16, 32, INDIRECT, 0)])).is_ok());
    mem.write_obj(raw(DATA, 8, NEXT, 1), GuestAddress(MEM_END - 16))
        .unwrap();
    assert!(m(&[raw(MEM_END - 16, 32, INDIRECT, 0)]));
    // Nested indirect descriptor (2.7.5.3.1).
    write_table(&mem, TABLE, &[(DATA, 8, 0), (TABLE + 0x100, 16, INDIRECT)]);
    assert!(m(&[raw(TABLE, 32, INDIRECT, 0)]));
    // Loop inside an indirect table.
    mem.write_obj(raw(DATA, 8, NEXT, 1), GuestAddress(TABLE))
        .unwrap();
    mem.write_obj(raw(DATA, 8, NEXT, 0), GuestAddress(TABLE + 16))
        .unwrap();
    assert!(m(&[raw(TABLE, 32, INDIRECT, 0)]));
    // Next index past the indirect table's end.
    mem.write_obj(raw(DATA, 8, NEXT, 2), GuestAddress(TABLE + 16))
        .unwrap();
    assert!(m(&[raw(TABLE, 32, INDIRECT, 0)]));
    // Direct descriptor then a bad indirect one.
    assert!(m(&[raw(DATA, 8, NEXT, 1), raw(TABLE, 15, INDIRECT, 0)]));
    // (The 2^32-byte limit of 2.7.5.2 also ends the walk early, but a
    // chain cannot reach it inside this small memory: every descriptor must
    // lie in memory, and the walk is bounded by the queue size.)

    // A well-formed two-descriptor chain and indirect table are fine.
    assert!(split_chain(raw_chain(
        &mem,
        &[raw(DATA, 8, NEXT, 1), raw(DATA, 8, 0, 0)]
    ))
    .is_ok());
    write_table(&mem, TABLE, &[(DATA, 8, 0), (DATA, 8, WRITE)]);
    assert!(split_chain(raw_chain(&mem, &[raw(TABLE, 32, INDIRECT, 0)])).is_ok());
    // The NEXT flag of an indirect descriptor is ignored by virtio-queue.
    assert!(split_chain(raw_chain(&mem, &[raw(TABLE, 32, INDIRECT | NEXT, 5)])).is_ok());
}

#[test]
fn longest_direct_chain_is_accepted() {
    let mem = mem();
    let descs: Vec<_> = (0..QSIZE as u64).map(|i| (DATA + i, 1, 0)).collect();
    let sc = split(&mem, &descs).unwrap();
    assert_eq!(sc.readable.len(), QSIZE as u64);
}

// ---------------------------------------------------------------- parse_ctrl

/// A descriptor as (addr, len, flags).
type Desc = (u64, u32, u16);
type CtrlResult = Result<(CtrlRequest, Segments), BadRequest>;

fn ctrl(mem: &GuestMem, req: &[u8], rlens: &[usize], wlen: usize) -> (CtrlResult, Vec<Desc>) {
    let mut at = DATA;
    let mut descs = scatter(mem, req, rlens, 0, &mut at);
    let w = if wlen > 0 {
        scatter(mem, &vec![0; wlen], &[wlen], WRITE, &mut at)
    } else {
        vec![]
    };
    descs.extend(&w);
    (parse_ctrl(mem, split(mem, &descs).unwrap()), w)
}

fn tmf() -> CtrlTmfReq {
    CtrlTmfReq {
        type_: T_TMF,
        subtype: T_TMF_LOGICAL_UNIT_RESET,
        lun: [1, 0, 0, 2, 0, 0, 0, 0],
        tag: 0xdead_beef_0102_0304,
    }
}

#[test]
fn tmf_split_at_every_byte() {
    let mem = mem();
    let req = tmf();
    for k in 0..=24 {
        let (res, w) = ctrl(&mem, req.as_slice(), &[k, 24 - k], 4);
        let (parsed, resp) = res.unwrap();
        assert_eq!(parsed, CtrlRequest::Tmf(req));
        assert_eq!(resp.len(), 1);
        assert_eq!(resp.segments()[0].addr, GuestAddress(w[0].0));
    }
}

#[test]
fn an_query_and_subscribe() {
    let mem = mem();
    for ty in [T_AN_QUERY, T_AN_SUBSCRIBE] {
        let req = CtrlAnReq {
            type_: ty,
            lun: [1, 0, 0, 0, 0, 0, 0, 0],
            event_requested: 1 << 4,
        };
        for k in 0..=16 {
            let (res, _) = ctrl(&mem, req.as_slice(), &[k, 16 - k], 5);
            let (parsed, resp) = res.unwrap();
            assert_eq!(parsed, CtrlRequest::An(req));
            assert_eq!(resp.len(), 5);
        }
        // Short readable: the response is still sized for AN.
        let (res, _) = ctrl(&mem, &req.as_slice()[..10], &[10], 5);
        let bad = res.unwrap_err();
        assert_eq!(bad.error, ChainError::ShortHeader(10));
        assert_eq!(bad.resp.unwrap().len(), 5);
        // Short response.
        let (res, _) = ctrl(&mem, req.as_slice(), &[16], 4);
        assert_eq!(
            res.unwrap_err(),
            BadRequest {
                error: ChainError::ShortResponse(4),
                resp: None
            }
        );
    }
}

#[test]
fn ctrl_errors() {
    let mem = mem();
    // Unknown type: one response byte.
    let mut req = tmf();
    req.type_ = 77;
    let (res, w) = ctrl(&mem, req.as_slice(), &[24], 8);
    let bad = res.unwrap_err();
    assert_eq!(bad.error, ChainError::UnknownCtrlType(77));
    let resp = bad.resp.unwrap();
    assert_eq!(resp.len(), 1);
    assert_eq!(resp.segments()[0].addr, GuestAddress(w[0].0));
    // Unknown type, nowhere to answer.
    let (res, _) = ctrl(&mem, req.as_slice(), &[24], 0);
    assert_eq!(
        res.unwrap_err(),
        BadRequest {
            error: ChainError::UnknownCtrlType(77),
            resp: None
        }
    );
    // Type itself short.
    let (res, _) = ctrl(&mem, &[0, 0, 0], &[1, 2], 1);
    let bad = res.unwrap_err();
    assert_eq!(bad.error, ChainError::ShortHeader(3));
    assert_eq!(bad.resp.unwrap().len(), 1);
    // Empty readable part, nothing writable.
    let (res, _) = ctrl(&mem, &[], &[0], 0);
    assert_eq!(res.unwrap_err().error, ChainError::ShortHeader(0));
    // Short TMF.
    let (res, _) = ctrl(&mem, &tmf().as_slice()[..20], &[4, 16], 1);
    let bad = res.unwrap_err();
    assert_eq!(bad.error, ChainError::ShortHeader(20));
    assert_eq!(bad.resp.unwrap().len(), 1);
    // TMF without a response byte.
    let (res, _) = ctrl(&mem, tmf().as_slice(), &[24], 0);
    assert_eq!(
        res.unwrap_err(),
        BadRequest {
            error: ChainError::ShortResponse(0),
            resp: None
        }
    );
}

// ---------------------------------------------------------------- Segments

fn segs(list: &[(u64, u32)]) -> Segments {
    let mut s = Segments::default();
    for &(a, l) in list {
        s.push(Segment {
            addr: GuestAddress(a),
            len: l,
        })
        .unwrap();
    }
    s
}

#[test]
fn push_skips_empty_and_refuses_overflow() {
    let mut s = segs(&[(DATA, 0), (DATA, 10)]);
    assert_eq!(s.segments().len(), 1);
    assert_eq!(s.len(), 10);
    assert!(s
        .push(Segment {
            addr: GuestAddress(u64::MAX),
            len: 2
        })
        .is_err());
    assert_eq!(s.len(), 10);
    assert!(s
        .push(Segment {
            addr: GuestAddress(u64::MAX - 2),
            len: 2
        })
        .is_ok());
    assert!(Segments::default().is_empty());
}

#[test]
fn split_at_edges() {
    let s = segs(&[(0x100, 10), (0x200, 20), (0x300, 30)]);
    let (a, b) = s.clone().split_at(0);
    assert!(a.is_empty());
    assert_eq!(b, s);
    let (a, b) = s.clone().split_at(60);
    assert_eq!(a, s);
    assert!(b.is_empty());
    let (a, b) = s.clone().split_at(1000);
    assert_eq!(a, s);
    assert!(b.is_empty());
    let (a, b) = s.clone().split_at(u64::MAX);
    assert_eq!(a, s);
    assert!(b.is_empty());
    // On a segment boundary.
    let (a, b) = s.clone().split_at(10);
    assert_eq!(a, segs(&[(0x100, 10)]));
    assert_eq!(b, segs(&[(0x200, 20), (0x300, 30)]));
    // Inside a segment.
    let (a, b) = s.clone().split_at(15);
    assert_eq!(a, segs(&[(0x100, 10), (0x200, 5)]));
    assert_eq!(b, segs(&[(0x205, 15), (0x300, 30)]));
    let (a, b) = s.clone().split_at(59);
    assert_eq!(a, segs(&[(0x100, 10), (0x200, 20), (0x300, 29)]));
    assert_eq!(b, segs(&[(0x31d, 1)]));
    // Every split preserves the total and the byte order.
    for n in 0..=61 {
        let (a, b) = s.clone().split_at(n);
        assert_eq!(a.len(), n.min(60));
        assert_eq!(a.len() + b.len(), 60);
    }
    let (a, b) = Segments::default().split_at(5);
    assert!(a.is_empty() && b.is_empty());
}

#[test]
fn read_and_write_partial() {
    let mem = mem();
    let s = segs(&[(DATA, 3), (REGION_C, 5)]);
    // Write more than fits: only 8 bytes land.
    let data = pattern(20, 9);
    assert_eq!(s.write_from(&mem, &data).unwrap(), 8);
    // Read into a longer buffer: 8 bytes, the rest untouched.
    let mut buf = [0xffu8; 12];
    assert_eq!(s.read_to(&mem, &mut buf).unwrap(), 8);
    assert_eq!(&buf[..8], &data[..8]);
    assert_eq!(&buf[8..], &[0xff; 4]);
    // Read into a shorter buffer, ending mid-segment.
    let mut buf = [0u8; 4];
    assert_eq!(s.read_to(&mem, &mut buf).unwrap(), 4);
    assert_eq!(&buf, &data[..4]);
    // Shorter write.
    assert_eq!(s.write_from(&mem, &[1, 2]).unwrap(), 2);
    assert_eq!(s.read_to(&mem, &mut buf).unwrap(), 4);
    assert_eq!(buf, [1, 2, data[2], data[3]]);
    // Empty buffers and segment lists.
    assert_eq!(s.read_to(&mem, &mut []).unwrap(), 0);
    assert_eq!(Segments::default().write_from(&mem, &data).unwrap(), 0);
}

#[test]
fn access_outside_memory_fails_cleanly() {
    // Segments that were not validated (pushed by hand, or used with
    // another memory map) fail without touching memory.
    let mem = mem();
    let s = segs(&[(DATA, 4), (HOLE, 4)]);
    let mut buf = [0u8; 8];
    assert_eq!(
        s.read_to(&mem, &mut buf),
        Err(ChainError::OutsideMemory { addr: HOLE, len: 4 })
    );
    assert!(s.write_from(&mem, &buf).is_err());
    let mut out = crate::block::IoVecs::new();
    assert!(s.iovecs(&mem, 8, &mut out).is_err());
    assert!(out.is_empty());
    let mut r = s.reader(&mem);
    let mut b4 = [0u8; 4];
    r.read_exact(&mut b4).unwrap();
    assert!(r.read(&mut b4).is_err());
}

#[test]
fn reader_streams_across_segments() {
    let mem = mem();
    let data = pattern(100, 11);
    let s = segs(&[(DATA, 7), (REGION_B - 3, 50), (REGION_C, 43)]);
    assert_eq!(s.write_from(&mem, &data).unwrap(), 100);
    let mut r = s.reader(&mem);
    let mut got: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 6];
    loop {
        let n = r.read(&mut chunk).unwrap();
        if n == 0 {
            break;
        }
        assert!(n <= 6);
        got.extend(&chunk[..n]);
    }
    assert_eq!(got, data);
    assert_eq!(r.read(&mut chunk).unwrap(), 0);
    assert_eq!(r.read(&mut []).unwrap(), 0);
    let mut all = Vec::new();
    s.reader(&mem).read_to_end(&mut all).unwrap();
    assert_eq!(all, data);
    let mut none = Vec::new();
    Segments::default()
        .reader(&mem)
        .read_to_end(&mut none)
        .unwrap();
    assert!(none.is_empty());
}

#[test]
fn iovecs_point_at_the_guest_bytes() {
    let mem = mem();
    let s = segs(&[(DATA + 1, 5), (REGION_B - 2, 6), (REGION_C + 0x10, 9)]);
    let mut out = smallvec::smallvec![IoVec(libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    })];
    s.iovecs(&mem, 20, &mut out).unwrap();
    // One pre-existing + 1 + 2 (spans A/B) + 1 (cut to 9 bytes).
    let lens: Vec<usize> = out[1..].iter().map(|v| v.0.iov_len).collect();
    assert_eq!(lens, [5, 2, 4, 9]);
    let data = pattern(20, 77);
    let mut off = 0;
    for v in &out[1..] {
        // SAFETY: the iovec covers v.iov_len bytes of guest memory mapped
        // by `mem`, alive for this scope; the source is a distinct Vec.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data[off..].as_ptr(),
                v.0.iov_base.cast::<u8>(),
                v.0.iov_len,
            )
        };
        off += v.0.iov_len;
    }
    let mut back = [0u8; 20];
    assert_eq!(s.read_to(&mem, &mut back).unwrap(), 20);
    assert_eq!(&back[..], &data[..]);
    // Guest memory right after the 20 bytes is untouched.
    let mut after = [0u8; 1];
    mem.read_slice(&mut after, GuestAddress(REGION_C + 0x10 + 9))
        .unwrap();
    assert_eq!(after, [0]);

    // Shorter prefixes, and the empty one.
    let mut out = crate::block::IoVecs::new();
    s.iovecs(&mem, 7, &mut out).unwrap();
    let lens: Vec<usize> = out.iter().map(|v| v.0.iov_len).collect();
    assert_eq!(lens, [5, 2]);
    let mut out = crate::block::IoVecs::new();
    s.iovecs(&mem, 0, &mut out).unwrap();
    assert!(out.is_empty());
    // Longer than the segments: error, nothing appended.
    assert!(matches!(
        s.iovecs(&mem, 21, &mut out),
        Err(ChainError::Malformed(_))
    ));
    assert!(out.is_empty());
}

// ---------------------------------------------------------------- fuzz-ish

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn addr(&mut self) -> u64 {
        match self.below(8) {
            0 => DATA + self.below(0x1000),
            1 => REGION_B - self.below(0x200),
            2 => HOLE - self.below(0x40),
            3 => MEM_END - self.below(0x200),
            4 => u64::MAX - self.below(0x100),
            5 => TABLE + 16 * self.below(8),
            6 => self.next(),
            _ => REGION_C + self.below(0x10000),
        }
    }
    fn len(&mut self) -> u32 {
        match self.below(7) {
            0 => 0,
            1 => 1 + self.below(4) as u32,
            2 => 51 + self.below(3) as u32 - 1,
            3 => 108 + self.below(3) as u32 - 1,
            4 => u32::MAX - self.below(4) as u32,
            5 => 16 * self.below(10) as u32 + self.below(2) as u32,
            _ => self.below(0x400) as u32,
        }
    }
    fn desc(&mut self, n: u16) -> RawDescriptor {
        let flags = (self.below(8) as u16) & (NEXT | WRITE | INDIRECT);
        let flags = if self.below(4) == 0 {
            flags | (self.below(0x10000) as u16)
        } else {
            flags
        };
        let next = if self.below(4) == 0 {
            self.below(0x10000) as u16
        } else {
            self.below(u64::from(n) + 1) as u16
        };
        raw(self.addr(), self.len(), flags, next)
    }
}

/// Exercise everything on a split chain; must never panic.
fn exercise(mem: &GuestMem, sc: SplitChain) {
    for seg in sc.readable.segments().iter().chain(sc.writable.segments()) {
        assert!(GuestMemory::check_range(
            mem,
            seg.addr,
            seg.len as usize,
            Permissions::ReadWrite
        ));
    }
    let mut buf = vec![0u8; 300];
    let _ = sc.readable.read_to(mem, &mut buf);
    let _ = sc.readable.reader(mem).read(&mut buf);
    let _ = sc.writable.write_from(mem, &buf);
    let mut iov = crate::block::IoVecs::new();
    let n = sc.writable.len().min(4096);
    sc.writable.iovecs(mem, n, &mut iov).unwrap();
    assert_eq!(iov.iter().map(|v| v.0.iov_len as u64).sum::<u64>(), n);
    let (a, b) = sc.writable.clone().split_at(n / 2);
    assert_eq!(a.len() + b.len(), sc.writable.len());
    if let Ok(req) = parse_cmd(mem, sc.clone()) {
        assert_eq!(req.resp.len(), 108);
        assert_eq!(
            req.data_out.len() + 51 + req.resp.len() + req.data_in.len(),
            sc.readable.len() + sc.writable.len()
        );
    }
    let _ = parse_ctrl(mem, sc);
}

#[test]
fn random_chains_never_panic() {
    let mem = mem();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for _ in 0..3000 {
        // Garbage in the indirect-table area and the request area.
        for i in 0..16u64 {
            let n = rng.below(16) as u16;
            mem.write_obj(rng.desc(n), GuestAddress(TABLE + 16 * i))
                .unwrap();
        }
        let req_bytes = pattern(64, rng.next() as u8);
        mem.write_slice(&req_bytes, GuestAddress(DATA)).unwrap();
        let n = 1 + rng.below(12) as u16;
        let descs: Vec<_> = (0..n).map(|_| rng.desc(n)).collect();
        let mut descs = descs;
        // Often make a well-linked chain, so parsing gets exercised.
        if rng.below(2) == 0 {
            for (i, d) in descs.iter_mut().enumerate() {
                let s = SplitDescriptor::from(*d);
                let last = i + 1 == n as usize;
                let mut flags = s.flags() & (WRITE | INDIRECT);
                if rng.below(3) != 0 {
                    flags &= !INDIRECT;
                }
                if !last {
                    flags |= NEXT;
                }
                *d = raw(s.addr().0, s.len(), flags, i as u16 + 1);
            }
        }
        // The chain's head is table index 0.
        let Some(c) = try_raw_chain(&mem, &descs) else {
            continue;
        };
        if let Ok(sc) = split_chain(c) {
            accepted += 1;
            exercise(&mem, sc);
        }
    }
    assert!(accepted > 100, "only {accepted} chains accepted");
}

#[test]
fn random_valid_requests_round_trip() {
    // Random splits of a valid request, direct or indirect, always parse
    // to the same header, data-out and data-in lengths.
    let mem = mem();
    let mut rng = Rng(42);
    let data_out = pattern(300, 1);
    let mut rbytes = sample_header().as_slice().to_vec();
    rbytes.extend(&data_out);
    for _ in 0..500 {
        let cut = |rng: &mut Rng, total: usize| {
            let mut lens = Vec::new();
            let mut left = total;
            while left > 0 {
                let l = (1 + rng.below(80) as usize).min(left);
                let l = if rng.below(8) == 0 { 0 } else { l };
                lens.push(l);
                left -= l;
            }
            lens
        };
        let rl = cut(&mut rng, rbytes.len());
        let wlen = 108 + rng.below(200) as usize;
        let wl = cut(&mut rng, wlen);
        if rl.len() + wl.len() > QSIZE as usize {
            continue;
        }
        let mut at = DATA;
        let mut descs = scatter(&mem, &rbytes, &rl, 0, &mut at);
        let wdescs = scatter(&mem, &vec![0; wlen], &wl, WRITE, &mut at);
        descs.extend(&wdescs);
        let sc = if rng.below(2) == 0 {
            split(&mem, &descs).unwrap()
        } else {
            let ind = write_table(&mem, TABLE, &descs);
            split(&mem, &[ind]).unwrap()
        };
        let req = parse_cmd(&mem, sc).unwrap();
        assert_eq!(req.data_in.len(), wlen as u64 - 108);
        check_cmd(&mem, &req, &data_out, &wdescs);
    }
}
