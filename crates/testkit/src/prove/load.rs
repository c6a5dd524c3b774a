//! Load: N concurrent D-Bus clients, each on its own connection, creating and removing devices
//! of randomly chosen types for M operations, in rounds; the daemon's RSS after every round
//! shows whether memory grows with work done.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::prove::rig::Rig;
use crate::prove::stats::Samples;
use crate::prove::{check, Rng};
use vgpud_api::proxies::{DeviceProxy, ManagerProxy};

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

/// The GPU a parent belongs to: its SR-IOV physical function, or itself.
fn gpu_of(sys: &Path, parent: &str) -> String {
    std::fs::read_link(sys.join("class/mdev_bus").join(parent).join("physfn"))
        .ok()
        .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| parent.to_owned())
}

/// Type names no client can legitimately be refused, whatever the others hold at the time
/// (each client holds at most one device). Drivers may allow one type per GPU at a time (NVIDIA)
/// and share capacity between a GPU's types and VFs, so a name is chosen when
/// - more GPUs offer it than there are clients (some GPU is always untouched), or
/// - its free instances alone cover every client and no other chosen name lives on its GPUs.
pub fn safe_types(
    types: &[(String, String, String)],
    available: &check::Picture,
    gpu: impl Fn(&str) -> String,
    clients: usize,
) -> Vec<String> {
    let mut gpus: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut room: BTreeMap<&str, u64> = BTreeMap::new();
    for (parent, id, name) in types {
        let n = available
            .parents
            .get(parent)
            .and_then(|t| t.get(id))
            .copied()
            .unwrap_or(0);
        if n > 0 {
            gpus.entry(name).or_default().insert(gpu(parent));
            *room.entry(name).or_default() += u64::from(n);
        }
    }
    let mut chosen: Vec<String> = gpus
        .iter()
        .filter(|(_, g)| g.len() > clients)
        .map(|(n, _)| n.to_string())
        .collect();
    let mut taken: BTreeSet<String> = chosen
        .iter()
        .flat_map(|n| gpus[n.as_str()].iter().cloned())
        .collect();
    let mut rest: Vec<(&str, u64)> = room
        .iter()
        .filter(|(n, _)| !chosen.iter().any(|c| c == *n))
        .map(|(n, r)| (*n, *r))
        .collect();
    rest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (name, r) in rest {
        let on = &gpus[name];
        if r >= clients as u64 && on.is_disjoint(&taken) {
            taken.extend(on.iter().cloned());
            chosen.push(name.to_owned());
        }
    }
    chosen.sort();
    chosen
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
    let names = check::dbus_type_names(rig.conn()).await?;
    let pic = check::dbus_picture(rig.conn()).await?;
    let types = safe_types(&names, &pic, |p| gpu_of(&rig.sim.mount, p), cfg.clients);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_types_never_mix_names_on_a_crowded_gpu() {
        let t = |p: &str, id: &str, name: &str| (p.to_owned(), id.to_owned(), name.to_owned());
        // Three one-type-per-GPU cards offering A and B, one pooled card (two VFs) offering C
        // and D, one sample driver offering E (room 8).
        let types = vec![
            t("g1", "a", "A"),
            t("g1", "b", "B"),
            t("g2", "a", "A"),
            t("g2", "b", "B"),
            t("g3", "a", "A"),
            t("g3", "b", "B"),
            t("v1", "c", "C"),
            t("v1", "d", "D"),
            t("v2", "c", "C"),
            t("v2", "d", "D"),
            t("s", "e", "E"),
        ];
        let mut pic = check::Picture::default();
        for (p, id, _) in &types {
            let n = match p.as_str() {
                "s" => 8,
                _ => 1,
            };
            pic.parents
                .entry(p.clone())
                .or_default()
                .insert(id.clone(), n);
        }
        let gpu = |p: &str| {
            if p.starts_with('v') {
                "pf".to_owned()
            } else {
                p.to_owned()
            }
        };
        // Two clients: A and B each have three GPUs (> 2); of C and D (room 2 each, same GPU)
        // only one; E has room.
        assert_eq!(safe_types(&types, &pic, gpu, 2), vec!["A", "B", "C", "E"]);
        // Eight clients: only E's own room covers them.
        assert_eq!(safe_types(&types, &pic, gpu, 8), vec!["E"]);
    }
}
