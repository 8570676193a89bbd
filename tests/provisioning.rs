//! Host integration tests of the commands the slow lane executes: UNMAP,
//! WRITE SAME, VERIFY, WRITE AND VERIFY, COMPARE AND WRITE, GET LBA STATUS,
//! and persistent reservations across a daemon restart.

mod common;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::thread;

use common::{image, pattern, Daemon};
use vhost_user_scsi::frontend::{cdb, DataDir, ScsiFrontend};

const MIB: u64 = 1 << 20;
const GOOD: u8 = 0;
const CHECK: u8 = 2;
const CONFLICT: u8 = 0x18;

fn one_disk(dir: &std::path::Path) -> Vec<String> {
    image(dir, "a.img", 16 * MIB);
    vec![dir.join("a.img").display().to_string()]
}

fn allocated(path: &std::path::Path) -> u64 {
    fs::metadata(path).unwrap().blocks() * 512
}

fn write(fe: &ScsiFrontend, lba: u32, data: &[u8]) {
    let r = fe
        .command(
            0,
            0,
            &cdb::write10(lba, (data.len() / 512) as u16, false),
            DataDir::ToDevice(data),
        )
        .unwrap();
    assert_eq!(r.status, GOOD);
}

fn read(fe: &ScsiFrontend, lba: u32, blocks: u16) -> Vec<u8> {
    let r = fe
        .command(
            0,
            0,
            &cdb::read10(lba, blocks, false),
            DataDir::FromDevice(u32::from(blocks) * 512),
        )
        .unwrap();
    assert_eq!(r.status, GOOD);
    r.data_in().to_vec()
}

#[test]
fn unmap_deallocates_and_reads_back_zeros() {
    let d = Daemon::start(one_disk, &[]);
    let fe = d.connect(1);
    write(&fe, 0, &pattern(0, 1, 1 << 20));
    let img = d.path("a.img");
    fs::File::open(&img).unwrap().sync_all().unwrap();
    let before = allocated(&img);
    assert!(before >= MIB, "{before}");
    let params = cdb::unmap_params(&[(0, 1024), (1536, 256)]);
    let r = fe
        .command(
            0,
            0,
            &cdb::unmap(params.len() as u16),
            DataDir::ToDevice(&params),
        )
        .unwrap();
    assert_eq!(r.status, GOOD, "{:?}", r.sense_key());
    let after = allocated(&img);
    assert!(
        after + 512 * 1024 <= before,
        "allocated {before} -> {after}"
    );
    assert!(read(&fe, 0, 8).iter().all(|b| *b == 0));
    assert_eq!(
        read(&fe, 1024, 1),
        pattern(0, 1, 1 << 20)[1024 * 512..1025 * 512]
    );

    // GET LBA STATUS: LBA 0 deallocated, LBA 1024 mapped.
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x12;
    c[13] = 64; // allocation length
    let r = fe.command(0, 0, &c, DataDir::FromDevice(64)).unwrap();
    assert_eq!(r.status, GOOD, "{:?}", r.sense_key());
    let data = r.data_in();
    // First descriptor: LBA 0, some blocks, provisioning status 1 (deallocated).
    assert_eq!(u64::from_be_bytes(data[8..16].try_into().unwrap()), 0);
    assert_eq!(data[20] & 0x0f, 1);
    let first_len = u32::from_be_bytes(data[16..20].try_into().unwrap());
    assert_eq!(first_len, 1024);
    assert_eq!(data[36] & 0x0f, 0, "then mapped");

    // Bad UNMAP: an LBA past the end.
    let params = cdb::unmap_params(&[(16 * MIB / 512, 1)]);
    let r = fe
        .command(
            0,
            0,
            &cdb::unmap(params.len() as u16),
            DataDir::ToDevice(&params),
        )
        .unwrap();
    assert_eq!((r.status, r.sense_key()), (CHECK, Some((5, 0x21, 0))));
}

#[test]
fn write_same_verify_and_write_and_verify() {
    let d = Daemon::start(one_disk, &[]);
    let fe = d.connect(1);
    // WRITE SAME(16) of a pattern block over 300 blocks.
    let block = pattern(7, 7, 512);
    let mut c = [0u8; 16];
    c[0] = 0x93;
    c[2..10].copy_from_slice(&100u64.to_be_bytes());
    c[10..14].copy_from_slice(&300u32.to_be_bytes());
    let r = fe.command(0, 0, &c, DataDir::ToDevice(&block)).unwrap();
    assert_eq!(r.status, GOOD, "{:?}", r.sense_key());
    let got = read(&fe, 100, 300);
    assert!(got.chunks(512).all(|b| b == &block[..]));
    let mut on_disk = vec![0u8; 512];
    fs::File::open(d.path("a.img"))
        .unwrap()
        .read_exact_at(&mut on_disk, 399 * 512)
        .unwrap();
    assert_eq!(on_disk, block);

    // VERIFY(10) BYTCHK=1: equal, then a miscompare at byte 700.
    let mut expected = got[..2 * 512].to_vec();
    let mut v = [0u8; 10];
    v[0] = 0x2f;
    v[1] = 0x02; // BYTCHK=01b
    v[2..6].copy_from_slice(&100u32.to_be_bytes());
    v[7..9].copy_from_slice(&2u16.to_be_bytes());
    let r = fe.command(0, 0, &v, DataDir::ToDevice(&expected)).unwrap();
    assert_eq!(r.status, GOOD, "{:?}", r.sense_key());
    expected[700] ^= 0xff;
    let r = fe.command(0, 0, &v, DataDir::ToDevice(&expected)).unwrap();
    assert_eq!((r.status, r.sense_key()), (CHECK, Some((0xe, 0x1d, 0))));
    assert_eq!(
        u32::from_be_bytes(r.sense[3..7].try_into().unwrap()),
        700,
        "INFORMATION"
    );
    // VERIFY BYTCHK=0: a medium check.
    v[1] = 0;
    let r = fe.command(0, 0, &v, DataDir::None).unwrap();
    assert_eq!(r.status, GOOD);

    // WRITE AND VERIFY(10).
    let data = pattern(9, 9, 1024);
    let mut w = [0u8; 10];
    w[0] = 0x2e;
    w[1] = 0x02;
    w[2..6].copy_from_slice(&500u32.to_be_bytes());
    w[7..9].copy_from_slice(&2u16.to_be_bytes());
    let r = fe.command(0, 0, &w, DataDir::ToDevice(&data)).unwrap();
    assert_eq!(r.status, GOOD, "{:?}", r.sense_key());
    assert_eq!(read(&fe, 500, 2), data);
}

fn caw(
    fe: &ScsiFrontend,
    queue: usize,
    lba: u64,
    compare: &[u8],
    write: &[u8],
) -> (u8, Option<(u8, u8, u8)>) {
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[13] = 1;
    let mut data = compare.to_vec();
    data.extend_from_slice(write);
    let r = fe.command(queue, 0, &c, DataDir::ToDevice(&data)).unwrap();
    (r.status, r.sense_key())
}

#[test]
fn compare_and_write_is_atomic_across_queues() {
    let d = Daemon::start(one_disk, &["--num-queues", "2"]);
    let fe = d.connect(2);
    let zero = vec![0u8; 512];
    let one = vec![1u8; 512];
    assert_eq!(caw(&fe, 0, 10, &zero, &one), (GOOD, None));
    assert_eq!(read(&fe, 10, 1), one);
    let (st, sense) = caw(&fe, 1, 10, &zero, &zero);
    assert_eq!((st, sense), (CHECK, Some((0xe, 0x1d, 0))));
    assert_eq!(read(&fe, 10, 1), one, "nothing written on miscompare");

    // Two queues race to increment a counter block with COMPARE AND WRITE
    // while plain writes hammer the neighbouring block: every successful
    // increment is counted exactly once.
    let fe = std::sync::Arc::new(fe);
    let counter_lba = 20u64;
    let enc = |n: u64| {
        let mut b = vec![0u8; 512];
        b[..8].copy_from_slice(&n.to_le_bytes());
        b
    };
    assert_eq!(caw(&fe, 0, counter_lba, &zero, &enc(0)), (GOOD, None));
    let mut threads = Vec::new();
    for q in 0..2usize {
        let fe = fe.clone();
        threads.push(thread::spawn(move || {
            let mut wins = 0u64;
            let mut tries = 0;
            while wins < 25 && tries < 2000 {
                tries += 1;
                let cur = read(&fe, counter_lba as u32, 1);
                let n = u64::from_le_bytes(cur[..8].try_into().unwrap());
                match caw(&fe, q, counter_lba, &cur, &enc(n + 1)) {
                    (GOOD, _) => wins += 1,
                    (CHECK, Some((0xe, 0x1d, 0))) => {}
                    other => panic!("{other:?}"),
                }
                let r = fe
                    .command(
                        q,
                        0,
                        &cdb::write10(21, 1, false),
                        DataDir::ToDevice(&[q as u8; 512]),
                    )
                    .unwrap();
                assert_eq!(r.status, GOOD);
            }
            wins
        }));
    }
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let cur = read(&fe, counter_lba as u32, 1);
    assert_eq!(u64::from_le_bytes(cur[..8].try_into().unwrap()), total);
}

/// PERSISTENT RESERVE OUT with a 24-byte parameter list.
fn pr_out(
    fe: &ScsiFrontend,
    sa: u8,
    prtype: u8,
    key: u64,
    sa_key: u64,
    aptpl: bool,
) -> (u8, Option<(u8, u8, u8)>) {
    let (c, p) = common::pr_out_cdb(sa, prtype, key, sa_key, aptpl);
    let r = fe.command(0, 0, &c, DataDir::ToDevice(&p)).unwrap();
    (r.status, r.sense_key())
}

fn pr_in(fe: &ScsiFrontend, sa: u8) -> Vec<u8> {
    let c = common::pr_in_cdb(sa, 255);
    let r = fe.command(0, 0, &c, DataDir::FromDevice(255)).unwrap();
    assert_eq!(r.status, GOOD, "{:?}", r.sense_key());
    r.data_in().to_vec()
}

#[test]
fn persistent_reservation_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("pr");
    fs::create_dir(&state).unwrap();
    let img = image(dir.path(), "shared.img", 4 * MIB);
    let spec = img.display().to_string();
    let sock = dir.path().join("ctl.sock");
    let start = || {
        let spec = spec.clone();
        let sock = sock.clone();
        let state = state.clone();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"));
        cmd.args(["serve", "--disk", &spec, "--pr-state"])
            .arg(&state)
            .arg("--socket")
            .arg(&sock);
        let child = cmd.stderr(std::process::Stdio::null()).spawn().unwrap();
        while !sock.exists() {
            thread::sleep(std::time::Duration::from_millis(10));
        }
        child
    };
    let connect = || {
        let mut cfg = vhost_user_scsi::frontend::FrontendConfig::new(&sock);
        cfg.request_queues = 1;
        let fe = ScsiFrontend::connect(&cfg).unwrap();
        common::settle(&fe, [0]);
        fe
    };
    let mut child = start();
    {
        let fe = connect();
        assert_eq!(
            pr_out(&fe, 0x00, 0, 0, 0xabc, true),
            (GOOD, None),
            "REGISTER, APTPL"
        );
        assert_eq!(
            pr_out(&fe, 0x01, 0x01, 0xabc, 0, true),
            (GOOD, None),
            "RESERVE write exclusive"
        );
        fe.shutdown().unwrap();
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));

    let mut child = start();
    let fe = connect();
    let keys = pr_in(&fe, 0x00);
    assert_eq!(
        u32::from_be_bytes(keys[4..8].try_into().unwrap()),
        8,
        "one key"
    );
    assert_eq!(u64::from_be_bytes(keys[8..16].try_into().unwrap()), 0xabc);
    let resv = pr_in(&fe, 0x01);
    assert_eq!(
        u32::from_be_bytes(resv[4..8].try_into().unwrap()),
        16,
        "a reservation"
    );
    assert_eq!(u64::from_be_bytes(resv[8..16].try_into().unwrap()), 0xabc);
    assert_eq!(resv[21] & 0x0f, 1, "write exclusive");
    // The same initiator (same controller socket) still holds it: writes pass.
    write(&fe, 0, &[5u8; 512]);
    // A wrong key is a conflict; release and clear with the right one.
    assert_eq!(pr_out(&fe, 0x02, 0x01, 0xdead, 0, false).0, CONFLICT);
    assert_eq!(
        pr_out(&fe, 0x02, 0x01, 0xabc, 0, false),
        (GOOD, None),
        "RELEASE"
    );
    assert_eq!(pr_out(&fe, 0x03, 0, 0xabc, 0, false), (GOOD, None), "CLEAR");
    let keys = pr_in(&fe, 0x00);
    assert_eq!(
        u32::from_be_bytes(keys[4..8].try_into().unwrap()),
        0,
        "no keys"
    );
    fe.shutdown().unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
