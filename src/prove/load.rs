//! Load: N concurrent D-Bus clients, each on its own connection, creating and removing devices
//! of randomly chosen types for M operations, in rounds; the daemon's RSS after every round
//! shows whether memory grows with work done.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::dbus::proxies::{DeviceProxy, ManagerProxy};
use crate::prove::rig::Rig;
use crate::prove::stats::Samples;
use crate::prove::{check, Rng};

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub clients: usize,
    /// Create + remove pairs per client per round.
    pub ops_per_client: usize,
    pub rounds: usize,
    pub seed: u64,
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub create: Samples,
    pub remove: Samples,
    /// Successful create + remove pairs.
    pub pairs: usize,
    pub wall: Duration,
    /// Every error a client got, with the type it asked for.
    pub unexpected: Vec<String>,
    pub rss_start_kib: u64,
    /// After each round.
    pub rss_after_kib: Vec<u64>,
    /// Differences between D-Bus and sysfs after the last round (empty when consistent).
    pub inconsistencies: Vec<String>,
    pub types_used: usize,
}

impl LoadReport {
    pub fn ops_per_s(&self) -> f64 {
        (2 * self.pairs) as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// RSS growth from the end of the first round to the end of the last, in KiB.
    pub fn rss_growth_kib(&self) -> i64 {
        match (self.rss_after_kib.first(), self.rss_after_kib.last()) {
            (Some(a), Some(b)) => *b as i64 - *a as i64,
            _ => 0,
        }
    }
}

/// Type names with room for every client at once, so no refusal is legitimate.
fn roomy_types(
    pic: &check::Picture,
    clients: usize,
    names: &HashMap<(String, String), String>,
) -> Vec<String> {
    let mut room: HashMap<String, u32> = HashMap::new();
    for (parent, types) in &pic.parents {
        for (id, n) in types {
            if let Some(name) = names.get(&(parent.clone(), id.clone())) {
                *room.entry(name.clone()).or_default() += n;
            }
        }
    }
    let mut v: Vec<String> = room
        .into_iter()
        .filter(|(_, n)| *n as usize >= 2 * clients)
        .map(|(name, _)| name)
        .collect();
    v.sort();
    v
}

/// Human type names by (parent, type id), read from the published objects.
async fn type_names(conn: &zbus::Connection) -> Result<HashMap<(String, String), String>, String> {
    let pic = check::dbus_picture(conn).await?;
    let mut out = HashMap::new();
    for (parent, types) in &pic.parents {
        for id in types.keys() {
            let path = crate::dbus::names::type_path(
                &crate::model::ParentName::new(parent).map_err(|e| e.to_string())?,
                &crate::model::TypeId::new(id).map_err(|e| e.to_string())?,
            );
            let t = crate::dbus::proxies::MdevTypeProxy::builder(conn)
                .path(path)
                .map_err(|e| e.to_string())?
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await
                .map_err(|e| e.to_string())?;
            let name = t.name().await.unwrap_or_default();
            out.insert(
                (parent.clone(), id.clone()),
                if name.is_empty() { id.clone() } else { name },
            );
        }
    }
    Ok(out)
}

async fn client(
    conn: zbus::Connection,
    types: Vec<String>,
    ops: usize,
    seed: u64,
) -> (Samples, Samples, usize, Vec<String>) {
    let (mut create, mut remove, mut pairs, mut errors) =
        (Samples::default(), Samples::default(), 0, Vec::new());
    let m = match ManagerProxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
    {
        Ok(m) => m,
        Err(e) => return (create, remove, 0, vec![format!("Manager proxy: {e}")]),
    };
    let mut rng = Rng::new(seed);
    for _ in 0..ops {
        let ty = rng.pick(&types).clone();
        let t0 = Instant::now();
        let path = match m.create_device(&ty, HashMap::new()).await {
            Ok(p) => p,
            Err(e) => {
                errors.push(format!("CreateDevice {ty:?}: {e}"));
                continue;
            }
        };
        create.push(t0.elapsed());
        let dev = match DeviceProxy::builder(&conn)
            .path(path)
            .map(|b| b.cache_properties(zbus::proxy::CacheProperties::No))
        {
            Ok(b) => b.build().await,
            Err(e) => Err(e),
        };
        let dev = match dev {
            Ok(d) => d,
            Err(e) => {
                errors.push(format!("Device proxy: {e}"));
                continue;
            }
        };
        let t1 = Instant::now();
        match dev.remove(HashMap::new()).await {
            Ok(()) => {
                remove.push(t1.elapsed());
                pairs += 1;
            }
            Err(e) => errors.push(format!("Remove ({ty}): {e}")),
        }
    }
    (create, remove, pairs, errors)
}

/// Runs the load on `rig`; the host must have room for `clients` devices of several types.
pub async fn run(rig: &Rig, cfg: &LoadConfig) -> Result<LoadReport, String> {
    let names = type_names(rig.conn()).await?;
    let pic = check::dbus_picture(rig.conn()).await?;
    let types = roomy_types(&pic, cfg.clients, &names);
    if types.is_empty() {
        return Err("no type has room for every client".into());
    }
    let mut report = LoadReport {
        rss_start_kib: rig.daemon_rss_kib().unwrap_or(0),
        types_used: types.len(),
        ..Default::default()
    };
    let mut conns = Vec::new();
    for _ in 0..cfg.clients {
        conns.push(rig.connect().await?);
    }
    let started = Instant::now();
    for round in 0..cfg.rounds {
        let tasks: Vec<_> = conns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let seed = cfg.seed ^ ((round as u64) << 32) ^ (i as u64 + 1);
                tokio::spawn(client(c.clone(), types.clone(), cfg.ops_per_client, seed))
            })
            .collect();
        for t in tasks {
            let (c, r, pairs, errors) = t.await.map_err(|e| format!("client task: {e}"))?;
            report.create.extend(&c);
            report.remove.extend(&r);
            report.pairs += pairs;
            report.unexpected.extend(errors);
        }
        report.rss_after_kib.push(rig.daemon_rss_kib().unwrap_or(0));
    }
    report.wall = started.elapsed();
    if let Err(diff) = check::settled(rig.conn(), &rig.sim.mount, Duration::from_secs(10)).await {
        report.inconsistencies = diff;
    }
    Ok(report)
}
