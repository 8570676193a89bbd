//! README.md's libvirt recipe, run as written against a real libvirtd.
//!
//! `guest_e2e_libvirt`:
//! * starts virtlogd and libvirtd as root in the foreground (no systemd
//!   here; system default paths, /run/libvirt), unless they already
//!   answer: then it uses them and leaves them running;
//! * runs the daemon commands of README.md's block marked
//!   `<!-- test: libvirt-daemon` (`serve --socket-group kvm --rpc-socket`,
//!   `ctl controller_create`, `ctl lun_add`), with `/run/` moved into a
//!   temporary directory and the image path replaced; checks that the
//!   controller socket is group `kvm`, mode 0660;
//! * defines a q35 TCG domain (VGA, a user-mode virtio NIC, the
//!   pcie-root-ports libvirt adds, serial console to a file, direct kernel
//!   boot of build/guest/vmlinuz with an initrd around tests/guest/libvirt.sh
//!   from scripts/guest-initrd.sh) with the XML of README.md's block marked
//!   `<!-- test: libvirt-xml` spliced in (socket path moved the same way;
//!   its `,bootindex=0` is dropped because a direct kernel boot holds
//!   bootindex 0), `virsh start`s it as QEMU's user libvirt-qemu;
//! * the guest finds our disk (vendor, model, size), writes 4 MiB of random
//!   data with O_DIRECT and reads it back, kernel log clean; the host finds
//!   the same bytes (sha256) in the backing file; `virsh undefine`,
//!   SIGTERM the daemon (exit 0).
//!
//! Prints the time of `virsh define`, `virsh start`, the boot and the whole
//! test. Needs `scripts/install-deps.sh` (libvirt, the libvirt-qemu user)
//! and `scripts/build-guest.sh`; without them the test prints "SKIPPED" and
//! passes, except with `CI=true`, where it fails. Also makes /dev/kvm
//! root:kvm 0660 as udev would: with /dev/kvm 0600, libvirt 9 finds its
//! cached QEMU capabilities (probed with KVM) invalid and probes QEMU again
//! on every lookup, ~70 s per `virsh define` instead of milliseconds.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

mod guest_harness;
use guest_harness::{
    daemon_binary, harness_missing, lock, logs_dir, repo_root, socket_dir, sparse_image, tail,
    work_dir,
};

const MIB: u64 = 1024 * 1024;
const IMAGE_SIZE: u64 = 64 * MIB;
/// Where the guest writes its random pattern (tests/guest/libvirt.sh).
const LV_OFFSET: u64 = MIB;
const LV_LEN: u64 = 4 * MIB;
const QEMU_NS: &str = "xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'";
const VIRTLOGD_SOCK: &str = "/run/libvirt/virtlogd-sock";
const LIBVIRTD_SOCK: &str = "/run/libvirt/libvirt-sock";
const DOMAIN_PREFIX: &str = "vus-e2e-libvirt-";
const START_TIMEOUT: Duration = Duration::from_secs(120);
const GUEST_TIMEOUT: Duration = Duration::from_secs(240);

/// What libvirt needs that install-deps.sh provides, if anything is missing.
fn libvirt_missing() -> Option<String> {
    for bin in ["/usr/sbin/libvirtd", "/usr/sbin/virtlogd", "/usr/bin/virsh"] {
        if !Path::new(bin).is_file() {
            return Some(format!("{bin} missing"));
        }
    }
    let groups = Command::new("id")
        .args(["-nG", "libvirt-qemu"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    match groups {
        Some(g) if g.split_whitespace().any(|x| x == "kvm") => None,
        Some(g) => Some(format!(
            "user libvirt-qemu is not in group kvm ({})",
            g.trim()
        )),
        None => Some("user libvirt-qemu missing".into()),
    }
}

/// harness_ready()'s rule for the guest harness and libvirt together.
fn ready(test: &str) -> bool {
    let Some(why) = harness_missing().or_else(libvirt_missing) else {
        return true;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{test}: harness missing ({why}) and CI=true: \
             run scripts/install-deps.sh && scripts/build-guest.sh"
        );
    }
    eprintln!("\n**********************************************************************");
    eprintln!("SKIPPED {test}: harness missing ({why})");
    eprintln!("SKIPPED: run scripts/install-deps.sh && scripts/build-guest.sh");
    eprintln!("**********************************************************************\n");
    false
}

/// The fenced block right after the line starting with `marker` in README.md.
fn readme_block(readme: &str, marker: &str) -> Vec<String> {
    let mut lines = readme.lines().skip_while(|l| !l.starts_with(marker));
    assert!(
        lines.next().is_some(),
        "README.md has no line starting with {marker:?}"
    );
    let fence = lines.next().unwrap_or_default();
    assert!(
        fence.starts_with("```"),
        "README.md: {marker:?} must be followed by a fenced block, got {fence:?}"
    );
    let block: Vec<String> = lines
        .take_while(|l| !l.starts_with("```"))
        .map(str::to_string)
        .collect();
    assert!(
        !block.is_empty(),
        "README.md: the block after {marker:?} is empty"
    );
    block
}

/// Runs `cmd`, killing it after `limit`; None on timeout.
fn run_for(cmd: &mut Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(Output {
                status,
                stdout: out.join().unwrap(),
                stderr: err.join().unwrap(),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        sleep(Duration::from_millis(50));
    }
}

/// `virsh -c qemu:///system ARGS`: (success, stdout + stderr).
fn virsh(args: &[&str], limit: Duration) -> (bool, String) {
    match run_for(
        Command::new("virsh")
            .arg("-c")
            .arg("qemu:///system")
            .args(args),
        limit,
    ) {
        Some(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
            .trim()
            .to_string(),
        ),
        None => (false, format!("virsh {args:?}: no answer in {limit:?}")),
    }
}

fn answers(socket: &str) -> bool {
    UnixStream::connect(socket).is_ok()
}

/// Sends SIGTERM to `child`, waits up to 10 s, then SIGKILL.
fn stop(name: &str, child: &mut Child) -> Option<std::process::ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        sleep(Duration::from_millis(50));
    }
    eprintln!(
        "{name} (pid {}) ignored SIGTERM for 10 s: SIGKILL",
        child.id()
    );
    let _ = child.kill();
    child.wait().ok()
}

/// Everything the test started; stopped on drop, also when the test fails:
/// the domain destroyed and undefined, then our daemon, libvirtd and
/// virtlogd (the ones this test started) by PID.
#[derive(Default)]
struct Cleanup {
    domain: Option<String>,
    daemon: Option<Child>,
    libvirtd: Option<Child>,
    virtlogd: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(name) = self.domain.take() {
            let t = Duration::from_secs(30);
            let (_, state) = virsh(&["domstate", &name], t);
            if state != "shut off" {
                eprintln!("cleanup: virsh destroy {name} ({state})");
                let _ = virsh(&["destroy", &name], t);
            }
            let (ok, out) = virsh(&["undefine", &name], t);
            if !ok {
                eprintln!("cleanup: virsh undefine {name}: {out}");
            }
            let qemu_log = PathBuf::from(format!("/var/log/libvirt/qemu/{name}.log"));
            let _ = fs::copy(&qemu_log, logs_dir().join("libvirt-qemu.log"));
        }
        if let Some(mut c) = self.daemon.take() {
            stop("vhost-user-scsi", &mut c);
        }
        if let Some(mut c) = self.libvirtd.take() {
            stop("libvirtd", &mut c);
        }
        if let Some(mut c) = self.virtlogd.take() {
            stop("virtlogd", &mut c);
        }
    }
}

/// Waits until `ok()` or panics after `limit` with `what`.
fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        sleep(Duration::from_millis(100));
    }
}

/// Starts virtlogd and libvirtd unless they already answer.
fn start_libvirt(cleanup: &mut Cleanup) {
    let logs = logs_dir();
    let spawn = |bin: &str, log: &Path| {
        let f = fs::File::create(log).unwrap();
        Command::new(bin)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"))
    };
    if answers(VIRTLOGD_SOCK) {
        println!("virtlogd already running ({VIRTLOGD_SOCK} answers): using it");
    } else {
        let log = logs.join("libvirt-virtlogd.log");
        cleanup.virtlogd = Some(spawn("/usr/sbin/virtlogd", &log));
        wait_for("virtlogd listening", Duration::from_secs(20), || {
            answers(VIRTLOGD_SOCK)
        });
    }
    if answers(LIBVIRTD_SOCK) {
        println!("libvirtd already running ({LIBVIRTD_SOCK} answers): using it");
    } else {
        let log = logs.join("libvirt-libvirtd.log");
        cleanup.libvirtd = Some(spawn("/usr/sbin/libvirtd", &log));
        let t0 = Instant::now();
        wait_for("libvirtd listening", Duration::from_secs(60), || {
            if let Some(Ok(Some(st))) = cleanup.libvirtd.as_mut().map(|c| c.try_wait()) {
                panic!("libvirtd exited ({st}):\n{}", tail(&log, 30));
            }
            answers(LIBVIRTD_SOCK)
        });
        println!(
            "libvirtd listening after {:.1} s (log {})",
            t0.elapsed().as_secs_f64(),
            log.display()
        );
    }
    let (ok, out) = virsh(&["version"], Duration::from_secs(120));
    assert!(ok, "virsh version: {out}");
    println!("{out}");
}

/// /dev/kvm as udev makes it (root:kvm 0660), see the module doc.
fn kvm_device_like_udev() {
    let kvm = Path::new("/dev/kvm");
    let Ok(meta) = fs::metadata(kvm) else { return };
    if meta.mode() & 0o060 == 0o060 && meta.gid() != 0 {
        return;
    }
    println!(
        "/dev/kvm is {:o} gid {}: making it root:kvm 0660 as udev does",
        meta.mode() & 0o777,
        meta.gid()
    );
    let chgrp = Command::new("chgrp").args(["kvm", "/dev/kvm"]).status();
    let chmod = Command::new("chmod").args(["0660", "/dev/kvm"]).status();
    if !matches!((chgrp, chmod), (Ok(a), Ok(b)) if a.success() && b.success()) {
        eprintln!("could not change /dev/kvm: each virsh define may take a minute");
    }
}

/// Destroys and undefines domains an interrupted run of this test left.
fn remove_stale_domains() {
    let (ok, names) = virsh(&["list", "--all", "--name"], Duration::from_secs(60));
    assert!(ok, "virsh list: {names}");
    for name in names.lines().filter(|n| n.starts_with(DOMAIN_PREFIX)) {
        println!("removing domain {name} left by an earlier run");
        let _ = virsh(&["destroy", name], Duration::from_secs(30));
        let _ = virsh(&["undefine", name], Duration::from_secs(30));
    }
}

/// One README command line as arguments, `/run/` moved to `run`, the
/// `--path` value replaced with `image`, `vhost-user-scsi` with our binary.
fn readme_command(line: &str, run: &Path, image: &Path) -> (Vec<String>, bool) {
    let line = line.trim();
    let (line, background) = match line.strip_suffix('&') {
        Some(l) => (l.trim_end(), true),
        None => (line, false),
    };
    assert!(
        !line.contains(['"', '\'', '\\', '$', '|', ';']),
        "README.md libvirt-daemon line needs a shell: {line:?}"
    );
    let mut words: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    assert_eq!(
        words[0], "vhost-user-scsi",
        "README.md libvirt-daemon line does not run vhost-user-scsi: {line:?}"
    );
    words[0] = daemon_binary().display().to_string();
    for i in 1..words.len() {
        if words[i - 1] == "--path" {
            words[i] = image.display().to_string();
        } else if let Some(rest) = words[i].strip_prefix("/run/") {
            words[i] = run.join(rest).display().to_string();
        }
    }
    (words, background)
}

/// The value after `flag` in `words`.
fn flag_value<'a>(words: &'a [String], flag: &str) -> Option<&'a str> {
    words
        .iter()
        .position(|w| w == flag)
        .and_then(|i| words.get(i + 1))
        .map(String::as_str)
}

fn sha256_of(path: &Path, offset: u64, len: u64) -> String {
    let mut f = fs::File::open(path).expect("open image");
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset)).unwrap();
    let mut data = vec![0u8; len as usize];
    f.read_exact(&mut data).expect("read image");
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn guest_e2e_libvirt() {
    if !ready("guest_e2e_libvirt") {
        return;
    }
    let _guard = lock();
    let t_total = Instant::now();
    let root = repo_root();
    let readme = fs::read_to_string(root.join("README.md")).expect("README.md");
    let daemon_lines: Vec<String> = readme_block(&readme, "<!-- test: libvirt-daemon")
        .into_iter()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .collect();
    let xml = readme_block(&readme, "<!-- test: libvirt-xml");

    // Files libvirt-qemu reads or connects to: a world-readable directory
    // (the CI checkout may be below a 0700 home). The image is opened by
    // the daemon (root) only, on a real file system for O_DIRECT.
    let shared = socket_dir("vus-libvirt-");
    fs::set_permissions(shared.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let run = shared.path().join("run");
    fs::create_dir(&run).unwrap();
    fs::set_permissions(&run, fs::Permissions::from_mode(0o755)).unwrap();
    let work = work_dir("libvirt-");
    let image = sparse_image(&work.path().join("vm1.img"), IMAGE_SIZE);
    let logs = logs_dir();

    let mut cleanup = Cleanup::default();
    kvm_device_like_udev();
    start_libvirt(&mut cleanup);
    remove_stale_domains();

    // ---- the daemon, as README.md says
    let mut rpc_socket = None;
    for line in &daemon_lines {
        let (words, background) = readme_command(line, &run, &image);
        println!(
            "$ {}{}",
            words.join(" "),
            if background { " &" } else { "" }
        );
        if background {
            assert!(cleanup.daemon.is_none(), "README.md starts two daemons");
            let log = logs.join("libvirt-daemon.log");
            let f = fs::File::create(&log).unwrap();
            cleanup.daemon = Some(
                Command::new(&words[0])
                    .args(&words[1..])
                    .stdin(Stdio::null())
                    .stdout(f.try_clone().unwrap())
                    .stderr(f)
                    .spawn()
                    .expect("start the daemon"),
            );
            if let Some(rpc) = flag_value(&words, "--rpc-socket") {
                let rpc = PathBuf::from(rpc);
                wait_for("daemon's RPC socket", Duration::from_secs(20), || {
                    if let Some(Ok(Some(st))) = cleanup.daemon.as_mut().map(|c| c.try_wait()) {
                        panic!("daemon exited ({st}):\n{}", tail(&log, 20));
                    }
                    rpc.exists()
                });
                rpc_socket = Some(rpc);
            }
        } else {
            let out = run_for(
                Command::new(&words[0]).args(&words[1..]),
                Duration::from_secs(30),
            )
            .expect("README command did not finish in 30 s");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            println!("{}", text.trim());
            assert!(out.status.success(), "{line}: {}: {text}", out.status);
        }
    }
    assert!(
        cleanup.daemon.is_some(),
        "README.md starts no daemon (no line ending in &)"
    );
    println!("rpc socket {rpc_socket:?}");

    // ---- the domain: ours around README.md's XML
    let first = xml.first().unwrap();
    let last = xml.last().unwrap();
    assert!(
        first.trim_start().starts_with("<domain") && first.contains(QEMU_NS),
        "README.md libvirt-xml must start with <domain ... {QEMU_NS}>: {first:?}"
    );
    assert_eq!(
        last.trim(),
        "</domain>",
        "README.md libvirt-xml must end with </domain>"
    );
    let mut inner = xml[1..xml.len() - 1]
        .join("\n")
        .replace("/run/", &format!("{}/", run.display()));
    assert!(
        inner.contains(",bootindex=0"),
        "README.md's -device has no bootindex=0 (boot from the volume)"
    );
    // A direct kernel boot holds bootindex 0 ("The bootindex 0 has already
    // been used"); README.md says to leave it out then.
    inner = inner.replace(",bootindex=0", "");
    let socket = inner
        .split(['\'', ','])
        .find_map(|w| w.strip_prefix("path="))
        .map(PathBuf::from)
        .expect("README.md's -chardev has no path=");
    let meta = fs::metadata(&socket)
        .unwrap_or_else(|e| panic!("controller socket {}: {e}", socket.display()));
    let kvm_gid = Command::new("getent")
        .args(["group", "kvm"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split(':')
                .nth(2)?
                .parse()
                .ok()
        })
        .expect("group kvm");
    println!(
        "controller socket {}: mode {:o}, gid {} (kvm = {kvm_gid})",
        socket.display(),
        meta.mode() & 0o7777,
        meta.gid()
    );
    assert_eq!(
        (meta.mode() & 0o777, meta.gid()),
        (0o660, kvm_gid),
        "README's --socket-group kvm: the socket must be group kvm, mode 0660"
    );

    let initrd = shared.path().join("initrd");
    let kernel = shared.path().join("vmlinuz");
    fs::copy(root.join("build/guest/vmlinuz"), &kernel).expect("copy vmlinuz");
    let st = Command::new(root.join("scripts/guest-initrd.sh"))
        .arg("--script")
        .arg(root.join("tests/guest/libvirt.sh"))
        .arg("--out")
        .arg(&initrd)
        .args([
            "--env",
            "EXPECT_VENDOR=VUSCSI",
            "--env",
            "EXPECT_PRODUCT=vhost-user-scsi",
        ])
        .arg("--env")
        .arg(format!("LUN0_SIZE={IMAGE_SIZE}"))
        .arg("--env")
        .arg(format!("LV_OFFSET={LV_OFFSET}"))
        .arg("--env")
        .arg(format!("LV_LEN={LV_LEN}"))
        .status()
        .expect("scripts/guest-initrd.sh");
    assert!(st.success(), "scripts/guest-initrd.sh: {st}");
    for f in [&kernel, &initrd] {
        fs::set_permissions(f, fs::Permissions::from_mode(0o644)).unwrap();
    }
    let console = shared.path().join("console.log");
    let name = format!("{DOMAIN_PREFIX}{}", std::process::id());
    let domain = format!(
        "<domain type='qemu' {QEMU_NS}>
  <name>{name}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'>
      <source path='{console}'/>
      <target port='0'/>
    </serial>
    <video>
      <model type='vga'/>
    </video>
    <interface type='user'>
      <model type='virtio'/>
    </interface>
  </devices>
{inner}
</domain>
",
        kernel = kernel.display(),
        initrd = initrd.display(),
        console = console.display(),
    );
    let domain_xml = shared.path().join("domain.xml");
    fs::write(&domain_xml, &domain).unwrap();
    fs::write(logs.join("libvirt-domain.xml"), &domain).unwrap();
    println!("----- domain XML -----\n{domain}");

    let t_define = Instant::now();
    let (ok, out) = virsh(
        &["define", &domain_xml.display().to_string()],
        Duration::from_secs(300),
    );
    let define_s = t_define.elapsed().as_secs_f64();
    assert!(ok, "virsh define: {out}");
    cleanup.domain = Some(name.clone());
    println!("virsh define: {define_s:.1} s: {out}");
    let (_, dumped) = virsh(&["dumpxml", &name], Duration::from_secs(30));
    fs::write(logs.join("libvirt-domain-defined.xml"), &dumped).unwrap();
    assert!(
        dumped.contains("<qemu:commandline>"),
        "libvirt dropped <qemu:commandline>:\n{dumped}"
    );

    let t_start = Instant::now();
    let (ok, out) = virsh(&["start", &name], START_TIMEOUT);
    let start_s = t_start.elapsed().as_secs_f64();
    let qemu_log = PathBuf::from(format!("/var/log/libvirt/qemu/{name}.log"));
    assert!(
        ok,
        "virsh start ({start_s:.1} s): {out}\nQEMU log:\n{}\ndaemon log:\n{}",
        tail(&qemu_log, 15),
        tail(&logs.join("libvirt-daemon.log"), 15)
    );
    println!("virsh start: {start_s:.1} s: {out}");

    // ---- the guest's verdict on its serial console
    let t_boot = Instant::now();
    let mut text = String::new();
    let mut shut_off = false;
    while t_boot.elapsed() < GUEST_TIMEOUT {
        text = fs::read_to_string(&console).unwrap_or_default();
        if text.contains("GUEST-EXIT-CODE=") {
            break;
        }
        let (_, state) = virsh(&["domstate", &name], Duration::from_secs(30));
        if state == "shut off" {
            shut_off = true;
            text = fs::read_to_string(&console).unwrap_or_default();
            break;
        }
        sleep(Duration::from_millis(250));
    }
    let boot_s = t_boot.elapsed().as_secs_f64();
    let text = text.replace('\r', "");
    let _ = fs::write(logs.join("libvirt-console.log"), &text);
    println!("----- guest console -----\n{text}");
    println!(
        "TIMINGS guest_e2e_libvirt: define {define_s:.1} s, start {start_s:.1} s, \
         boot to guest result {boot_s:.1} s, total so far {:.1} s",
        t_total.elapsed().as_secs_f64()
    );
    let fails: Vec<&str> = text.lines().filter(|l| l.starts_with("FAIL:")).collect();
    assert!(
        text.contains("GUEST-EXIT-CODE=0") && fails.is_empty(),
        "guest did not pass ({}; console {}):\n{}\nQEMU log:\n{}\ndaemon log:\n{}",
        if shut_off {
            "domain shut off without a result".to_string()
        } else if text.contains("GUEST-EXIT-CODE=") {
            "guest checks failed".to_string()
        } else {
            format!("no result after {boot_s:.0} s")
        },
        console.display(),
        fails.join("\n"),
        tail(&qemu_log, 15),
        tail(&logs.join("libvirt-daemon.log"), 15)
    );
    let summary = text.lines().find(|l| l.starts_with("SUMMARY:"));
    assert!(
        summary.is_some_and(|s| s.ends_with(" 0 failed")),
        "guest summary: {summary:?}"
    );

    // ---- the host sees what the guest wrote
    let want = text
        .lines()
        .find_map(|l| l.strip_prefix("LIBVIRT-PATTERN sha256="))
        .and_then(|l| l.split_whitespace().next())
        .expect("guest printed no LIBVIRT-PATTERN line")
        .to_string();
    let got = sha256_of(&image, LV_OFFSET, LV_LEN);
    assert_eq!(
        got, want,
        "backing file bytes {LV_OFFSET}..+{LV_LEN} differ from what the guest wrote"
    );
    println!("backing file holds the guest's pattern (sha256 {got})");

    // ---- tear down: domain gone (on_poweroff destroy), undefine, daemon exits 0
    wait_for(
        "domain shut off after poweroff",
        Duration::from_secs(30),
        || virsh(&["domstate", &name], Duration::from_secs(30)).1 == "shut off",
    );
    let (ok, out) = virsh(&["undefine", &name], Duration::from_secs(30));
    assert!(ok, "virsh undefine: {out}");
    cleanup.domain = None;
    let _ = fs::copy(&qemu_log, logs.join("libvirt-qemu.log"));
    let mut daemon = cleanup.daemon.take().unwrap();
    let st = stop("vhost-user-scsi", &mut daemon).expect("daemon exit status");
    assert!(
        st.success(),
        "daemon after SIGTERM: {st}\n{}",
        tail(&logs.join("libvirt-daemon.log"), 20)
    );
    assert!(
        !socket.exists(),
        "controller socket left behind after SIGTERM"
    );
    drop(cleanup);
    println!(
        "TIMINGS guest_e2e_libvirt: define {define_s:.1} s, start {start_s:.1} s, \
         boot {boot_s:.1} s, total {:.1} s",
        t_total.elapsed().as_secs_f64()
    );
}
