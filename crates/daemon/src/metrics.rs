//! Prometheus metrics (`vgpud --metrics-listen ADDR`): what is on the bus as gauges (instances
//! per parent and type, devices and guests by state), what callers asked as counters (operations
//! by method and result, with a latency histogram; uevents) and the start-up time. Served in the
//! text exposition format on a loopback TCP address or a unix socket, by a minimal HTTP/1.1
//! responder: GET /metrics, nothing else.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::manager::guests::GuestState;
use crate::manager::DeviceView;
use vgpud_model::Parent;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Where metrics are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetricsListenError {
    #[error("{0} is not a loopback address: metrics tell what a host has, so vgpud serves them on loopback or a unix socket only (put a proxy in front to publish them)")]
    NotLoopback(SocketAddr),
    #[error("{0:?} is neither an IP:PORT nor an absolute unix socket path")]
    Unparsable(String),
}

impl FromStr for MetricsListen {
    type Err = MetricsListenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(s)));
        }
        let addr: SocketAddr = s
            .parse()
            .map_err(|_| MetricsListenError::Unparsable(s.chars().take(64).collect()))?;
        if !addr.ip().is_loopback() {
            return Err(MetricsListenError::NotLoopback(addr));
        }
        Ok(Self::Tcp(addr))
    }
}

#[derive(Default)]
struct Operation {
    count: u64,
    by_result: BTreeMap<&'static str, u64>,
    /// Cumulative counts per bucket of BUCKETS.
    buckets: [u64; BUCKETS.len()],
    sum: f64,
}

/// The counters; the gauges come from a `View` at each scrape.
#[derive(Default)]
pub struct Metrics {
    operations: Mutex<BTreeMap<&'static str, Operation>>,
    uevents: AtomicU64,
    startup_ms: AtomicU64,
}

/// What is on the bus at the moment of a scrape.
#[derive(Debug, Default, Clone)]
pub struct View {
    pub parents: Vec<Parent>,
    pub devices: Vec<DeviceView>,
    pub guests: Vec<GuestState>,
}

impl Metrics {
    /// One answered call of `method`: `result` is "ok" or the D-Bus error's class name.
    pub fn observe(&self, method: &'static str, result: &'static str, took: Duration) {
        let secs = took.as_secs_f64();
        let mut ops = self.operations.lock().unwrap_or_else(|p| p.into_inner());
        let op = ops.entry(method).or_default();
        op.count += 1;
        *op.by_result.entry(result).or_default() += 1;
        op.sum += secs;
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                op.buckets[i] += 1;
            }
        }
    }

    pub fn uevent(&self) {
        self.uevents.fetch_add(1, Ordering::Relaxed);
    }

    /// From the process's start to the bus name being owned.
    pub fn set_startup(&self, took: Duration) {
        self.startup_ms
            .store(took.as_millis() as u64, Ordering::Relaxed);
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self, view: &View) -> String {
        let mut out = String::new();
        gauges(&mut out, view);
        let ops = self.operations.lock().unwrap_or_else(|p| p.into_inner());
        header(
            &mut out,
            "vgpud_operations_total",
            "counter",
            "D-Bus calls answered, by method and result (ok or the org.vgpud1.Error class).",
        );
        for (method, op) in ops.iter() {
            for (result, n) in &op.by_result {
                let _ = writeln!(
                    out,
                    "vgpud_operations_total{{method=\"{method}\",result=\"{result}\"}} {n}"
                );
            }
        }
        header(
            &mut out,
            "vgpud_authorization_denials_total",
            "counter",
            "Calls refused by vgpud's policy (PolicyDenied) or by polkit (AccessDenied).",
        );
        for reason in ["PolicyDenied", "AccessDenied"] {
            let n: u64 = ops
                .values()
                .map(|op| op.by_result.get(reason).copied().unwrap_or(0))
                .sum();
            let _ = writeln!(
                out,
                "vgpud_authorization_denials_total{{reason=\"{reason}\"}} {n}"
            );
        }
        header(
            &mut out,
            "vgpud_operation_duration_seconds",
            "histogram",
            "Time from a D-Bus call's arrival to its answer, by method.",
        );
        for (method, op) in ops.iter() {
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "vgpud_operation_duration_seconds_bucket{{method=\"{method}\",le=\"{bound}\"}} {}", op.buckets[i]);
            }
            let _ = writeln!(
                out,
                "vgpud_operation_duration_seconds_bucket{{method=\"{method}\",le=\"+Inf\"}} {}",
                op.count
            );
            let _ = writeln!(
                out,
                "vgpud_operation_duration_seconds_sum{{method=\"{method}\"}} {}",
                op.sum
            );
            let _ = writeln!(
                out,
                "vgpud_operation_duration_seconds_count{{method=\"{method}\"}} {}",
                op.count
            );
        }
        drop(ops);
        header(
            &mut out,
            "vgpud_uevents_total",
            "counter",
            "Kernel (or simulator) uevents vgpud acted on.",
        );
        let _ = writeln!(
            out,
            "vgpud_uevents_total {}",
            self.uevents.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "vgpud_startup_seconds",
            "gauge",
            "From the process's start to owning its bus name.",
        );
        let _ = writeln!(
            out,
            "vgpud_startup_seconds {}",
            self.startup_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped as the format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn gauges(out: &mut String, view: &View) {
    header(
        out,
        "vgpud_parents",
        "gauge",
        "mdev parents (GPUs and other devices offering types) vgpud sees.",
    );
    let _ = writeln!(out, "vgpud_parents {}", view.parents.len());
    header(
        out,
        "vgpud_available_instances",
        "gauge",
        "How many more devices of a type the parent's driver says it can create now.",
    );
    for p in &view.parents {
        for t in &p.types {
            let _ = writeln!(
                out,
                "vgpud_available_instances{{parent=\"{}\",type=\"{}\",name=\"{}\"}} {}",
                label(p.name.as_str()),
                label(t.id.as_str()),
                label(t.name.as_deref().unwrap_or("")),
                t.available_instances
            );
        }
    }
    header(
        out,
        "vgpud_used_instances",
        "gauge",
        "Live devices of a type on a parent.",
    );
    for p in &view.parents {
        for t in &p.types {
            let used = view
                .devices
                .iter()
                .filter(|d| {
                    d.live.is_some() && d.parent == p.name && d.type_id.as_ref() == Some(&t.id)
                })
                .count();
            let _ = writeln!(
                out,
                "vgpud_used_instances{{parent=\"{}\",type=\"{}\"}} {used}",
                label(p.name.as_str()),
                label(t.id.as_str())
            );
        }
    }
    header(out, "vgpud_devices", "gauge", "Devices by state: active (live, free), in_use (a VM holds it), removing, defined (not started).");
    let mut states: BTreeMap<&str, usize> = ["active", "in_use", "removing", "defined"]
        .into_iter()
        .map(|s| (s, 0))
        .collect();
    for d in &view.devices {
        let state = match (&d.live, d.removing, d.in_use) {
            (None, _, _) => "defined",
            (Some(_), true, _) => "removing",
            (Some(_), false, true) => "in_use",
            (Some(_), false, false) => "active",
        };
        *states.entry(state).or_default() += 1;
    }
    for (state, n) in states {
        let _ = writeln!(out, "vgpud_devices{{state=\"{state}\"}} {n}");
    }
    header(
        out,
        "vgpud_guests",
        "gauge",
        "Guests (vgpud-vmm processes) by state.",
    );
    for state in [GuestState::Running, GuestState::Exited, GuestState::Crashed] {
        let n = view.guests.iter().filter(|g| **g == state).count();
        let _ = writeln!(out, "vgpud_guests{{state=\"{}\"}} {n}", state.as_str());
    }
}

/// A bound metrics listener.
pub enum Bound {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, PathBuf),
}

/// Binds `listen` (a stale unix socket from an earlier run is replaced).
pub async fn bind(listen: &MetricsListen) -> std::io::Result<Bound> {
    match listen {
        MetricsListen::Tcp(addr) => Ok(Bound::Tcp(tokio::net::TcpListener::bind(addr).await?)),
        MetricsListen::Unix(path) => {
            if std::fs::symlink_metadata(path)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            {
                std::fs::remove_file(path)?;
            }
            Ok(Bound::Unix(
                tokio::net::UnixListener::bind(path)?,
                path.clone(),
            ))
        }
    }
}

/// Serves GET /metrics until the task is dropped; `view` is asked at every scrape.
pub async fn serve<F, Fut>(
    bound: Bound,
    metrics: std::sync::Arc<Metrics>,
    view: F,
) -> std::io::Result<()>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = View> + Send + 'static,
{
    let view = std::sync::Arc::new(view);
    match bound {
        Bound::Tcp(listener) => {
            tracing::info!(
                "serving metrics on http://{}/metrics",
                listener.local_addr()?
            );
            loop {
                let (stream, _) = listener.accept().await?;
                tokio::spawn(answer(stream, metrics.clone(), view.clone()));
            }
        }
        Bound::Unix(listener, path) => {
            tracing::info!("serving metrics on unix socket {}", path.display());
            loop {
                let (stream, _) = listener.accept().await?;
                tokio::spawn(answer(stream, metrics.clone(), view.clone()));
            }
        }
    }
}

/// Answers one connection: reads the request head (bounded), then one response and close.
async fn answer<S, F, Fut>(mut stream: S, metrics: std::sync::Arc<Metrics>, view: std::sync::Arc<F>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = View>,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return;
    }
    let response = match request_target(&head) {
        Some("/metrics") => {
            let body = metrics.render(&view().await);
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        }
        Some(_) => "HTTP/1.1 404 Not Found\r\nContent-Length: 22\r\nConnection: close\r\n\r\nonly /metrics is here\n".to_owned(),
        None => "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The path of a `GET PATH HTTP/1.x` request (query string dropped), None for anything else.
fn request_target(head: &[u8]) -> Option<&str> {
    let line = std::str::from_utf8(head).ok()?.lines().next()?;
    let mut words = line.split(' ');
    let (method, target, version) = (words.next()?, words.next()?, words.next()?);
    if method != "GET" || !version.starts_with("HTTP/1.") || words.next().is_some() {
        return None;
    }
    Some(target.split('?').next().unwrap_or(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_loopback_or_a_socket_path_only() {
        assert_eq!(
            "127.0.0.1:9400".parse::<MetricsListen>(),
            Ok(MetricsListen::Tcp("127.0.0.1:9400".parse().unwrap()))
        );
        assert!(matches!(
            "[::1]:9400".parse::<MetricsListen>(),
            Ok(MetricsListen::Tcp(_))
        ));
        assert_eq!(
            "/run/vgpud/metrics.sock".parse::<MetricsListen>(),
            Ok(MetricsListen::Unix("/run/vgpud/metrics.sock".into()))
        );
        assert!(matches!(
            "0.0.0.0:9400".parse::<MetricsListen>(),
            Err(MetricsListenError::NotLoopback(_))
        ));
        assert!(matches!(
            "192.168.1.2:9400".parse::<MetricsListen>(),
            Err(MetricsListenError::NotLoopback(_))
        ));
        assert!(matches!(
            "localhost".parse::<MetricsListen>(),
            Err(MetricsListenError::Unparsable(_))
        ));
        assert!(matches!(
            "metrics.sock".parse::<MetricsListen>(),
            Err(MetricsListenError::Unparsable(_))
        ));
    }

    #[test]
    fn only_a_get_of_a_path_is_a_request() {
        assert_eq!(
            request_target(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some("/metrics")
        );
        assert_eq!(
            request_target(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some("/metrics")
        );
        assert_eq!(request_target(b"POST /metrics HTTP/1.1\r\n\r\n"), None);
        assert_eq!(request_target(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(request_target(b"\xff\xfe"), None);
    }

    #[test]
    fn the_histogram_is_cumulative_and_counts_every_result() {
        let m = Metrics::default();
        m.observe("CreateDevice", "ok", Duration::from_millis(3));
        m.observe("CreateDevice", "PolicyDenied", Duration::from_millis(30));
        m.observe("CreateDevice", "ok", Duration::from_secs(20));
        let text = m.render(&View::default());
        assert!(
            text.contains("vgpud_operations_total{method=\"CreateDevice\",result=\"ok\"} 2\n"),
            "{text}"
        );
        assert!(text.contains(
            "vgpud_operations_total{method=\"CreateDevice\",result=\"PolicyDenied\"} 1\n"
        ));
        assert!(text.contains("vgpud_authorization_denials_total{reason=\"PolicyDenied\"} 1\n"));
        assert!(text.contains("le=\"0.001\"} 0\n"));
        assert!(text.contains("le=\"0.005\"} 1\n"));
        assert!(text.contains("le=\"0.05\"} 2\n"));
        assert!(text.contains("le=\"10\"} 2\n"));
        assert!(text.contains("le=\"+Inf\"} 3\n"));
        assert!(
            text.contains("vgpud_operation_duration_seconds_count{method=\"CreateDevice\"} 3\n")
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("GRID \"T4\"\\2Q\n"), "GRID \\\"T4\\\"\\\\2Q\\n");
    }
}
