//! Backing-store faults against the daemon binary (issue 14): a file whose
//! chosen sectors fail with EIO (a FUSE filesystem, tests/faultfs), an
//! image on a full tmpfs (ENOSPC), and a store that answers late. The
//! frontend plays the guest and checks the sense bytes exactly.
//!
//! Needs root and /dev/fuse (and mount(8) for the tmpfs); with CI set a
//! missing one fails the test instead of skipping it.

mod common;
mod faultfs;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{pattern, Daemon};
use faultfs::Mounted;
use vhost_user_scsi::frontend::{cdb, DataDir, ScsiFrontend, ScsiRequest, FIRST_REQUEST_QUEUE};
use vhost_user_scsi::virtio_scsi::{
    S_FUNCTION_COMPLETE, S_OK, T_TMF_ABORT_TASK, T_TMF_LOGICAL_UNIT_RESET,
};

const BS: usize = 512;
const BLOCKS: u64 = 16384; // 8 MiB
const GOOD: u8 = 0;
const CHECK: u8 = 2;
const MEDIUM_ERROR: u8 = 3;
const DATA_PROTECT: u8 = 7;

/// Skip (outside CI) or fail (in CI) when faults cannot be injected here.
fn can_run() -> bool {
    match faultfs::available() {
        Ok(()) => true,
        Err(why) if std::env::var_os("CI").is_some() => panic!("faults tests need {why}"),
        Err(why) => {
            eprintln!("skipped: {why}");
            false
        }
    }
}

/// The image contents: block `lba` holds `pattern(lba, 0)`.
fn contents() -> Vec<u8> {
    (0..BLOCKS).flat_map(|l| pattern(l, 0, BS)).collect()
}

fn expect(lbas: std::ops::Range<u64>, gen: u8) -> Vec<u8> {
    lbas.flat_map(|l| pattern(l, gen, BS)).collect()
}

/// A daemon serving the faulty file as LUN 0 and a plain image as LUN 1.
struct Rig {
    fs: Mounted,
    d: Daemon,
    fe: ScsiFrontend,
    _dir: tempfile::TempDir,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.img");
    std::fs::write(&real, contents()).unwrap();
    let fs = Mounted::mount(&real, &dir.path().join("mnt")).expect("mount faultfs");
    let faulty = fs.image();
    let d = Daemon::start(
        |tmp| {
            let good = common::image(tmp, "good.img", BLOCKS * BS as u64);
            std::fs::write(&good, contents()).unwrap();
            vec![
                format!("{},block-size=512,lun=0", faulty.display()),
                format!("{},block-size=512,lun=1", good.display()),
            ]
        },
        &[],
    );
    let fe = d.connect(1);
    Rig {
        fs,
        d,
        fe,
        _dir: dir,
    }
}

fn read(
    fe: &ScsiFrontend,
    lun: u16,
    lba: u64,
    blocks: u32,
) -> vhost_user_scsi::frontend::ScsiResponse {
    fe.command(
        0,
        lun,
        &cdb::read16(lba, blocks, false),
        DataDir::FromDevice(blocks * BS as u32),
    )
    .unwrap()
}

fn write(
    fe: &ScsiFrontend,
    lun: u16,
    lba: u64,
    data: &[u8],
) -> vhost_user_scsi::frontend::ScsiResponse {
    fe.command(
        0,
        lun,
        &cdb::write16(lba, (data.len() / BS) as u32, false),
        DataDir::ToDevice(data),
    )
    .unwrap()
}

/// Fixed-format sense: (key, asc, ascq, Some(INFORMATION) when VALID).
fn sense(r: &vhost_user_scsi::frontend::ScsiResponse) -> (u8, u8, u8, Option<u32>) {
    let s = &r.sense;
    assert!(s.len() >= 18, "sense {s:02x?}");
    assert_eq!(s[0] & 0x7f, 0x70, "fixed-format current sense: {s:02x?}");
    let info = (s[0] & 0x80 != 0).then(|| u32::from_be_bytes([s[3], s[4], s[5], s[6]]));
    (s[2] & 0xf, s[12], s[13], info)
}

fn sectors(lba: u64, n: u64) -> std::ops::Range<u64> {
    lba * BS as u64..(lba + n) * BS as u64
}

#[test]
fn read_eio_names_the_failing_lba_and_keeps_the_good_prefix() {
    if !can_run() {
        return;
    }
    let r = rig();
    r.fs.set(|f| f.read_eio = vec![sectors(37, 1)]);
    // 32..48 spans the bad sector 37: blocks 32..37 arrive, 37 is named.
    let resp = read(&r.fe, 0, 32, 16);
    assert_eq!((resp.response, resp.status), (S_OK, CHECK), "{resp:?}");
    assert_eq!(sense(&resp), (MEDIUM_ERROR, 0x11, 0x00, Some(37)));
    assert_eq!(resp.data_in().len(), 5 * BS, "resid {}", resp.resid);
    assert_eq!(resp.data_in(), &expect(32..37, 0)[..]);
    // The bad sector alone, and as the first of a transfer.
    assert_eq!(
        sense(&read(&r.fe, 0, 37, 1)),
        (MEDIUM_ERROR, 0x11, 0, Some(37))
    );
    let first = read(&r.fe, 0, 37, 8);
    assert_eq!(sense(&first), (MEDIUM_ERROR, 0x11, 0, Some(37)));
    assert!(first.data_in().is_empty());
    // Every other LBA reads fine, on both sides of it.
    for (lba, n) in [(0u64, 37u32), (38, 64), (1000, 128)] {
        let ok = read(&r.fe, 0, lba, n);
        assert_eq!(ok.status, GOOD, "read {lba}+{n}");
        assert_eq!(ok.data_in(), &expect(lba..lba + u64::from(n), 0)[..]);
    }
    // Writes to the sector still work (only its reads fail).
    assert_eq!(write(&r.fe, 0, 37, &pattern(37, 1, BS)).status, GOOD);
    // The other LUN never noticed.
    let other = read(&r.fe, 1, 32, 16);
    assert_eq!(other.status, GOOD);
    assert_eq!(other.data_in(), &expect(32..48, 0)[..]);
    // The fault gone, the sector reads again (what was written).
    r.fs.set(|f| f.read_eio.clear());
    let healed = read(&r.fe, 0, 37, 1);
    assert_eq!(healed.status, GOOD);
    assert_eq!(healed.data_in(), &pattern(37, 1, BS)[..]);
    assert!(
        r.d.log().contains("backing store medium error"),
        "{}",
        r.d.log()
    );
}

#[test]
fn write_eio_names_the_failing_lba() {
    if !can_run() {
        return;
    }
    let r = rig();
    r.fs.set(|f| f.write_eio = vec![sectors(100, 1)]);
    let data = expect(96..104, 2);
    let resp = write(&r.fe, 0, 96, &data);
    assert_eq!((resp.response, resp.status), (S_OK, CHECK), "{resp:?}");
    assert_eq!(sense(&resp), (MEDIUM_ERROR, 0x0c, 0x00, Some(100)));
    // The blocks before the bad one landed; the bad one kept its old data
    // and still reads.
    let back = read(&r.fe, 0, 96, 5);
    assert_eq!(back.status, GOOD);
    assert_eq!(&back.data_in()[..4 * BS], &data[..4 * BS]);
    assert_eq!(&back.data_in()[4 * BS..], &pattern(100, 0, BS)[..]);
    // Other LBAs take writes, the other LUN too.
    assert_eq!(write(&r.fe, 0, 101, &expect(101..109, 3)).status, GOOD);
    assert_eq!(read(&r.fe, 0, 101, 8).data_in(), &expect(101..109, 3)[..]);
    assert_eq!(write(&r.fe, 1, 96, &data).status, GOOD);
    assert_eq!(read(&r.fe, 1, 96, 8).data_in(), &data[..]);
}

#[test]
fn medium_errors_are_logged_rate_limited() {
    if !can_run() {
        return;
    }
    let r = rig();
    r.fs.set(|f| f.read_eio = vec![sectors(7, 1)]);
    for _ in 0..30 {
        let resp = read(&r.fe, 0, 0, 16);
        assert_eq!(sense(&resp), (MEDIUM_ERROR, 0x11, 0, Some(7)));
    }
    let log = r.d.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("backing store medium error"))
        .collect::<Vec<_>>();
    assert!(!lines.is_empty(), "{log}");
    assert!(lines.iter().any(|l| l.contains("lba=7")), "{lines:#?}");
    // 5 per 10 s window (src/vhost/ratelimit.rs); a very slow run may
    // cross into a second window.
    assert!(lines.len() <= 10, "{} lines:\n{log}", lines.len());
}

/// A size-limited tmpfs mounted on a temp dir; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "faults-tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(st.success(), "mount tmpfs: {st}");
        Tmpfs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn fill(path: &Path, len: usize) {
    std::fs::write(path, vec![0xa5u8; len]).unwrap();
}

#[test]
fn enospc_is_space_allocation_failed_and_recovers() {
    if !can_run() {
        return;
    }
    // 4 MiB of space, a 32 MiB sparse image and a 1 MiB file to free later.
    let t = Tmpfs::mount("4m");
    let img = t.path("thin.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    fill(&t.path("ballast"), 1 << 20);
    let img_s = img.display().to_string();
    let d = Daemon::start(
        |tmp| {
            let good = common::image(tmp, "good.img", 1 << 20);
            vec![
                format!("{img_s},block-size=512,lun=0"),
                format!("{},block-size=512,lun=1", good.display()),
            ]
        },
        &[],
    );
    let fe = d.connect(1);
    const CHUNK: u64 = 512; // blocks: 256 KiB per write
    let mut written = Vec::new();
    let mut failed_at = None;
    for i in 0..(32 << 20) / (CHUNK * BS as u64) {
        let lba = i * CHUNK;
        let data = expect(lba..lba + CHUNK, 4);
        let resp = write(&fe, 0, lba, &data);
        if resp.status == GOOD {
            written.push(lba);
            continue;
        }
        assert_eq!(resp.response, S_OK);
        let (key, asc, ascq, _) = sense(&resp);
        assert_eq!(
            (key, asc, ascq),
            (DATA_PROTECT, 0x27, 0x07),
            "ENOSPC is SPACE ALLOCATION FAILED WRITE PROTECT: {resp:?}"
        );
        failed_at = Some(lba);
        break;
    }
    let failed_at = failed_at.expect("the tmpfs never filled up");
    assert!(written.len() >= 4, "only {} chunks fit", written.len());
    // Nothing already written is damaged.
    for &lba in &written {
        let back = read(&fe, 0, lba, CHUNK as u32);
        assert_eq!(back.status, GOOD);
        assert!(
            back.data_in() == &expect(lba..lba + CHUNK, 4)[..],
            "chunk at {lba}"
        );
    }
    // The other LUN works all along.
    assert_eq!(write(&fe, 1, 0, &expect(0..8, 5)).status, GOOD);
    // Space freed: the write that failed now works, and reads back.
    std::fs::remove_file(t.path("ballast")).unwrap();
    let data = expect(failed_at..failed_at + CHUNK, 4);
    let again = write(&fe, 0, failed_at, &data);
    assert_eq!(again.status, GOOD, "{again:?}\n{}", d.log());
    assert!(read(&fe, 0, failed_at, CHUNK as u32).data_in() == &data[..]);
}

#[test]
fn slow_store_tmf_answers_after_the_io_and_other_io_goes_on() {
    if !can_run() {
        return;
    }
    const DELAY: Duration = Duration::from_secs(3);
    let r = rig();
    r.fs.set(|f| f.delay = vec![(sectors(500, 1), DELAY)]);
    let vq = FIRST_REQUEST_QUEUE;
    for tmf in [T_TMF_ABORT_TASK, T_TMF_LOGICAL_UNIT_RESET] {
        let mut req = ScsiRequest::new(
            0,
            &cdb::read16(496, 8, false),
            DataDir::FromDevice(8 * BS as u32),
        );
        req.tag = Some(0x5157);
        let start = Instant::now();
        let tag = r.fe.submit(0, &req).unwrap();
        // Other I/O, to the same LUN and the other, is not held up.
        let quick = read(&r.fe, 0, 0, 8);
        assert_eq!(quick.status, GOOD);
        assert_eq!(read(&r.fe, 1, 0, 8).status, GOOD);
        assert!(start.elapsed() < DELAY, "other I/O waited for the slow one");
        // The TMF is answered once the slow read finished, not before.
        assert_eq!(r.fe.tmf(0, tmf, 0x5157).unwrap(), S_FUNCTION_COMPLETE);
        assert!(
            start.elapsed() >= DELAY - Duration::from_millis(100),
            "TMF {tmf} answered early"
        );
        let done = r.fe.wait_tag(vq, tag, Duration::from_secs(1)).unwrap();
        let resp = done.scsi().expect("a SCSI response");
        assert_eq!(resp.status, GOOD);
        assert_eq!(resp.data_in(), &expect(496..504, 0)[..]);
    }
    assert!(
        r.fs.counters
            .delayed
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
}
