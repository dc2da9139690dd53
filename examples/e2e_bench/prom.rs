//! The service's `/metrics`: a minimal HTTP GET and a Prometheus text-exposition reader
//! (sums, labels, histogram buckets and quantiles).

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).await?;
        Ok::<_, std::io::Error>(resp)
    };
    let resp = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET http://{addr}{path}: no HTTP status line"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A Prometheus text exposition.
pub(crate) struct Prom(pub(crate) String);

impl Prom {
    /// (name, labels without braces, value) of every sample.
    fn samples(&self) -> impl Iterator<Item = (&str, &str, f64)> {
        self.0.lines().filter(|l| !l.starts_with('#')).filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value = value.parse::<f64>().ok()?;
            Some(match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}'), value),
                None => (series, "", value),
            })
        })
    }

    /// Sum over all label sets.
    pub(crate) fn sum(&self, name: &str) -> f64 {
        self.samples()
            .filter(|(n, _, _)| *n == name)
            .map(|(_, _, v)| v)
            .sum()
    }

    pub(crate) fn sum_u64(&self, name: &str) -> u64 {
        self.sum(name).round() as u64
    }

    /// Values by one label (summed over the others).
    pub(crate) fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (n, labels, v) in self.samples() {
            if n == name {
                let key = label_value(labels, label).unwrap_or_default().to_string();
                *out.entry(key).or_insert(0) += v.round() as u64;
            }
        }
        out
    }

    /// `sum by (le) (name_bucket)`: (upper bound, cumulative count), ascending.
    pub(crate) fn histogram(&self, name: &str) -> Buckets {
        let bucket = format!("{name}_bucket");
        let mut cumulative: Vec<(f64, f64)> = Vec::new();
        for (n, labels, v) in self.samples() {
            if n != bucket {
                continue;
            }
            let le = match label_value(labels, "le") {
                Some("+Inf") => f64::INFINITY,
                Some(s) => match s.parse() {
                    Ok(le) => le,
                    Err(_) => continue,
                },
                None => continue,
            };
            match cumulative.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += v,
                None => cumulative.push((le, v)),
            }
        }
        cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
        Buckets(cumulative)
    }

    /// `histogram_quantile(q, sum by (le) (name_bucket))`: linear within the bucket.
    pub(crate) fn histogram_quantile(&self, name: &str, q: f64) -> Option<f64> {
        self.histogram(name).quantile(q).map(|b| b.estimate)
    }
}

/// A histogram's cumulative buckets, (upper bound, count), ascending.
#[derive(Clone, Debug, Default)]
pub(crate) struct Buckets(Vec<(f64, f64)>);

/// A quantile read from buckets: the bucket it falls in, and Prometheus' linear estimate.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BucketQuantile {
    pub(crate) estimate: f64,
    pub(crate) lower: f64,
    pub(crate) upper: f64,
}

impl Buckets {
    /// What was observed after `earlier` was scraped (same histogram, counts only grow).
    pub(crate) fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|&(le, c)| {
                    let before = earlier.0.iter().find(|(b, _)| *b == le).map_or(0.0, |b| b.1);
                    (le, c - before)
                })
                .collect(),
        )
    }

    pub(crate) fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |b| b.1)
    }

    pub(crate) fn quantile(&self, q: f64) -> Option<BucketQuantile> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for &(le, count) in &self.0 {
            if count >= rank {
                let estimate = if le.is_infinite() {
                    lower
                } else {
                    lower + (le - lower) * (rank - below) / (count - below).max(1e-12)
                };
                return Some(BucketQuantile {
                    estimate,
                    lower,
                    upper: le,
                });
            }
            (lower, below) = (le, count);
        }
        None
    }
}

fn label_value<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}
