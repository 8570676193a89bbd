//! The vhost-user control connection and QEMU's handshake order
//! (vhost-user-scsi-pci): SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES,
//! GET_QUEUE_NUM; at start SET_FEATURES, SET_MEM_TABLE, and per ring
//! NUM/ADDR/BASE/CALL/KICK/ENABLE; at stop GET_VRING_BASE per ring.

use std::os::fd::{AsRawFd, RawFd};

use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VringConfigData};

use super::features::*;
use super::memory::GuestMem;
use super::vring::SplitQueue;
use super::{Error, FrontendConfig, Result};

/// A negotiated vhost-user connection.
pub struct Connection {
    fe: Frontend,
    /// Feature bits the backend offered.
    pub offered_features: u64,
    /// Feature bits acked with SET_FEATURES (after [`Connection::set_features`]).
    pub acked_features: u64,
    /// Protocol features the backend offered.
    pub offered_protocol: VhostUserProtocolFeatures,
    /// Protocol features acked.
    pub acked_protocol: VhostUserProtocolFeatures,
    /// GET_QUEUE_NUM answer.
    pub backend_queues: u64,
}

fn vh(op: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    move |source| Error::Vhost { op, source }
}

fn vq(op: &'static str, queue: usize) -> impl FnOnce(vhost::Error) -> Error {
    move |source| Error::VhostQueue { op, queue, source }
}

impl Connection {
    /// Connect and negotiate protocol features and the queue count.
    pub fn open(cfg: &FrontendConfig) -> Result<Self> {
        let needed = u64::from(cfg.request_queues) + 2;
        let mut fe = Frontend::connect(&cfg.socket, needed).map_err(vh("connect"))?;
        fe.set_owner().map_err(vh("SET_OWNER"))?;
        let offered = fe.get_features().map_err(vh("GET_FEATURES"))?;
        if offered & VIRTIO_F_VERSION_1 == 0 {
            return Err(Error::MissingFeature("VIRTIO_F_VERSION_1"));
        }
        if offered & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
            return Err(Error::MissingFeature("VHOST_USER_F_PROTOCOL_FEATURES"));
        }
        let offered_protocol = fe
            .get_protocol_features()
            .map_err(vh("GET_PROTOCOL_FEATURES"))?;
        let wanted = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        let acked_protocol = offered_protocol & wanted;
        fe.set_protocol_features(acked_protocol)
            .map_err(vh("SET_PROTOCOL_FEATURES"))?;
        if acked_protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Every following request asks for an ack, so a backend's
            // refusal is reported at the request that caused it.
            fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if !acked_protocol.contains(VhostUserProtocolFeatures::MQ) {
            return Err(Error::MissingFeature("VHOST_USER_PROTOCOL_F_MQ"));
        }
        let backend_queues = fe.get_queue_num().map_err(vh("GET_QUEUE_NUM"))?;
        if backend_queues < needed {
            return Err(Error::NotEnoughQueues {
                offered: backend_queues,
                needed,
                requests: cfg.request_queues,
            });
        }
        Ok(Connection {
            fe,
            offered_features: offered,
            acked_features: 0,
            offered_protocol,
            acked_protocol,
            backend_queues,
        })
    }

    /// SET_FEATURES: VERSION_1 | PROTOCOL_FEATURES, plus EVENT_IDX,
    /// INDIRECT_DESC and `extra_features` when requested and offered.
    pub fn set_features(&mut self, cfg: &FrontendConfig) -> Result<u64> {
        let mut want = VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES | cfg.extra_features;
        if cfg.event_idx {
            want |= VIRTIO_RING_F_EVENT_IDX;
        }
        if cfg.indirect {
            want |= VIRTIO_RING_F_INDIRECT_DESC;
        }
        let acked = (want & self.offered_features) | cfg.force_features;
        self.fe.set_features(acked).map_err(vh("SET_FEATURES"))?;
        self.acked_features = acked;
        Ok(acked)
    }

    pub fn has_feature(&self, bit: u64) -> bool {
        self.acked_features & bit != 0
    }

    /// SET_MEM_TABLE with every region of `mem`.
    pub fn set_mem_table(&mut self, mem: &GuestMem) -> Result<()> {
        let regions = mem.region_infos()?;
        self.fe
            .set_mem_table(&regions)
            .map_err(vh("SET_MEM_TABLE"))?;
        Ok(())
    }

    /// Program and enable one ring.
    pub fn setup_queue(&mut self, mem: &GuestMem, q: &SplitQueue) -> Result<()> {
        let i = q.index;
        let (desc, avail, used) = q.ring_addrs();
        self.fe
            .set_vring_num(i, q.size())
            .map_err(vq("SET_VRING_NUM", i))?;
        let config = VringConfigData {
            queue_max_size: q.size(),
            queue_size: q.size(),
            flags: 0,
            // The frontend's own virtual addresses, not guest-physical ones.
            desc_table_addr: mem.host_addr(desc)?,
            used_ring_addr: mem.host_addr(used)?,
            avail_ring_addr: mem.host_addr(avail)?,
            log_addr: None,
        };
        self.fe
            .set_vring_addr(i, &config)
            .map_err(vq("SET_VRING_ADDR", i))?;
        self.fe
            .set_vring_base(i, 0)
            .map_err(vq("SET_VRING_BASE", i))?;
        self.fe
            .set_vring_call(i, q.call_fd())
            .map_err(vq("SET_VRING_CALL", i))?;
        self.fe
            .set_vring_kick(i, q.kick_fd())
            .map_err(vq("SET_VRING_KICK", i))?;
        self.fe
            .set_vring_enable(i, true)
            .map_err(vq("SET_VRING_ENABLE", i))?;
        Ok(())
    }

    /// GET_VRING_BASE (stops the ring in the backend); returns its avail index.
    pub fn stop_queue(&mut self, queue: usize) -> Result<u32> {
        self.fe
            .get_vring_base(queue)
            .map_err(vq("GET_VRING_BASE", queue))
    }

    /// The underlying vhost frontend, for requests not wrapped here.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.fe
    }
}

/// The vhost-user socket (to watch for the backend closing it).
impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.fe.as_raw_fd()
    }
}
