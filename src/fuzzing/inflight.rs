//! Target `inflight`: the inflight region a restarted daemon is handed by
//! the frontend (vhost-user GET/SET_INFLIGHT_FD), from arbitrary bytes.
//!
//! The input chooses the queue count and size, the size and offset the
//! frontend claims, the file's bytes and, per queue, the used index and
//! ring size given to `recover`. A region that maps is then used as a
//! worker would (begin, record_done, publish of heads the input picks) and
//! mapped again as after a second restart: what it resubmits must be
//! exactly what was begun and not published, newer ones in begin order,
//! with the completion records that were written.

use std::fs::File;
use std::io::Write;

use super::Input;
use crate::vhost::inflight::{region_size, InflightRegion, Resubmit};

/// Largest queue size tried (the region allows 32768; the layout does not
/// change with the size, and small regions keep the fuzzer fast).
const MAX_QUEUE_SIZE: u16 = 1024;
/// Worker operations per queue.
const MAX_OPS: usize = 32;

fn memfd() -> File {
    let fd = nix::sys::memfd::memfd_create(
        c"vhost-user-scsi-fuzz-inflight",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC
            | nix::sys::memfd::MemFdCreateFlag::MFD_ALLOW_SEALING,
    )
    .expect("memfd_create");
    File::from(fd)
}

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let num_queues = u16::from(inp.u8() % 5);
    let queue_size = inp.u16() % (MAX_QUEUE_SIZE + 1);
    let need = region_size(num_queues, queue_size) as u64;
    let sel = inp.u8();
    let size = match sel % 4 {
        0 | 1 => need,
        2 => need.saturating_sub(u64::from(inp.u8())),
        _ => need + u64::from(inp.u16()),
    };
    let offset = match inp.u8() % 4 {
        0 | 1 => 0,
        2 => 4096 * u64::from(inp.u8() % 4),
        _ => u64::from(inp.u16()),
    };
    let file_len = match inp.u8() % 4 {
        0 | 1 => offset + size,
        2 => (offset + size).saturating_sub(u64::from(inp.u8())),
        _ => offset + size + u64::from(inp.u8()),
    };
    let params: Vec<(u16, u16, &[u8])> = (0..num_queues)
        .map(|_| {
            let used_idx = inp.u16();
            let ring_size = if inp.bool() { queue_size } else { inp.u16() };
            let nops = usize::from(inp.u8()) % (MAX_OPS + 1);
            (used_idx, ring_size, inp.bytes(3 * nops))
        })
        .collect();
    // The region's bytes: the rest of the input, zeros after it.
    let mut file = memfd();
    let content = inp.rest();
    let content = &content[..content.len().min(file_len.saturating_sub(offset) as usize)];
    file.set_len(file_len).expect("size the memfd");
    if !content.is_empty() {
        use std::os::unix::fs::FileExt;
        file.write_all_at(content, offset).expect("fill the memfd");
    }
    file.flush().ok();

    let map = |file: &File| {
        InflightRegion::map(
            file.try_clone().expect("dup"),
            offset,
            size,
            num_queues,
            queue_size,
        )
    };
    let Ok(region) = map(&file) else {
        return;
    };
    // Each queue as a restarted worker sees it, then used.
    let mut expect: Vec<(u16, u16, Vec<Resubmit>, Vec<u16>)> = Vec::new();
    for (q, (used_idx, ring_size, ops)) in params.into_iter().enumerate() {
        let mut queue = region.queue(q as u16).expect("queue in the region");
        let Ok(rec) = queue.recover(used_idx, ring_size) else {
            continue;
        };
        let mut heads: Vec<u16> = rec.resubmit.iter().map(|r| r.head).collect();
        heads.sort_unstable();
        let before = heads.len();
        heads.dedup();
        assert_eq!(heads.len(), before, "a head resubmitted twice: {rec:?}");
        assert!(heads.iter().all(|&h| h < ring_size.min(queue_size)));
        assert!(rec.resubmit.len() <= usize::from(ring_size));
        assert_eq!(
            rec.next_avail,
            used_idx.wrapping_add(rec.resubmit.len() as u16)
        );
        // A worker's life: the old requests and new ones, each published
        // at most once.
        let mut old = rec.resubmit.clone();
        let mut new: Vec<Resubmit> = Vec::new();
        let mut used = used_idx;
        for op in ops.chunks_exact(3) {
            let head = u16::from_le_bytes([op[1], op[2]]) % queue_size;
            let pending = old.iter().chain(&new).any(|r| r.head == head);
            match op[0] % 3 {
                0 if !pending => {
                    queue.begin(head);
                    new.push(Resubmit {
                        head,
                        done: None,
                        applied: false,
                    });
                }
                1 if pending => {
                    let len = u32::from(op[0]) * 1000;
                    queue.record_done(head, len);
                    for r in old.iter_mut().chain(new.iter_mut()) {
                        if r.head == head {
                            // One record byte: DONE replaces APPLIED.
                            r.done = Some(len);
                            r.applied = false;
                        }
                    }
                }
                2 if pending => {
                    used = used.wrapping_add(1);
                    queue.publish(head, || Some(used));
                    old.retain(|r| r.head != head);
                    new.retain(|r| r.head != head);
                }
                _ => {}
            }
        }
        assert_eq!(queue.in_flight(), old.len() + new.len());
        let order = new.iter().map(|r| r.head).collect();
        old.extend(new);
        expect.push((q as u16, used, old, order));
    }
    drop(region);
    // The second restart.
    let region = map(&file).expect("a region we used maps again");
    for (q, used, want, order) in expect {
        let mut queue = region.queue(q).expect("queue in the region");
        let rec = queue
            .recover(used, queue_size)
            .expect("a region we used recovers");
        assert!(!rec.repaired, "nothing was torn");
        let mut got = rec.resubmit.clone();
        let mut want_sorted = want;
        got.sort_by_key(|r| r.head);
        want_sorted.sort_by_key(|r| r.head);
        assert_eq!(got, want_sorted, "resubmitted after a restart");
        let got_order: Vec<u16> = rec
            .resubmit
            .iter()
            .map(|r| r.head)
            .filter(|h| order.contains(h))
            .collect();
        assert_eq!(got_order, order, "newer requests out of begin order");
    }
}
