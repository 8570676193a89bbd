//! SCSI CDB builders (SBC-4 / SPC-5 layouts, big-endian fields).

const FUA: u8 = 0x08;

fn rw10(op: u8, lba: u32, blocks: u16, fua: bool) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[1] = if fua { FUA } else { 0 };
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn rw16(op: u8, lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[1] = if fua { FUA } else { 0 };
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// READ(10).
pub fn read10(lba: u32, blocks: u16, fua: bool) -> [u8; 10] {
    rw10(0x28, lba, blocks, fua)
}

/// WRITE(10).
pub fn write10(lba: u32, blocks: u16, fua: bool) -> [u8; 10] {
    rw10(0x2a, lba, blocks, fua)
}

/// READ(16).
pub fn read16(lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
    rw16(0x88, lba, blocks, fua)
}

/// WRITE(16).
pub fn write16(lba: u64, blocks: u32, fua: bool) -> [u8; 16] {
    rw16(0x8a, lba, blocks, fua)
}

/// SYNCHRONIZE CACHE(10) of `blocks` blocks from `lba` (0, 0 = everything).
pub fn sync_cache10(lba: u32, blocks: u16) -> [u8; 10] {
    rw10(0x35, lba, blocks, false)
}

/// SYNCHRONIZE CACHE(16).
pub fn sync_cache16(lba: u64, blocks: u32) -> [u8; 16] {
    rw16(0x91, lba, blocks, false)
}

/// TEST UNIT READY.
pub fn test_unit_ready() -> [u8; 6] {
    [0; 6]
}

/// REQUEST SENSE.
pub fn request_sense(alloc: u8) -> [u8; 6] {
    [0x03, 0, 0, 0, alloc, 0]
}

/// INQUIRY: standard data (`evpd` false, `page` 0) or a VPD page.
pub fn inquiry(evpd: bool, page: u8, alloc: u16) -> [u8; 6] {
    let a = alloc.to_be_bytes();
    [0x12, u8::from(evpd), page, a[0], a[1], 0]
}

/// READ CAPACITY(10).
pub fn read_capacity10() -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x25;
    c
}

/// READ CAPACITY(16) (SERVICE ACTION IN(16), service action 0x10).
pub fn read_capacity16(alloc: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x10;
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// REPORT LUNS with SELECT REPORT `select`.
pub fn report_luns(select: u8, alloc: u32) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0] = 0xa0;
    c[2] = select;
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// MODE SENSE(6): `pc` page control (0 current .. 3 saved), page/subpage,
/// `dbd` disables block descriptors.
pub fn mode_sense6(dbd: bool, pc: u8, page: u8, subpage: u8, alloc: u8) -> [u8; 6] {
    [
        0x1a,
        if dbd { 0x08 } else { 0 },
        ((pc & 3) << 6) | (page & 0x3f),
        subpage,
        alloc,
        0,
    ]
}

/// MODE SENSE(10).
pub fn mode_sense10(dbd: bool, pc: u8, page: u8, subpage: u8, alloc: u16) -> [u8; 10] {
    let a = alloc.to_be_bytes();
    [
        0x5a,
        if dbd { 0x08 } else { 0 },
        ((pc & 3) << 6) | (page & 0x3f),
        subpage,
        0,
        0,
        0,
        a[0],
        a[1],
        0,
    ]
}

/// START STOP UNIT.
pub fn start_stop_unit(start: bool, load_eject: bool) -> [u8; 6] {
    [
        0x1b,
        0,
        0,
        0,
        u8::from(start) | (u8::from(load_eject) << 1),
        0,
    ]
}

/// UNMAP with a parameter list of `param_len` bytes (see [`unmap_params`]).
pub fn unmap(param_len: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x42;
    c[7..9].copy_from_slice(&param_len.to_be_bytes());
    c
}

/// UNMAP parameter list for (lba, blocks) extents.
pub fn unmap_params(extents: &[(u64, u32)]) -> Vec<u8> {
    let desc_len = 16 * extents.len();
    let mut p = Vec::with_capacity(8 + desc_len);
    p.extend_from_slice(&((6 + desc_len) as u16).to_be_bytes());
    p.extend_from_slice(&(desc_len as u16).to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    for &(lba, n) in extents {
        p.extend_from_slice(&lba.to_be_bytes());
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rw_layouts() {
        assert_eq!(
            read10(0x0102_0304, 0x0506, false),
            [0x28, 0, 1, 2, 3, 4, 0, 5, 6, 0]
        );
        assert_eq!(write10(1, 8, true), [0x2a, 8, 0, 0, 0, 1, 0, 0, 8, 0]);
        assert_eq!(
            read16(0x0102_0304_0506_0708, 0x090a_0b0c, false),
            [0x88, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 0]
        );
        assert_eq!(write16(2, 1, true)[..2], [0x8a, 8]);
        assert_eq!(write16(2, 1, true)[9], 2);
        assert_eq!(write16(2, 1, true)[13], 1);
        assert_eq!(sync_cache10(0, 0), [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(sync_cache16(1, 2)[0], 0x91);
    }

    #[test]
    fn info_layouts() {
        assert_eq!(test_unit_ready(), [0; 6]);
        assert_eq!(inquiry(false, 0, 96), [0x12, 0, 0, 0, 96, 0]);
        assert_eq!(inquiry(true, 0x83, 0x1234), [0x12, 1, 0x83, 0x12, 0x34, 0]);
        assert_eq!(read_capacity10(), [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            read_capacity16(32),
            [0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]
        );
        assert_eq!(
            report_luns(2, 0x100),
            [0xa0, 0, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0]
        );
        assert_eq!(
            mode_sense6(true, 0, 0x3f, 0, 255),
            [0x1a, 8, 0x3f, 0, 255, 0]
        );
        assert_eq!(
            mode_sense6(false, 1, 0x08, 0, 32),
            [0x1a, 0, 0x48, 0, 32, 0]
        );
        assert_eq!(mode_sense10(true, 0, 8, 0, 0x100)[..3], [0x5a, 8, 8]);
        assert_eq!(mode_sense10(true, 0, 8, 0, 0x100)[7..9], [1, 0]);
        assert_eq!(request_sense(18), [3, 0, 0, 0, 18, 0]);
        assert_eq!(start_stop_unit(true, false), [0x1b, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn unmap_layout() {
        assert_eq!(unmap(24), [0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]);
        let p = unmap_params(&[(0x10, 8)]);
        assert_eq!(p.len(), 24);
        assert_eq!(&p[..8], &[0, 22, 0, 16, 0, 0, 0, 0]);
        assert_eq!(&p[8..16], &[0, 0, 0, 0, 0, 0, 0, 0x10]);
        assert_eq!(&p[16..20], &[0, 0, 0, 8]);
    }
}
