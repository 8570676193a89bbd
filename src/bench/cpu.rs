//! CPU and memory accounting from /proc.

use std::time::Duration;

/// utime + stime of a process from the text of `/proc/PID/stat`, in clock
/// ticks. The command name (field 2) may contain spaces and parentheses:
/// fields are counted after its last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace();
    // After ')' come field 3 (state) .. ; utime is field 14, stime 15.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `Private_Dirty` of `/proc/PID/smaps_rollup` in KiB.
pub fn parse_private_dirty_kib(smaps: &str) -> Option<u64> {
    smaps.lines().find_map(|l| {
        let v = l.strip_prefix("Private_Dirty:")?;
        v.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// CPU time (user + system, all threads) of process `pid`.
pub fn process_cpu(pid: u32) -> std::io::Result<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_ticks(&s).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("cannot parse /proc/{pid}/stat"),
        )
    })?;
    let hz = ticks_per_second();
    Ok(Duration::from_secs(ticks / hz) + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz))
}

/// Private_Dirty of process `pid` in KiB.
pub fn private_dirty_kib(pid: u32) -> std::io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    parse_private_dirty_kib(&s).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no Private_Dirty in /proc/{pid}/smaps_rollup"),
        )
    })
}

/// CPU time (user + system, all threads) of this process, at microsecond
/// resolution.
pub fn own_cpu() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` is a valid, writable rusage; RUSAGE_SELF is always valid.
    let r = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if r != 0 {
        return Duration::ZERO;
    }
    // SAFETY: getrusage succeeded and filled the struct (it was zeroed too).
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_name() {
        let s = "1234 (vhost (user) scsi) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 5 0 100 0 0";
        assert_eq!(parse_stat_ticks(s), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn smaps_rollup() {
        let s = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:  10 kB\nPrivate_Dirty:     2048 kB\nSwap: 0 kB\n";
        assert_eq!(parse_private_dirty_kib(s), Some(2048));
        assert_eq!(parse_private_dirty_kib("Rss: 1 kB"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(process_cpu(pid).is_ok());
        assert!(private_dirty_kib(pid).unwrap() > 0);
        let a = own_cpu();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        assert!(own_cpu() >= a);
    }
}
