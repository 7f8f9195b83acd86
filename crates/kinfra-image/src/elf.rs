//! Just enough ELF reading to tell whether a binary can run alone in an empty image: it must
//! have no program interpreter (`PT_INTERP`: the dynamic loader a dynamically linked binary
//! names), and its machine gives the image's architecture.

/// What the ELF headers of a binary say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfFacts {
    /// The program interpreter (`/lib64/ld-linux-x86-64.so.2`) of a dynamically linked
    /// binary; `None` for a static one.
    pub interpreter: Option<String>,
    /// The OCI architecture name (`amd64`, `arm64`, ...).
    pub architecture: String,
}

const PT_INTERP: u32 = 3;

/// Reads the ELF facts of `bytes`; the error says why it is not a 64-bit little-endian ELF
/// executable this reader understands.
pub fn read(bytes: &[u8]) -> Result<ElfFacts, String> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF executable".into());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF executable".into());
    }
    let u16_at = |at: usize| -> Result<u16, String> {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| "truncated ELF header".to_owned())
    };
    let u32_at = |at: usize| -> Result<u32, String> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| "truncated ELF header".to_owned())
    };
    let u64_at = |at: usize| -> Result<u64, String> {
        let b = bytes
            .get(at..at + 8)
            .ok_or_else(|| "truncated ELF header".to_owned())?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    };
    let architecture = match u16_at(18)? {
        62 => "amd64",
        183 => "arm64",
        243 => "riscv64",
        21 => "ppc64le",
        22 => "s390x",
        other => return Err(format!("unknown ELF machine {other}")),
    }
    .to_owned();
    let phoff = usize::try_from(u64_at(32)?).map_err(|_| "bad program header offset")?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    let mut interpreter = None;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        if u32_at(at)? != PT_INTERP {
            continue;
        }
        let offset = usize::try_from(u64_at(at + 8)?).map_err(|_| "bad PT_INTERP offset")?;
        let size = usize::try_from(u64_at(at + 32)?).map_err(|_| "bad PT_INTERP size")?;
        let raw = bytes
            .get(offset..offset.saturating_add(size))
            .ok_or("truncated PT_INTERP")?;
        let text = String::from_utf8_lossy(raw);
        interpreter = Some(text.trim_end_matches('\0').to_owned());
    }
    Ok(ElfFacts {
        interpreter,
        architecture,
    })
}

/// Checks that `bytes` is a static executable; the error is the reason for the user.
pub fn require_static(bytes: &[u8]) -> Result<ElfFacts, String> {
    let facts = read(bytes)?;
    if let Some(interp) = &facts.interpreter {
        return Err(format!(
            "dynamically linked (program interpreter {interp}); an image without a libc needs \
             a static binary: build kinfra's with `./x dist` \
             (dist/kinfra-x86_64-unknown-linux-musl)"
        ));
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary itself is dynamically linked (glibc): its interpreter is found.
    #[test]
    fn a_dynamic_binary_names_its_interpreter() {
        let exe = std::env::current_exe().expect("current exe");
        let bytes = std::fs::read(&exe).expect("read exe");
        let facts = read(&bytes).expect("elf");
        let interp = facts.interpreter.expect("an interpreter");
        assert!(interp.contains("ld-"), "{interp}");
        let error = require_static(&bytes).expect_err("dynamic");
        assert!(error.contains("dynamically linked"), "{error}");
    }

    /// Debian's busybox-static has no interpreter.
    #[test]
    fn a_static_binary_has_none() {
        let path = std::path::Path::new("/bin/busybox");
        let bytes = std::fs::read(path).expect("/bin/busybox (Debian package busybox-static)");
        let facts = require_static(&bytes).expect("busybox-static is static");
        assert_eq!(facts.interpreter, None);
        assert_eq!(facts.architecture, "amd64");
    }

    #[test]
    fn not_elf_is_refused() {
        assert!(read(b"#!/bin/sh\necho hi\n").is_err());
        assert!(read(&[0x7f, b'E', b'L', b'F']).is_err());
    }
}
