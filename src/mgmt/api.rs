//! The management API: the parameters and results of every JSON-RPC method
//! (also the schema of the `--config` file), and the [`Api`] trait the
//! daemon implements. Field names are the wire names.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `controller_create` parameters; also one `[[controller]]` of the config
/// file (where `lun` lists its LUNs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerCreate {
    /// Unique name (1..=64 characters of `A-Za-z0-9._-`).
    pub name: String,
    /// vhost-user socket path the controller listens on.
    pub socket: PathBuf,
    /// Request queues offered (1..=64, default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_queues: Option<u16>,
    /// Maximum virtqueue size (power of two 1..=1024, default 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<u16>,
    /// The initiator identity of the controller's guest (its I_T nexus for
    /// reservations and unit attentions); default: derived from the socket
    /// path. Give the source and destination controllers of a live
    /// migration the same value, so the guest keeps its reservations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    /// Group of the socket file (a name or a gid), so that a QEMU running
    /// as a member (libvirt's `libvirt-qemu` is in `kvm`) may connect;
    /// default: the daemon's `--socket-group`, else the daemon's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Mode of the socket file, octal (`"0660"`); default: the daemon's
    /// `--socket-mode`, else 0660 with a group, else what the umask gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<String>,
    /// Bound of the request queues' adaptive polling window in µs (0:
    /// no polling, 0..=1000000); default: the daemon's `--poll-max-us`,
    /// else 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_max_us: Option<u32>,
}

/// `controller_delete` parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerDelete {
    pub name: String,
    /// Disconnect a connected guest instead of refusing.
    #[serde(default)]
    pub force: bool,
}

/// A LUN to attach: `lun_add` parameters without `controller`; also one
/// `[[controller.lun]]` of the config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunSpec {
    /// LUN number (0..=16383); default: the lowest free number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<u16>,
    /// Image file or block device.
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
    /// Logical block size, 512 or 4096; default: the device's own (512 for
    /// files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// Unit serial number (VPD 80h); default: derived from the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// SCSI passthrough: `path` is a host SCSI device (`/dev/sdX`,
    /// `/dev/sgN`) and every command but REPORT LUNS goes to it (libvirt's
    /// `device='lun'`). Not with `readonly`, `block_size` or `serial`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passthrough: bool,
}

/// `lun_add` parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunAdd {
    pub controller: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<u16>,
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passthrough: bool,
}

impl LunAdd {
    /// The LUN part (serde cannot flatten with `deny_unknown_fields`).
    pub fn spec(&self) -> LunSpec {
        LunSpec {
            lun: self.lun,
            path: self.path.clone(),
            readonly: self.readonly,
            block_size: self.block_size,
            serial: self.serial.clone(),
            passthrough: self.passthrough,
        }
    }
}

/// `lun_remove` parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunRemove {
    pub controller: String,
    pub lun: u16,
}

/// `lun_resize` parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunResize {
    pub controller: String,
    pub lun: u16,
    /// New size in bytes (image files only; grows the file, never shrinks
    /// it). Absent: re-read the backing's size (a file grown or a device
    /// resized by someone else).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// `stats` parameters (both optional: everything).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<u16>,
}

/// A served LUN (`lun_add`, `lun_resize`, `controller_list`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunInfo {
    pub lun: u16,
    pub path: PathBuf,
    pub readonly: bool,
    pub block_size: u32,
    pub num_blocks: u64,
    /// `num_blocks * block_size`.
    pub size: u64,
    pub serial: String,
    /// A host SCSI device served with `passthrough` (size, block size and
    /// serial are then only what the host knows; the device answers the
    /// guest itself).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passthrough: bool,
}

/// A controller (`controller_create`, `controller_list`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerInfo {
    pub name: String,
    pub socket: PathBuf,
    pub num_queues: u16,
    pub queue_size: u16,
    /// The initiator identity, when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    /// The socket file's group, when one was set (given or the daemon's
    /// default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// The socket file's mode (octal), when one was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_mode: Option<String>,
    /// Bound of the adaptive polling window in effect, µs (0: off).
    #[serde(default)]
    pub poll_max_us: u32,
    /// A frontend (QEMU) is connected.
    pub connected: bool,
    /// `listening`, `connected`, `retrying` (an error stopped the last
    /// connection or accept; the controller retries) or `stopped`.
    #[serde(default)]
    pub state: String,
    /// The last error that stopped a connection or an accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub luns: Vec<LunInfo>,
}

/// Latency percentiles in microseconds (command received to response).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// Counters of one LUN of one controller, since it was added.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LunStats {
    pub lun: u16,
    pub path: PathBuf,
    /// READ commands completed (any status).
    pub reads: u64,
    /// WRITE commands completed (any status).
    pub writes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    /// Every other command completed (INQUIRY, SYNCHRONIZE CACHE, UNMAP...).
    pub other: u64,
    /// Commands that ended in CHECK CONDITION, RESERVATION CONFLICT or a
    /// virtio failure response.
    pub errors: u64,
    /// Commands in flight now.
    pub in_flight: u64,
    /// Latency of every completed command.
    pub latency: Latency,
}

/// Counters of one request queue of one controller.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    pub queue: u16,
    /// Requests taken from the ring.
    pub requests: u64,
    /// Requests in flight now.
    pub in_flight: u64,
}

/// Counters of one controller.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ControllerStats {
    pub name: String,
    pub connected: bool,
    /// As in `controller_list`.
    #[serde(default)]
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Errors that stopped a connection or an accept.
    #[serde(default)]
    pub errors: u64,
    /// Connections accepted since the controller was created.
    pub connections: u64,
    pub queues: Vec<QueueStats>,
    pub luns: Vec<LunStats>,
}

/// `stats` result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub controllers: Vec<ControllerStats>,
}

/// `version` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub name: String,
    pub version: String,
}

/// JSON-RPC 2.0 error codes (JSON-RPC 2.0 section 5.1) and ours.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Named controller or LUN does not exist.
    pub const NOT_FOUND: i64 = -32001;
    /// Name, socket or LUN already taken.
    pub const EXISTS: i64 = -32002;
    /// Refused while a guest is connected (controller_delete without force).
    pub const BUSY: i64 = -32003;
    /// The backing store or socket cannot be used (open, size, bind...).
    pub const FAILED: i64 = -32004;
    /// The daemon is shutting down.
    pub const SHUTTING_DOWN: i64 = -32005;
}

/// An error answer: a JSON-RPC error object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct ApiError {
    pub code: i64,
    pub message: String,
}

impl ApiError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(code::INVALID_PARAMS, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(code::NOT_FOUND, message)
    }
    pub fn exists(message: impl Into<String>) -> Self {
        Self::new(code::EXISTS, message)
    }
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(code::BUSY, message)
    }
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(code::FAILED, message)
    }
}

/// What the daemon does for each method. Implemented by the daemon's
/// manager; the JSON-RPC dispatcher decodes parameters into these types.
/// Every method is safe to call concurrently.
pub trait Api: Send + Sync {
    fn controller_create(&self, p: ControllerCreate) -> Result<ControllerInfo, ApiError>;
    fn controller_delete(&self, p: ControllerDelete) -> Result<(), ApiError>;
    fn controller_list(&self) -> Result<Vec<ControllerInfo>, ApiError>;
    fn lun_add(&self, p: LunAdd) -> Result<LunInfo, ApiError>;
    fn lun_remove(&self, p: LunRemove) -> Result<(), ApiError>;
    fn lun_resize(&self, p: LunResize) -> Result<LunInfo, ApiError>;
    fn stats(&self, p: StatsQuery) -> Result<Stats, ApiError>;
    fn version(&self) -> Result<Version, ApiError> {
        Ok(Version {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
        })
    }
    /// Starts an orderly shutdown (as SIGTERM) and returns at once.
    fn shutdown(&self) -> Result<(), ApiError>;
}
