//! Helpers shared by the mock upstream and the bench client.

use std::collections::HashMap;

/// `CLOCK_MONOTONIC` in nanoseconds. The upstream stamps each SSE event with it when the event
/// is handed to the socket, and the client subtracts it from its own reading at receipt: both
/// processes run on one machine, where this clock is system-wide (unlike `Instant`, whose value
/// cannot be exchanged between processes).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `--key value` arguments (and bare `--flag`s, stored as "true"), plus everything after `--`.
pub struct Args {
    values: HashMap<String, String>,
    pub rest: Vec<String>,
}

impl Args {
    pub fn parse(args: impl Iterator<Item = String>) -> Self {
        let mut values = HashMap::new();
        let mut rest = Vec::new();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            if arg == "--" {
                rest.extend(args.by_ref());
                break;
            }
            let Some(key) = arg.strip_prefix("--") else {
                panic!("unexpected argument {arg:?}");
            };
            let value = match args.peek() {
                Some(next) if !next.starts_with("--") => args.next().unwrap(),
                _ => "true".to_string(),
            };
            values.insert(key.to_string(), value);
        }
        Self { values, rest }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    pub fn req(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("missing required argument --{key}"))
    }

    pub fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> T {
        match self.get(key) {
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| panic!("--{key}: not a number: {v:?}")),
            None => default,
        }
    }

    pub fn flag(&self, key: &str) -> bool {
        self.get(key) == Some("true")
    }
}

/// Exact percentiles over recorded samples (nanoseconds). A run records at most a few million
/// samples, so keeping them all is cheaper than a histogram dependency and has no binning error.
#[derive(Default)]
pub struct Samples(pub Vec<u64>);

impl Samples {
    pub fn merge(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    /// Sorts and summarises: count, mean, p50/p90/p99/p99.9/max (microseconds, fractional) and a
    /// percentile curve for the chart.
    pub fn summary(mut self) -> serde_json::Value {
        self.0.sort_unstable();
        let n = self.0.len();
        if n == 0 {
            return serde_json::json!({ "count": 0 });
        }
        let at = |q: f64| -> f64 {
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            self.0[rank] as f64 / 1000.0
        };
        let mean = self.0.iter().map(|&v| v as f64).sum::<f64>() / n as f64 / 1000.0;
        // Percentiles spaced evenly in "nines" (log scale of 1/(1-q)), as HdrHistogram plots do.
        let curve: Vec<serde_json::Value> = (0..=80)
            .map(|i| {
                let nines = i as f64 / 20.0; // 0 .. 4 nines = 0% .. 99.99%
                let q = 1.0 - 10f64.powf(-nines);
                serde_json::json!([q * 100.0, at(q.max(0.0))])
            })
            .collect();
        serde_json::json!({
            "count": n,
            "mean_us": mean,
            "p50_us": at(0.50),
            "p90_us": at(0.90),
            "p99_us": at(0.99),
            "p999_us": at(0.999),
            "max_us": self.0[n - 1] as f64 / 1000.0,
            "curve": curve,
        })
    }
}
