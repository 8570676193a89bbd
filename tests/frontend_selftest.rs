//! Drives the frontend against a tiny in-test vhost-user backend built with
//! vhost-user-backend 0.24 (no dependency on the project's daemon).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use vhost_user_scsi::frontend::features::*;
use vhost_user_scsi::frontend::vring::{Desc, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vhost_user_scsi::frontend::{
    cdb, ChainPart, Completion, DataDir, Error, FrontendConfig, ScsiFrontend, ScsiRequest, Split,
    EVENT_QUEUE,
};
use vhost_user_scsi::virtio_scsi::defs::*;
use virtio_queue::{DescriptorChain, QueueT, Reader, Writer};
use vm_memory::{
    ByteValued, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

type Mem = GuestMemoryLoadGuard<GuestMemoryMmap>;

/// Answers every command with OK/GOOD: resid = data-out length,
/// status_qualifier = byte sum of data-out, data-in filled with
/// `(tag + i) as u8`; CDB opcode 0xff gets CHECK CONDITION 05/20/00.
/// Every TMF is answered FUNCTION COMPLETE and posts a TRANSPORT_RESET event.
struct TestBackend {
    mem: Mutex<Option<GuestMemoryAtomic<GuestMemoryMmap>>>,
    event_idx: AtomicBool,
    requests: AtomicU64,
    offered: u64,
    queues: usize,
}

impl TestBackend {
    fn mem(&self) -> Option<Mem> {
        self.mem.lock().unwrap().as_ref().map(|m| m.memory())
    }

    fn command(mem: &Mem, chain: DescriptorChain<Mem>) -> std::io::Result<u32> {
        let mut r = Reader::new(&**mem, chain.clone()).map_err(std::io::Error::other)?;
        let mut w = Writer::new(&**mem, chain).map_err(std::io::Error::other)?;
        let hdr: CmdReqHeader = r.read_obj()?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        let din = w.available_bytes().saturating_sub(108);
        let mut resp = CmdRespHeader {
            resid: out.len() as u32,
            status_qualifier: out.iter().map(|&b| u16::from(b)).fold(0, u16::wrapping_add),
            ..Default::default()
        };
        if hdr.cdb[0] == 0xff {
            resp.status = 2;
            resp.sense_len = 18;
            resp.sense[0] = 0x70;
            resp.sense[2] = 5;
            resp.sense[7] = 10;
            resp.sense[12] = 0x20;
        }
        let tag = hdr.tag;
        let data: Vec<u8> = (0..din).map(|i| (tag as usize + i) as u8).collect();
        w.write_obj(resp)?;
        w.write_all(&data)?;
        Ok(w.bytes_written() as u32)
    }

    fn control(
        mem: &Mem,
        chain: DescriptorChain<Mem>,
        event: &VringRwLock,
    ) -> std::io::Result<u32> {
        let mut r = Reader::new(&**mem, chain.clone()).map_err(std::io::Error::other)?;
        let mut w = Writer::new(&**mem, chain).map_err(std::io::Error::other)?;
        let mut all = Vec::new();
        r.read_to_end(&mut all)?;
        let ty = match all.get(..4) {
            Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            None => return Ok(0),
        };
        match ty {
            T_TMF => {
                let req = all
                    .get(..24)
                    .and_then(CtrlTmfReq::from_slice)
                    .copied()
                    .ok_or_else(|| std::io::Error::other("short TMF"))?;
                w.write_obj(CtrlTmfResp { response: 0 })?;
                let ev = Event {
                    event: T_TRANSPORT_RESET,
                    lun: req.lun,
                    reason: req.subtype,
                };
                let chain = event
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                if let Some(c) = chain {
                    let head = c.head_index();
                    let mut ew = Writer::new(&**mem, c).map_err(std::io::Error::other)?;
                    ew.write_obj(ev)?;
                    event.add_used(head, 16).map_err(std::io::Error::other)?;
                    event.signal_used_queue()?;
                }
            }
            T_AN_QUERY | T_AN_SUBSCRIBE => {
                let req = all
                    .get(..16)
                    .and_then(CtrlAnReq::from_slice)
                    .copied()
                    .ok_or_else(|| std::io::Error::other("short AN"))?;
                let requested = req.event_requested;
                w.write_obj(CtrlAnResp {
                    event_actual: requested & 0x4,
                    response: 0,
                })?;
            }
            _ => return Ok(0),
        }
        Ok(w.bytes_written() as u32)
    }

    fn process(&self, q: usize, vrings: &[VringRwLock]) -> std::io::Result<()> {
        let Some(mem) = self.mem() else {
            return Ok(());
        };
        let vring = &vrings[q];
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        loop {
            if event_idx {
                vring
                    .disable_notification()
                    .map_err(std::io::Error::other)?;
            }
            loop {
                // Own statement: the vring guard must be dropped before add_used.
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                let Some(chain) = chain else {
                    break;
                };
                let head = chain.head_index();
                let len = match q {
                    0 => Self::control(&mem, chain, &vrings[1]),
                    _ => Self::command(&mem, chain),
                }
                .unwrap_or(0);
                self.requests.fetch_add(1, Ordering::Relaxed);
                vring.add_used(head, len).map_err(std::io::Error::other)?;
            }
            if vring.needs_notification().map_err(std::io::Error::other)? {
                vring.signal_used_queue()?;
            }
            if !event_idx || !vring.enable_notification().map_err(std::io::Error::other)? {
                break;
            }
        }
        Ok(())
    }
}

impl VhostUserBackend for TestBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.queues
    }
    fn max_queue_size(&self) -> usize {
        256
    }
    fn features(&self) -> u64 {
        self.offered
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }
    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }
    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> std::io::Result<()> {
        *self.mem.lock().unwrap() = Some(mem);
        Ok(())
    }
    fn exit_event(&self, _thread: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Without one the worker threads cannot be stopped and dropping
        // the daemon hangs.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        let q = usize::from(device_event);
        if evset != EventSet::IN || q >= vrings.len() || q == 1 {
            return Ok(());
        }
        self.process(q, vrings)
    }
}

const ALL_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VHOST_USER_F_PROTOCOL_FEATURES
    | VIRTIO_RING_F_EVENT_IDX
    | VIRTIO_RING_F_INDIRECT_DESC
    | F_CHANGE;

struct Server {
    _dir: tempfile::TempDir,
    path: PathBuf,
    backend: Arc<TestBackend>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(offered: u64, queues: usize) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vus.sock");
        let backend = Arc::new(TestBackend {
            mem: Mutex::new(None),
            event_idx: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            offered,
            queues,
        });
        let b = backend.clone();
        let p = path.clone();
        let thread = std::thread::spawn(move || {
            let mut daemon = VhostUserDaemon::new(
                "frontend-selftest".into(),
                b,
                GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            )
            .unwrap();
            // A rejected handshake makes serve() return an error: that is
            // what the negative tests provoke, so it is not checked here.
            let _ = daemon.serve(&p);
        });
        wait_for(&path);
        Server {
            _dir: dir,
            path,
            backend,
            thread: Some(thread),
        }
    }

    fn join(mut self) {
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn wait_for(path: &Path) {
    for _ in 0..500 {
        if path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("backend socket {path:?} never appeared");
}

fn config(path: &Path) -> FrontendConfig {
    let mut cfg = FrontendConfig::new(path);
    cfg.request_queues = 2;
    cfg.queue_size = 256;
    cfg.mem_size = 16 << 20;
    cfg.mmap_offset = 1 << 20;
    cfg.timeout = Duration::from_secs(10);
    cfg
}

fn check_pattern(tag: u64, data: &[u8]) {
    for (i, &b) in data.iter().enumerate() {
        assert_eq!(b, (tag as usize + i) as u8, "data-in byte {i} of tag {tag}");
    }
}

fn exercise(dev: &ScsiFrontend) {
    // Blocking commands on both queues, each direction.
    for q in 0..2 {
        let r = dev
            .command(q, 0, &cdb::test_unit_ready(), DataDir::None)
            .unwrap();
        assert_eq!((r.response, r.status, r.resid), (S_OK, 0, 0));
        assert_eq!(r.used_len, 108);

        let r = dev
            .command(q, 0, &cdb::inquiry(false, 0, 96), DataDir::FromDevice(96))
            .unwrap();
        assert_eq!(r.used_len, 108 + 96);
        assert_eq!(r.data.len(), 96);

        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let r = dev
            .command(q, 0, &cdb::write10(0, 8, false), DataDir::ToDevice(&data))
            .unwrap();
        assert_eq!(r.resid, 4096);
        let sum = data
            .iter()
            .map(|&b| u16::from(b))
            .fold(0, u16::wrapping_add);
        assert_eq!(r.status_qualifier, sum);
    }

    // Every byte its own descriptor (159 descriptors), direct and indirect.
    for indirect in [false, true] {
        let mut req = ScsiRequest::new(0, &cdb::test_unit_ready(), DataDir::None);
        req.split = Split::Pieces(1);
        req.indirect = Some(indirect);
        let r = dev.execute(0, &req).unwrap();
        assert_eq!((r.response, r.status, r.used_len), (S_OK, 0, 108));
    }

    // Sense data.
    let r = dev.command(1, 0, &[0xff], DataDir::None).unwrap();
    assert_eq!(r.status, 2);
    assert_eq!(r.sense.len(), 18);
    assert_eq!(r.sense_key(), Some((5, 0x20, 0)));

    // Many in flight on both queues, with every split.
    let splits = [
        Split::Linux,
        Split::Merged,
        Split::Pieces(64),
        Split::Pieces(200),
    ];
    let mut expected = std::collections::HashMap::new();
    for round in 0..4 {
        for q in 0..2 {
            for k in 0..12 {
                let mut req =
                    ScsiRequest::new(0, &cdb::read10(k, 1, false), DataDir::FromDevice(512));
                req.split = splits[(round + k as usize) % splits.len()];
                if k % 3 == 0 {
                    req.data_out = vec![1; 100];
                }
                if k % 4 == 1 {
                    req.indirect = Some(true);
                }
                let tag = dev.submit(q, &req).unwrap();
                expected.insert(tag, (q, req.data_out.len()));
            }
        }
        for q in 0..2 {
            let mut out: Vec<Completion> = Vec::new();
            while out.len() < 12 {
                let n = dev
                    .wait_completions(q, &mut out, Duration::from_secs(10))
                    .unwrap();
                assert!(n > 0, "timed out with {} of 12 completions", out.len());
            }
            for c in out {
                let (eq, out_len) = expected.remove(&c.tag).expect("unknown tag");
                assert_eq!(eq + 2, c.vq);
                let r = c.scsi().unwrap();
                assert_eq!((r.response, r.status), (S_OK, 0));
                assert_eq!(r.resid as usize, out_len);
                assert_eq!(r.used_len, 108 + 512);
                check_pattern(c.tag, &r.data);
            }
        }
    }
    assert!(expected.is_empty());

    // Control queue.
    assert_eq!(dev.an_query(0, 0x4 | 0x10).unwrap(), (0x4, S_OK));
    assert_eq!(dev.an_subscribe(0, 0x2).unwrap(), (0, S_OK));
    assert_eq!(dev.tmf(3, T_TMF_LOGICAL_UNIT_RESET, 0).unwrap(), 0);
    let events = dev.poll_events(Duration::from_secs(10)).unwrap();
    assert_eq!(events.len(), 1);
    let e = events[0];
    let (ev, reason, lun) = (e.event, e.reason, e.lun);
    assert_eq!((ev, reason), (T_TRANSPORT_RESET, T_TMF_LOGICAL_UNIT_RESET));
    assert_eq!(lun, encode_lun(0, 3));
    assert_eq!(
        dev.stats(EVENT_QUEUE).unwrap().in_flight,
        usize::from(dev.config().event_buffers)
    );

    // Raw chains: a well-formed one, one pointing outside memory, and a
    // readable-after-writable one.
    let mut hdr = CmdReqHeader {
        lun: encode_lun(0, 0),
        tag: 77,
        ..Default::default()
    };
    hdr.cdb[..6].copy_from_slice(&cdb::test_unit_ready());
    let hdr = hdr.as_slice().to_vec();
    let r = dev
        .raw_chain(2, &[ChainPart::Out(hdr.clone()), ChainPart::In(108 + 4)])
        .unwrap();
    assert_eq!(r.used_len, 112);
    check_pattern(77, &r.written[0][108..]);
    let r = dev
        .raw_chain_indirect(3, &[ChainPart::Out(hdr.clone()), ChainPart::In(108)])
        .unwrap();
    assert_eq!(r.used_len, 108);
    let r = dev
        .raw_chain(
            2,
            &[
                ChainPart::Out(hdr.clone()),
                ChainPart::Raw {
                    addr: 0xdead_0000_0000,
                    len: 108,
                    write: true,
                },
            ],
        )
        .unwrap();
    assert_eq!(r.used_len, 0);
    let r = dev
        .raw_chain(2, &[ChainPart::In(108), ChainPart::Out(hdr)])
        .unwrap();
    // virtio-queue's Reader/Writer do not insist on readable-first order:
    // the test backend answers it; only check it completes.
    assert!(r.used_len == 0 || r.used_len == 108);
    // Arbitrary descriptors: a two-element chain into a scratch area.
    let base = dev.mem().base() + dev.mem().size() as u64 - 4096;
    let tag = dev
        .submit_descriptors(
            3,
            &[
                Desc {
                    addr: base,
                    len: 4,
                    flags: VRING_DESC_F_NEXT,
                    next: 1,
                },
                Desc {
                    addr: base + 2048,
                    len: 200,
                    flags: VRING_DESC_F_WRITE,
                    next: 0,
                },
            ],
        )
        .unwrap();
    // A 4-byte header is too short: the backend completes it with 0.
    assert_eq!(
        dev.wait_tag(3, tag, Duration::from_secs(10))
            .unwrap()
            .used_len,
        0
    );
    for vq in 2..4 {
        let s = dev.stats(vq).unwrap();
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.free_descriptors, usize::from(dev.config().queue_size));
    }
}

fn run(cfg_fn: impl Fn(&mut FrontendConfig)) {
    let server = Server::start(ALL_FEATURES, 4);
    let mut cfg = config(&server.path);
    cfg_fn(&mut cfg);
    let dev = ScsiFrontend::connect(&cfg).unwrap();
    let free = dev.free_memory();
    exercise(&dev);
    assert_eq!(dev.free_memory(), free, "buffers leaked");
    let avail: Vec<u16> = (0..4).map(|q| dev.avail_idx(q).unwrap()).collect();
    let requests = server.backend.requests.load(Ordering::Relaxed);
    let bases = dev.shutdown().unwrap();
    // Control and request queues were fully consumed.
    for q in [0, 2, 3] {
        assert_eq!(bases[q], u32::from(avail[q]), "queue {q}");
    }
    assert!(requests > 100, "{requests} requests");
    server.join();
}

#[test]
fn event_idx_direct() {
    run(|_| {});
}

#[test]
fn event_idx_indirect_default() {
    run(|c| c.indirect = true);
}

#[test]
fn no_event_idx_always_kick() {
    run(|c| {
        c.event_idx = false;
        c.always_kick = true;
        c.mmap_offset = 0;
        c.mem_base = 0;
    });
}

#[test]
fn acked_features_follow_the_offer() {
    let server = Server::start(ALL_FEATURES, 4);
    let mut cfg = config(&server.path);
    cfg.extra_features = F_CHANGE | F_HOTPLUG;
    cfg.indirect = true;
    let dev = ScsiFrontend::connect(&cfg).unwrap();
    let acked = dev.connection().acked_features;
    assert_eq!(acked, ALL_FEATURES);
    dev.shutdown().unwrap();
    server.join();
}

#[test]
fn too_few_queues_is_an_error() {
    let server = Server::start(ALL_FEATURES, 3);
    let cfg = config(&server.path);
    match ScsiFrontend::connect(&cfg) {
        Err(Error::NotEnoughQueues {
            offered: 3,
            needed: 4,
            ..
        }) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("connected to a backend with too few queues"),
    }
    server.join();
}

#[test]
fn missing_version_1_is_an_error() {
    let server = Server::start(VHOST_USER_F_PROTOCOL_FEATURES, 4);
    let cfg = config(&server.path);
    assert!(matches!(
        ScsiFrontend::connect(&cfg),
        Err(Error::MissingFeature("VIRTIO_F_VERSION_1"))
    ));
    server.join();
}

#[test]
fn queue_full_is_an_error() {
    let server = Server::start(ALL_FEATURES, 4);
    let mut cfg = config(&server.path);
    cfg.queue_size = 4;
    let dev = ScsiFrontend::connect(&cfg).unwrap();
    let mut req = ScsiRequest::new(0, &cdb::read10(0, 1, false), DataDir::FromDevice(512));
    req.split = Split::Pieces(16);
    assert!(matches!(dev.submit(0, &req), Err(Error::QueueFull { .. })));
    assert!(matches!(dev.submit(5, &req), Err(Error::NoSuchQueue(7))));
    dev.shutdown().unwrap();
    server.join();
}

#[test]
fn forced_unoffered_feature_is_rejected_by_the_backend() {
    // What QEMU 10 does with VIRTIO_SCSI_F_CHANGE (platform notes).
    let server = Server::start(ALL_FEATURES & !F_CHANGE, 4);
    let mut cfg = config(&server.path);
    cfg.force_features = F_CHANGE;
    match ScsiFrontend::connect(&cfg) {
        Err(e) => assert!(e.to_string().contains("SET_FEATURES"), "{e}"),
        Ok(_) => panic!("backend accepted an unoffered feature"),
    }
    server.join();
}

#[test]
fn one_thread_per_queue() {
    let server = Server::start(ALL_FEATURES, 4);
    let dev = Arc::new(ScsiFrontend::connect(&config(&server.path)).unwrap());
    let threads: Vec<_> = (0..2)
        .map(|q| {
            let dev = dev.clone();
            std::thread::spawn(move || {
                for i in 0..200u32 {
                    let r = dev
                        .command(q, 0, &cdb::read10(i, 1, false), DataDir::FromDevice(512))
                        .unwrap();
                    assert_eq!((r.response, r.status, r.data.len()), (S_OK, 0, 512));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let dev = Arc::into_inner(dev).unwrap();
    let bases = dev.shutdown().unwrap();
    assert_eq!((bases[2], bases[3]), (200, 200));
    server.join();
}
