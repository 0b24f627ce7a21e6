//! Wall-clock time, and the poll loop the harnesses wait with.

use std::time::{Duration, Instant};

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Calls `fetch` every `every` until `done` holds for its answer or `timeout` has passed, and
/// returns the last answer either way, so that the caller's assertion shows what it last saw
/// instead of only that time ran out.
pub(crate) async fn poll_until<T, F>(
    timeout: Duration,
    every: Duration,
    mut fetch: impl FnMut() -> F,
    done: impl Fn(&T) -> bool,
) -> T
where
    F: Future<Output = T>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let answer = fetch().await;
        if done(&answer) || Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(every).await;
    }
}
