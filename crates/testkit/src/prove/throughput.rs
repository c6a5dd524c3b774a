//! The figures of the fast-path goals that one create at a time cannot show: many clients at
//! once, how soon a client hears of a device someone else made, how long the whole object tree
//! takes to fetch, and start-up on a plain copy of the tree (no FUSE: as on real sysfs).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use zbus::zvariant::Value;

use crate::prove::rig::Rig;
use crate::prove::stats::Samples;
use vgpud_api::proxies::{DeviceProxy, ManagerProxy};

/// Many clients creating and removing at once, each on its own parent.
#[derive(Debug, Default)]
pub struct Concurrent {
    pub clients: usize,
    /// Every call (a create or a remove) with its latency.
    pub calls: Samples,
    pub errors: usize,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

impl Concurrent {
    /// Calls (creates and removes) per second.
    pub fn calls_per_s(&self) -> f64 {
        self.calls.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn line(&self) -> String {
        format!(
            "  {} clients, each create + remove on its own parent for {:.1} s: {} calls, {:.0} calls/s ({:.0} create+remove pairs/s), call {}, {} errors{}",
            self.clients,
            self.elapsed.as_secs_f64(),
            self.calls.len(),
            self.calls_per_s(),
            self.calls_per_s() / 2.0,
            self.calls.p50_p99(),
            self.errors,
            self.first_error
                .as_ref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        )
    }
}

/// `clients` connections, each creating and removing one device at a time on its own parent of
/// `targets` for `duration`.
pub async fn concurrent(
    rig: &Rig,
    targets: &[(String, String)],
    clients: usize,
    duration: Duration,
) -> Result<Concurrent, String> {
    if targets.len() < clients {
        return Err(format!(
            "{clients} clients need as many parents; the host has {}",
            targets.len()
        ));
    }
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(rig.connect().await?);
    }
    let started = Instant::now();
    let deadline = started + duration;
    let runs = conns
        .iter()
        .zip(targets)
        .map(|(conn, (parent, type_id))| async move {
            let mut calls = Samples::default();
            let mut errors = Vec::new();
            let m = match ManagerProxy::builder(conn)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await
            {
                Ok(m) => m,
                Err(e) => return (calls, vec![e.to_string()]),
            };
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let opts = HashMap::from([("parent", Value::from(parent.as_str()))]);
                let path = match m.create_device(type_id, opts).await {
                    Ok(p) => p,
                    Err(e) => {
                        errors.push(format!("CreateDevice on {parent}: {e}"));
                        continue;
                    }
                };
                calls.push(t0.elapsed());
                let dev = match DeviceProxy::builder(conn).path(path) {
                    Ok(b) => {
                        b.cache_properties(zbus::proxy::CacheProperties::No)
                            .build()
                            .await
                    }
                    Err(e) => Err(e),
                };
                let t1 = Instant::now();
                match dev {
                    Ok(d) => match d.remove(HashMap::new()).await {
                        Ok(()) => calls.push(t1.elapsed()),
                        Err(e) => errors.push(format!("Remove on {parent}: {e}")),
                    },
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (calls, errors)
        });
    let results = futures_util::future::join_all(runs).await;
    let mut out = Concurrent {
        clients,
        elapsed: started.elapsed(),
        ..Default::default()
    };
    for (calls, errors) in results {
        out.calls.extend(&calls);
        out.errors += errors.len();
        if out.first_error.is_none() {
            out.first_error = errors.into_iter().next();
        }
    }
    Ok(out)
}

/// From a raw write of `create` (someone else's device) to InterfacesAdded at a client, and
/// from its raw remove to InterfacesRemoved.
#[derive(Debug, Default)]
pub struct Heard {
    pub added: Samples,
    pub removed: Samples,
    pub error: Option<String>,
}

pub async fn external(rig: &Rig, parent: &str, type_id: &str, n: usize) -> Heard {
    let mut heard = Heard::default();
    if let Err(e) = external_rounds(rig, parent, type_id, n, &mut heard).await {
        heard.error = Some(e);
    }
    heard
}

async fn external_rounds(
    rig: &Rig,
    parent: &str,
    type_id: &str,
    n: usize,
    heard: &mut Heard,
) -> Result<(), String> {
    let conn = rig.connect().await?;
    let om = super::check::object_manager(&conn).await?;
    let mut added = om
        .receive_interfaces_added()
        .await
        .map_err(|e| e.to_string())?;
    let mut removed = om
        .receive_interfaces_removed()
        .await
        .map_err(|e| e.to_string())?;
    let sys = &rig.sim.mount;
    let create = sys.join(format!(
        "class/mdev_bus/{parent}/mdev_supported_types/{type_id}/create"
    ));
    let bound = Duration::from_secs(5);
    for i in 0..n {
        let u = format!("e0e0{i:04x}-0000-4000-8000-{i:012x}");
        let path = vgpud_api::names::device_path(
            &vgpud_model::MdevUuid::parse(&u).map_err(|e| e.to_string())?,
        );
        let t0 = Instant::now();
        std::fs::write(&create, format!("{u}\n"))
            .map_err(|e| format!("write {}: {e}", create.display()))?;
        let seen = heard_within(bound, &mut added, |s| {
            s.args()
                .is_ok_and(|a| a.object_path().as_str() == path.as_str())
        })
        .await;
        if !seen {
            return Err(format!("no InterfacesAdded for {u} within {bound:?}"));
        }
        heard.added.push(t0.elapsed());
        let t1 = Instant::now();
        std::fs::write(sys.join(format!("bus/mdev/devices/{u}/remove")), "1")
            .map_err(|e| format!("remove {u}: {e}"))?;
        let seen = heard_within(bound, &mut removed, |s| {
            s.args()
                .is_ok_and(|a| a.object_path().as_str() == path.as_str())
        })
        .await;
        if !seen {
            return Err(format!("no InterfacesRemoved for {u} within {bound:?}"));
        }
        heard.removed.push(t1.elapsed());
    }
    Ok(())
}

/// Whether `stream` yields an item `wanted` accepts within `bound`.
async fn heard_within<S: futures_util::Stream + Unpin>(
    bound: Duration,
    stream: &mut S,
    wanted: impl Fn(&S::Item) -> bool,
) -> bool {
    let found = async {
        while let Some(item) = stream.next().await {
            if wanted(&item) {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(bound, found).await == Ok(true)
}

/// GetManagedObjects to a zbus client: how long, and how many objects.
pub async fn fetch_all(rig: &Rig) -> Result<(Duration, usize), String> {
    let conn = rig.connect().await?;
    let t0 = Instant::now();
    let all = super::check::managed_objects(&conn).await?;
    Ok((t0.elapsed(), all.len()))
}

/// `cp -a` of the simulated tree to `to` (a plain directory tree, as a tool copying sysfs
/// pays it); returns how long it took.
pub fn copy_tree(from: &Path, to: &Path) -> Result<Duration, String> {
    let t0 = Instant::now();
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .map_err(|e| format!("cannot run cp: {e}"))?;
    // Write-only attributes (create, remove, bind) cannot be read: cp reports them and copies
    // the rest, which is what a start-up reads.
    if !to.join("class/mdev_bus").is_dir() {
        return Err(format!(
            "cp -a {} {} made no class/mdev_bus: {}",
            from.display(),
            to.display(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or_default()
        ));
    }
    Ok(t0.elapsed())
}
