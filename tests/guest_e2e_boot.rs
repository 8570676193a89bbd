//! Boot from volume (issue 12): a guest's firmware boots from a disk served
//! by our daemon, as OpenStack boots an instance from a Cinder volume on the
//! virtio-scsi bus. No `-kernel`: the firmware reads the boot loader from the
//! disk, GRUB reads the kernel and initrd from it, and the initrd's /init
//! prints a marker on the serial console and powers off.
//!
//! The images come from `scripts/build-boot-images.sh` (cached in
//! build/boot; docs/boot-from-volume.md): `bios.img` (MBR, GRUB i386-pc,
//! ext2) and `efi.img` (GPT, EFI system partition, GRUB EFI at
//! \EFI\BOOT\BOOTX64.EFI). Each case starts `vhost-user-scsi serve` on one
//! image and QEMU (TCG) with `-device vhost-user-scsi-pci,...,bootindex=0`,
//! waits for GRUB's `VUS-BOOT-GRUB <mode>` and the guest's
//! `VUS-BOOT-OK <mode>`, checks that QEMU exits 0 by itself (poweroff with
//! `-no-reboot`) and that the daemon logged no error and exits 0 on SIGTERM.
//!
//! * `guest_e2e_boot_bios`: SeaBIOS (pc), 2 request queues (SeaBIOS drives
//!   the first one only), a copy of bios.img as LUN 0 and a blank data disk
//!   as LUN 1.
//! * `guest_e2e_boot_efi`: OVMF (q35, OVMF_CODE + a copy of OVMF_VARS, no
//!   NVRAM boot entry: OVMF finds the fallback path by itself), 2 queues, a
//!   copy of efi.img as LUN 0 and a blank LUN 1; the first boot option OVMF
//!   starts must be our LUN 0 (INQUIRY product name, `Scsi(0x0,0x0)`).
//! * `guest_e2e_boot_bios_readonly`: SeaBIOS from `--disk IMG,readonly`, the
//!   cached image itself (a golden image shared read-only).
//!
//! The image build's time and each case's timings (QEMU start to GRUB, to
//! the marker, the kernel's share, to QEMU's exit) go to stderr, uncaptured,
//! and to `boot-timings.txt` in the guest logs dir.
//!
//! Needs `scripts/install-deps.sh && scripts/build-guest.sh` (the kernel is
//! the test guest's); without the tools the tests print "SKIPPED" and pass,
//! except when `CI=true`, where they fail.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

mod guest_harness;
use guest_harness::{
    daemon_binary, harness_ready, lock, logs_dir, repo_root, socket_dir, sparse_image, tail,
    work_dir,
};

/// QEMU start to the marker, TCG on a shared 2-core machine (a boot takes
/// about 10 s when the machine is idle).
const BIOS_TIMEOUT: Duration = Duration::from_secs(300);
/// OVMF under TCG is slower than SeaBIOS.
const EFI_TIMEOUT: Duration = Duration::from_secs(600);
/// Marker to QEMU's exit (the guest powers off right after the marker).
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq)]
enum Firmware {
    Bios,
    Efi,
}

struct Case {
    name: &'static str,
    firmware: Firmware,
    readonly: bool,
    num_queues: u32,
    /// A blank 16 MiB data disk as LUN 1 (named first on the daemon's
    /// command line): the firmware must still boot LUN 0, where QEMU's
    /// device-level bootindex points.
    data_lun: bool,
}

impl Case {
    fn mode(&self) -> &'static str {
        match self.firmware {
            Firmware::Bios => "bios",
            Firmware::Efi => "efi",
        }
    }
}

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Panics in CI, else prints a loud SKIPPED banner.
fn skip(test: &str, why: &str) {
    if ci() {
        panic!("{test}: {why} and CI=true: run scripts/install-deps.sh && scripts/build-guest.sh");
    }
    eprintln!("\n**********************************************************************");
    eprintln!("SKIPPED {test}: {why}");
    eprintln!("SKIPPED: run scripts/install-deps.sh && scripts/build-guest.sh");
    eprintln!("**********************************************************************\n");
}

/// Uncaptured (libtest captures print!/eprint!, not direct writes), so the
/// timings show in CI's log of a passing run too; also kept in a file.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
    if let Ok(mut f) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs_dir().join("boot-timings.txt"))
    {
        let _ = writeln!(f, "{line}");
    }
}

/// The result of the one run of scripts/build-boot-images.sh per test binary:
/// Ok(images dir) or Err(why the tools are missing). Panics on other failures.
static IMAGES: Mutex<Option<Result<PathBuf, String>>> = Mutex::new(None);

fn boot_images() -> Result<PathBuf, String> {
    let mut done = IMAGES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = done.as_ref() {
        return r.clone();
    }
    let _ = fs::remove_file(logs_dir().join("boot-timings.txt"));
    let root = repo_root();
    let start = Instant::now();
    let out = Command::new(root.join("scripts/build-boot-images.sh"))
        .current_dir(&root)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/build-boot-images.sh");
    let secs = start.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("----- build-boot-images.sh ({secs:.1} s) -----\n{stdout}{stderr}");
    let r = match out.status.code() {
        Some(0) => {
            report(&format!(
                "guest_e2e_boot: scripts/build-boot-images.sh {secs:.1} s ({})",
                stdout.lines().last().unwrap_or("").trim()
            ));
            Ok(root.join("build/boot"))
        }
        Some(3) => Err(stderr.trim().to_string()),
        _ => panic!(
            "scripts/build-boot-images.sh failed ({}):\n{stdout}\n{stderr}",
            out.status
        ),
    };
    *done = Some(r.clone());
    r
}

/// OVMF code and the matching variable store template.
fn ovmf() -> Result<(PathBuf, PathBuf), String> {
    let dir = Path::new("/usr/share/OVMF");
    for (code, vars) in [
        ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
        ("OVMF_CODE.fd", "OVMF_VARS.fd"),
    ] {
        let (c, v) = (dir.join(code), dir.join(vars));
        if c.is_file() && v.is_file() {
            return Ok((c, v));
        }
    }
    Err(format!(
        "no OVMF_CODE*.fd + OVMF_VARS*.fd in {} (package ovmf)",
        dir.display()
    ))
}

/// A child process killed on drop (a failed assertion must not leave QEMU or
/// the daemon running).
struct Proc {
    child: Option<Child>,
    what: &'static str,
}

impl Proc {
    fn child(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .unwrap_or_else(|| panic!("{} already reaped", self.what))
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child().try_wait().expect("try_wait")
    }

    /// Waits up to `timeout` for the exit; None if still running.
    fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            sleep(Duration::from_millis(50));
        }
    }

    fn signal(&mut self, sig: i32) {
        let pid = self.child().id() as libc::pid_t;
        // SAFETY: kill(2) on our own child, which has not been reaped.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_daemon(
    image: &Path,
    readonly: bool,
    data: Option<&Path>,
    socket: &Path,
    log: &Path,
) -> Proc {
    let logf = File::create(log).unwrap();
    let mut cmd = Command::new(daemon_binary());
    cmd.arg("serve").arg("--socket").arg(socket);
    if let Some(data) = data {
        cmd.arg("--disk").arg(format!("{},lun=1", data.display()));
    }
    let mut spec = format!("{},lun=0", image.display());
    if readonly {
        spec.push_str(",readonly");
    }
    cmd.arg("--disk")
        .arg(spec)
        .args(["--num-queues", "2"])
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf);
    println!("starting daemon: {cmd:?}");
    let mut daemon = Proc {
        child: Some(cmd.spawn().expect("spawn vhost-user-scsi serve")),
        what: "daemon",
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if let Some(st) = daemon.try_wait() {
            panic!(
                "daemon exited ({st}) before creating its socket; log:\n{}",
                tail(log, 40)
            );
        }
        assert!(
            Instant::now() < deadline,
            "socket {} did not appear within 10 s; daemon log:\n{}",
            socket.display(),
            tail(log, 40)
        );
        sleep(Duration::from_millis(50));
    }
    daemon
}

/// Seconds since `t0` at which `needle` first showed up on the console.
fn seen(console: &str, needle: &str, t0: Instant, at: &mut Option<f64>) {
    if at.is_none() && console.contains(needle) {
        *at = Some(t0.elapsed().as_secs_f64());
    }
}

fn boot(case: &Case) {
    let _guard = lock();
    if !harness_ready(case.name) {
        return;
    }
    let images = match boot_images() {
        Ok(d) => d,
        Err(why) => return skip(case.name, &format!("boot images cannot be built ({why})")),
    };
    let firmware = match case.firmware {
        Firmware::Bios => None,
        Firmware::Efi => match ovmf() {
            Ok(f) => Some(f),
            Err(why) => return skip(case.name, &why),
        },
    };
    let mode = case.mode();
    let work = work_dir("guest-e2e-boot-");
    let sockdir = socket_dir("vus-boot-");
    let socket = sockdir.path().join("vus.sock");
    let cached = images.join(format!("{mode}.img"));
    // Read-only: the cached image itself; read-write: a copy of it.
    let image = if case.readonly {
        cached
    } else {
        let copy = work.path().join(format!("{mode}.img"));
        fs::copy(&cached, &copy).expect("copy the boot image");
        copy
    };
    let logs = logs_dir();
    let daemon_log = logs.join(format!("{}-daemon.log", case.name));
    let console_log = logs.join(format!("{}-console.log", case.name));
    let qemu_log = logs.join(format!("{}-qemu.log", case.name));
    let debugcon_log = logs.join(format!("{}-firmware-debugcon.log", case.name));
    for f in [&console_log, &debugcon_log] {
        let _ = fs::remove_file(f);
    }

    let data = case
        .data_lun
        .then(|| sparse_image(&work.path().join("data.img"), 16 << 20));
    let mut daemon = start_daemon(&image, case.readonly, data.as_deref(), &socket, &daemon_log);

    let machine = match case.firmware {
        Firmware::Bios => "pc",
        Firmware::Efi => "q35",
    };
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-smp", "1", "-m", "512M"])
        .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on"])
        .arg("-machine")
        .arg(format!("{machine},memory-backend=mem"))
        // -nographic also makes SeaBIOS print on the serial port (sercon).
        .args(["-nographic", "-nodefaults", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console_log.display()))
        // The firmware's debug port: SeaBIOS logs its boot order, the disks
        // it found and why it skipped one there; Debian's OVMF is a release
        // build and says little.
        .arg("-debugcon")
        .arg(format!("file:{}", debugcon_log.display()))
        .args(["-global", "isa-debugcon.iobase=0x402"]);
    if let Some((code, vars_template)) = &firmware {
        let vars = work.path().join("OVMF_VARS.fd");
        fs::copy(vars_template, &vars).expect("copy OVMF_VARS");
        qemu.arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,readonly=on,file={}",
                code.display()
            ))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()));
    }
    qemu.arg("-chardev")
        .arg(format!("socket,id=vus,path={}", socket.display()))
        .arg("-device")
        .arg(format!(
            "vhost-user-scsi-pci,id=vscsi0,chardev=vus,num_queues={},bootindex=0",
            case.num_queues
        ));
    let qlog = File::create(&qemu_log).unwrap();
    qemu.stdin(Stdio::null())
        .stdout(qlog.try_clone().unwrap())
        .stderr(qlog);
    println!("starting QEMU: {qemu:?}");
    let t0 = Instant::now();
    let mut vm = Proc {
        child: Some(qemu.spawn().expect("spawn qemu-system-x86_64")),
        what: "QEMU",
    };

    let diagnostics = || {
        format!(
            "console ({}):\n{}\nQEMU log:\n{}\ndaemon log:\n{}\nfirmware debug port:\n{}",
            console_log.display(),
            tail(&console_log, 40).replace('\r', ""),
            tail(&qemu_log, 20),
            tail(&daemon_log, 20),
            tail(&debugcon_log, 40)
        )
    };

    let timeout = match case.firmware {
        Firmware::Bios => BIOS_TIMEOUT,
        Firmware::Efi => EFI_TIMEOUT,
    };
    let grub_marker = format!("VUS-BOOT-GRUB {mode}");
    let ok_marker = format!("VUS-BOOT-OK {mode}");
    let (mut at_grub, mut at_ok) = (None, None);
    let mut console = String::new();
    while at_ok.is_none() {
        console = fs::read(&console_log)
            .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
            .unwrap_or_default();
        seen(&console, &grub_marker, t0, &mut at_grub);
        seen(&console, &ok_marker, t0, &mut at_ok);
        if at_ok.is_some() {
            break;
        }
        if let Some(st) = vm.try_wait() {
            panic!(
                "{}: QEMU exited ({st}) before '{ok_marker}' (GRUB {}); {}",
                case.name,
                if at_grub.is_some() {
                    "reached"
                } else {
                    "not reached"
                },
                diagnostics()
            );
        }
        if t0.elapsed() > timeout {
            panic!(
                "{}: no '{ok_marker}' within {} s (GRUB {}); {}",
                case.name,
                timeout.as_secs(),
                if at_grub.is_some() {
                    "reached"
                } else {
                    "not reached"
                },
                diagnostics()
            );
        }
        sleep(Duration::from_millis(100));
    }
    let Some(st) = vm.wait_timeout(EXIT_TIMEOUT) else {
        panic!(
            "{}: QEMU still running {} s after the marker (the guest powers off right after it); {}",
            case.name,
            EXIT_TIMEOUT.as_secs(),
            diagnostics()
        );
    };
    let at_exit = t0.elapsed().as_secs_f64();
    println!("----- {} console -----\n{console}", case.name);
    assert!(
        st.success(),
        "{}: QEMU exited {st}; {}",
        case.name,
        diagnostics()
    );

    // The firmware booted from our disk.
    match case.firmware {
        Firmware::Bios => assert!(
            console.contains("Booting from Hard Disk"),
            "{}: SeaBIOS did not boot from the hard disk; {}",
            case.name,
            diagnostics()
        ),
        // Target 0 LUN 0 (where bootindex points) first, no failed option.
        Firmware::Efi => assert!(
            console.lines().any(|l| l.contains("BdsDxe: starting Boot")
                && l.contains("vhost-user-scsi")
                && l.contains("Scsi(0x0,0x0)"))
                && !console.contains("BdsDxe: failed"),
            "{}: OVMF did not start the boot option of our LUN 0 (INQUIRY product \
             vhost-user-scsi, Scsi(0x0,0x0)) first; {}",
            case.name,
            diagnostics()
        ),
    }

    // The daemon: still serving, nothing went wrong, clean SIGTERM.
    if let Some(st) = daemon.try_wait() {
        panic!(
            "{}: daemon exited ({st}) during the boot; {}",
            case.name,
            diagnostics()
        );
    }
    daemon.signal(libc::SIGTERM);
    let st = daemon
        .wait_timeout(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{}: daemon did not exit within 10 s of SIGTERM", case.name));
    let dlog = fs::read_to_string(&daemon_log).unwrap_or_default();
    assert!(
        st.success(),
        "{}: daemon exited {st} after SIGTERM; log:\n{dlog}",
        case.name
    );
    assert!(
        !socket.exists(),
        "{}: daemon left its socket behind",
        case.name
    );
    let errors: Vec<&str> = dlog.lines().filter(|l| l.contains(" ERROR ")).collect();
    assert!(
        errors.is_empty(),
        "{}: the daemon logged errors:\n{}",
        case.name,
        errors.join("\n")
    );
    assert!(
        dlog.contains("frontend connected"),
        "{}: QEMU never connected to the daemon; log:\n{dlog}",
        case.name
    );

    // The guest's uptime when /init ran: the kernel's own share of the boot.
    let uptime = console
        .lines()
        .find_map(|l| {
            let rest = l.split_once("boot-test: kernel")?.1;
            Some(rest.split_once(", up ")?.1.split_once(' ')?.0.to_string())
        })
        .unwrap_or_else(|| "?".to_string());
    let grub = at_grub.map_or("-".to_string(), |s| format!("{s:.1} s"));
    report(&format!(
        "{}: {} ({}), {} queue(s), boot disk {}{}: QEMU start -> GRUB {grub} -> marker {:.1} s \
         (kernel to /init {uptime} s) -> QEMU exit {:.1} s",
        case.name,
        if case.firmware == Firmware::Bios {
            "SeaBIOS"
        } else {
            "OVMF"
        },
        machine,
        case.num_queues,
        if case.readonly {
            "read-only"
        } else {
            "read-write"
        },
        if case.data_lun { " + data LUN 1" } else { "" },
        at_ok.unwrap(),
        at_exit
    ));
}

#[test]
fn guest_e2e_boot_bios() {
    boot(&Case {
        name: "guest_e2e_boot_bios",
        firmware: Firmware::Bios,
        readonly: false,
        num_queues: 2,
        data_lun: true,
    });
}

#[test]
fn guest_e2e_boot_efi() {
    boot(&Case {
        name: "guest_e2e_boot_efi",
        firmware: Firmware::Efi,
        readonly: false,
        num_queues: 2,
        data_lun: true,
    });
}

#[test]
fn guest_e2e_boot_bios_readonly() {
    boot(&Case {
        name: "guest_e2e_boot_bios_readonly",
        firmware: Firmware::Bios,
        readonly: true,
        num_queues: 1,
        data_lun: false,
    });
}
