//! Send-time stamps in stream chunks (see `upstream`): `@@` and 20 digits,
//! nanoseconds of wall-clock time, which every process on the machine reads
//! from the same clock.

use std::time::{SystemTime, UNIX_EPOCH};

pub const MARK: &str = "@@";
pub const DIGITS: usize = 20;

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Writes the current time into the first zeroed stamp field of `chunk`.
pub fn write_now(chunk: &mut [u8]) {
    let mut field = [b'0'; 2 + DIGITS];
    field[..2].copy_from_slice(MARK.as_bytes());
    let Some(at) = memchr::memmem::find(chunk, &field) else {
        return;
    };
    let digits = format!("{:0width$}", now_ns(), width = DIGITS);
    chunk[at + 2..at + 2 + DIGITS].copy_from_slice(digits.as_bytes());
}

/// Every stamp in `data`, in order.
pub fn read_all(data: &[u8], out: &mut Vec<u64>) {
    for at in memchr::memmem::find_iter(data, MARK.as_bytes()) {
        let Some(digits) = data.get(at + 2..at + 2 + DIGITS) else {
            continue;
        };
        if let Some(v) = std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse().ok())
        {
            out.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_written_is_read_back() {
        let mut chunk = format!("x tok1 {MARK}{} y", "0".repeat(DIGITS)).into_bytes();
        let before = now_ns();
        write_now(&mut chunk);
        let mut got = Vec::new();
        read_all(&chunk, &mut got);
        assert_eq!(got.len(), 1);
        assert!(got[0] >= before && got[0] <= now_ns());
        // Two in one read; a cut one is skipped.
        let mut two = chunk.clone();
        two.extend_from_slice(&chunk);
        two.extend_from_slice(b"@@123");
        got.clear();
        read_all(&two, &mut got);
        assert_eq!(got.len(), 2);
    }
}
