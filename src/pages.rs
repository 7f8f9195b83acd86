//! Gives the executable's startup-only code pages back to the system once the runtime has
//! settled.
//!
//! Starting runs code all over a large binary once (config parsing, the store's engine and
//! schema, TLS set-up, pingora, the supervisor), and the kernel maps file pages around each
//! fault in 64 KiB windows: an idle runtime would keep tens of MiB of code resident that it
//! does not run again. [`page_out_executable`] writes the executable's dirty pages back (a
//! freshly built binary has them) and asks the kernel to reclaim the resident pages of its
//! clean, read-only mappings (`MADV_PAGEOUT`): the pages leave this process *and* the page
//! cache (when no other process maps them), so the memory is free for the system, not just
//! unmapped. Code that runs again is read back on its first use (one page
//! fault, from disk or whatever cache still holds it), and the steady state settles at the code
//! an idle runtime really runs.
//!
//! What it deliberately does not touch: writable or copied-on-write mappings (relocated data,
//! anything with anonymous pages), shared libraries, and any other file. The kernel only pages
//! out file pages of a file the process owns or may write (`can_do_file_pageout`), and kernels
//! before 5.4 do not know `MADV_PAGEOUT`: then nothing happens and the figures say so.

use std::time::Duration;

/// How long after start the runtime waits before paging the startup code out: long enough
/// for the services' first probes, the proxy's first refresh and the store's first engine
/// tasks, which run once more right after start.
pub const SETTLE: Duration = Duration::from_secs(15);

/// One mapping of `/proc/self/smaps` and the figures [`page_out_executable`] looks at.
#[derive(Debug, Default, PartialEq)]
struct Mapping {
    start: usize,
    end: usize,
    perms: String,
    path: String,
    rss_kib: u64,
    anonymous_kib: u64,
}

/// The mappings of an smaps text.
fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            let perms = fields.next().unwrap_or_default().to_owned();
            // offset, device, inode, then the path (which may hold spaces).
            let path = fields.skip(3).collect::<Vec<_>>().join(" ");
            out.push(Mapping {
                start,
                end,
                perms,
                path,
                ..Mapping::default()
            });
            continue;
        }
        let kib = fields.next().and_then(|v| v.parse::<u64>().ok());
        if let Some(m) = out.last_mut() {
            match first {
                "Rss:" => m.rss_kib = kib.unwrap_or(0),
                "Anonymous:" => m.anonymous_kib = kib.unwrap_or(0),
                _ => {}
            }
        }
    }
    out
}

/// True for a mapping of `exe` that holds only clean file pages: readable, not writable,
/// private, and without anonymous (copied-on-write) pages.
fn clean_file_mapping(m: &Mapping, exe: &str) -> bool {
    m.path == exe
        && m.perms.starts_with('r')
        && m.perms.get(1..2) == Some("-")
        && m.perms.ends_with('p')
        && m.anonymous_kib == 0
        && m.end > m.start
}

/// What [`page_out_executable`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageOut {
    /// Mappings the kernel was asked to page out.
    pub mappings: usize,
    /// Resident KiB of those mappings before.
    pub resident_before_kib: u64,
    /// Resident KiB of those mappings right after.
    pub resident_after_kib: u64,
}

/// Resident KiB of the executable's clean mappings now, and the mappings.
fn clean_mappings() -> std::io::Result<Vec<Mapping>> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let exe = exe.to_string_lossy().into_owned();
    let text = std::fs::read_to_string("/proc/self/smaps")?;
    Ok(parse_smaps(&text)
        .into_iter()
        .filter(|m| clean_file_mapping(m, &exe))
        .collect())
}

/// Asks the kernel to reclaim the resident pages of this executable's clean, read-only
/// mappings (`MADV_PAGEOUT`). Blocking (it reads `/proc/self/smaps` twice and the kernel
/// reclaims synchronously): call it from a blocking thread.
pub fn page_out_executable() -> std::io::Result<PageOut> {
    // A freshly built binary (`./x up` builds, then runs) has dirty pages in the page cache
    // for up to half a minute; the kernel only drops clean ones, so write them back first
    // (what the kernel's flusher would do shortly anyway).
    if let Ok(exe) = std::fs::File::open("/proc/self/exe") {
        let _ = exe.sync_data();
    }
    let mut out = PageOut::default();
    for m in clean_mappings()? {
        if m.rss_kib == 0 {
            continue;
        }
        // SAFETY: the range is one whole mapping of this process's executable, read-only,
        // private and without anonymous pages: reclaiming its pages drops clean copies of the
        // file that the next access reads back unchanged. No memory changes contents.
        let r = unsafe {
            libc::madvise(
                m.start as *mut libc::c_void,
                m.end - m.start,
                libc::MADV_PAGEOUT,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        out.mappings += 1;
        out.resident_before_kib += m.rss_kib;
    }
    out.resident_after_kib = clean_mappings()?.iter().map(|m| m.rss_kib).sum();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_smaps_mappings() {
        let text = "5594b1909000-5594b70b4000 r-xp 01234000 fd:00 1234 /usr/bin/kin fra\n\
                    Size:              89772 kB\n\
                    Rss:               47152 kB\n\
                    Private_Dirty:         0 kB\n\
                    Anonymous:             0 kB\n\
                    7f00-8000 rw-p 00000000 00:00 0 \n\
                    Rss:                   8 kB\n\
                    Anonymous:             8 kB\n";
        let maps = parse_smaps(text);
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[0].start, 0x5594b1909000);
        assert_eq!(maps[0].end, 0x5594b70b4000);
        assert_eq!(maps[0].perms, "r-xp");
        assert_eq!(maps[0].path, "/usr/bin/kin fra");
        assert_eq!((maps[0].rss_kib, maps[0].anonymous_kib), (47152, 0));
        assert!(clean_file_mapping(&maps[0], "/usr/bin/kin fra"));
        assert!(!clean_file_mapping(&maps[0], "/usr/bin/other"));
        assert_eq!(maps[1].path, "");
        assert_eq!(maps[1].anonymous_kib, 8);
        assert!(!clean_file_mapping(&maps[1], ""));
    }

    #[test]
    fn writable_or_copied_mappings_are_left_alone() {
        let m = |perms: &str, anonymous_kib| Mapping {
            start: 0x1000,
            end: 0x2000,
            perms: perms.into(),
            path: "/bin/k".into(),
            rss_kib: 4,
            anonymous_kib,
        };
        assert!(clean_file_mapping(&m("r--p", 0), "/bin/k"));
        assert!(clean_file_mapping(&m("r-xp", 0), "/bin/k"));
        assert!(!clean_file_mapping(&m("rw-p", 0), "/bin/k"));
        assert!(
            !clean_file_mapping(&m("r--p", 4), "/bin/k"),
            "relocated data"
        );
        assert!(!clean_file_mapping(&m("r-xs", 0), "/bin/k"), "shared");
    }

    /// Pages of the mappings `maps` that are in the page cache, whoever maps them
    /// (`mincore` on a file mapping reports the page cache).
    fn cached_pages(maps: &[Mapping]) -> usize {
        let page = 4096;
        let mut cached = 0;
        for m in maps {
            let mut vec = vec![0u8; (m.end - m.start).div_ceil(page)];
            // SAFETY: the range is a whole mapping of this process; `vec` has one byte per
            // page of it.
            let r = unsafe {
                libc::mincore(
                    m.start as *mut libc::c_void,
                    m.end - m.start,
                    vec.as_mut_ptr(),
                )
            };
            assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
            cached += vec.iter().filter(|b| **b & 1 == 1).count();
        }
        cached
    }

    /// Paging out this test binary's code takes it out of the resident set *and* out of the
    /// page cache (the memory is free, not just unmapped: `MADV_DONTNEED` would leave the
    /// pages cached), and the code still runs afterwards (read back on use). As root the
    /// kernel may page out any file; the test binary is ours anyway.
    #[test]
    fn the_executables_code_leaves_the_resident_set_and_still_runs() {
        let maps = clean_mappings().expect("smaps");
        let before: u64 = maps.iter().map(|m| m.rss_kib).sum();
        assert!(before > 0, "the test binary's code is resident");
        let cached_before = cached_pages(&maps);
        let done = page_out_executable().expect("madvise(MADV_PAGEOUT)");
        let cached_after = cached_pages(&maps);
        // The whole (just linked) binary is cached, most of it never mapped by this process.
        // Other tests of this binary run meanwhile and fault code back in (in runs of the whole
        // suite, 24–43 % of the resident pages stayed out), so the bar is what tells paging out
        // from unmapping: a tenth of the pages that were resident must have left the cache
        // (`MADV_DONTNEED` leaves every one cached: 0).
        let resident_pages = (before / 4) as usize;
        assert!(
            cached_before.saturating_sub(cached_after) >= resident_pages / 10,
            "pages of the executable in the page cache: {cached_before} → {cached_after}, \
             {resident_pages} were resident"
        );
        assert!(done.mappings > 0, "{done:?}");
        assert!(
            done.resident_after_kib < before * 3 / 4,
            "resident KiB {before} → {} ({done:?})",
            done.resident_after_kib
        );
        // Still runs: parsing and formatting go through code that was just paged out.
        let maps = parse_smaps("1000-2000 r-xp 0 0:0 0 /x\nRss: 4 kB\n");
        assert_eq!(format!("{:?}", maps[0].rss_kib), "4");
    }
}
