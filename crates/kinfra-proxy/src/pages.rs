//! Fallback pages: loading, error (503 and friends) and maintenance, from templates compiled in
//! from `embedded/pages/` or overridden from `proxy.pages_dir`; JSON for clients that ask.

use kinfra_core::{Health, ServiceState};
use std::path::Path;

const LOADING: &str = include_str!("../../../embedded/pages/loading.html");
const ERROR: &str = include_str!("../../../embedded/pages/error.html");
const MAINTENANCE: &str = include_str!("../../../embedded/pages/maintenance.html");

/// Seconds a client waits after a failed wake before asking again (`Retry-After`, refresh).
pub(crate) const WAKE_RETRY_AFTER: u32 = 5;

/// Longest detail line shown on a page.
const MAX_DETAIL: usize = 300;

/// Which template a page uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PageKind {
    /// The target is starting.
    Loading,
    /// The target is down, or the request cannot be served.
    Error,
    /// The target is in maintenance.
    Maintenance,
}

/// Everything a page says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Page {
    /// Which template.
    pub kind: PageKind,
    /// HTTP status.
    pub status: u16,
    /// Machine-readable reason (`service_starting`, `service_unavailable`, ...).
    pub code: &'static str,
    /// The service the page is about, if any.
    pub service: Option<String>,
    /// Its state, if known.
    pub state: Option<String>,
    /// One line for people.
    pub title: String,
    /// A sentence for people.
    pub message: String,
    /// The last error, cleaned up for people (may be empty).
    pub detail: String,
    /// Seconds for `Retry-After` and the page's own refresh.
    pub retry_after: u32,
}

impl Page {
    /// The page for a service that is not in a state to take requests; `None` when it can.
    pub(crate) fn for_service(
        service: &str,
        state: ServiceState,
        health: Health,
        status_message: &str,
    ) -> Option<Page> {
        let detail = friendly_detail(status_message);
        let (kind, code, title, message, retry) = match state {
            ServiceState::Running if health == Health::Unhealthy => (
                PageKind::Error,
                "service_unhealthy",
                format!("{service} is not healthy right now"),
                "It is running but failing its health check, so requests are held back until it \
                 recovers."
                    .to_owned(),
                5,
            ),
            ServiceState::Running => return None,
            ServiceState::Pending => (
                PageKind::Loading,
                "service_starting",
                format!("{service} is about to start"),
                "It is waiting for the services it depends on. This usually takes a few seconds."
                    .to_owned(),
                2,
            ),
            ServiceState::Starting => (
                PageKind::Loading,
                "service_starting",
                format!("{service} is starting"),
                "It will be ready in a moment.".to_owned(),
                2,
            ),
            ServiceState::Backoff => (
                PageKind::Error,
                "service_unavailable",
                format!("{service} stopped unexpectedly"),
                "kinfra is restarting it. Please try again in a few seconds.".to_owned(),
                5,
            ),
            ServiceState::Failed => (
                PageKind::Error,
                "service_unavailable",
                format!("{service} is down"),
                "It failed and is not being restarted automatically. Its operator has to start \
                 it again."
                    .to_owned(),
                10,
            ),
            ServiceState::Stopping => (
                PageKind::Error,
                "service_unavailable",
                format!("{service} is shutting down"),
                "It is being stopped and does not take new requests.".to_owned(),
                5,
            ),
            ServiceState::Stopped => (
                PageKind::Error,
                "service_unavailable",
                format!("{service} is stopped"),
                "It has been stopped and does not take requests right now.".to_owned(),
                10,
            ),
            ServiceState::Completed => (
                PageKind::Error,
                "service_unavailable",
                format!("{service} has finished"),
                "It ran to completion and does not take requests.".to_owned(),
                30,
            ),
            ServiceState::Maintenance => return Some(Page::maintenance(Some(service))),
            ServiceState::Sleeping => (
                PageKind::Loading,
                "service_sleeping",
                format!("{service} is asleep"),
                "It was put to sleep while nobody used it and is woken up for requests. This \
                 usually takes a few seconds."
                    .to_owned(),
                3,
            ),
        };
        Some(Page {
            kind,
            status: 503,
            code,
            service: Some(service.to_owned()),
            state: Some(
                if state == ServiceState::Running {
                    "unhealthy"
                } else {
                    state.as_str()
                }
                .to_owned(),
            ),
            title,
            message,
            detail,
            retry_after: retry,
        })
    }

    /// The maintenance page, for one service or for everything.
    pub(crate) fn maintenance(service: Option<&str>) -> Page {
        let title = match service {
            Some(s) => format!("{s} is down for maintenance"),
            None => "Down for maintenance".to_owned(),
        };
        Page {
            kind: PageKind::Maintenance,
            status: 503,
            code: "maintenance",
            service: service.map(str::to_owned),
            state: Some("maintenance".into()),
            title,
            message: "Scheduled work is in progress. Please come back in a little while."
                .to_owned(),
            detail: String::new(),
            retry_after: 30,
        }
    }

    /// The page for a service (or the dashboard) that does not answer.
    pub(crate) fn unreachable(service: Option<&str>, status: u16, reason: &str) -> Page {
        let (title, code) = match (service, status) {
            (Some(s), 504) => (format!("{s} took too long to answer"), "upstream_timeout"),
            (None, 504) => (
                "The upstream took too long to answer".to_owned(),
                "upstream_timeout",
            ),
            (Some(s), 502) => (format!("{s} sent an invalid response"), "bad_gateway"),
            (None, 502) => (
                "The upstream sent an invalid response".to_owned(),
                "bad_gateway",
            ),
            (Some(s), _) => (format!("{s} is not answering"), "service_unavailable"),
            (None, _) => (
                "The upstream is not answering".to_owned(),
                "service_unavailable",
            ),
        };
        Page {
            kind: PageKind::Error,
            status,
            code,
            service: service.map(str::to_owned),
            state: None,
            title,
            message: "Please try again in a few seconds.".to_owned(),
            detail: friendly_detail(reason),
            retry_after: 5,
        }
    }

    /// The page for a target a request woke that did not come up: `timed_out` when it was
    /// not ready within its wake timeout, else the wake failed for `reason`.
    pub(crate) fn wake_failed(service: &str, timed_out: bool, reason: &str) -> Page {
        let (code, title) = if timed_out {
            ("wake_timeout", format!("{service} did not wake up in time"))
        } else {
            ("wake_failed", format!("{service} could not be woken up"))
        };
        Page {
            kind: PageKind::Error,
            status: 503,
            code,
            service: Some(service.to_owned()),
            state: Some(ServiceState::Sleeping.as_str().to_owned()),
            title,
            message: "It was asleep and did not come up for this request. Please try again in a \
                      few seconds."
                .to_owned(),
            detail: friendly_detail(reason),
            retry_after: WAKE_RETRY_AFTER,
        }
    }

    /// A plain error page for a request the proxy refuses itself (404, 400, 413, ...).
    pub(crate) fn plain(status: u16, code: &'static str, title: &str, message: &str) -> Page {
        Page {
            kind: PageKind::Error,
            status,
            code,
            service: None,
            state: None,
            title: title.to_owned(),
            message: message.to_owned(),
            detail: String::new(),
            retry_after: 30,
        }
    }

    /// The JSON body: `{"error": code, "status": 503, "service": ..., ...}`.
    pub(crate) fn to_json(&self) -> String {
        serde_json::json!({
            "error": self.code,
            "status": self.status,
            "service": self.service,
            "state": self.state,
            "title": self.title,
            "message": self.message,
            "detail": if self.detail.is_empty() { None } else { Some(&self.detail) },
            "retry_after": self.retry_after,
        })
        .to_string()
    }
}

/// The page templates in use.
#[derive(Debug, Clone)]
pub(crate) struct Templates {
    loading: String,
    error: String,
    maintenance: String,
}

impl Default for Templates {
    fn default() -> Self {
        Self {
            loading: LOADING.to_owned(),
            error: ERROR.to_owned(),
            maintenance: MAINTENANCE.to_owned(),
        }
    }
}

impl Templates {
    /// The embedded templates, with any of `loading.html`, `error.html` and `maintenance.html`
    /// found in `dir` used instead.
    pub(crate) fn load(dir: Option<&Path>) -> Result<Self, std::io::Error> {
        let mut templates = Self::default();
        let Some(dir) = dir else {
            return Ok(templates);
        };
        for (name, slot) in [
            ("loading.html", &mut templates.loading),
            ("error.html", &mut templates.error),
            ("maintenance.html", &mut templates.maintenance),
        ] {
            match std::fs::read_to_string(dir.join(name)) {
                Ok(text) => *slot = text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(templates)
    }

    /// The HTML body of `page`.
    pub(crate) fn render(&self, page: &Page) -> String {
        let template = match page.kind {
            PageKind::Loading => &self.loading,
            PageKind::Error => &self.error,
            PageKind::Maintenance => &self.maintenance,
        };
        let status = page.status.to_string();
        let refresh = page.retry_after.to_string();
        fill(template, |name| match name {
            "status" => Some(status.as_str()),
            "code" => Some(page.code),
            "service" => Some(page.service.as_deref().unwrap_or("")),
            "state" => Some(page.state.as_deref().unwrap_or("unavailable")),
            "title" => Some(page.title.as_str()),
            "message" => Some(page.message.as_str()),
            "detail" => Some(page.detail.as_str()),
            "refresh" | "retry_after" => Some(refresh.as_str()),
            _ => None,
        })
    }
}

/// Replaces `{{name}}` in one pass with the HTML-escaped value; unknown names stay as they are.
fn fill<'a>(template: &str, value: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let name = after[..end].trim();
                match value(name) {
                    Some(v) => escape_into(&mut out, v),
                    None => out.push_str(&rest[start..start + 2 + end + 2]),
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// The last error as people should see it: one line, no control characters, no stack trace,
/// bounded length.
pub(crate) fn friendly_detail(message: &str) -> String {
    let line = message
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut out: String = line
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_DETAIL)
        .collect();
    if line.chars().count() > MAX_DETAIL {
        out.push('…');
    }
    out
}

/// True when the client prefers JSON: it accepts `application/json` (or `+json`) and does not
/// ask for HTML.
pub(crate) fn wants_json(accept: Option<&[u8]>) -> bool {
    let Some(accept) = accept.and_then(|a| std::str::from_utf8(a).ok()) else {
        return false;
    };
    let accept = accept.to_ascii_lowercase();
    (accept.contains("application/json") || accept.contains("+json"))
        && !accept.contains("text/html")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fill_escapes_and_keeps_unknown() {
        let out = fill("<p>{{a}}</p>{{b}}{{ a }}{{", |n| {
            (n == "a").then_some("<x&\"{{a}}\">")
        });
        assert_eq!(
            out,
            "<p>&lt;x&amp;&quot;{{a}}&quot;&gt;</p>{{b}}&lt;x&amp;&quot;{{a}}&quot;&gt;{{"
        );
    }

    #[test]
    fn service_pages_by_state() {
        use ServiceState::*;
        let h = Health::Unknown;
        assert!(Page::for_service("api", Running, h, "").is_none());
        assert!(Page::for_service("api", Running, Health::Healthy, "").is_none());
        let p = Page::for_service("api", Running, Health::Unhealthy, "probe failed: 500").unwrap();
        assert_eq!(
            (p.kind, p.status, p.code),
            (PageKind::Error, 503, "service_unhealthy")
        );
        for s in [Pending, Starting] {
            assert_eq!(
                Page::for_service("api", s, h, "").unwrap().kind,
                PageKind::Loading
            );
        }
        for s in [Backoff, Failed, Stopped, Stopping, Completed] {
            let p =
                Page::for_service("api", s, h, "exited with code 1\n  at foo\n  at bar").unwrap();
            assert_eq!(p.kind, PageKind::Error);
            assert_eq!(p.detail, "exited with code 1");
            assert_eq!(p.state.as_deref(), Some(s.as_str()));
        }
        assert_eq!(
            Page::for_service("api", Maintenance, h, "").unwrap().kind,
            PageKind::Maintenance
        );
        let p = Page::for_service("api", Sleeping, h, "").unwrap();
        assert_eq!(
            (p.kind, p.status, p.code, p.state.as_deref()),
            (PageKind::Loading, 503, "service_sleeping", Some("sleeping"))
        );
    }

    #[test]
    fn rendered_pages_name_the_service() {
        let t = Templates::default();
        let p =
            Page::for_service("my<api>", ServiceState::Failed, Health::Unknown, "boom").unwrap();
        let html = t.render(&p);
        assert!(html.contains("my&lt;api&gt; is down"), "{html}");
        assert!(html.contains("boom"));
        assert!(html.contains("http-equiv=\"refresh\" content=\"10\""));
        assert!(!html.contains("{{"));
        let json: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(json["service"], "my<api>");
        assert_eq!(json["state"], "failed");
        assert_eq!(json["detail"], "boom");
        for kind in [PageKind::Loading, PageKind::Maintenance] {
            let page = Page { kind, ..p.clone() };
            assert!(!t.render(&page).contains("{{"));
        }
    }

    #[test]
    fn detail_is_bounded() {
        let long = "x".repeat(1000);
        assert_eq!(friendly_detail(&long).chars().count(), MAX_DETAIL + 1);
        assert_eq!(
            friendly_detail("\n\n  first \u{7}line\nsecond"),
            "first line"
        );
    }

    #[test]
    fn json_negotiation() {
        assert!(wants_json(Some(b"application/json")));
        assert!(wants_json(Some(b"application/problem+json")));
        assert!(!wants_json(Some(b"text/html,application/json;q=0.9")));
        assert!(!wants_json(Some(b"*/*")));
        assert!(!wants_json(None));
    }

    #[test]
    fn templates_from_dir_override() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("maintenance.html"), "M {{title}}").unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        assert_eq!(t.render(&Page::maintenance(None)), "M Down for maintenance");
        assert!(t.render(&Page::maintenance(None)).len() < 100);
        let p = Page::plain(404, "no_route", "Nothing here", "No route.");
        assert!(t.render(&p).contains("Nothing here"));
    }
}
