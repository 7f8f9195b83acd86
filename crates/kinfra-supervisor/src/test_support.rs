//! Waits shared by this crate's unit tests.

use std::time::Duration;

/// Waits (at most `secs`, checking every 20 ms) until `done` holds; whether it did.
pub(crate) async fn eventually(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}
