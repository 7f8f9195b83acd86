//! The data behind the dashboard's plots: a bounded in-memory history of each service's CPU,
//! memory and restarts and each route's request rate, error rate and latency percentiles.
//!
//! Nothing runs on a timer: a point is recorded when the history is read (the page asks
//! while it is open and visible), at most one per [`STEP`] — a read within the same step
//! updates that step's point in place, so the newest point follows activity at once. What
//! happened while nobody looked is not sampled (CPU and memory) or is folded into the next
//! point (request counts, which the proxy keeps as running totals).

use kinfra_core::metrics::RouteTotals;
use kinfra_core::status::StatusReport;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// One point per this much time.
pub const STEP: Duration = Duration::from_secs(10);

/// How far back the history goes.
pub const SPAN: Duration = Duration::from_secs(3600);

/// Points kept per service or route: an hour of steps.
pub const POINTS: usize = (SPAN.as_secs() / STEP.as_secs()) as usize;

/// One step of a service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicePoint {
    /// When it was read (Unix seconds).
    pub t: f64,
    /// CPU percent of the process tree (absent when not sampled or not running).
    pub cpu: Option<f64>,
    /// Resident memory of the process tree in bytes.
    pub mem: Option<u64>,
    /// Restarts since kinfra started.
    pub restarts: u32,
}

/// One step of a route: what happened since the previous step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoutePoint {
    /// When it was read (Unix seconds).
    pub t: f64,
    /// Requests answered in the step.
    pub requests: u64,
    /// Requests per second over the step.
    pub rate: f64,
    /// Share of the step's requests that failed (5xx or no answer); absent without requests.
    pub error_rate: Option<f64>,
    /// Median latency in milliseconds, from the proxy's histogram; absent without requests.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in milliseconds; absent without requests.
    pub p99_ms: Option<f64>,
}

/// What a read of the history returns: the points since a time, by name.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryView {
    /// Seconds per point.
    pub step_s: u64,
    /// Seconds the history covers.
    pub span_s: u64,
    /// The time of this read (Unix seconds).
    pub now: f64,
    /// Points by service, oldest first.
    pub services: BTreeMap<String, Vec<ServicePoint>>,
    /// Points by route (labelled by service, as in `/metrics`), oldest first.
    pub routes: BTreeMap<String, Vec<RoutePoint>>,
}

/// A route's points and the totals they are differences of.
#[derive(Debug, Default)]
struct RouteRing {
    points: VecDeque<RoutePoint>,
    /// Totals (and when) at the end of the previous step: the current step counts from here.
    base: Option<(f64, RouteTotals)>,
    /// Totals (and when) at the latest read.
    last: Option<(f64, RouteTotals)>,
}

#[derive(Debug, Default)]
struct Rings {
    services: BTreeMap<String, VecDeque<ServicePoint>>,
    routes: BTreeMap<String, RouteRing>,
    /// When the history was last read (recorded).
    last_read: Option<f64>,
}

/// The history, shared by the dashboard's handlers.
#[derive(Debug, Default)]
pub struct PlotHistory {
    rings: Mutex<Rings>,
}

/// The step a time falls in.
fn slot(t: f64) -> u64 {
    (t.max(0.0) / STEP.as_secs_f64()) as u64
}

/// Puts `point` into `ring`: in place of the newest point when that is of the same step,
/// else after it; drops what is older than [`SPAN`] and beyond [`POINTS`].
fn put<P>(ring: &mut VecDeque<P>, point: P, time: impl Fn(&P) -> f64) {
    let now = time(&point);
    match ring.back_mut() {
        Some(last) if slot(time(last)) == slot(now) => *last = point,
        _ => ring.push_back(point),
    }
    let oldest = now - SPAN.as_secs_f64();
    while ring.front().is_some_and(|p| time(p) < oldest) || ring.len() > POINTS {
        ring.pop_front();
    }
}

/// The `q` quantile (0..1) in milliseconds of a non-cumulative histogram, interpolated
/// linearly within its bucket; requests beyond the last finite bound count as that bound.
fn quantile_ms(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    let target = q * total as f64;
    let (mut below, mut lower) = (0u64, 0.0f64);
    for &(upper, n) in buckets {
        if n > 0 && (below + n) as f64 >= target {
            if !upper.is_finite() {
                return Some(lower * 1000.0);
            }
            let within = ((target - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some((lower + (upper - lower) * within) * 1000.0);
        }
        below += n;
        if upper.is_finite() {
            lower = upper;
        }
    }
    Some(lower * 1000.0)
}

/// The step from `base` to `now`: counts and histogram differences (a total that went down,
/// as after a restart of the counter, counts from zero).
fn route_point(t: f64, base: &(f64, RouteTotals), now: &RouteTotals) -> RoutePoint {
    let (since, before) = base;
    let requests = now.requests.saturating_sub(before.requests);
    let errors = now.errors.saturating_sub(before.errors);
    let buckets: Vec<(f64, u64)> = now
        .latency_buckets
        .iter()
        .map(|&(bound, n)| {
            let was = before
                .latency_buckets
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0, |(_, n)| *n);
            (bound, n.saturating_sub(was))
        })
        .collect();
    let seconds = t - since;
    RoutePoint {
        t,
        requests,
        rate: if seconds > 0.0 {
            requests as f64 / seconds
        } else {
            0.0
        },
        error_rate: (requests > 0).then(|| errors as f64 / requests as f64),
        p50_ms: quantile_ms(&buckets, 0.5),
        p99_ms: quantile_ms(&buckets, 0.99),
    }
}

impl PlotHistory {
    /// Records the current step from a status report and the proxy's route totals read at
    /// `now` (Unix seconds). Services no longer in the report are forgotten.
    pub fn record(&self, now: f64, report: &StatusReport, routes: &[RouteTotals]) {
        let mut rings = match self.rings.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        rings
            .services
            .retain(|name, _| report.services.contains_key(name));
        for (name, s) in &report.services {
            let point = ServicePoint {
                t: now,
                cpu: s.cpu_percent,
                mem: s.memory_bytes,
                restarts: s.restarts,
            };
            put(
                rings.services.entry(name.clone()).or_default(),
                point,
                |p| p.t,
            );
        }
        let previous_read = rings.last_read.replace(now);
        for totals in routes {
            let ring = rings.routes.entry(totals.route.clone()).or_default();
            // A new step counts from the latest read of the previous one. A route seen for
            // the first time had no requests at the previous read (it would have been
            // seen); on the first read ever, what came before is unknown: it counts from now.
            match &ring.last {
                Some((at, _)) if slot(*at) != slot(now) => ring.base = ring.last.take(),
                None if ring.base.is_none() => {
                    let zero = RouteTotals {
                        route: totals.route.clone(),
                        ..RouteTotals::default()
                    };
                    ring.base = Some(match previous_read {
                        Some(at) if now - at < SPAN.as_secs_f64() => (at, zero),
                        _ => (now, totals.clone()),
                    });
                }
                _ => {}
            }
            let Some(base) = &ring.base else {
                continue;
            };
            let point = route_point(now, base, totals);
            put(&mut ring.points, point, |p| p.t);
            ring.last = Some((now, totals.clone()));
        }
    }

    /// The points read at or after `since` (Unix seconds; everything for 0).
    pub fn view(&self, now: f64, since: f64) -> HistoryView {
        let rings = match self.rings.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        HistoryView {
            step_s: STEP.as_secs(),
            span_s: SPAN.as_secs(),
            now,
            services: rings
                .services
                .iter()
                .map(|(name, ring)| {
                    let points = ring.iter().filter(|p| p.t >= since).cloned().collect();
                    (name.clone(), points)
                })
                .collect(),
            routes: rings
                .routes
                .iter()
                .map(|(name, ring)| {
                    let points = ring.points.iter().filter(|p| p.t >= since).cloned();
                    (name.clone(), points.collect())
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinfra_core::state::{Health, ServiceState};
    use kinfra_core::status::ServiceStatus;

    fn report(restarts: u32, cpu: Option<f64>) -> StatusReport {
        let web = ServiceStatus {
            kind: "process".into(),
            state: ServiceState::Running,
            health: Health::Healthy,
            status_message: String::new(),
            port: None,
            pid: Some(1),
            uptime_s: None,
            uptime: None,
            restarts,
            last_exit: None,
            logs: Vec::new(),
            cpu_percent: cpu,
            memory_bytes: cpu.map(|_| 4096),
            last_sync: None,
            provider_state: None,
            sleep: None,
            progress: None,
        };
        StatusReport::new("p", BTreeMap::from([("web".to_owned(), web)]))
    }

    /// Totals with `fast` requests at 1 ms, `slow` at 100 ms, `errors` of them failed.
    fn totals(fast: u64, slow: u64, errors: u64) -> RouteTotals {
        RouteTotals {
            route: "web".to_owned(),
            requests: fast + slow,
            errors,
            latency_buckets: vec![(0.001, fast), (0.1, slow), (f64::INFINITY, 0)],
        }
    }

    #[test]
    fn one_point_per_step_updated_in_place_and_bounded_to_the_span() {
        let h = PlotHistory::default();
        let t0 = 1_000_000.0;
        h.record(t0, &report(0, Some(1.0)), &[]);
        h.record(t0 + 3.0, &report(1, Some(2.0)), &[]);
        let v = h.view(t0 + 3.0, 0.0);
        assert_eq!(v.services["web"].len(), 1, "same step: updated in place");
        assert_eq!(v.services["web"][0].restarts, 1);
        assert_eq!(v.services["web"][0].cpu, Some(2.0));
        h.record(t0 + 12.0, &report(1, None), &[]);
        assert_eq!(h.view(t0, 0.0).services["web"].len(), 2, "a new step");
        // Two hours of reads every step: only an hour is kept.
        for i in 0..720 {
            h.record(t0 + 20.0 + f64::from(i) * 10.0, &report(2, Some(0.5)), &[]);
        }
        let v = h.view(0.0, 0.0);
        assert!(
            v.services["web"].len() <= POINTS,
            "{}",
            v.services["web"].len()
        );
        assert!(v.services["web"].len() >= POINTS - 1);
        // Only what was read since a time.
        let last = v.services["web"].last().map(|p| p.t).unwrap_or_default();
        assert_eq!(h.view(0.0, last).services["web"].len(), 1);
        // A service that went away is forgotten.
        h.record(last + 10.0, &StatusReport::new("p", BTreeMap::new()), &[]);
        assert!(h.view(0.0, 0.0).services.is_empty());
    }

    #[test]
    fn route_steps_are_differences_of_the_totals() {
        let h = PlotHistory::default();
        let t0 = 2_000_000.0;
        let none = report(0, None);
        // First sight: counts from now, so earlier requests are not one huge step.
        h.record(t0, &none, &[totals(50, 0, 0)]);
        let first = &h.view(t0, 0.0).routes["web"][0];
        assert_eq!(first.requests, 0);
        assert_eq!(first.p50_ms, None);
        // Within the step: 10 more, 1 of them slow and failed.
        h.record(t0 + 5.0, &none, &[totals(59, 1, 1)]);
        let p = h.view(t0, 0.0).routes["web"][0].clone();
        assert_eq!(p.requests, 10);
        assert!((p.rate - 2.0).abs() < 1e-9, "{}", p.rate);
        assert_eq!(p.error_rate, Some(0.1));
        let p50 = p.p50_ms.unwrap_or_default();
        assert!(p50 > 0.0 && p50 <= 1.0, "p50 {p50}");
        let p99 = p.p99_ms.unwrap_or_default();
        assert!(p99 > 1.0 && p99 <= 100.0, "p99 {p99}");
        // Next step counts from the latest read of the previous one.
        h.record(t0 + 15.0, &none, &[totals(79, 1, 1)]);
        let v = h.view(t0, 0.0);
        assert_eq!(v.routes["web"].len(), 2);
        let p = &v.routes["web"][1];
        assert_eq!(p.requests, 20);
        assert!((p.rate - 2.0).abs() < 1e-9, "{}", p.rate);
        assert_eq!(p.error_rate, Some(0.0));
        assert_eq!(p.p99_ms.map(|v| v <= 1.0), Some(true));
        // A quiet step: no requests, no percentiles.
        h.record(t0 + 25.0, &none, &[totals(79, 1, 1)]);
        let v = h.view(t0, 0.0);
        let p = &v.routes["web"][2];
        assert_eq!((p.requests, p.error_rate, p.p50_ms), (0, None, None));
        // A route that appears after a read had no requests at that read: it counts from
        // zero there.
        let mut api = totals(4, 0, 0);
        api.route = "api".to_owned();
        h.record(t0 + 35.0, &none, &[totals(79, 1, 1), api]);
        let p = &h.view(t0, 0.0).routes["api"][0];
        assert_eq!(p.requests, 4);
        assert!((p.rate - 0.4).abs() < 1e-9, "{}", p.rate);
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = [(0.001, 0), (0.01, 10), (f64::INFINITY, 0)];
        assert_eq!(quantile_ms(&b, 0.5).map(|v| v.round()), Some(6.0));
        assert_eq!(quantile_ms(&[(0.001, 0)], 0.5), None);
        // Beyond every bound: the last finite bound.
        assert_eq!(
            quantile_ms(&[(0.01, 0), (f64::INFINITY, 3)], 0.5),
            Some(10.0)
        );
    }
}
