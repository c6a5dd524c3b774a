//! Latency samples and process memory, as the summary reports them.

use std::time::Duration;

/// Latencies of one kind of operation.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    pub times: Vec<Duration>,
}

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.times.push(d);
    }

    pub fn len(&self) -> usize {
        self.times.len()
    }

    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }

    pub fn extend(&mut self, other: &Samples) {
        self.times.extend_from_slice(&other.times);
    }

    /// The nearest-rank percentile `p` (0..=1) in milliseconds; NaN when empty.
    pub fn ms(&self, p: f64) -> f64 {
        if self.times.is_empty() {
            return f64::NAN;
        }
        let mut v = self.times.clone();
        v.sort();
        let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1].as_secs_f64() * 1e3
    }

    /// "p50 / p99 ms" for the table.
    pub fn p50_p99(&self) -> String {
        format!("p50 {:.2} / p99 {:.2} ms", self.ms(0.5), self.ms(0.99))
    }
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut s = Samples::default();
        for ms in 1..=100 {
            s.push(Duration::from_millis(ms));
        }
        assert_eq!(s.ms(0.5), 50.0);
        assert_eq!(s.ms(0.99), 99.0);
        assert_eq!(s.ms(1.0), 100.0);
        assert!(Samples::default().ms(0.5).is_nan());
    }

    #[test]
    fn rss_of_this_process_is_known() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        assert_eq!(rss_kib(u32::MAX), None);
    }
}
