//! The `--verify` block format. Every logical block written carries:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `VUSBENCH` |
//! | 8..16 | LBA (little-endian) |
//! | 16..24 | generation (how many times this I/O unit was written) |
//! | 24..32 | run id (random per bench run) |
//! | 32..len-8 | pseudo-random words derived from the four fields |
//! | len-8..len | checksum of bytes 0..len-8 |

use super::workload::mix64;

pub const MAGIC: [u8; 8] = *b"VUSBENCH";
/// Smallest block the format fits in.
pub const MIN_BLOCK: usize = 64;

/// What was wrong with a block read back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("no bench header (never written by this format, or overwritten)")]
    Magic,
    #[error("block carries LBA {found}, expected {expected} (misplaced data)")]
    Lba { expected: u64, found: u64 },
    #[error("block from another run (run id {found:#x}, expected {expected:#x})")]
    Run { expected: u64, found: u64 },
    #[error("block carries generation {found}, expected {expected} (stale or lost write)")]
    Generation { expected: u64, found: u64 },
    #[error("checksum mismatch (torn or corrupted block)")]
    Checksum,
}

fn word(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Checksum of `b` (a multiple of 8 bytes): a multiply-rotate hash over words.
pub fn checksum(b: &[u8]) -> u64 {
    let mut h: u64 = 0x243f_6a88_85a3_08d3 ^ b.len() as u64;
    for c in b.chunks_exact(8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
    mix64(h)
}

/// Fill `block` (a multiple of 8 bytes, at least [`MIN_BLOCK`]) for `lba`.
pub fn encode(block: &mut [u8], lba: u64, generation: u64, run: u64) {
    let n = block.len();
    block[0..8].copy_from_slice(&MAGIC);
    block[8..16].copy_from_slice(&lba.to_le_bytes());
    block[16..24].copy_from_slice(&generation.to_le_bytes());
    block[24..32].copy_from_slice(&run.to_le_bytes());
    let mut s = mix64(lba ^ generation.rotate_left(40) ^ run);
    for c in block[32..n - 8].chunks_exact_mut(8) {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        c.copy_from_slice(&mix64(s).to_le_bytes());
    }
    let sum = checksum(&block[..n - 8]);
    block[n - 8..].copy_from_slice(&sum.to_le_bytes());
}

/// Check a block read back from `lba`, expected at `generation` of `run`.
pub fn check(block: &[u8], lba: u64, generation: u64, run: u64) -> Result<(), Mismatch> {
    let n = block.len();
    if n < MIN_BLOCK || block[0..8] != MAGIC {
        return Err(Mismatch::Magic);
    }
    if checksum(&block[..n - 8]) != word(block, n - 8) {
        return Err(Mismatch::Checksum);
    }
    let found = word(block, 8);
    if found != lba {
        return Err(Mismatch::Lba {
            expected: lba,
            found,
        });
    }
    let found = word(block, 24);
    if found != run {
        return Err(Mismatch::Run {
            expected: run,
            found,
        });
    }
    let found = word(block, 16);
    if found != generation {
        return Err(Mismatch::Generation {
            expected: generation,
            found,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_mismatch() {
        for size in [512usize, 4096] {
            let mut b = vec![0u8; size];
            encode(&mut b, 77, 3, 0xabc);
            assert_eq!(check(&b, 77, 3, 0xabc), Ok(()));
            assert_eq!(
                check(&b, 78, 3, 0xabc),
                Err(Mismatch::Lba {
                    expected: 78,
                    found: 77
                })
            );
            assert_eq!(
                check(&b, 77, 4, 0xabc),
                Err(Mismatch::Generation {
                    expected: 4,
                    found: 3
                })
            );
            assert!(matches!(check(&b, 77, 3, 1), Err(Mismatch::Run { .. })));
            let mut torn = b.clone();
            torn[size / 2] ^= 1;
            assert_eq!(check(&torn, 77, 3, 0xabc), Err(Mismatch::Checksum));
            assert_eq!(check(&vec![0u8; size], 77, 3, 0xabc), Err(Mismatch::Magic));
        }
    }

    #[test]
    fn contents_differ_by_lba_and_generation() {
        let mut a = vec![0u8; 512];
        let mut b = vec![0u8; 512];
        encode(&mut a, 1, 1, 9);
        encode(&mut b, 1, 2, 9);
        assert_ne!(a[32..504], b[32..504]);
        encode(&mut b, 2, 1, 9);
        assert_ne!(a[32..504], b[32..504]);
    }
}
