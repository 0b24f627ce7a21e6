//! HTTP to the programs under test, and reading the Prometheus text expositions they serve.

use std::time::Duration;

/// GETs a `/metrics` URL and returns its text; panics unless it answers 2xx.
pub async fn scrape(url: &str) -> String {
    ok_body(http_client().get(url), &format!("GET {url}")).await
}

/// Sends `request` and returns the body; panics, naming `what` and showing the status and the
/// body (the programs under test say there what was wrong), unless it answers 2xx.
pub(crate) async fn ok_body(request: reqwest::RequestBuilder, what: &str) -> String {
    let resp = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = resp.status();
    let body = resp
        .text()
        .await
        .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
    assert!(status.is_success(), "{what}: {status}: {body}");
    body
}

/// An HTTP client for tests (plain HTTP on loopback, short timeouts).
pub fn http_client() -> reqwest::Client {
    // reqwest is built without a rustls crypto provider (`rustls-no-provider`); the first
    // client installs ring's for the process, later ones find it there.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build the test HTTP client")
}

/// The value of the sample `name{labels}` in a Prometheus text exposition, where `labels` are
/// all of the series' labels (in any order).
pub fn scrape_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let (n, rest) = key.split_once('{').unwrap_or((key, "}"));
            if n != name {
                return None;
            }
            let inner = rest.strip_suffix('}')?;
            let mut got: Vec<(&str, &str)> = if inner.is_empty() {
                Vec::new()
            } else {
                inner
                    .split("\",")
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").unwrap_or((pair, ""));
                        (k, v.trim_end_matches('"'))
                    })
                    .collect()
            };
            got.sort_unstable();
            let mut want = labels.to_vec();
            want.sort_unstable();
            (got == want).then(|| value.parse().ok()).flatten()
        })
}

/// The sum of the values of the sample lines of a Prometheus text exposition whose name is
/// `name` and that contain every string of `contains` (e.g. `code="5`), 0 when there is none.
pub fn scrape_sum(text: &str, name: &str, contains: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter(|l| contains.iter().all(|c| l.contains(c)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}
