//! The controller's Kubernetes clients: kube's default stack (in-cluster config or kubeconfig)
//! with a client-side request rate limit, like client-go's QPS and burst, and a second client
//! for the Lease that the limit never delays.
//!
//! kube-rs sends as fast as it is asked; the limit is what keeps a controller that creates
//! 30,000 CronJobs and PVCs at once (5,000 nodes x 3 PieProbes) from taking the API server's
//! whole share of its priority level. The Lease has its own client so that a renewal never
//! waits behind a burst of applies: a late renewal loses leadership.

use std::time::Duration;

use kube::client::ClientBuilder;
use kube::{Client, Config};
use tower::limit::RateLimitLayer;
use tower::util::option_layer;

/// Flags of the client-side rate limit.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct ClientArgs {
    /// Requests per second pie-controller sends to the Kubernetes API server, on average
    /// (0: no client-side limit; the API server's priority and fairness still applies). Requests
    /// over the limit wait; none is dropped. Leader election is not limited.
    #[arg(long, env = "PIE_KUBE_QPS", default_value_t = 100.0, value_parser = parse_qps)]
    pub kube_qps: f64,
    /// Requests pie-controller may send at once before --kube-qps holds it back: at most this
    /// many in each window of BURST/QPS seconds.
    #[arg(long, env = "PIE_KUBE_BURST", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub kube_burst: u32,
}

impl ClientArgs {
    /// The limit as tower's fixed-window rate: `burst` requests per `burst / qps` seconds;
    /// `None` for no limit.
    pub fn layer(&self) -> Option<RateLimitLayer> {
        (self.kube_qps > 0.0).then(|| {
            let window = Duration::from_secs_f64(f64::from(self.kube_burst) / self.kube_qps);
            RateLimitLayer::new(u64::from(self.kube_burst), window)
        })
    }
}

fn parse_qps(value: &str) -> Result<f64, String> {
    let qps: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number"))?;
    if !qps.is_finite() || qps < 0.0 {
        return Err(format!(
            "{value} is not a request rate (a number >= 0; 0 turns the limit off)"
        ));
    }
    Ok(qps)
}

/// The clients `run` uses.
#[derive(Clone)]
pub struct Clients {
    /// Everything but leader election: watches, applies, patches, Events, TokenReviews.
    pub api: Client,
    /// Leader election alone, not rate limited.
    pub lease: Client,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").finish_non_exhaustive()
    }
}

/// Connects with the in-cluster config or the kubeconfig, as `kube::Client::try_default` does.
pub async fn connect(args: &ClientArgs) -> Result<Clients, kube::Error> {
    let config = Config::infer().await.map_err(kube::Error::InferConfig)?;
    let api = ClientBuilder::try_from(config.clone())?
        .with_layer(&option_layer(args.layer()))
        .build();
    let lease = Client::try_from(config)?;
    Ok(Clients { api, lease })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use tower::{Service, ServiceExt};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        client: ClientArgs,
    }

    fn parse(args: &[&str]) -> Result<ClientArgs, String> {
        Cli::try_parse_from(std::iter::once("pie").chain(args.iter().copied()))
            .map(|c| c.client)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn flags_and_their_bad_values() {
        let d = parse(&[]).unwrap();
        assert_eq!((d.kube_qps, d.kube_burst), (100.0, 200));
        let set = parse(&["--kube-qps", "12.5", "--kube-burst", "25"]).unwrap();
        assert_eq!((set.kube_qps, set.kube_burst), (12.5, 25));
        assert!(parse(&["--kube-qps", "0"]).unwrap().layer().is_none());
        // Bad input: clap's one-line error naming the flag and why.
        for (args, why) in [
            (&["--kube-qps=-1"][..], "is not a request rate"),
            (&["--kube-qps", "fast"][..], "is not a number"),
            (&["--kube-qps", "inf"][..], "is not a request rate"),
            (&["--kube-qps", "NaN"][..], "is not a request rate"),
            (&["--kube-burst", "0"][..], "0 is not in 1.."),
            (&["--kube-burst=-3"][..], "--kube-burst"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(why), "{args:?}: {e}");
            assert!(e.lines().next().unwrap().starts_with("error: "), "{e}");
        }
    }

    /// With `--kube-qps 10 --kube-burst 3`, three requests go at once and the fourth waits
    /// for the next 0.3 s window (tokio's clock paused: no timing assumption).
    #[tokio::test(start_paused = true)]
    async fn requests_over_the_burst_wait_for_the_next_window() {
        let args = ClientArgs {
            kube_qps: 10.0,
            kube_burst: 3,
        };
        let (mock, mut handle) = tower_test::mock::pair::<u32, u32>();
        let mut limited = tower::ServiceBuilder::new()
            .layer(option_layer(args.layer()))
            .service(mock);
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                send.send_response(req);
            }
        });
        let start = tokio::time::Instant::now();
        for i in 0..3 {
            let answer = limited.ready().await.unwrap().call(i).await.unwrap();
            assert_eq!(answer, i);
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst goes at once");
        limited.ready().await.unwrap().call(3).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }
}
