//! The one source of random bytes: the kernel's CSPRNG through `getrandom(2)`. Tokens,
//! passwords, instance ids and restart jitter all draw from it.

use std::io;

/// Fills `buf` with random bytes from the OS (blocks only until the kernel's pool is
/// initialised, early at boot).
pub fn fill(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let tail = &mut buf[filled..];
        // SAFETY: the pointer and length describe `tail`, a writable slice we own.
        let got = unsafe { libc::getrandom(tail.as_mut_ptr().cast(), tail.len(), 0) };
        if got < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        filled += got as usize;
    }
    Ok(())
}

/// `n` random bytes as lowercase hex (`2 * n` characters).
pub fn hex(n: usize) -> io::Result<String> {
    let mut bytes = vec![0u8; n];
    fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A random `u64`.
pub fn u64() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    fill(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// A number in `[0, 1)` for jitter; 0.5 (no jitter either way) should the OS refuse.
pub fn unit_f64() -> f64 {
    // The top 53 bits give every double in [0, 1) with 2^-53 spacing.
    u64().map_or(0.5, |v| (v >> 11) as f64 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_differ_and_cover_the_buffer() -> io::Result<()> {
        let (mut a, mut b) = ([0u8; 64], [0u8; 64]);
        fill(&mut a)?;
        fill(&mut b)?;
        assert_ne!(a, b);
        // 64 zero bytes from a working RNG has probability 2^-512.
        assert!(a.iter().any(|x| *x != 0));
        let h = hex(16)?;
        assert_eq!(h.len(), 32);
        assert!(
            h.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(h, hex(16)?);
        let mut big = vec![0u8; 1 << 20];
        fill(&mut big)?;
        assert!(big[big.len() - 64..].iter().any(|x| *x != 0));
        for _ in 0..1000 {
            let f = unit_f64();
            assert!((0.0..1.0).contains(&f), "{f}");
        }
        Ok(())
    }
}
