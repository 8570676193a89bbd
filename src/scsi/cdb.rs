//! Bounds-safe, big-endian CDB field access (SPC-5 4.2: CDB fields are
//! big-endian; multi-byte fields start at their most significant byte).
//!
//! Every accessor returns `Err(INVALID FIELD IN CDB)` instead of panicking
//! when the CDB is shorter than the field, so handlers can use `?` and a
//! short CDB can never index out of range.

use super::Sense;

/// A CDB, cut to the length of its operation code by the dispatcher.
#[derive(Clone, Copy, Debug)]
pub struct Cdb<'a> {
    bytes: &'a [u8],
}

impl<'a> Cdb<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Cdb { bytes }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// `N` bytes starting at `off`.
    fn array<const N: usize>(&self, off: usize) -> Result<[u8; N], Sense> {
        let missing = || Sense::invalid_field_in_cdb(field_byte(off), None);
        let end = off.checked_add(N).ok_or_else(missing)?;
        let slice = self.bytes.get(off..end).ok_or_else(missing)?;
        <[u8; N]>::try_from(slice).map_err(|_| missing())
    }

    pub fn u8(&self, off: usize) -> Result<u8, Sense> {
        self.array::<1>(off).map(|[b]| b)
    }

    pub fn be16(&self, off: usize) -> Result<u16, Sense> {
        self.array::<2>(off).map(u16::from_be_bytes)
    }

    /// A 3-byte big-endian field.
    pub fn be24(&self, off: usize) -> Result<u32, Sense> {
        self.array::<3>(off)
            .map(|[a, b, c]| u32::from_be_bytes([0, a, b, c]))
    }

    pub fn be32(&self, off: usize) -> Result<u32, Sense> {
        self.array::<4>(off).map(u32::from_be_bytes)
    }

    pub fn be64(&self, off: usize) -> Result<u64, Sense> {
        self.array::<8>(off).map(u64::from_be_bytes)
    }

    /// Bit `bit` (0 = least significant) of byte `off`.
    pub fn bit(&self, off: usize, bit: u8) -> Result<bool, Sense> {
        Ok(self.u8(off)? & (1u8 << (bit & 7)) != 0)
    }
}

/// A byte index as a field pointer value (saturating: CDBs are short).
pub fn field_byte(off: usize) -> u16 {
    u16::try_from(off).unwrap_or(u16::MAX)
}

/// Cut emulated data-in to the CDB's ALLOCATION LENGTH (SPC-5 4.2.5.6): the
/// device server returns at most that many bytes; 0 returns none and is not
/// an error.
pub fn truncate(mut data: Vec<u8>, alloc_len: u32) -> Vec<u8> {
    let alloc = usize::try_from(alloc_len).unwrap_or(usize::MAX);
    data.truncate(alloc);
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_big_endian() {
        let c = Cdb::new(&[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09]);
        assert_eq!(c.u8(0).unwrap(), 1);
        assert_eq!(c.be16(1).unwrap(), 0x0203);
        assert_eq!(c.be24(1).unwrap(), 0x020304);
        assert_eq!(c.be32(0).unwrap(), 0x01020304);
        assert_eq!(c.be64(1).unwrap(), 0x0203040506070809);
        assert!(c.bit(0, 0).unwrap());
        assert!(!c.bit(0, 1).unwrap());
    }

    #[test]
    fn short_cdb_is_an_error_not_a_panic() {
        let c = Cdb::new(&[0x28, 0]);
        let e = c.be32(2).unwrap_err();
        assert_eq!((e.asc, e.ascq), (0x24, 0));
        assert!(c.u8(2).is_err());
        assert!(c.be64(usize::MAX - 3).is_err());
        assert!(Cdb::new(&[]).u8(0).is_err());
    }

    #[test]
    fn truncate_to_allocation_length() {
        assert_eq!(truncate(vec![1, 2, 3], 2), vec![1, 2]);
        assert_eq!(truncate(vec![1, 2, 3], 0), Vec::<u8>::new());
        assert_eq!(truncate(vec![1, 2, 3], u32::MAX), vec![1, 2, 3]);
    }
}
