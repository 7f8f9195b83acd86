//! An image pull's progress, added up over its layers from the engine's pull stream
//! (`Pulling fs layer`, `Downloading` with `progressDetail {current, total}`, `Extracting`,
//! `Pull complete`, `Already exists`) into bytes downloaded, the bytes known in all and a
//! percent once every layer's size is known.
//!
//! A layer's size is known only once its download begins (the engine lists waiting layers
//! without one), so until then the total counts the layers seen so far and there is no
//! percent: it is never guessed. Once all sizes are known the total is fixed and the bytes
//! only grow, so the percent never goes back.

use kinfra_core::progress::Progress;
use std::collections::BTreeMap;
use std::time::Instant;

/// Where one layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Listed, not downloading yet (`Pulling fs layer`, `Waiting`).
    Waiting,
    /// Downloading.
    Downloading,
    /// Downloaded, not extracted yet (`Verifying Checksum`, `Download complete`).
    Downloaded,
    /// Being extracted.
    Extracting,
    /// Done (`Pull complete`).
    Complete,
    /// Present before the pull (`Already exists`): no bytes to fetch.
    Exists,
}

#[derive(Debug, Clone, Copy)]
struct Layer {
    stage: Stage,
    /// Compressed size, once the engine said it.
    size: Option<u64>,
    /// Bytes downloaded.
    downloaded: u64,
}

/// One pull's progress. Feed it every message of the pull stream with [`PullProgress::update`];
/// read it with [`PullProgress::snapshot`].
#[derive(Debug, Clone)]
pub struct PullProgress {
    image: String,
    began: Instant,
    layers: BTreeMap<String, Layer>,
    finished: bool,
}

impl PullProgress {
    /// A pull of `image` beginning now.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            began: Instant::now(),
            layers: BTreeMap::new(),
            finished: false,
        }
    }

    /// Takes one message of the pull stream: the layer id, the status text and its
    /// `progressDetail`. Messages about the image as a whole (`Pulling from ...`, `Digest:`,
    /// `Status:`) and statuses not known here are ignored.
    pub fn update(
        &mut self,
        id: Option<&str>,
        status: &str,
        current: Option<i64>,
        total: Option<i64>,
    ) {
        let Some(id) = id.filter(|id| !id.is_empty()) else {
            return;
        };
        let stage = match status {
            "Pulling fs layer" | "Waiting" => Stage::Waiting,
            "Downloading" => Stage::Downloading,
            "Verifying Checksum" | "Download complete" => Stage::Downloaded,
            "Extracting" => Stage::Extracting,
            "Pull complete" => Stage::Complete,
            "Already exists" => Stage::Exists,
            // `Pulling from library/postgres` carries the tag as its id.
            _ => return,
        };
        let positive = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok()).filter(|n| *n > 0);
        let layer = self.layers.entry(id.to_owned()).or_insert(Layer {
            stage,
            size: None,
            downloaded: 0,
        });
        // A layer never goes back (a late `Waiting` after `Downloading` is not a restart).
        if stage_rank(stage) >= stage_rank(layer.stage) {
            layer.stage = stage;
        }
        match stage {
            Stage::Downloading => {
                if let Some(t) = positive(total) {
                    layer.size = Some(t);
                }
                if let Some(c) = positive(current) {
                    layer.downloaded = layer.downloaded.max(c);
                }
            }
            // The extraction reads the compressed layer: its total is the layer's size.
            Stage::Extracting if layer.size.is_none() => layer.size = positive(total),
            _ => {}
        }
        if matches!(
            layer.stage,
            Stage::Downloaded | Stage::Extracting | Stage::Complete
        ) && let Some(size) = layer.size
        {
            layer.downloaded = size;
        }
    }

    /// The pull ended and the image is present.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Where the pull stands now.
    pub fn snapshot(&self) -> Progress {
        let fetched: Vec<&Layer> = self
            .layers
            .values()
            .filter(|l| l.stage != Stage::Exists)
            .collect();
        let all_done = self.finished
            || (!self.layers.is_empty()
                && self
                    .layers
                    .values()
                    .all(|l| matches!(l.stage, Stage::Complete | Stage::Exists)));
        let phase = if all_done {
            "complete"
        } else if fetched.iter().any(|l| l.stage == Stage::Downloading) {
            "downloading"
        } else if fetched
            .iter()
            .any(|l| matches!(l.stage, Stage::Downloaded | Stage::Extracting))
        {
            "extracting"
        } else {
            "waiting"
        };
        let current: u64 = fetched
            .iter()
            .map(|l| l.size.map_or(l.downloaded, |s| l.downloaded.min(s)))
            .sum();
        let known: u64 = fetched.iter().filter_map(|l| l.size).sum();
        let sizes_known = fetched.iter().all(|l| l.size.is_some());
        let total = (sizes_known || known > 0).then_some(known);
        let percent = if all_done {
            Some(100.0)
        } else if sizes_known && known > 0 && !fetched.is_empty() {
            Some((current as f64 * 100.0 / known as f64).min(100.0))
        } else {
            None
        };
        Progress {
            task: "pull".into(),
            phase: phase.into(),
            target: Some(self.image.clone()),
            current: Some(current),
            total,
            unit: Some("bytes".into()),
            percent,
            elapsed_s: self.began.elapsed().as_secs(),
        }
    }

    /// Layers done (complete or present before) and layers seen, for the log line.
    pub fn layers(&self) -> (usize, usize) {
        let done = self
            .layers
            .values()
            .filter(|l| matches!(l.stage, Stage::Complete | Stage::Exists))
            .count();
        (done, self.layers.len())
    }
}

fn stage_rank(stage: Stage) -> u8 {
    match stage {
        Stage::Waiting => 0,
        Stage::Downloading => 1,
        Stage::Downloaded => 2,
        Stage::Extracting => 3,
        Stage::Complete | Stage::Exists => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(p: &mut PullProgress, id: &str, status: &str, detail: Option<(i64, i64)>) {
        p.update(Some(id), status, detail.map(|d| d.0), detail.map(|d| d.1));
    }

    #[test]
    fn bytes_add_up_over_layers_and_the_percent_waits_for_every_size() {
        let mut p = PullProgress::new("postgres:16");
        p.update(Some("16"), "Pulling from library/postgres", None, None);
        at(&mut p, "a", "Pulling fs layer", None);
        at(&mut p, "b", "Pulling fs layer", None);
        let s = p.snapshot();
        assert_eq!(s.phase, "waiting");
        assert_eq!((s.current, s.total, s.percent), (Some(0), None, None));

        at(&mut p, "a", "Downloading", Some((1_000, 4_000)));
        let s = p.snapshot();
        assert_eq!(s.phase, "downloading");
        // b's size is not known yet: a total so far, no percent.
        assert_eq!(
            (s.current, s.total, s.percent),
            (Some(1_000), Some(4_000), None)
        );

        at(&mut p, "b", "Downloading", Some((500, 6_000)));
        let s = p.snapshot();
        assert_eq!((s.current, s.total), (Some(1_500), Some(10_000)));
        assert_eq!(s.percent, Some(15.0));

        at(&mut p, "a", "Download complete", None);
        at(&mut p, "a", "Extracting", Some((2_000, 4_000)));
        let s = p.snapshot();
        assert_eq!(s.current, Some(4_500));
        assert_eq!(s.phase, "downloading", "b still downloads");

        at(&mut p, "b", "Download complete", None);
        let s = p.snapshot();
        assert_eq!(s.phase, "extracting");
        assert_eq!(s.percent, Some(100.0));
        at(&mut p, "a", "Pull complete", None);
        at(&mut p, "b", "Pull complete", None);
        let s = p.snapshot();
        assert_eq!(s.phase, "complete");
        assert_eq!((s.current, s.total), (Some(10_000), Some(10_000)));
        assert_eq!(p.layers(), (2, 2));
    }

    #[test]
    fn a_layer_appearing_late_takes_the_percent_away_until_its_size_is_known() {
        let mut p = PullProgress::new("img");
        at(&mut p, "a", "Downloading", Some((2_000, 2_000)));
        assert_eq!(p.snapshot().percent, Some(100.0));
        at(&mut p, "b", "Waiting", None);
        let s = p.snapshot();
        assert_eq!((s.percent, s.total), (None, Some(2_000)));
        at(&mut p, "b", "Downloading", Some((0, 2_000)));
        assert_eq!(p.snapshot().percent, Some(50.0));
    }

    #[test]
    fn present_layers_count_no_bytes_and_unknown_totals_stay_unknown() {
        let mut p = PullProgress::new("img");
        at(&mut p, "a", "Already exists", None);
        at(&mut p, "b", "Pulling fs layer", None);
        // A small layer can go to complete without a size ever being said.
        at(&mut p, "b", "Download complete", None);
        let s = p.snapshot();
        assert_eq!((s.current, s.total, s.percent), (Some(0), None, None));
        assert_eq!(s.phase, "extracting");
        at(&mut p, "b", "Pull complete", None);
        let s = p.snapshot();
        assert_eq!(s.phase, "complete");
        assert_eq!(s.percent, Some(100.0), "done is done");
    }

    #[test]
    fn a_late_status_does_not_move_a_layer_back_and_ids_that_are_tags_are_ignored() {
        let mut p = PullProgress::new("img");
        at(&mut p, "a", "Downloading", Some((10, 100)));
        at(&mut p, "a", "Download complete", None);
        at(&mut p, "a", "Waiting", None);
        let s = p.snapshot();
        assert_eq!(s.current, Some(100));
        assert_eq!(s.phase, "extracting");
        p.update(None, "Digest: sha256:00", None, None);
        p.update(Some("latest"), "Pulling from library/img", None, None);
        assert_eq!(p.layers(), (0, 1));
        p.finish();
        assert_eq!(p.snapshot().phase, "complete");
    }
}
