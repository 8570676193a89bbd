//! Host integration tests without a VM: the project's vhost-user frontend
//! (memfd guest memory, hand-built split rings) drives the real daemon
//! binary over its socket.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::{image, pattern, Daemon};
use vhost_user_scsi::frontend::{cdb, ChainPart, DataDir, ScsiRequest, Split};
use vhost_user_scsi::virtio_scsi::defs::*;

const MIB: u64 = 1 << 20;
const GOOD: u8 = 0;
const CHECK: u8 = 2;

fn two_disks(dir: &std::path::Path) -> Vec<String> {
    image(dir, "a.img", 16 * MIB);
    image(dir, "b.img", 8 * MIB);
    image(dir, "ro.img", 4 * MIB);
    vec![
        dir.join("a.img").display().to_string(),
        format!("{},block-size=4096", dir.join("b.img").display()),
        format!("{},readonly,lun=5", dir.join("ro.img").display()),
    ]
}

#[test]
fn handshake_capacity_and_identity() {
    let d = Daemon::start(two_disks, &["--num-queues", "4"]);
    let fe = d.connect_raw(2);
    // A new I_T nexus: INQUIRY answers, TEST UNIT READY reports POWER ON
    // OCCURRED once (SAM-5 unit attention), then GOOD.
    let r = fe
        .command(0, 0, &cdb::inquiry(false, 0, 36), DataDir::FromDevice(36))
        .unwrap();
    assert_eq!(r.status, GOOD);
    let r = fe
        .command(0, 0, &cdb::test_unit_ready(), DataDir::None)
        .unwrap();
    assert_eq!((r.status, r.sense_key()), (CHECK, Some((6, 0x29, 0))));
    let r = fe
        .command(0, 0, &cdb::test_unit_ready(), DataDir::None)
        .unwrap();
    assert_eq!((r.response, r.status), (S_OK, GOOD));
    common::settle(&fe, [1, 5]);
    let r = fe
        .command(1, 0, &cdb::read_capacity16(32), DataDir::FromDevice(32))
        .unwrap();
    assert_eq!(r.status, GOOD);
    let data = r.data_in();
    assert_eq!(
        u64::from_be_bytes(data[0..8].try_into().unwrap()),
        16 * MIB / 512 - 1
    );
    assert_eq!(u32::from_be_bytes(data[8..12].try_into().unwrap()), 512);
    let r = fe
        .command(0, 1, &cdb::read_capacity10(), DataDir::FromDevice(8))
        .unwrap();
    assert_eq!(
        u32::from_be_bytes(r.data_in()[0..4].try_into().unwrap()),
        8 * MIB as u32 / 4096 - 1
    );
    assert_eq!(
        u32::from_be_bytes(r.data_in()[4..8].try_into().unwrap()),
        4096
    );
    let r = fe
        .command(0, 0, &cdb::report_luns(0, 64), DataDir::FromDevice(64))
        .unwrap();
    let d_in = r.data_in();
    assert_eq!(
        u32::from_be_bytes(d_in[0..4].try_into().unwrap()),
        24,
        "three LUNs"
    );
    let r = fe
        .command(1, 0, &cdb::inquiry(false, 0, 96), DataDir::FromDevice(96))
        .unwrap();
    assert_eq!(r.status, GOOD);
    assert_eq!(r.data_in()[0], 0, "disk");
    // A LUN that does not exist: INQUIRY peripheral qualifier 3, other
    // commands LOGICAL UNIT NOT SUPPORTED.
    let r = fe
        .command(0, 9, &cdb::inquiry(false, 0, 36), DataDir::FromDevice(36))
        .unwrap();
    assert_eq!(r.data_in()[0], 0x7f);
    let r = fe
        .command(0, 9, &cdb::test_unit_ready(), DataDir::None)
        .unwrap();
    assert_eq!(r.status, CHECK);
    assert_eq!(r.sense_key(), Some((5, 0x25, 0)));
    fe.shutdown().unwrap();
}

#[test]
fn writes_reach_the_file_and_read_back_on_every_queue() {
    let d = Daemon::start(two_disks, &["--num-queues", "4"]);
    let fe = d.connect(4);
    for q in 0..4u64 {
        let lba = 100 + q * 64;
        let data = pattern(lba, 1, 32 * 1024);
        let fua = q % 2 == 1;
        let r = fe
            .command(
                q as usize,
                0,
                &cdb::write10(lba as u32, 64, fua),
                DataDir::ToDevice(&data),
            )
            .unwrap();
        assert_eq!((r.response, r.status), (S_OK, GOOD), "write q{q}");
        let r = fe
            .command(
                ((q + 1) % 4) as usize,
                0,
                &cdb::read16(lba, 64, false),
                DataDir::FromDevice(32 * 1024),
            )
            .unwrap();
        assert_eq!((r.status, r.resid), (GOOD, 0));
        assert_eq!(r.data_in(), &data[..], "read back q{q}");
        let mut on_disk = vec![0u8; data.len()];
        fs::File::open(d.path("a.img"))
            .unwrap()
            .read_exact_at(&mut on_disk, lba * 512)
            .unwrap();
        assert_eq!(on_disk, data, "file holds the bytes q{q}");
    }
    // SYNCHRONIZE CACHE (10) and (16).
    for c in [
        cdb::sync_cache10(0, 0).to_vec(),
        cdb::sync_cache16(0, 0).to_vec(),
    ] {
        let r = fe.command(0, 0, &c, DataDir::None).unwrap();
        assert_eq!(r.status, GOOD);
    }
    // The 4096-byte LUN, with a 16-byte CDB and the last block.
    let last = 8 * MIB / 4096 - 1;
    let data = pattern(last, 2, 4096);
    let r = fe
        .command(2, 1, &cdb::write16(last, 1, true), DataDir::ToDevice(&data))
        .unwrap();
    assert_eq!(r.status, GOOD);
    let r = fe
        .command(
            3,
            1,
            &cdb::read10(last as u32, 1, false),
            DataDir::FromDevice(4096),
        )
        .unwrap();
    assert_eq!(r.data_in(), &data[..]);
    fe.shutdown().unwrap();
}

#[test]
fn descriptor_splits_and_indirect_tables() {
    let d = Daemon::start(two_disks, &[]);
    let mut cfg = d.config();
    cfg.request_queues = 1;
    cfg.indirect = true;
    let fe = vhost_user_scsi::frontend::ScsiFrontend::connect(&cfg).unwrap();
    common::settle(&fe, [0, 1, 5]);
    let data = pattern(7, 3, 4096);
    let cases = [
        (Split::Linux, false),
        (Split::Linux, true),
        (Split::Merged, false),
        (Split::Merged, true),
        (Split::Pieces(64), false),
        (Split::Pieces(7), true),
        // One byte per descriptor: 4255 descriptors, only in a table.
        (Split::Pieces(1), true),
    ];
    for (i, (split, indirect)) in cases.into_iter().enumerate() {
        let lba = 8 * i as u32;
        let mut w = ScsiRequest::new(0, &cdb::write10(lba, 8, false), DataDir::ToDevice(&data));
        w.split = split;
        w.indirect = Some(indirect);
        let r = fe.execute(0, &w).unwrap();
        assert_eq!((r.response, r.status), (S_OK, GOOD), "{split:?} {indirect}");
        let mut rd = ScsiRequest::new(0, &cdb::read10(lba, 8, false), DataDir::FromDevice(4096));
        rd.split = split;
        rd.indirect = Some(indirect);
        let r = fe.execute(0, &rd).unwrap();
        assert_eq!(r.data_in(), &data[..], "{split:?} {indirect}");
    }
    fe.shutdown().unwrap();
}

#[test]
fn errors_become_sense_or_virtio_responses() {
    let d = Daemon::start(two_disks, &[]);
    let fe = d.connect(1);
    // LBA out of range.
    let r = fe
        .command(
            0,
            0,
            &cdb::read10(32768, 1, false),
            DataDir::FromDevice(512),
        )
        .unwrap();
    assert_eq!((r.status, r.sense_key()), (CHECK, Some((5, 0x21, 0))));
    // Write to the read-only LUN.
    let r = fe
        .command(
            0,
            5,
            &cdb::write10(0, 1, false),
            DataDir::ToDevice(&[1u8; 512]),
        )
        .unwrap();
    assert_eq!((r.status, r.sense_key()), (CHECK, Some((7, 0x27, 0))));
    // Unknown opcode.
    let r = fe
        .command(0, 0, &[0xc5, 0, 0, 0, 0, 0], DataDir::None)
        .unwrap();
    assert_eq!(r.sense_key(), Some((5, 0x20, 0)));
    // Data buffer smaller than the transfer: overrun, nothing transferred.
    let r = fe
        .command(0, 0, &cdb::read10(0, 8, false), DataDir::FromDevice(512))
        .unwrap();
    assert_eq!(r.response, S_OVERRUN);
    let r = fe
        .command(
            0,
            0,
            &cdb::write10(0, 8, false),
            DataDir::ToDevice(&[9u8; 512]),
        )
        .unwrap();
    assert_eq!(r.response, S_OVERRUN);
    // Another target.
    let mut req = ScsiRequest::new(0, &cdb::test_unit_ready(), DataDir::None);
    req.lun = encode_lun(3, 0);
    assert_eq!(fe.execute(0, &req).unwrap().response, S_BAD_TARGET);
    req.lun = [2, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(fe.execute(0, &req).unwrap().response, S_BAD_TARGET);
    fe.shutdown().unwrap();
}

#[test]
fn malformed_chains_are_answered_or_returned_and_harm_nothing() {
    let d = Daemon::start(two_disks, &["--num-queues", "2"]);
    let fe = d.connect(2);
    let vq = 2; // first request queue
    let mut hdr = CmdReqHeader {
        lun: encode_lun(0, 0),
        ..Default::default()
    };
    hdr.cdb[0] = 0; // TEST UNIT READY
    let hdr = vm_memory::ByteValued::as_slice(&hdr).to_vec();
    let resp_len = std::mem::size_of::<CmdRespHeader>() as u32;

    // No response buffer at all: returned unused.
    let c = fe.raw_chain(vq, &[ChainPart::Out(hdr.clone())]).unwrap();
    assert_eq!(c.used_len, 0);
    // Response buffer too short: returned unused.
    let c = fe
        .raw_chain(vq, &[ChainPart::Out(hdr.clone()), ChainPart::In(10)])
        .unwrap();
    assert_eq!(c.used_len, 0);
    // Short header: a FAILURE response.
    let c = fe
        .raw_chain(
            vq,
            &[ChainPart::Out(hdr[..20].to_vec()), ChainPart::In(resp_len)],
        )
        .unwrap();
    assert_eq!(c.used_len, resp_len);
    assert_eq!(c.written[0][11], S_FAILURE);
    // Readable after writable.
    let c = fe
        .raw_chain(vq, &[ChainPart::In(resp_len), ChainPart::Out(hdr.clone())])
        .unwrap();
    assert_eq!(c.used_len, 0);
    // A buffer outside guest memory.
    let c = fe
        .raw_chain(
            vq,
            &[
                ChainPart::Out(hdr.clone()),
                ChainPart::In(resp_len),
                ChainPart::Raw {
                    addr: 1 << 50,
                    len: 4096,
                    write: true,
                },
            ],
        )
        .unwrap();
    assert_eq!(c.used_len, 0);
    // The same through an indirect table.
    let c = fe
        .raw_chain_indirect(
            vq,
            &[
                ChainPart::Out(hdr.clone()),
                ChainPart::Raw {
                    addr: u64::MAX - 10,
                    len: 100,
                    write: true,
                },
            ],
        )
        .unwrap();
    assert_eq!(c.used_len, 0);
    // A well-formed raw chain still works, split at odd places.
    let c = fe
        .raw_chain(
            vq,
            &[
                ChainPart::Out(hdr[..3].to_vec()),
                ChainPart::Out(hdr[3..].to_vec()),
                ChainPart::In(7),
                ChainPart::In(resp_len - 7),
            ],
        )
        .unwrap();
    assert_eq!(c.used_len, resp_len);
    // Both queues still serve I/O, and the daemon is alive.
    for q in 0..2 {
        let r = fe
            .command(q, 0, &cdb::read10(0, 1, false), DataDir::FromDevice(512))
            .unwrap();
        assert_eq!(r.status, GOOD);
    }
    // Control queue: an unknown request type gets FAILURE.
    let c = fe
        .raw_chain(0, &[ChainPart::Out(vec![0xff; 24]), ChainPart::In(1)])
        .unwrap();
    assert_eq!((c.used_len, c.written[0][0]), (1, S_FAILURE));
    fe.shutdown().unwrap();
    let mut d = d;
    assert!(d.alive(), "daemon died:\n{}", d.log());
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn out_of_order_completion_and_many_in_flight() {
    let d = Daemon::start(two_disks, &["--num-queues", "2"]);
    let fe = d.connect(2);
    // A big read then an emulated command: when both are in the ring
    // together, the emulated one completes first. Whether they are depends
    // on timing, so try a few times; once is proof enough.
    let mut overtaken = false;
    for _ in 0..50 {
        let big = fe
            .submit(
                0,
                &ScsiRequest::new(
                    0,
                    &cdb::read10(0, 2048, false),
                    DataDir::FromDevice(1 << 20),
                ),
            )
            .unwrap();
        let small = fe
            .submit(
                0,
                &ScsiRequest::new(0, &cdb::test_unit_ready(), DataDir::None),
            )
            .unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            fe.wait_completions(0, &mut got, Duration::from_secs(20))
                .unwrap();
        }
        let order: Vec<u64> = got.iter().map(|c| c.tag).collect();
        assert!(order == [big, small] || order == [small, big]);
        if order == [small, big] {
            overtaken = true;
            break;
        }
    }
    assert!(overtaken, "a TEST UNIT READY never overtook a 1 MiB read");

    // 40 writes in flight on each of two queues (3 descriptors each, 128
    // entries a ring), then read back.
    let mut tags = Vec::new();
    for q in 0..2usize {
        for i in 0..40u64 {
            let lba = 1000 + (q as u64) * 1000 + i * 8;
            let data = pattern(lba, 5, 4096);
            tags.push(
                fe.submit(
                    q,
                    &ScsiRequest::new(
                        0,
                        &cdb::write10(lba as u32, 8, false),
                        DataDir::ToDevice(&data),
                    ),
                )
                .unwrap(),
            );
        }
    }
    for q in 0..2usize {
        let mut out = Vec::new();
        while out.len() < 40 {
            fe.wait_completions(q, &mut out, Duration::from_secs(20))
                .unwrap();
        }
        assert!(out.iter().all(|c| c.scsi().map(|r| r.status) == Some(GOOD)));
    }
    for q in 0..2usize {
        for i in 0..40u64 {
            let lba = 1000 + (q as u64) * 1000 + i * 8;
            let r = fe
                .command(
                    1 - q,
                    0,
                    &cdb::read10(lba as u32, 8, false),
                    DataDir::FromDevice(4096),
                )
                .unwrap();
            assert_eq!(r.data_in(), &pattern(lba, 5, 4096)[..]);
        }
    }
    fe.shutdown().unwrap();
}

#[test]
fn task_management_waits_for_in_flight_io() {
    let d = Daemon::start(two_disks, &["--num-queues", "2"]);
    let fe = d.connect(2);
    let mut tags = Vec::new();
    for i in 0..32u32 {
        tags.push(
            fe.submit(
                i as usize % 2,
                &ScsiRequest::new(
                    0,
                    &cdb::read10(i * 64, 64, false),
                    DataDir::FromDevice(32768),
                ),
            )
            .unwrap(),
        );
    }
    assert_eq!(
        fe.tmf(0, T_TMF_LOGICAL_UNIT_RESET, 0).unwrap(),
        S_FUNCTION_COMPLETE
    );
    // Every request was completed before the TMF answered: all are in the
    // used rings now.
    let mut out = Vec::new();
    for q in 0..2 {
        while out
            .iter()
            .filter(|c: &&vhost_user_scsi::frontend::Completion| c.vq == q + 2)
            .count()
            < 16
        {
            assert!(
                fe.wait_completions(q, &mut out, Duration::from_secs(5))
                    .unwrap()
                    > 0
            );
        }
    }
    assert_eq!(
        fe.tmf(0, T_TMF_ABORT_TASK, 12345).unwrap(),
        S_FUNCTION_COMPLETE
    );
    assert_eq!(
        fe.tmf(0, T_TMF_QUERY_TASK, 12345).unwrap(),
        S_FUNCTION_COMPLETE
    );
    assert_eq!(
        fe.tmf(0, T_TMF_I_T_NEXUS_RESET, 0).unwrap(),
        S_FUNCTION_COMPLETE
    );
    assert_eq!(fe.tmf(0, T_TMF_CLEAR_ACA, 0).unwrap(), S_FUNCTION_REJECTED);
    assert_eq!(
        fe.tmf(7, T_TMF_LOGICAL_UNIT_RESET, 0).unwrap(),
        S_INCORRECT_LUN
    );
    let (actual, resp) = fe.an_query(0, 0xff).unwrap();
    assert_eq!((actual, resp), (0, S_OK));
    fe.shutdown().unwrap();
}

#[test]
fn disconnect_and_reconnect_keep_serving() {
    let mut d = Daemon::start(two_disks, &["--num-queues", "2"]);
    let data = pattern(42, 9, 512);
    {
        let fe = d.connect(2);
        let r = fe
            .command(1, 0, &cdb::write10(42, 1, true), DataDir::ToDevice(&data))
            .unwrap();
        assert_eq!(r.status, GOOD);
        fe.shutdown().unwrap();
    }
    {
        // A frontend that vanishes without GET_VRING_BASE, with I/O in flight.
        let fe = d.connect(2);
        for i in 0..16u32 {
            fe.submit(
                0,
                &ScsiRequest::new(0, &cdb::read10(i * 8, 8, false), DataDir::FromDevice(4096)),
            )
            .unwrap();
        }
        drop(fe);
    }
    for round in 0..3 {
        let fe = d.connect(2);
        let r = fe
            .command(
                round % 2,
                0,
                &cdb::read10(42, 1, false),
                DataDir::FromDevice(512),
            )
            .unwrap();
        assert_eq!(r.data_in(), &data[..], "round {round}");
        fe.shutdown().unwrap();
    }
    assert!(d.alive());
    assert_eq!(d.stop(), Some(0));
    assert!(!d.socket.exists());
}

#[test]
fn frontend_without_event_idx_and_with_qemu_feature_quirk() {
    let d = Daemon::start(two_disks, &[]);
    let mut cfg = d.config();
    cfg.request_queues = 1;
    cfg.event_idx = false;
    cfg.indirect = true;
    // QEMU 10 acks VIRTIO_SCSI_F_CHANGE with param_change=on.
    cfg.force_features = F_CHANGE;
    let fe = vhost_user_scsi::frontend::ScsiFrontend::connect(&cfg).unwrap();
    common::settle(&fe, [0, 1, 5]);
    for i in 0..50u32 {
        let r = fe
            .command(0, 0, &cdb::read10(i, 1, false), DataDir::FromDevice(512))
            .unwrap();
        assert_eq!(r.status, GOOD);
    }
    fe.shutdown().unwrap();
}

#[test]
fn sigterm_with_a_connected_frontend_drains_and_exits_0() {
    let mut d = Daemon::start(two_disks, &["--num-queues", "2"]);
    let fe = d.connect(2);
    let data = pattern(77, 1, 4096);
    let r = fe
        .command(0, 0, &cdb::write10(77, 8, false), DataDir::ToDevice(&data))
        .unwrap();
    assert_eq!(r.status, GOOD);
    // Requests in flight while the signal arrives: each is completed (or
    // the frontend is disconnected), and the daemon exits cleanly.
    let mut tags = Vec::new();
    for i in 0..32u32 {
        tags.push(
            fe.submit(
                (i % 2) as usize,
                &ScsiRequest::new(0, &cdb::read10(i * 8, 8, false), DataDir::FromDevice(4096)),
            )
            .unwrap(),
        );
    }
    assert_eq!(d.stop(), Some(0), "exit code");
    assert!(!d.socket.exists(), "socket removed");
    // Acknowledged data is in the file after the daemon is gone.
    let mut on_disk = vec![0u8; 4096];
    fs::File::open(d.path("a.img"))
        .unwrap()
        .read_exact_at(&mut on_disk, 77 * 512)
        .unwrap();
    assert_eq!(on_disk, data);
    drop(fe);
}

#[test]
fn acknowledged_writes_survive_a_daemon_crash() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), "crash.img", 4 * MIB);
    let spec = img.display().to_string();
    let start = || {
        let spec = spec.clone();
        Daemon::start(move |_| vec![spec], &["--num-queues", "1"])
    };
    let fua_data = pattern(5, 5, 4096);
    let synced_data = pattern(40, 6, 4096);
    {
        let mut d = start();
        let fe = d.connect(1);
        // FUA write, and a plain write followed by SYNCHRONIZE CACHE.
        let r = fe
            .command(
                0,
                0,
                &cdb::write10(5, 8, true),
                DataDir::ToDevice(&fua_data),
            )
            .unwrap();
        assert_eq!(r.status, GOOD);
        let r = fe
            .command(
                0,
                0,
                &cdb::write10(40, 8, false),
                DataDir::ToDevice(&synced_data),
            )
            .unwrap();
        assert_eq!(r.status, GOOD);
        let r = fe
            .command(0, 0, &cdb::sync_cache10(0, 0), DataDir::None)
            .unwrap();
        assert_eq!(r.status, GOOD);
        // Crash: SIGKILL, no shutdown path at all.
        let mut child = d.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        drop(fe);
    }
    let d = start();
    let fe = d.connect(1);
    let r = fe
        .command(0, 0, &cdb::read10(5, 8, false), DataDir::FromDevice(4096))
        .unwrap();
    assert_eq!(r.data_in(), &fua_data[..]);
    let r = fe
        .command(0, 0, &cdb::read10(40, 8, false), DataDir::FromDevice(4096))
        .unwrap();
    assert_eq!(r.data_in(), &synced_data[..]);
    fe.shutdown().unwrap();
}

#[test]
fn a_grown_image_is_seen_after_a_lun_reset() {
    let d = Daemon::start(two_disks, &[]);
    let fe = d.connect(1);
    fs::OpenOptions::new()
        .write(true)
        .open(d.path("a.img"))
        .unwrap()
        .set_len(32 * MIB)
        .unwrap();
    assert_eq!(
        fe.tmf(0, T_TMF_LOGICAL_UNIT_RESET, 0).unwrap(),
        S_FUNCTION_COMPLETE
    );
    // The reset's unit attention, then CAPACITY DATA HAS CHANGED.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = fe
            .command(0, 0, &cdb::test_unit_ready(), DataDir::None)
            .unwrap();
        match r.sense_key() {
            Some(k) => seen.push(k),
            None => break,
        }
    }
    assert!(seen.contains(&(6, 0x2a, 0x09)), "{seen:?}");
    let r = fe
        .command(0, 0, &cdb::read_capacity16(32), DataDir::FromDevice(32))
        .unwrap();
    let data = r.data_in();
    assert_eq!(
        u64::from_be_bytes(data[0..8].try_into().unwrap()),
        32 * MIB / 512 - 1
    );
    // The new blocks are usable.
    let last = (32 * MIB / 512 - 1) as u32;
    let block = pattern(u64::from(last), 1, 512);
    let r = fe
        .command(
            0,
            0,
            &cdb::write10(last, 1, false),
            DataDir::ToDevice(&block),
        )
        .unwrap();
    assert_eq!(r.status, GOOD);
    fe.shutdown().unwrap();
}
