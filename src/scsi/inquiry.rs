//! INQUIRY (SPC-5 6.6): standard data and the vital product data pages.

use super::cdb::truncate;
use super::lun::{LogicalUnit, PRODUCT, VENDOR};
use super::opcodes::Ctx;
use super::{Outcome, Sense};

/// PERIPHERAL QUALIFIER 000b, PERIPHERAL DEVICE TYPE 00h: a connected
/// direct access block device (SPC-5 6.6.2).
const PERIPHERAL_DISK: u8 = 0x00;
/// PERIPHERAL QUALIFIER 011b, type 1Fh: the device server cannot support a
/// device at this LUN (SPC-5 6.6.2).
pub const PERIPHERAL_NONE: u8 = 0x7f;

/// VERSION 07h: the device server claims SPC-5 (SPC-5 6.6.2).
const VERSION_SPC5: u8 = 0x07;

/// VERSION DESCRIPTORs (SPC-5 6.6.2; values from the T10 version descriptor list), no version claimed:
/// SAM-5, SPC-5, SBC-4.
const VERSION_DESCRIPTORS: [u16; 3] = [0x00a0, 0x05c0, 0x0600];

/// Length of our standard INQUIRY data: through the 8 version descriptors
/// (bytes 58-73).
const STD_LEN: usize = 74;

/// A VPD page builder: the page's bytes after the 4-byte header.
type VpdBuilder = fn(&LogicalUnit) -> Vec<u8>;

/// The supported VPD pages, ascending; page 00h lists exactly these.
static VPD_PAGES: &[(u8, VpdBuilder)] = &[
    (0x00, supported_pages),
    (0x80, unit_serial_number),
    (0x83, device_identification),
    (0xb0, block_limits),
    (0xb1, block_device_characteristics),
    (0xb2, logical_block_provisioning),
];

/// INQUIRY (SPC-5 6.6). EVPD=0 with a PAGE CODE other than 0 and an
/// unsupported VPD page are INVALID FIELD IN CDB (byte 2); CmdDt (byte 1
/// bit 1) is rejected by the reserved-bit check of the opcode table. A LUN
/// that does not exist answers with PERIPHERAL QUALIFIER 011b (byte 0 =
/// 7Fh) and, like QEMU, supports only VPD page 00h (listing itself).
pub fn inquiry(ctx: &Ctx<'_>) -> Result<Outcome, Sense> {
    let evpd = ctx.cdb.bit(1, 0)?;
    let page = ctx.cdb.u8(2)?;
    let alloc = ctx.cdb.be16(3)?;
    let data = match (evpd, ctx.lu) {
        (false, _) if page != 0 => return Err(Sense::invalid_field_in_cdb(2, None)),
        (false, lu) => standard_data(lu),
        (true, None) if page == 0x00 => vpd(PERIPHERAL_NONE, 0x00, vec![0x00]),
        (true, None) => return Err(Sense::invalid_field_in_cdb(2, None)),
        (true, Some(lu)) => {
            let build = VPD_PAGES
                .iter()
                .find(|(code, _)| *code == page)
                .map(|(_, build)| *build)
                .ok_or(Sense::invalid_field_in_cdb(2, None))?;
            vpd(PERIPHERAL_DISK, page, build(lu))
        }
    };
    Ok(Outcome::data_in(truncate(data, alloc.into())))
}

/// Standard INQUIRY data (SPC-5 6.6.2).
fn standard_data(lu: Option<&LogicalUnit>) -> Vec<u8> {
    let mut d = vec![0u8; STD_LEN];
    d[0] = if lu.is_some() {
        PERIPHERAL_DISK
    } else {
        PERIPHERAL_NONE
    };
    // Byte 1: RMB 0 (not removable).
    d[2] = VERSION_SPC5;
    // Byte 3: NORMACA 0, HISUP 1, RESPONSE DATA FORMAT 2.
    d[3] = 0x10 | 0x02;
    // Byte 4: ADDITIONAL LENGTH (n - 4).
    d[4] = (STD_LEN - 5) as u8;
    // Byte 5: SCCS/ACC/TPGS/3PC/PROTECT all 0. Byte 6: no ENCSERV/MULTIP.
    // Byte 7: CMDQUE 1 (SAM-5 task management: full command queuing).
    d[7] = 0x02;
    d[8..16].copy_from_slice(VENDOR);
    d[16..32].copy_from_slice(PRODUCT);
    d[32..36].copy_from_slice(&revision());
    for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
        let off = 58 + 2 * i;
        d[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }
    d
}

/// PRODUCT REVISION LEVEL: the crate version, cut or space-padded to 4.
fn revision() -> [u8; 4] {
    let mut r = [b' '; 4];
    for (dst, src) in r.iter_mut().zip(env!("CARGO_PKG_VERSION").bytes()) {
        *dst = src;
    }
    r
}

/// A VPD page: PERIPHERAL byte, PAGE CODE, 2-byte PAGE LENGTH, payload
/// (SPC-5 7.7, VPD page format).
fn vpd(peripheral: u8, page: u8, payload: Vec<u8>) -> Vec<u8> {
    let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    let mut d = Vec::with_capacity(4 + payload.len());
    d.extend_from_slice(&[peripheral, page]);
    d.extend_from_slice(&len.to_be_bytes());
    d.extend(payload);
    d
}

/// Supported VPD Pages page (SPC-5 7.7).
fn supported_pages(_: &LogicalUnit) -> Vec<u8> {
    VPD_PAGES.iter().map(|(code, _)| *code).collect()
}

/// Unit Serial Number page (SPC-5 7.7): LunConfig.serial (Target::new checks
/// it is at most 252 printable ASCII bytes).
fn unit_serial_number(lu: &LogicalUnit) -> Vec<u8> {
    lu.cfg.serial.as_bytes().to_vec()
}

/// Device Identification (SPC-5 7.7.6): an NAA IEEE Registered Extended
/// designator (type 3, binary) and a T10 vendor ID based designator (type 1,
/// ASCII: vendor + serial), both associated with the logical unit.
fn device_identification(lu: &LogicalUnit) -> Vec<u8> {
    let mut d = Vec::new();
    // Designation descriptor (SPC-5 7.7.6): PROTOCOL IDENTIFIER 0 /
    // CODE SET 1 (binary); PIV 0, ASSOCIATION 00b, DESIGNATOR TYPE 3.
    d.extend_from_slice(&[0x01, 0x03, 0x00, lu.naa.len() as u8]);
    d.extend_from_slice(&lu.naa);
    // T10 vendor ID based designator (SPC-5 7.7.6): CODE SET 2 (ASCII), TYPE 1.
    let mut t10 = VENDOR.to_vec();
    t10.extend(
        lu.cfg
            .serial
            .bytes()
            .take(usize::from(u8::MAX) - VENDOR.len()),
    );
    d.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
    d.extend(t10);
    d
}

/// Block Limits VPD page (SBC-4 6.6.4), page length 3Ch. The UNMAP and
/// COMPARE AND WRITE limits are reported only for LUNs that support the
/// command; WSNZ=1 (WRITE SAME with 0 blocks is rejected).
fn block_limits(lu: &LogicalUnit) -> Vec<u8> {
    let c = &lu.cfg;
    let mut d = vec![0u8; 0x3c];
    // (Offsets below are the SBC-4 byte numbers minus the 4-byte header.)
    // Byte 4: WSNZ 1.
    d[0] = 0x01;
    // Byte 5: MAXIMUM COMPARE AND WRITE LENGTH.
    if !c.readonly {
        d[1] = c.max_compare_write_blocks;
    }
    // Bytes 6-7: OPTIMAL TRANSFER LENGTH GRANULARITY 1.
    d[2..4].copy_from_slice(&1u16.to_be_bytes());
    // Bytes 8-11: MAXIMUM TRANSFER LENGTH (0 = no limit reported).
    d[4..8].copy_from_slice(&c.max_transfer_blocks.to_be_bytes());
    // Bytes 12-15: OPTIMAL TRANSFER LENGTH.
    d[8..12].copy_from_slice(&c.optimal_transfer_blocks.to_be_bytes());
    // Bytes 16-19: MAXIMUM PREFETCH LENGTH 0.
    if c.unmap {
        // Bytes 20-23: MAXIMUM UNMAP LBA COUNT; 24-27: MAXIMUM UNMAP BLOCK
        // DESCRIPTOR COUNT; 28-31: OPTIMAL UNMAP GRANULARITY 1; 32-35:
        // UGAVALID 0, UNMAP GRANULARITY ALIGNMENT 0.
        d[16..20].copy_from_slice(&c.max_unmap_blocks.to_be_bytes());
        d[20..24].copy_from_slice(&c.max_unmap_descriptors.to_be_bytes());
        d[24..28].copy_from_slice(&1u32.to_be_bytes());
    }
    // Bytes 36-43: MAXIMUM WRITE SAME LENGTH (0: not reported).
    d[32..40].copy_from_slice(&c.max_write_same_blocks.to_be_bytes());
    d
}

/// Block Device Characteristics VPD page (SBC-4 6.6), page length 3Ch: MEDIUM
/// ROTATION RATE 0001h (non-rotating) or 0000h (not reported); NOMINAL FORM
/// FACTOR 0 (not reported).
fn block_device_characteristics(lu: &LogicalUnit) -> Vec<u8> {
    let mut d = vec![0u8; 0x3c];
    let rate: u16 = if lu.cfg.rotational { 0 } else { 1 };
    d[0..2].copy_from_slice(&rate.to_be_bytes());
    d
}

/// Logical Block Provisioning VPD page (SBC-4 6.6.6), page length 4:
/// THRESHOLD EXPONENT 0; byte 5: LBPU 7, LBPWS 6, LBPWS10 5 (all = unmap),
/// LBPRZ bits 4-2 (001b = lbprz), ANC_SUP 1 = 0, DP 0 = 0; byte 6:
/// PROVISIONING TYPE 010b (thin) when unmap, else 000b.
fn logical_block_provisioning(lu: &LogicalUnit) -> Vec<u8> {
    let mut d = vec![0u8; 4];
    if lu.cfg.unmap {
        d[1] = 0x80 | 0x40 | 0x20;
        d[2] = 0x02;
    }
    if lu.cfg.lbprz {
        d[1] |= 0x04;
    }
    d
}
