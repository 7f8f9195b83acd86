//! Small value types of the config with their own parsing: durations, byte sizes, ports,
//! commands, signals, status ranges.

use nix::sys::signal::Signal;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration written as `"300ms"`, `"2s"`, `"1m30s"`, `"1h"` or `"0s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

impl Dur {
    /// From milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    /// From seconds.
    pub const fn from_secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }
}

impl From<Dur> for Duration {
    fn from(d: Dur) -> Duration {
        d.0
    }
}

/// Durations longer than this are refused (about 31 years: longer ones are typos, and adding
/// them to an `Instant` could overflow).
const MAX_DURATION_SECS: u64 = 1_000_000_000;

/// Parses `"300ms"`, `"2s"`, `"1m30s"`, `"1.5s"`, `"2h"`, `"1d"` with `humantime`: units are
/// ms, s, m, h, d (and humantime's longer spellings, `us`, `w`). A bare `0` is accepted as zero.
/// Errors name the text and say what is wrong in config terms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let parsed = humantime::parse_duration(s).map_err(|e| {
        use humantime::DurationError as E;
        let why = match e {
            E::Empty => return "empty duration".to_owned(),
            E::NumberExpected(at) | E::InvalidCharacter(at) => {
                format!("expected a number at `{}`", s.get(at..).unwrap_or(s))
            }
            E::UnknownUnit { unit, .. } if unit.is_empty() => {
                "missing unit (use ms, s, m, h or d, as in \"2s\")".to_owned()
            }
            E::UnknownUnit { unit, .. } => {
                format!("unknown unit `{unit}` (use ms, s, m, h or d)")
            }
            E::NumberOverflow => "too large (or finer than a nanosecond)".to_owned(),
        };
        format!("invalid duration `{text}`: {why}")
    })?;
    if parsed.as_secs() > MAX_DURATION_SECS {
        return Err(format!("invalid duration `{text}`: too large"));
    }
    Ok(parsed)
}

/// Formats a duration the way it is written in config (`300ms`, `2s`, `1m30s`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Dur)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"300ms\", \"2s\" or \"1m30s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                if v == 0 {
                    Ok(Dur(Duration::ZERO))
                } else {
                    Err(E::custom(format!(
                        "invalid duration `{v}`: missing unit (write \"{v}s\" or \"{v}ms\")"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                if v < 0 {
                    return Err(E::custom(format!("invalid duration `{v}`: negative")));
                }
                self.visit_u64(v.unsigned_abs())
            }
        }
        d.deserialize_any(V)
    }
}

/// A size in bytes written as `"10MiB"`, `"512KiB"`, `"1GB"` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Parses `"10MiB"`, `"10MB"`, `"10M"`, `"512k"`, `"100"` (bytes).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let number: f64 = num
        .parse()
        .map_err(|_| format!("invalid size `{text}`: expected a number such as \"10MiB\""))?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "invalid size `{text}`: unknown unit `{other}` (use B, KiB, MiB, GiB, kB, MB, GB)"
            ));
        }
    };
    let bytes = number * factor;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("invalid size `{text}`: out of range"));
    }
    Ok(bytes as u64)
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"10MiB\" or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_byte_size(v).map(ByteSize).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size `{v}`: negative")))
            }
        }
        d.deserialize_any(V)
    }
}

/// The port of a service: `"auto"` (allocated once, kept across runs) or a fixed number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PortSpec {
    /// Pick a free port at first start and persist it.
    Auto,
    /// This port.
    Fixed(u16),
}

impl Serialize for PortSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => s.serialize_str("auto"),
            Self::Fixed(p) => s.serialize_u16(*p),
        }
    }
}

fn port_from_u64<E: de::Error>(v: u64) -> Result<PortSpec, E> {
    match u16::try_from(v) {
        Ok(p) if p > 0 => Ok(PortSpec::Fixed(p)),
        _ => Err(E::custom(format!(
            "invalid port `{v}`: expected 1-65535 or \"auto\""
        ))),
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (1-65535) or \"auto\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortSpec, E> {
                if v == "auto" {
                    return Ok(PortSpec::Auto);
                }
                match v.parse::<u64>() {
                    Ok(n) => port_from_u64(n),
                    Err(_) => Err(E::custom(format!(
                        "invalid port `{v}`: expected 1-65535 or \"auto\""
                    ))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortSpec, E> {
                port_from_u64(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortSpec, E> {
                if v < 0 {
                    return Err(E::custom(format!(
                        "invalid port `{v}`: expected 1-65535 or \"auto\""
                    )));
                }
                port_from_u64(v.unsigned_abs())
            }
        }
        d.deserialize_any(V)
    }
}

/// A command: a shell string run with `sh -c`, or an argv list run directly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CommandSpec {
    /// Run through `/bin/sh -c`.
    Shell(String),
    /// Run directly: program, then arguments.
    Argv(Vec<String>),
}

impl CommandSpec {
    /// A short form for people and messages.
    pub fn display(&self) -> String {
        match self {
            Self::Shell(s) => s.clone(),
            Self::Argv(v) => v.join(" "),
        }
    }

    /// True when there is nothing to run.
    pub fn is_empty(&self) -> bool {
        match self {
            Self::Shell(s) => s.trim().is_empty(),
            Self::Argv(v) => v.first().is_none_or(|p| p.trim().is_empty()),
        }
    }
}

impl From<&str> for CommandSpec {
    fn from(s: &str) -> Self {
        Self::Shell(s.to_owned())
    }
}

impl Serialize for CommandSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Shell(c) => s.serialize_str(c),
            Self::Argv(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for CommandSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CommandSpec;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a shell command string or a list of arguments")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CommandSpec, E> {
                Ok(CommandSpec::Shell(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CommandSpec, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    argv.push(arg);
                }
                Ok(CommandSpec::Argv(argv))
            }
        }
        d.deserialize_any(V)
    }
}

/// One string or a list of strings (`upstream = "http://a"` or `upstream = ["http://a", ...]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct OneOrMany(pub Vec<String>);

impl Serialize for OneOrMany {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut all = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    all.push(item);
                }
                Ok(OneOrMany(all))
            }
        }
        d.deserialize_any(V)
    }
}

/// A stop signal by name: `SIGTERM`, `TERM`, `SIGINT`, ... The number is the platform's
/// (names and numbers come from `nix::sys::signal::Signal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignalName(pub i32);

impl SignalName {
    /// SIGTERM.
    pub const TERM: SignalName = SignalName(Signal::SIGTERM as i32);

    /// The signal, when the number is one this platform has.
    pub fn signal(&self) -> Option<Signal> {
        Signal::try_from(self.0).ok()
    }

    /// The name without `SIG`, e.g. `TERM` (`TERM` for a number the platform does not know,
    /// as that is what a stop then sends).
    pub fn name(&self) -> &'static str {
        let full = self.signal().map_or("SIGTERM", Signal::as_str);
        full.strip_prefix("SIG").unwrap_or(full)
    }
}

impl From<Signal> for SignalName {
    fn from(signal: Signal) -> Self {
        SignalName(signal as i32)
    }
}

impl Default for SignalName {
    fn default() -> Self {
        Self::TERM
    }
}

impl std::str::FromStr for SignalName {
    type Err = String;
    /// `SIGTERM`, `TERM`, `sigterm`, `term`.
    fn from_str(s: &str) -> Result<Self, String> {
        let upper = s.trim().to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        full.parse::<Signal>().map(SignalName::from).map_err(|_| {
            format!(
                "unknown signal `{s}` (use a signal name such as SIGTERM, SIGINT, SIGQUIT, \
                 SIGHUP, SIGUSR1, SIGUSR2 or SIGKILL)"
            )
        })
    }
}

impl Serialize for SignalName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("SIG{}", self.name()))
    }
}

impl<'de> Deserialize<'de> for SignalName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// An inclusive range of HTTP status codes, written `"200-299"` or `204`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusRange {
    /// Lowest accepted status.
    pub min: u16,
    /// Highest accepted status.
    pub max: u16,
}

impl Default for StatusRange {
    fn default() -> Self {
        Self { min: 200, max: 399 }
    }
}

impl StatusRange {
    /// True when `status` is in the range.
    pub fn contains(&self, status: u16) -> bool {
        (self.min..=self.max).contains(&status)
    }
}

fn parse_status_range(s: &str) -> Result<StatusRange, String> {
    let bad = || {
        format!("invalid status `{s}`: expected a code such as 200 or a range such as \"200-299\"")
    };
    let code = |t: &str| -> Result<u16, String> {
        match t.trim().parse::<u16>() {
            Ok(c) if (100..=599).contains(&c) => Ok(c),
            _ => Err(bad()),
        }
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (min, max) = (code(a)?, code(b)?);
            if min > max {
                return Err(bad());
            }
            Ok(StatusRange { min, max })
        }
        None => code(s).map(|c| StatusRange { min: c, max: c }),
    }
}

impl Serialize for StatusRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}-{}", self.min, self.max))
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StatusRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status code such as 200 or a range such as \"200-299\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusRange, E> {
                parse_status_range(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusRange, E> {
                parse_status_range(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusRange, E> {
                parse_status_range(&v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("300ms", 300),
            ("2s", 2000),
            ("1m30s", 90_000),
            ("1.5s", 1500),
            ("0s", 0),
            ("0", 0),
            ("1h", 3_600_000),
        ];
        for (text, ms) in ok {
            assert_eq!(
                parse_duration(text).map(|d| d.as_millis()),
                Ok(ms),
                "{text}"
            );
        }
        for bad in ["", "2", "fast", "2 parsecs", "-1s", "s", "99999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        // The messages name the text and say what is wrong.
        let messages = [
            (
                "fast",
                "invalid duration `fast`: expected a number at `fast`",
            ),
            (
                "5x",
                "invalid duration `5x`: unknown unit `x` (use ms, s, m, h or d)",
            ),
            (
                "5",
                "invalid duration `5`: missing unit (use ms, s, m, h or d, as in \"2s\")",
            ),
            ("1s-", "invalid duration `1s-`: expected a number at `-`"),
            ("99999999999s", "invalid duration `99999999999s`: too large"),
            ("", "empty duration"),
        ];
        for (text, message) in messages {
            assert_eq!(parse_duration(text), Err(message.to_owned()), "{text}");
        }
        assert_eq!(format_duration(Duration::from_millis(90_000)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_byte_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_byte_size("1kB"), Ok(1000));
        assert_eq!(parse_byte_size("77"), Ok(77));
        assert!(parse_byte_size("10 parsecs").is_err());
    }

    #[test]
    fn signals_and_status() {
        assert_eq!("SIGINT".parse::<SignalName>(), Ok(SignalName(2)));
        assert_eq!("term".parse::<SignalName>(), Ok(SignalName(15)));
        assert_eq!("SigWinch".parse::<SignalName>(), Ok(SignalName(28)));
        assert_eq!(" USR1 ".parse::<SignalName>().map(|s| s.name()), Ok("USR1"));
        assert!("SIGFOO".parse::<SignalName>().is_err());
        assert!("".parse::<SignalName>().is_err());
        assert_eq!(SignalName::default().name(), "TERM");
        assert_eq!(SignalName(9).name(), "KILL");
        assert_eq!(SignalName(10_000).name(), "TERM");
        assert_eq!(
            parse_status_range("200-299"),
            Ok(StatusRange { min: 200, max: 299 })
        );
        assert!(parse_status_range("299-200").is_err());
        assert!(parse_status_range("abc").is_err());
    }
}
