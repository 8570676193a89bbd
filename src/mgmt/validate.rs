//! TEMPORARY stub; replaced by the cfg branch's validators at merge.
pub const DEFAULT_NUM_QUEUES: u16 = 4;
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
pub fn controller_name(n: &str) -> Result<(), String> {
    if n.is_empty()
        || n.len() > 64
        || !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        || n.starts_with(['.', '-'])
    {
        return Err(format!("invalid controller name `{n}`: 1 to 64 characters of A-Z a-z 0-9 . _ -, not starting with . or -"));
    }
    Ok(())
}
pub fn num_queues(n: u16) -> Result<(), String> {
    if (1..=64).contains(&n) {
        Ok(())
    } else {
        Err(format!("{n} is out of range 1..=64"))
    }
}
pub fn queue_size(n: u16) -> Result<(), String> {
    if n.is_power_of_two() && n <= 1024 {
        Ok(())
    } else {
        Err(format!("{n} is not a power of two from 1 to 1024"))
    }
}
pub fn lun(n: u16) -> Result<(), String> {
    if n <= 16383 {
        Ok(())
    } else {
        Err(format!("{n} is out of range 0..=16383"))
    }
}
pub fn block_size(n: u32) -> Result<(), String> {
    if n == 512 || n == 4096 {
        Ok(())
    } else {
        Err(format!("{n} is not 512 or 4096"))
    }
}
pub fn serial(s: &str) -> Result<(), String> {
    if s.len() <= 252 && s.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        Ok(())
    } else {
        Err("not at most 252 printable ASCII characters".into())
    }
}
