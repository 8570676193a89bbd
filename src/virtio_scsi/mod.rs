//! virtio-scsi (virtio 1.2 section 5.6): wire structures, LUN addressing and
//! descriptor-chain parsing into guest-memory segments.

pub mod chain;
pub mod defs;

pub use chain::{
    parse_cmd, parse_ctrl, split_chain, split_chain_at, BadRequest, ChainError, CmdRequest,
    CtrlRequest, GuestMem, Segment, Segments, SplitChain,
};
pub use defs::*;
