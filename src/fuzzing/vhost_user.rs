//! Target `vhost_user`: the daemon's vhost-user message handling, as a
//! frontend (a QEMU a guest escaped into) can drive it.
//!
//! One controller (2 request queues, one LUN on a 1 MiB tmpfs file) is
//! created once through the management [`Api`], as `controller_create`
//! and `lun_add` would, and listens on a Unix socket. Each input is one
//! connection: a memfd of guest memory whose first bytes the input writes
//! (so rings and descriptors can be anywhere in it), then up to
//! [`MAX_MSGS`] messages, each a request code (mostly from the spec's
//! range, sometimes any `u32`), flags, a payload and up to three file
//! descriptors (the guest memfd, a fresh eventfd, or a memfd of an
//! input-chosen size: what SET_MEM_TABLE, SET_VRING_KICK/CALL,
//! SET_LOG_BASE and SET_INFLIGHT_FD take). Every eventfd sent is then
//! signalled (kicks), the connection is half-closed and the replies are
//! read until the daemon closes it.
//!
//! Invariants: nothing panics, in any thread (worker threads included);
//! the daemon closes the connection within [`CLOSE_WITHIN`]; and the
//! controller is still serving afterwards (never `stopped`).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::Input;
use crate::mgmt::api::{Api, ControllerCreate, LunAdd};
use crate::mgmt::Manager;

/// Messages per input.
pub const MAX_MSGS: usize = 24;
/// Largest payload sent.
const MAX_PAYLOAD: usize = 1024;
/// How long the daemon may take to close a connection whose frontend
/// stopped sending (it answers what it got, then drains).
const CLOSE_WITHIN: Duration = Duration::from_secs(20);
/// vhost-user header: request, flags, size.
const HDR: usize = 12;
/// Highest request code of the spec the input picks from directly.
const MAX_CODE: u8 = 48;

struct Fixture {
    manager: Arc<Manager>,
    socket: PathBuf,
}

static PANICKED: AtomicBool = AtomicBool::new(false);

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // A panic in any thread (the controller's, a worker's) fails the
        // input, also when it is replayed by `cargo test`.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, Ordering::SeqCst);
            previous(info);
        }));
        let dir = std::env::temp_dir().join(format!(
            "vhost-user-scsi-fuzz-vu-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("fuzz directory");
        let shm = PathBuf::from("/dev/shm");
        let img_dir = if shm.is_dir() { shm } else { dir.clone() };
        let img = img_dir.join(format!(
            "vhost-user-scsi-fuzz-vu-{}.img",
            std::process::id()
        ));
        File::create(&img)
            .and_then(|f| f.set_len(1 << 20))
            .expect("fuzz backing file");
        let socket = dir.join("vu.sock");
        let manager = Manager::new(None);
        let create: ControllerCreate = serde_json::from_value(serde_json::json!({
            "name": "fuzz",
            "socket": socket,
            "num_queues": 2,
            "queue_size": 128,
        }))
        .expect("controller_create parameters");
        manager
            .controller_create(create)
            .expect("controller_create");
        let add: LunAdd = serde_json::from_value(serde_json::json!({
            "controller": "fuzz",
            "path": img,
        }))
        .expect("lun_add parameters");
        manager.lun_add(add).expect("lun_add");
        // The LUN keeps its file open; the name is not needed any more.
        let _ = std::fs::remove_file(&img);
        Fixture { manager, socket }
    })
}

fn memfd(len: u64) -> File {
    let fd = nix::sys::memfd::memfd_create(
        c"vhost-user-scsi-fuzz-vu",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )
    .expect("memfd_create");
    let f = File::from(fd);
    f.set_len(len).expect("size a memfd");
    f
}

/// A file descriptor sent with a message, kept open until the input ends.
enum Sent {
    File(File),
    Event(EventFd),
}

impl Sent {
    fn raw(&self) -> RawFd {
        match self {
            Sent::File(f) => f.as_raw_fd(),
            Sent::Event(e) => e.as_raw_fd(),
        }
    }
}

fn connect(path: &std::path::Path) -> UnixStream {
    let t = Instant::now();
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) if t.elapsed() > CLOSE_WITHIN => {
                panic!("the controller does not accept connections: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

pub fn run(data: &[u8]) {
    let fx = fixture();
    let mut inp = Input::new(data);
    let nmsgs = usize::from(inp.u8()) % (MAX_MSGS + 1);
    let mem_len = (1 + u64::from(inp.u8() % 16)) * (64 << 10);
    let guest = memfd(mem_len);
    let content_len = usize::from(inp.u16() % 8192);
    (&guest)
        .write_all(inp.bytes(content_len))
        .expect("guest memory contents");

    let stream = connect(&fx.socket);
    stream
        .set_write_timeout(Some(CLOSE_WITHIN))
        .expect("socket timeout");
    let mut kept: Vec<Sent> = Vec::new();
    for _ in 0..nmsgs {
        let code = inp.u8();
        let request = if code < 2 * MAX_CODE {
            u32::from(code % MAX_CODE) + 1
        } else {
            inp.u32()
        };
        let sel = inp.u8();
        let flags = if sel & 0x80 != 0 {
            inp.u32()
        } else {
            // Version 1; sometimes NEED_REPLY.
            0x1 | if sel & 1 != 0 { 0x8 } else { 0 }
        };
        let len = usize::from(inp.u16()) % (MAX_PAYLOAD + 1);
        let mut msg = Vec::with_capacity(HDR + len);
        msg.extend_from_slice(&request.to_le_bytes());
        msg.extend_from_slice(&flags.to_le_bytes());
        msg.extend_from_slice(&(len as u32).to_le_bytes());
        let payload = inp.bytes(len);
        msg.extend_from_slice(payload);
        msg.resize(HDR + len, 0);
        let nfds = inp.u8() % 4;
        let mut fds = Vec::new();
        for _ in 0..nfds {
            let sent = match inp.u8() % 3 {
                0 => Sent::File(guest.try_clone().expect("dup the guest memfd")),
                1 => Sent::Event(EventFd::new(EFD_NONBLOCK).expect("eventfd")),
                _ => Sent::File(memfd(u64::from(inp.u16()) * 64)),
            };
            fds.push(sent.raw());
            kept.push(sent);
        }
        // The daemon may close the connection at any message (a protocol
        // error): then the rest is not sent.
        if stream.send_with_fds(&[&msg[..]], &fds).is_err() {
            break;
        }
    }
    // Kick every ring an eventfd may have become the kick of.
    for s in &kept {
        if let Sent::Event(e) = s {
            let _ = e.write(1);
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Replies until the daemon closes the connection.
    let t = Instant::now();
    let mut reader = &stream;
    reader
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("socket timeout");
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                assert!(
                    t.elapsed() < CLOSE_WITHIN,
                    "the daemon did not close the connection within {CLOSE_WITHIN:?}"
                );
            }
            Err(_) => break,
        }
    }
    drop(stream);
    drop(kept);
    assert!(
        !PANICKED.load(Ordering::SeqCst),
        "a thread of the daemon panicked"
    );
    let list = fx.manager.controller_list().expect("controller_list");
    let state = list.first().map(|c| c.state.clone()).unwrap_or_default();
    assert_ne!(state, "stopped", "the controller stopped");
}
