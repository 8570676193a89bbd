//! Workload generation: a fast PRNG and the choice of the next I/O.

use clap::ValueEnum;
use serde::Serialize;

/// splitmix64: a tiny, fast, well-mixed 64-bit generator (no dependency).
#[derive(Clone, Debug)]
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Self {
        Prng(seed)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift (no division).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// The splitmix64 finaliser.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The I/O pattern (fio's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rw {
    Randread,
    Randwrite,
    Randrw,
    Read,
    Write,
}

impl Rw {
    pub fn is_random(self) -> bool {
        matches!(self, Rw::Randread | Rw::Randwrite | Rw::Randrw)
    }
    pub fn writes(self) -> bool {
        !matches!(self, Rw::Randread | Rw::Read)
    }
}

/// Chooses the I/Os of one queue inside its own part of the disk, in units
/// of one I/O (`bs` bytes, aligned to `bs`).
#[derive(Clone, Debug)]
pub struct OpGen {
    rng: Prng,
    rw: Rw,
    read_pct: u8,
    /// First unit of this queue's part and number of units in it.
    first: u64,
    units: u64,
    /// Next unit of a sequential stream (relative to `first`).
    cursor: u64,
}

/// One chosen I/O: its unit (absolute, in I/O-size units) and direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    pub unit: u64,
    pub write: bool,
}

impl OpGen {
    /// Queue `queue` of `queues` gets units `[queue*total/queues, (queue+1)*total/queues)`.
    pub fn new(rw: Rw, read_pct: u8, total_units: u64, queue: u64, queues: u64, seed: u64) -> Self {
        let first = queue * total_units / queues;
        let end = (queue + 1) * total_units / queues;
        OpGen {
            rng: Prng::new(seed ^ mix64(queue + 1)),
            rw,
            read_pct: read_pct.min(100),
            first,
            units: end - first,
            cursor: 0,
        }
    }

    /// Units owned by this generator: `(first, count)`.
    pub fn range(&self) -> (u64, u64) {
        (self.first, self.units)
    }

    /// The next I/O whose unit is not `busy` (an I/O in flight there).
    /// None when every candidate tried is busy (more in flight than units).
    pub fn next(&mut self, busy: impl Fn(u64) -> bool) -> Option<Op> {
        if self.units == 0 {
            return None;
        }
        let write = match self.rw {
            Rw::Randread | Rw::Read => false,
            Rw::Randwrite | Rw::Write => true,
            Rw::Randrw => self.rng.below(100) >= u64::from(self.read_pct),
        };
        let tries = if self.rw.is_random() {
            64
        } else {
            self.units.min(1 << 16)
        };
        for _ in 0..tries {
            let rel = if self.rw.is_random() {
                self.rng.below(self.units)
            } else {
                let c = self.cursor;
                self.cursor = (self.cursor + 1) % self.units;
                c
            };
            let unit = self.first + rel;
            if !busy(unit) {
                return Some(Op { unit, write });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prng_is_deterministic_and_spread() {
        let mut a = Prng::new(7);
        let mut b = Prng::new(7);
        let mut hist = [0u32; 10];
        for _ in 0..100_000 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            hist[x as usize] += 1;
        }
        for h in hist {
            assert!((9_000..11_000).contains(&h), "{hist:?}");
        }
        assert_ne!(Prng::new(1).next_u64(), Prng::new(2).next_u64());
    }

    #[test]
    fn partitions_cover_the_disk() {
        let total = 1003;
        let mut next = 0;
        for q in 0..3 {
            let g = OpGen::new(Rw::Randread, 0, total, q, 3, 1);
            let (first, n) = g.range();
            assert_eq!(first, next);
            next = first + n;
        }
        assert_eq!(next, total);
    }

    #[test]
    fn random_stays_in_range_and_mixes() {
        let mut g = OpGen::new(Rw::Randrw, 70, 1000, 1, 2, 3);
        let mut writes = 0;
        for _ in 0..10_000 {
            let op = g.next(|_| false).unwrap();
            assert!((500..1000).contains(&op.unit));
            writes += u32::from(op.write);
        }
        assert!((2_500..3_500).contains(&writes), "{writes}");
    }

    #[test]
    fn sequential_wraps_and_skips_busy() {
        let mut g = OpGen::new(Rw::Write, 0, 4, 0, 1, 0);
        let units: Vec<u64> = (0..6).map(|_| g.next(|_| false).unwrap().unit).collect();
        assert_eq!(units, [0, 1, 2, 3, 0, 1]);
        assert_eq!(g.next(|u| u == 2).unwrap().unit, 3);
        assert!(g.next(|_| true).is_none());
        assert!(g.next(|_| false).unwrap().write);
    }
}
