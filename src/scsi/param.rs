//! Bounds-safe, big-endian access to parameter lists (data-out). A field
//! beyond the end of the list means the list is shorter than its header or
//! the CDB claims: ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR (SPC-5
//! 4.2.5.5 / the 1Ah/00h rule of each command).

use super::cdb::field_byte;
use super::Sense;

#[derive(Clone, Copy, Debug)]
pub struct ParamList<'a> {
    bytes: &'a [u8],
}

impl<'a> ParamList<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        ParamList { bytes }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// `len` bytes at `off`.
    pub fn slice(&self, off: usize, len: usize) -> Result<&'a [u8], Sense> {
        let end = off
            .checked_add(len)
            .ok_or(Sense::param_list_length_error())?;
        self.bytes
            .get(off..end)
            .ok_or(Sense::param_list_length_error())
    }

    fn array<const N: usize>(&self, off: usize) -> Result<[u8; N], Sense> {
        <[u8; N]>::try_from(self.slice(off, N)?).map_err(|_| Sense::param_list_length_error())
    }

    pub fn u8(&self, off: usize) -> Result<u8, Sense> {
        self.array::<1>(off).map(|[b]| b)
    }

    pub fn be16(&self, off: usize) -> Result<u16, Sense> {
        self.array::<2>(off).map(u16::from_be_bytes)
    }

    pub fn be32(&self, off: usize) -> Result<u32, Sense> {
        self.array::<4>(off).map(u32::from_be_bytes)
    }

    pub fn be64(&self, off: usize) -> Result<u64, Sense> {
        self.array::<8>(off).map(u64::from_be_bytes)
    }
}

/// INVALID FIELD IN PARAMETER LIST at byte `off` (usize), bit `bit`.
pub fn bad_param(off: usize, bit: Option<u8>) -> Sense {
    Sense::invalid_field_in_param(field_byte(off), bit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_lists_are_length_errors() {
        let p = ParamList::new(&[1, 2, 3, 4]);
        assert_eq!(p.be16(2).unwrap(), 0x0304);
        assert_eq!(p.be32(0).unwrap(), 0x01020304);
        assert_eq!(p.be32(1).unwrap_err().asc, 0x1a);
        assert_eq!(p.u8(usize::MAX).unwrap_err().asc, 0x1a);
        assert_eq!(p.slice(usize::MAX, 2).unwrap_err().asc, 0x1a);
        assert_eq!(bad_param(9, Some(1)).to_fixed()[15..18], [0x89, 0, 9]);
    }
}
