//! Newtypes for the units the target and the block layer exchange, so that a
//! count of blocks is never added to a count of bytes by mistake.

use std::fmt;

/// Logical block size in bytes (512 or 4096).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockSize(u32);

impl BlockSize {
    pub const B512: BlockSize = BlockSize(512);
    pub const B4096: BlockSize = BlockSize(4096);

    /// Accepts only the sizes we support: 512 and 4096.
    pub fn new(bytes: u32) -> Option<Self> {
        match bytes {
            512 | 4096 => Some(BlockSize(bytes)),
            _ => None,
        }
    }

    pub fn bytes(self) -> u32 {
        self.0
    }

    /// log2 of the size, for shifts.
    pub fn shift(self) -> u32 {
        self.0.trailing_zeros()
    }
}

impl fmt::Display for BlockSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A logical block address (a block index on a LUN).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lba(pub u64);

/// A number of logical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BlockCount(pub u64);

/// A byte offset into a backing device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteOffset(pub u64);

/// A number of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteCount(pub u64);

impl Lba {
    /// `self + count`, or `None` on overflow.
    pub fn checked_add(self, count: BlockCount) -> Option<Lba> {
        self.0.checked_add(count.0).map(Lba)
    }

    /// Byte offset of this block, or `None` on overflow.
    pub fn to_bytes(self, bs: BlockSize) -> Option<ByteOffset> {
        self.0.checked_mul(u64::from(bs.bytes())).map(ByteOffset)
    }
}

impl BlockCount {
    /// Length in bytes, or `None` on overflow.
    pub fn to_bytes(self, bs: BlockSize) -> Option<ByteCount> {
        self.0.checked_mul(u64::from(bs.bytes())).map(ByteCount)
    }
}

impl ByteCount {
    /// Whole blocks in this many bytes (rounded down).
    pub fn to_blocks(self, bs: BlockSize) -> BlockCount {
        BlockCount(self.0 >> bs.shift())
    }

    /// True when this is a whole number of blocks.
    pub fn is_multiple_of(self, bs: BlockSize) -> bool {
        self.0 % u64::from(bs.bytes()) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_size_accepts_only_512_and_4096() {
        assert_eq!(BlockSize::new(512), Some(BlockSize::B512));
        assert_eq!(BlockSize::new(4096), Some(BlockSize::B4096));
        assert_eq!(BlockSize::new(1024), None);
        assert_eq!(BlockSize::B4096.shift(), 12);
    }

    #[test]
    fn conversions_check_overflow() {
        assert_eq!(Lba(3).to_bytes(BlockSize::B512), Some(ByteOffset(1536)));
        assert_eq!(Lba(u64::MAX).to_bytes(BlockSize::B512), None);
        assert_eq!(Lba(u64::MAX).checked_add(BlockCount(1)), None);
        assert_eq!(ByteCount(8192).to_blocks(BlockSize::B4096), BlockCount(2));
        assert!(!ByteCount(4097).is_multiple_of(BlockSize::B4096));
    }
}
