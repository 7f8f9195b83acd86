//! Clients' failed TLS handshakes: counted by reason for `/metrics`, logged at debug, and
//! summed up at warn at most once per [`SUMMARY_EVERY`], instead of pingora's one ERROR line per
//! connection.
//!
//! pingora 0.9 logs a failed downstream handshake itself (`log::error!` in
//! `pingora_core::services::listening`: "Downstream handshake error from ADDR: ERROR") and
//! offers no hook for it: its TLS callbacks run only after a successful handshake, its pre-TLS
//! hook before the handshake, and the reason (an alert from the client, no shared cipher, ...)
//! exists only in that error. So the line is taken where it arrives: [`TlsHandshakeLog`] is a
//! `tracing` layer for the process's subscriber (pingora's `log` records reach `tracing`
//! through `tracing-log`, which `tracing_subscriber`'s `init` installs). It drops those
//! events, so no other layer prints them, and counts them by reason in process-wide counters
//! that [`crate::ProxyServer::metrics`] renders; the proxy writes the debug lines and the warn
//! summary from a task of its own (a subscriber cannot log from inside itself).
//!
//! An `EnvFilter` directive such as `pingora_core::services::listening=off` would also hide the
//! line, but then nothing counts it, and it would hide that module's `Accept() failed` errors
//! too: install [`TlsHandshakeLog`] instead.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// The `log` target of pingora's accept loop, where the handshake errors are logged.
pub const PINGORA_LISTENER_TARGET: &str = "pingora_core::services::listening";

/// At most one warn summary per this long.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Failed handshakes kept for the debug lines between two summaries (the rest only counted).
const MAX_KEPT: usize = 32;

/// Why a client's TLS handshake failed, as the metric's `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The client did not speak TLS (plain HTTP to the HTTPS port, a scanner).
    NotTls,
    /// The client closed or reset the connection during the handshake.
    Eof,
    /// No cipher suite, key exchange group or signature scheme in common.
    NoSharedCipher,
    /// No TLS version in common (a TLS 1.0/1.1-only client).
    ProtocolVersion,
    /// The client does not trust the certificate's issuer (alert `unknown_ca`).
    UnknownCa,
    /// The client rejected the certificate (alert `bad_certificate`, `certificate_unknown`,
    /// expired, ...).
    BadCertificate,
    /// Another fatal alert from the client.
    Alert,
    /// The handshake did not finish in time.
    Timeout,
    /// Anything else.
    Other,
}

/// Every reason, in the order of the counters.
const REASONS: [Reason; 9] = [
    Reason::NotTls,
    Reason::Eof,
    Reason::NoSharedCipher,
    Reason::ProtocolVersion,
    Reason::UnknownCa,
    Reason::BadCertificate,
    Reason::Alert,
    Reason::Timeout,
    Reason::Other,
];

impl Reason {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::NotTls => "not_tls",
            Reason::Eof => "eof",
            Reason::NoSharedCipher => "no_shared_cipher",
            Reason::ProtocolVersion => "protocol_version",
            Reason::UnknownCa => "unknown_ca",
            Reason::BadCertificate => "bad_certificate",
            Reason::Alert => "alert",
            Reason::Timeout => "timeout",
            Reason::Other => "other",
        }
    }

    fn index(self) -> usize {
        REASONS
            .iter()
            .position(|r| *r == self)
            .unwrap_or(REASONS.len() - 1)
    }

    /// The reason of one pingora error text (pingora's error around rustls's or the socket's).
    pub(crate) fn of(error: &str) -> Reason {
        let has = |needle: &str| error.contains(needle);
        if let Some(at) = error.find("received fatal alert: ") {
            let alert = &error[at + "received fatal alert: ".len()..];
            let alert = alert
                .split(|c: char| !c.is_ascii_alphanumeric())
                .next()
                .unwrap_or("");
            return match alert {
                "UnknownCA" => Reason::UnknownCa,
                "BadCertificate"
                | "CertificateUnknown"
                | "UnsupportedCertificate"
                | "CertificateExpired"
                | "CertificateRevoked"
                | "AccessDenied" => Reason::BadCertificate,
                "ProtocolVersion" => Reason::ProtocolVersion,
                _ => Reason::Alert,
            };
        }
        if has("NoCipherSuitesInCommon")
            || has("NoKxGroupsInCommon")
            || has("NoSignatureSchemesInCommon")
        {
            Reason::NoSharedCipher
        } else if has("peer is incompatible") {
            // The remaining incompatibilities are about versions (TLS 1.2 not offered, no
            // supported_versions, ...).
            Reason::ProtocolVersion
        } else if has("InvalidContentType") || has("InvalidMessage") || has("corrupt message") {
            Reason::NotTls
        } else if has("eof")
            || has("end of file")
            || has("Connection reset")
            || has("Broken pipe")
            || has("ConnectionClosed")
        {
            Reason::Eof
        } else {
            Reason::Other
        }
    }
}

/// One failed handshake kept for its debug line.
#[derive(Debug, Clone)]
struct Failure {
    peer: Option<String>,
    reason: Reason,
    error: String,
}

/// What happened since the last summary.
#[derive(Debug, Default)]
struct Pending {
    count: u64,
    by_reason: [u64; REASONS.len()],
    kept: VecDeque<Failure>,
}

/// The process-wide counters.
#[derive(Debug)]
struct Failures {
    total: [AtomicU64; REASONS.len()],
    pending: parking_lot::Mutex<Pending>,
}

static FAILURES: Failures = Failures {
    total: [const { AtomicU64::new(0) }; REASONS.len()],
    pending: parking_lot::const_mutex(Pending {
        count: 0,
        by_reason: [0; REASONS.len()],
        kept: VecDeque::new(),
    }),
};

/// Counts one failed handshake.
fn record(peer: Option<String>, reason: Reason, error: String) {
    FAILURES.total[reason.index()].fetch_add(1, Ordering::Relaxed);
    let mut pending = FAILURES.pending.lock();
    pending.count += 1;
    pending.by_reason[reason.index()] += 1;
    if pending.kept.len() < MAX_KEPT {
        pending.kept.push_back(Failure {
            peer,
            reason,
            error,
        });
    }
}

/// The `kinfra_proxy_tls_handshake_failures_total` series, every reason (zero included).
pub(crate) fn render() -> String {
    let mut out = String::from(
        "# HELP kinfra_proxy_tls_handshake_failures_total Clients' TLS handshakes with the \
         proxy that failed, by reason.\n\
         # TYPE kinfra_proxy_tls_handshake_failures_total counter\n",
    );
    for reason in REASONS {
        let _ = writeln!(
            out,
            "kinfra_proxy_tls_handshake_failures_total{{reason=\"{}\"}} {}",
            reason.as_str(),
            FAILURES.total[reason.index()].load(Ordering::Relaxed)
        );
    }
    out
}

/// Writes the debug lines of the failures since the last call and, when there were any, one
/// warn summary with their count by reason.
pub(crate) fn report() {
    let pending = std::mem::take(&mut *FAILURES.pending.lock());
    if pending.count == 0 {
        return;
    }
    for failure in &pending.kept {
        tracing::debug!(
            client = failure.peer.as_deref().unwrap_or("-"),
            reason = failure.reason.as_str(),
            error = %failure.error,
            "A client's TLS handshake failed."
        );
    }
    let by_reason = REASONS
        .iter()
        .zip(pending.by_reason)
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{}={n}", r.as_str()))
        .collect::<Vec<_>>()
        .join(" ");
    let last = pending.kept.back();
    tracing::warn!(
        failures = pending.count,
        by_reason = %by_reason,
        last_client = last.and_then(|f| f.peer.as_deref()).unwrap_or("-"),
        last_error = last.map_or("-", |f| f.error.as_str()),
        "Clients' TLS handshakes with the proxy failed (counted in kinfra_proxy_tls_handshake_failures_total; each at debug)."
    );
}

/// Runs [`report`] every [`SUMMARY_EVERY`] until aborted.
pub(crate) async fn report_periodically() {
    let mut tick = tokio::time::interval(SUMMARY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        report();
    }
}

/// What a pingora accept-loop event says about a handshake.
#[derive(Debug, PartialEq, Eq)]
enum Handshake {
    /// A client's failed handshake: `(peer, error)`.
    Failed(Option<String>, String),
    /// The handshake timed out.
    TimedOut,
    /// kinfra's own TLS-ALPN-01 responder ended a validation connection (not a failure).
    AcmeValidation,
}

/// Reads an accept-loop message.
fn parse(message: &str) -> Option<Handshake> {
    if message.starts_with("Downstream handshake timeout") {
        return Some(Handshake::TimedOut);
    }
    let rest = message.strip_prefix("Downstream handshake error")?;
    if rest.contains(crate::tls::ACME_ANSWERED) {
        return Some(Handshake::AcmeValidation);
    }
    let (peer, error) = match rest.strip_prefix(" from ") {
        // `ADDR: ERROR`; an IPv6 address has colons, so cut at the first ": ".
        Some(addressed) => match addressed.split_once(": ") {
            Some((peer, error)) => (Some(peer.to_owned()), error),
            None => (None, addressed),
        },
        None => (None, rest.trim_start_matches(':').trim_start()),
    };
    Some(Handshake::Failed(peer, error.to_owned()))
}

/// Reads the `message` and `log.target` fields of an event bridged from `log`.
#[derive(Default)]
struct LogFields {
    target: Option<String>,
    message: Option<String>,
}

impl Visit for LogFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "log.target" => self.target = Some(value.to_owned()),
            "message" => self.message = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "log.target" => self.target = Some(format!("{value:?}")),
            "message" => self.message = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

/// A `tracing` layer that takes pingora's per-connection "Downstream handshake error" lines
/// out of the log and counts them (see the module docs). Add it to the process's subscriber,
/// outermost so it sees events first:
///
/// ```no_run
/// use tracing_subscriber::prelude::*;
/// let filter = tracing_subscriber::EnvFilter::new("warn");
/// let _ = tracing_subscriber::fmt()
///     .with_env_filter(filter)
///     .finish()
///     .with(kinfra_proxy::TlsHandshakeLog)
///     .try_init();
/// ```
///
/// With `KINFRA_LOG=off` (no ERROR events at all) nothing reaches the layer and nothing is
/// counted.
///
/// Every other event passes untouched; the per-event cost is a level and target check.
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsHandshakeLog;

impl<S: Subscriber> Layer<S> for TlsHandshakeLog {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        // Events from `log` carry the callsite target "log" and the real one as a field.
        if *meta.level() != tracing::Level::ERROR
            || (meta.target() != "log" && meta.target() != PINGORA_LISTENER_TARGET)
        {
            return true;
        }
        let mut fields = LogFields::default();
        event.record(&mut fields);
        let target = fields.target.as_deref().unwrap_or(meta.target());
        if target != PINGORA_LISTENER_TARGET {
            return true;
        }
        match fields.message.as_deref().and_then(parse) {
            None => true,
            Some(Handshake::AcmeValidation) => false,
            Some(Handshake::TimedOut) => {
                record(None, Reason::Timeout, "the handshake timed out".into());
                false
            }
            Some(Handshake::Failed(peer, error)) => {
                record(peer, Reason::of(&error), error);
                false
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// `(level, message)` of every event.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<(tracing::Level, String)>>>);

    impl<S: Subscriber> Layer<S> for Lines {
        fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
            let mut fields = LogFields::default();
            event.record(&mut fields);
            self.0.lock().unwrap().push((
                *event.metadata().level(),
                fields.message.unwrap_or_default(),
            ));
        }
    }

    #[test]
    fn one_summary_for_many_failures_and_the_counters_keep_counting() {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::registry().with(lines.clone());
        let before = FAILURES.total[Reason::Alert.index()].load(Ordering::Relaxed);
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..40 {
                record(Some(format!("10.0.0.2:{i}")), Reason::Alert, "x".into());
            }
            report();
            report();
        });
        let lines = lines.0.lock().unwrap();
        let warns: Vec<&String> = lines
            .iter()
            .filter(|(level, _)| *level == tracing::Level::WARN)
            .map(|(_, m)| m)
            .collect();
        assert_eq!(warns.len(), 1, "{lines:?}");
        let debugs = lines
            .iter()
            .filter(|(level, _)| *level == tracing::Level::DEBUG)
            .count();
        assert_eq!(debugs, MAX_KEPT, "the debug lines are bounded");
        assert_eq!(
            FAILURES.total[Reason::Alert.index()].load(Ordering::Relaxed) - before,
            40
        );
        assert!(render().contains("kinfra_proxy_tls_handshake_failures_total{reason=\"alert\"}"));
    }

    #[test]
    fn reasons_from_pingora_errors() {
        let cases = [
            (
                " TLSHandshakeFailure context: TLS accept() failed: received fatal alert: UnknownCA",
                "unknown_ca",
            ),
            ("received fatal alert: BadCertificate", "bad_certificate"),
            (
                "received fatal alert: CertificateUnknown",
                "bad_certificate",
            ),
            ("received fatal alert: DecodeError", "alert"),
            (
                "peer is incompatible: NoCipherSuitesInCommon",
                "no_shared_cipher",
            ),
            (
                "peer is incompatible: Tls12NotOfferedOrEnabled",
                "protocol_version",
            ),
            (
                "TLS accept() failed: received corrupt message of type InvalidContentType",
                "not_tls",
            ),
            ("TLS accept() failed: tls handshake eof", "eof"),
            ("Connection reset by peer (os error 104)", "eof"),
            ("something new", "other"),
        ];
        for (error, reason) in cases {
            assert_eq!(Reason::of(error).as_str(), reason, "{error}");
        }
    }

    #[test]
    fn accept_loop_messages() {
        assert_eq!(
            parse("Downstream handshake error from [::1]:5000: boom: bang"),
            Some(Handshake::Failed(
                Some("[::1]:5000".into()),
                "boom: bang".into()
            ))
        );
        assert_eq!(
            parse("Downstream handshake error from 10.0.0.2:1: x"),
            Some(Handshake::Failed(Some("10.0.0.2:1".into()), "x".into()))
        );
        assert_eq!(
            parse("Downstream handshake error: x"),
            Some(Handshake::Failed(None, "x".into()))
        );
        assert_eq!(
            parse("Downstream handshake timeout"),
            Some(Handshake::TimedOut)
        );
        let acme = format!(
            "Downstream handshake error from 1.2.3.4:5: ConnectionClosed context: {}",
            crate::tls::ACME_ANSWERED
        );
        assert_eq!(parse(&acme), Some(Handshake::AcmeValidation));
        assert_eq!(parse("Accept() failed Too many open files"), None);
    }
}
