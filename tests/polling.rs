//! Adaptive polling (issue 15): verified I/O with polling on (and off), a
//! busy queue that goes idle must stop costing CPU, and must still wake
//! up for the guest's next request (notifications re-armed before the
//! worker sleeps). No timing targets: the machine is shared, so the idle
//! bound is generous.

mod common;

use std::time::{Duration, Instant};

use common::{image, pattern, Daemon};
use vhost_user_scsi::bench::{self, cpu::process_cpu, BenchArgs, Rw};
use vhost_user_scsi::frontend::{cdb, DataDir, ScsiFrontend};

fn daemon(poll_max_us: &str) -> Daemon {
    Daemon::start(
        |dir| vec![image(dir, "disk.img", 32 << 20).display().to_string()],
        &["--num-queues", "2", "--poll-max-us", poll_max_us],
    )
}

fn pid(d: &Daemon) -> u32 {
    d.child.as_ref().map(|c| c.id()).unwrap()
}

fn verified(d: &Daemon, qd: u16, rw: Rw) {
    let mut a = BenchArgs::new(&d.socket);
    a.queues = 2;
    a.qd = qd;
    a.rw = rw;
    a.rwmix_read = 50;
    a.runtime = 1.0;
    a.ramp = 0.2;
    a.verify = true;
    a.seed = Some(15);
    a.backend_pid = Some(pid(d));
    let r = bench::run(&a, false).expect("bench run");
    assert_eq!(
        (r.errors, r.mismatches),
        (0, 0),
        "{}\n{}",
        r.text(),
        d.log()
    );
    assert!(r.writes > 0 && r.verified_blocks > 0, "{}", r.text());
}

/// Back-to-back writes then reads of `n` blocks on request queue `q`
/// (short gaps: the polling window opens), checked.
fn burst(fe: &ScsiFrontend, q: usize, base: u32, n: u32, gen: u8) {
    for i in 0..n {
        let lba = base + i;
        let data = pattern(u64::from(lba), gen, 512);
        let r = fe
            .command(q, 0, &cdb::write10(lba, 1, false), DataDir::ToDevice(&data))
            .unwrap();
        assert_eq!(r.status, 0, "write {lba}");
    }
    for i in 0..n {
        let lba = base + i;
        let r = fe
            .command(q, 0, &cdb::read10(lba, 1, false), DataDir::FromDevice(512))
            .unwrap();
        assert_eq!(r.status, 0, "read {lba}");
        assert_eq!(
            r.data_in(),
            &pattern(u64::from(lba), gen, 512)[..],
            "lba {lba}"
        );
    }
}

#[test]
fn verified_io_with_polling_on_and_off() {
    for poll in ["32", "0", "1000"] {
        let d = daemon(poll);
        verified(&d, 16, Rw::Randrw);
        verified(&d, 1, Rw::Randrw);
    }
}

#[test]
fn busy_then_idle_costs_no_cpu_and_wakes_again() {
    let d = daemon("200");
    let fe = d.connect(2);
    for round in 0..3u8 {
        // Busy: the window grows to its bound on both queues.
        burst(&fe, 0, 0, 400, round);
        burst(&fe, 1, 1000, 400, round);
        // Idle with the rings started: the workers must go to sleep.
        std::thread::sleep(Duration::from_millis(200));
        let before = process_cpu(pid(&d)).unwrap();
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(2));
        let used = process_cpu(pid(&d)).unwrap().saturating_sub(before);
        let share = used.as_secs_f64() / t.elapsed().as_secs_f64();
        // Today's idle daemon shows 0 ticks here; a worker that kept
        // polling would show ~100% of a core. 5% leaves room for a loaded
        // machine's accounting noise.
        assert!(
            share < 0.05,
            "idle daemon used {used:?} CPU over {:?} ({:.1}% of a core)",
            t.elapsed(),
            share * 100.0
        );
        // The next request after the idle period is seen (the guest's
        // kick reaches a worker that re-armed notifications).
        for q in 0..2 {
            let r = fe
                .command(q, 0, &cdb::read10(0, 1, false), DataDir::FromDevice(512))
                .unwrap();
            assert_eq!(r.data_in(), &pattern(0, round, 512)[..]);
        }
    }
    drop(fe);
    // A new connection after a busy one is served at once.
    let fe = d.connect(2);
    burst(&fe, 1, 2000, 50, 9);
}

#[test]
fn rejected_bounds() {
    let out = common::run(&[
        "serve",
        "--socket",
        "/nonexistent/x.sock",
        "--poll-max-us",
        "5000000",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--poll-max-us"), "{err}");
}
