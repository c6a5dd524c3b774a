//! Side by side on the same simulated host, in one run: the same create + remove of one vGPU
//! done by vgpud over D-Bus (an in-process zbus client, and the `vgpuctl` CLI), by a raw sysfs
//! write (what a shell script does), and by Debian's `mdevctl start` / `mdevctl stop`. Then
//! start-up time and memory at 64 and 512 GPUs, and how vgpud's create cost grows with the
//! devices already on the host.
//!
//! mdevctl 1.2.0 hard-codes /sys and /etc/mdevctl.d, so its loop runs in a private mount
//! namespace where the simulator is bind-mounted on /sys (and an empty directory on
//! /etc/mdevctl.d); the loop is a bash script timing each command with $EPOCHREALTIME, so a
//! sample is one mdevctl process, as an operator's script pays it. The vgpuctl loop is timed
//! the same way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use zbus::zvariant::Value;

use crate::prove::rig::{Bins, Rig};
use crate::prove::stats::{mib, Samples};
use vgpud_api::proxies::{DeviceProxy, ManagerProxy};

/// One way of doing the create + remove, measured.
#[derive(Debug, Default)]
pub struct Way {
    pub name: String,
    pub create: Samples,
    pub remove: Samples,
    pub error: Option<String>,
}

#[derive(Debug, Default)]
pub struct HostFigures {
    pub gpus: u32,
    pub objects: usize,
    pub startup: Duration,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    pub ways: Vec<Way>,
    /// (devices already live, vgpud create + remove p50 ms).
    pub growth: Vec<(usize, f64)>,
    /// Someone else's create and remove, as a client hears of them.
    pub heard: Option<super::throughput::Heard>,
    pub concurrent: Option<Result<super::throughput::Concurrent, String>>,
    /// GetManagedObjects on the simulator: how long, how many objects.
    pub fetch_all: Option<Result<(Duration, usize), String>>,
    /// `cp -a` of the simulated tree.
    pub copy: Option<Result<Duration, String>>,
    /// vgpud on a plain copy of the tree: start-up to the bus name, RSS, GetManagedObjects.
    pub plain: Option<Result<(Duration, u64, Duration), String>>,
}

/// The first type of up to `n` NVIDIA parents.
fn targets(sys: &Path, n: usize) -> Result<Vec<(String, String)>, String> {
    let pic = super::check::sysfs_picture(sys).map_err(|e| e.to_string())?;
    Ok(pic
        .parents
        .iter()
        .filter_map(|(p, types)| {
            let t = types.keys().find(|id| id.starts_with("nvidia-"))?;
            Some((p.clone(), t.clone()))
        })
        .take(n)
        .collect())
}

/// Clients of the concurrent run, and how long it lasts.
pub const CLIENTS: usize = 16;
const CONCURRENT_FOR: Duration = Duration::from_secs(3);

fn uuid(tag: u32, i: usize) -> String {
    format!("c0de{tag:04x}-0000-4000-8000-{i:012x}")
}

/// The first NVIDIA parent and its first type.
fn target(sys: &Path) -> Result<(String, String), String> {
    let pic = super::check::sysfs_picture(sys).map_err(|e| e.to_string())?;
    let (parent, types) = pic
        .parents
        .iter()
        .find(|(_, t)| t.keys().any(|id| id.starts_with("nvidia-")))
        .ok_or("no NVIDIA parent on the host")?;
    let t = types.keys().next().ok_or("a parent without types")?;
    Ok((parent.clone(), t.clone()))
}

async fn vgpud_way(rig: &Rig, parent: &str, type_id: &str, n: usize) -> Way {
    let mut way = Way {
        name: "vgpud D-Bus (zbus client)".into(),
        ..Default::default()
    };
    let run = async {
        let m = ManagerProxy::builder(rig.conn())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        for _ in 0..n {
            let t0 = Instant::now();
            let opts = HashMap::from([("parent", Value::from(parent))]);
            let path = m
                .create_device(type_id, opts)
                .await
                .map_err(|e| format!("CreateDevice: {e}"))?;
            way.create.push(t0.elapsed());
            let dev = DeviceProxy::builder(rig.conn())
                .path(path)
                .map_err(|e| e.to_string())?
                .build()
                .await
                .map_err(|e| e.to_string())?;
            let t1 = Instant::now();
            dev.remove(HashMap::new())
                .await
                .map_err(|e| format!("Remove: {e}"))?;
            way.remove.push(t1.elapsed());
        }
        Ok::<(), String>(())
    };
    way.error = run.await.err();
    way
}

fn raw_way(sys: &Path, parent: &str, type_id: &str, n: usize) -> Way {
    let mut way = Way {
        name: "raw sysfs write".into(),
        ..Default::default()
    };
    let create = sys.join(format!(
        "class/mdev_bus/{parent}/mdev_supported_types/{type_id}/create"
    ));
    for i in 0..n {
        let u = uuid(1, i);
        let t0 = Instant::now();
        if let Err(e) = std::fs::write(&create, format!("{u}\n")) {
            way.error = Some(format!("write {}: {e}", create.display()));
            break;
        }
        way.create.push(t0.elapsed());
        let remove = sys.join(format!("bus/mdev/devices/{u}/remove"));
        let t1 = Instant::now();
        if let Err(e) = std::fs::write(&remove, "1") {
            way.error = Some(format!("write {}: {e}", remove.display()));
            break;
        }
        way.remove.push(t1.elapsed());
    }
    way
}

/// Runs a bash loop that prints "CREATE_NS REMOVE_NS" per round.
fn shell_way(name: &str, script: &str, env: &[(&str, String)]) -> Way {
    let mut way = Way {
        name: name.into(),
        ..Default::default()
    };
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(script);
    for (k, v) in env {
        cmd.env(k, v);
    }
    match cmd.output() {
        Ok(out) => {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let mut w = line.split_whitespace().map(|x| x.parse::<f64>());
                if let (Some(Ok(c)), Some(Ok(r))) = (w.next(), w.next()) {
                    way.create.push(Duration::from_secs_f64(c / 1e6));
                    way.remove.push(Duration::from_secs_f64(r / 1e6));
                }
            }
            if !out.status.success() {
                way.error = Some(format!(
                    "{} ({}): {}",
                    name,
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or_default()
                ));
            }
        }
        Err(e) => way.error = Some(format!("cannot run bash: {e}")),
    }
    way
}

/// The bash timing loop around two commands; $U is the round's UUID.
fn timing_loop(setup: &str, create: &str, remove: &str) -> String {
    format!(
        r#"set -e
{setup}
us() {{ local t=${{EPOCHREALTIME/./}}; echo $t; }}
for i in $(seq 1 "$N"); do
  U=$(printf 'c0de%04x-0000-4000-8000-%012x' "$TAG" "$i")
  t0=$(us); {create} >/dev/null; t1=$(us); {remove} >/dev/null; t2=$(us)
  echo "$((t1-t0)) $((t2-t1))"
done"#
    )
}

fn mdevctl_way(sys: &Path, scratch: &Path, parent: &str, type_id: &str, n: usize) -> Way {
    let Some(mdevctl) = ["/usr/sbin/mdevctl", "/usr/bin/mdevctl", "/sbin/mdevctl"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        return Way {
            name: "mdevctl".into(),
            error: Some("mdevctl is not installed (scripts/install-deps installs Debian's)".into()),
            ..Default::default()
        };
    };
    let etc = scratch.join("mdevctl-etc");
    let _ = std::fs::create_dir_all(etc.join("scripts.d/callouts"));
    let _ = std::fs::create_dir_all(etc.join("scripts.d/notifiers"));
    let setup = r#"mount --make-rprivate /
mount --bind "$SIM" /sys
mount --bind "$ETC" /etc/mdevctl.d"#;
    let script = timing_loop(
        setup,
        r#""$MDEVCTL" start -p "$P" -t "$T" -u "$U""#,
        r#""$MDEVCTL" stop -u "$U""#,
    );
    let inner = format!("unshare -m bash -c {}", shell_quote(&script));
    shell_way(
        "mdevctl start / stop",
        &inner,
        &[
            ("SIM", sys.display().to_string()),
            ("ETC", etc.display().to_string()),
            ("MDEVCTL", mdevctl.display().to_string()),
            ("P", parent.to_owned()),
            ("T", type_id.to_owned()),
            ("N", n.to_string()),
            ("TAG", "2".into()),
        ],
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r#"'\''"#))
}

fn vgpuctl_way(rig: &Rig, vgpuctl: &Path, parent: &str, type_id: &str, n: usize) -> Way {
    let script = timing_loop(
        "",
        r#""$VGPUCTL" --address "$ADDR" create "$T" --parent "$P" --uuid "$U""#,
        r#""$VGPUCTL" --address "$ADDR" remove "$U""#,
    );
    shell_way(
        "vgpuctl create / remove",
        &script,
        &[
            ("VGPUCTL", vgpuctl.display().to_string()),
            ("ADDR", rig.address().to_owned()),
            ("P", parent.to_owned()),
            ("T", type_id.to_owned()),
            ("N", n.to_string()),
            ("TAG", "3".into()),
        ],
    )
}

/// Creates `count` devices on NVIDIA parents other than `keep` by raw writes (the daemon adopts
/// them as external devices); returns how many it made.
fn fill(sys: &Path, keep: &str, count: usize, tag: u32) -> usize {
    let Ok(pic) = super::check::sysfs_picture(sys) else {
        return 0;
    };
    let mut made = 0;
    for (parent, types) in pic.parents.iter().filter(|(p, _)| p.as_str() != keep) {
        if made == count {
            break;
        }
        if let Some(t) = types.keys().next() {
            let create = sys.join(format!(
                "class/mdev_bus/{parent}/mdev_supported_types/{t}/create"
            ));
            if std::fs::write(create, format!("{}\n", uuid(tag, made))).is_ok() {
                made += 1;
            }
        }
    }
    made
}

/// The whole comparison on a host of `gpus` T4s, `n` round trips each way.
pub async fn host(
    bins: &Bins,
    vgpuctl: &Path,
    gpus: u32,
    n: usize,
    growth_steps: &[usize],
) -> Result<HostFigures, String> {
    let profiles = vec![format!("nvidia-t4:{gpus}")];
    let mut rig = Rig::start(bins, &profiles).await?;
    let mut fig = HostFigures {
        gpus,
        startup: rig.startup,
        rss_start_kib: rig.daemon_rss_kib().unwrap_or(0),
        ..Default::default()
    };
    fig.objects = super::check::managed_objects(rig.conn()).await?.len();
    let (parent, type_id) = target(&rig.sim.mount)?;
    fig.ways.push(raw_way(&rig.sim.mount, &parent, &type_id, n));
    fig.ways.push(vgpud_way(&rig, &parent, &type_id, n).await);
    fig.ways
        .push(vgpuctl_way(&rig, vgpuctl, &parent, &type_id, n));
    fig.ways.push(mdevctl_way(
        &rig.sim.mount,
        rig.sim.dir(),
        &parent,
        &type_id,
        n,
    ));
    fig.heard = Some(super::throughput::external(&rig, &parent, &type_id, n.min(50)).await);
    fig.concurrent = Some(match targets(&rig.sim.mount, CLIENTS) {
        Ok(t) => super::throughput::concurrent(&rig, &t, CLIENTS, CONCURRENT_FOR).await,
        Err(e) => Err(e),
    });
    fig.fetch_all = Some(super::throughput::fetch_all(&rig).await);
    let mut live = 0;
    for &step in growth_steps {
        if step > live {
            live += fill(&rig.sim.mount, &parent, step - live, 100 + step as u32);
        }
        // Let the daemon adopt them before measuring.
        let _ = super::check::settled(rig.conn(), &rig.sim.mount, Duration::from_secs(60)).await;
        let w = vgpud_way(&rig, &parent, &type_id, n.min(30)).await;
        let mut both = w.create.clone();
        for (c, r) in both.times.iter_mut().zip(&w.remove.times) {
            *c += *r;
        }
        fig.growth.push((live, both.ms(0.5)));
    }
    fig.rss_end_kib = rig.daemon_rss_kib().unwrap_or(0);
    // Into memory where there is a tmpfs (as sysfs itself lives): a copy onto disk measures
    // the disk's inode creation more than the simulator.
    let shm = tempfile::Builder::new()
        .prefix("vgpud-prove-plain.")
        .tempdir_in("/dev/shm")
        .ok();
    let plain = match &shm {
        Some(d) => d.path().join("sys"),
        None => rig.sim.dir().join("plain-sysfs"),
    };
    fig.copy = Some(super::throughput::copy_tree(&rig.sim.mount, &plain));
    if matches!(fig.copy, Some(Ok(_))) {
        rig.stop_daemon();
        rig.sysfs = plain;
        fig.plain = Some(match rig.start_daemon().await {
            Ok(startup) => {
                let rss = rig.daemon_rss_kib().unwrap_or(0);
                super::throughput::fetch_all(&rig)
                    .await
                    .map(|(took, _)| (startup, rss, took))
            }
            Err(e) => Err(e),
        });
        rig.stop_daemon();
    }
    drop(shm);
    Ok(fig)
}

impl HostFigures {
    /// The table rows of this host, as text lines.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "{} GPUs: start-up to the bus name {:.2} s, {} objects, RSS {:.1} MiB at start, {:.1} MiB at the end",
            self.gpus,
            self.startup.as_secs_f64(),
            self.objects,
            mib(self.rss_start_kib),
            mib(self.rss_end_kib)
        )];
        for w in &self.ways {
            let mut line = format!(
                "  {:<28} create {}   remove {}   (n={})",
                w.name,
                w.create.p50_p99(),
                w.remove.p50_p99(),
                w.create.len()
            );
            if let Some(e) = &w.error {
                line.push_str(&format!("   ERROR: {e}"));
            }
            out.push(line);
        }
        if let Some(h) = &self.heard {
            let mut line = format!(
                "  someone else's create -> InterfacesAdded {}   remove -> InterfacesRemoved {}   (n={})",
                h.added.p50_p99(),
                h.removed.p50_p99(),
                h.added.len()
            );
            if let Some(e) = &h.error {
                line.push_str(&format!("   ERROR: {e}"));
            }
            out.push(line);
        }
        match &self.concurrent {
            Some(Ok(c)) => out.push(c.line()),
            Some(Err(e)) => out.push(format!("  concurrent clients: ERROR: {e}")),
            None => {}
        }
        match &self.fetch_all {
            Some(Ok((took, n))) => out.push(format!(
                "  GetManagedObjects of {n} objects to a zbus client: {:.1} ms",
                took.as_secs_f64() * 1e3
            )),
            Some(Err(e)) => out.push(format!("  GetManagedObjects: ERROR: {e}")),
            None => {}
        }
        match &self.copy {
            Some(Ok(took)) => out.push(format!(
                "  cp -a of the simulated tree: {:.2} s",
                took.as_secs_f64()
            )),
            Some(Err(e)) => out.push(format!("  cp -a of the simulated tree: ERROR: {e}")),
            None => {}
        }
        match &self.plain {
            Some(Ok((startup, rss, fetch))) => out.push(format!(
                "  on a plain copy of the tree: start-up to the bus name {:.0} ms, RSS {:.1} MiB, GetManagedObjects {:.1} ms",
                startup.as_secs_f64() * 1e3,
                mib(*rss),
                fetch.as_secs_f64() * 1e3
            )),
            Some(Err(e)) => out.push(format!("  on a plain copy of the tree: ERROR: {e}")),
            None => {}
        }
        for (live, p50) in &self.growth {
            out.push(format!(
                "  vgpud create+remove with {live} devices already live: p50 {p50:.2} ms"
            ));
        }
        out
    }
}
