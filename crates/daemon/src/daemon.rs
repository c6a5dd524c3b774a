//! The daemon's main job, as a library function so tests link the same code: open the event
//! source, adopt the host, publish it on the bus, then follow events until told to stop.

use std::future::Future;
use std::path::PathBuf;

use crate::backend::sysfs::SysfsRoot;
use crate::backend::Host;
use crate::dbus::{self, BusChoice};
use crate::events::{EventSpec, EventStream};
use crate::manager::Caller;
use crate::manager::{self, ManagerConfig};
use crate::store::Store;
use vgpud_model::error::{Error, Result};

/// Every root the daemon reads or writes under, and how it talks to the world.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub bus: BusChoice,
    pub sysfs: PathBuf,
    pub dev: PathBuf,
    pub proc_root: PathBuf,
    pub events: EventSpec,
    /// mdevctl's definitions directory.
    pub definitions_dir: PathBuf,
    /// Policy lives in `<config_dir>/policy.d/*.toml`.
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    /// The `vgpud-vmm` binary guests run in; default: next to this executable.
    pub vmm_binary: Option<PathBuf>,
    /// A simulated host's control socket: guests get an emulated device described by it.
    pub sim_control: Option<PathBuf>,
    /// Where Prometheus metrics are served; None = not served.
    pub metrics_listen: Option<crate::metrics::MetricsListen>,
    /// mdevctl's library directory: call-out scripts in `<dir>/scripts.d/callouts`.
    pub mdevctl_lib_dir: PathBuf,
    /// Where the NVIDIA scheduler's modprobe options file goes (/etc/modprobe.d).
    pub modprobe_dir: PathBuf,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            bus: BusChoice::System,
            sysfs: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            proc_root: PathBuf::from("/proc"),
            events: EventSpec::Udev,
            definitions_dir: PathBuf::from("/etc/mdevctl.d"),
            config_dir: PathBuf::from("/etc/vgpud"),
            state_dir: PathBuf::from("/var/lib/vgpud"),
            vmm_binary: None,
            sim_control: None,
            metrics_listen: None,
            mdevctl_lib_dir: PathBuf::from("/usr/lib/mdevctl"),
            modprobe_dir: PathBuf::from("/etc/modprobe.d"),
        }
    }
}

/// Runs until `shutdown` completes. `ready` is called once the bus name is owned.
pub async fn run(
    opts: DaemonOptions,
    ready: impl FnOnce(&zbus::Connection),
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    // Subscribe before the first scan, so nothing that happens in between is missed.
    let mut events = EventStream::open(&opts.events).map_err(|e| {
        Error::Failed(format!(
            "cannot open the event source {:?}: {e}",
            opts.events
        ))
    })?;
    let host = Host::new(SysfsRoot::new(&opts.sysfs)?);
    let store = Store::open(&opts.definitions_dir, &opts.state_dir)?;
    // Watch before the first scan too: definitions written by mdevctl, libvirt or an editor
    // from then on are picked up without a reload.
    let watch = match crate::store::Watch::new(&opts.definitions_dir) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!("definitions written by others need `vgpuctl reload`: {e}");
            None
        }
    };
    let mut config = ManagerConfig::new(host);
    config.dev_root = opts.dev.clone();
    config.proc_root = opts.proc_root.clone();
    config.store = Some(store);
    config.modprobe_dir = Some(opts.modprobe_dir.clone());
    config.callouts = Some(crate::callouts::Callouts::new(
        &opts.definitions_dir,
        &opts.mdevctl_lib_dir,
    ));
    config.state_dir = Some(opts.state_dir.clone());
    let policy_dir = opts.config_dir.join("policy.d");
    config.policy = match vgpud_policy::load_dir(&policy_dir) {
        Ok(p) => p,
        Err(diags) => {
            let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
            tracing::error!(
                "the policy in {} is invalid; only root may act until it is fixed and reloaded:\n{}",
                policy_dir.display(),
                text.join("\n")
            );
            vgpud_policy::Policy::default()
        }
    };
    tracing::info!("policy: {}", config.policy.summary());
    config.policy_dir = Some(policy_dir);
    let guests_dir = opts.state_dir.join("guests");
    let source: std::sync::Arc<dyn crate::manager::guests::DeviceSource> = match &opts.sim_control {
        Some(control) => std::sync::Arc::new(crate::manager::guests::SimSource {
            control: control.clone(),
            dev_root: opts.dev.clone(),
            dir: guests_dir.join("devices"),
        }),
        None => std::sync::Arc::new(crate::manager::guests::VfioSource {
            dev_root: opts.dev.clone(),
        }),
    };
    config.guests = Some(crate::manager::guests::GuestConfig::new(
        opts.vmm_binary
            .clone()
            .unwrap_or_else(crate::manager::guests::GuestConfig::default_binary),
        source,
        guests_dir,
    ));
    let (handle, changes) = manager::spawn(config).await?;
    let conn = dbus::connect(&opts.bus).await.map_err(|e| {
        Error::Failed(format!(
            "cannot connect to the {} bus: {e} (no bus here? try `vgpud --simulate`, --session or --address)",
            match &opts.bus {
                BusChoice::System => "system".to_owned(),
                BusChoice::Session => "session".to_owned(),
                BusChoice::Address(a) => a.clone(),
            }
        ))
    })?;
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
    let (published, publisher) = dbus::serve(&conn, handle.clone(), changes, metrics.clone())
        .await
        .map_err(|e| Error::Failed(format!("cannot serve on the bus: {e}")))?;
    metrics.set_startup(process_age());
    let metrics_server = match &opts.metrics_listen {
        Some(listen) => {
            let shown = format!("{listen:?}");
            // Bound before `ready`, so a scraper started after it finds the socket.
            let bound = crate::metrics::bind(listen)
                .await
                .map_err(|e| Error::Failed(format!("cannot serve metrics on {shown}: {e}")))?;
            let view = move || {
                let published = published.clone();
                async move { published.metrics_view().await }
            };
            let server = crate::metrics::serve(bound, metrics.clone(), view);
            Some(tokio::spawn(async move {
                if let Err(e) = server.await {
                    tracing::error!("serving metrics on {shown} failed: {e}");
                }
            }))
        }
        None => None,
    };
    ready(&conn);
    let feeder = {
        let handle = handle.clone();
        async move {
            loop {
                match events.recv().await {
                    Ok(e) => {
                        metrics.uevent();
                        if handle.event(e).is_err() {
                            return Err(Error::Failed("the manager stopped".into()));
                        }
                    }
                    Err(e) => return Err(Error::Failed(format!("the event source failed: {e}"))),
                }
            }
        }
    };
    let watcher = {
        let handle = handle.clone();
        async move {
            let Some(mut watch) = watch else {
                return std::future::pending::<()>().await;
            };
            loop {
                if let Err(e) = watch.changed().await {
                    tracing::warn!("the definitions watch failed: {e}");
                    return std::future::pending::<()>().await;
                }
                if handle.definitions_changed().is_err() {
                    return;
                }
            }
        }
    };
    let reloader = {
        let handle = handle.clone();
        async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return std::future::pending::<()>().await;
            };
            while hup.recv().await.is_some() {
                match handle.reload(Caller::internal("SIGHUP")).await {
                    Ok(summary) => tracing::info!("SIGHUP: reloaded; policy: {summary}"),
                    Err(e) => tracing::error!("SIGHUP: {e}"),
                }
            }
        }
    };
    let result = tokio::select! {
        r = feeder => r,
        _ = reloader => Ok(()),
        _ = watcher => Err(Error::Failed("the manager stopped".into())),
        _ = shutdown => Ok(()),
    };
    publisher.abort();
    if let Some(server) = metrics_server {
        server.abort();
    }
    // Giving the name back stops zbus's watch on it, which would otherwise log a failed read
    // of the closed socket; a bus that is gone already answers at once.
    let release = conn.release_name(crate::dbus::names::BUS_NAME);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), release).await;
    drop(conn);
    result
}

/// How long this process has run (from its start time in /proc/self/stat; the time since the
/// first call here where that cannot be read).
fn process_age() -> std::time::Duration {
    use std::time::Duration;
    let since_boot = || -> Option<Duration> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Field 22 (starttime, in clock ticks since boot) counts from after the ")" of comm.
        let rest = stat.rsplit_once(')')?.1;
        let ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
        let up: f64 = uptime.split_whitespace().next()?.parse().ok()?;
        (hz > 0).then(|| Duration::from_secs_f64((up - ticks as f64 / hz as f64).max(0.0)))
    };
    since_boot().unwrap_or_default()
}

/// An error with its sources, for messages that end up in front of a person.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
