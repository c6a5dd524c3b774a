//! Crash safety: vgpud is SIGKILLed at a random moment of a mixed create / define / remove /
//! undefine storm, again and again, over one simulated kernel that outlives it.
//!
//! After every kill, with the daemon down:
//! - every definition file parses; every acknowledged define is on disk; no acknowledged
//!   undefine came back;
//! - every device in sysfs is accounted for: acknowledged (created and not removed), or in
//!   doubt (its create was sent, the answer never came). Every acknowledged device is still
//!   there and no acknowledged remove came back.
//!
//! Then the daemon is restarted and must **adopt** every device it finds (the documented rule:
//! vgpud never removes at start-up what it did not just fail to set up), so the D-Bus picture
//! matches sysfs again. What was in doubt is settled by what the disk and sysfs say.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use zbus::zvariant::Value;

use crate::prove::rig::Rig;
use crate::prove::{check, Rng};
use vgpud_api::proxies::{DeviceProxy, ManagerProxy};
use vgpud_daemon::store::Store;
use vgpud_model::MdevUuid;

#[derive(Debug, Default)]
struct Ledger {
    present: BTreeSet<String>,
    in_doubt: BTreeSet<String>,
    gone: BTreeSet<String>,
}

impl Ledger {
    /// Settles what was in doubt by what is `there`.
    fn settle(&mut self, there: &BTreeSet<String>) {
        for u in std::mem::take(&mut self.in_doubt) {
            if there.contains(&u) {
                self.present.insert(u);
            } else {
                self.gone.insert(u);
            }
        }
    }

    /// What about `there` breaks the ledger.
    fn violations(&self, what: &str, there: &BTreeSet<String>) -> Vec<String> {
        let mut v = Vec::new();
        for u in self.present.iter().filter(|u| !there.contains(*u)) {
            v.push(format!("acknowledged {what} {u} is lost"));
        }
        for u in self.gone.iter().filter(|u| there.contains(*u)) {
            v.push(format!("acknowledged removal of {what} {u} was undone"));
        }
        for u in there
            .iter()
            .filter(|u| !self.present.contains(*u) && !self.in_doubt.contains(*u))
        {
            if !self.gone.contains(u) {
                v.push(format!("{what} {u} is not accounted for"));
            }
        }
        v
    }
}

#[derive(Debug, Default)]
pub struct CrashReport {
    pub rounds: u32,
    pub acknowledged: usize,
    pub violations: Vec<String>,
    pub restarts: Vec<Duration>,
    pub final_devices: usize,
    pub final_definitions: usize,
}

pub fn profiles() -> Vec<String> {
    vec!["mtty".into(), "mdpy".into(), "nvidia-t4:4".into()]
}

/// One random storm until `deadline` or the first call cut off; acknowledged operations count.
async fn storm(
    conn: &zbus::Connection,
    rng: &mut Rng,
    deadline: Instant,
    devices: &mut Ledger,
    defs: &mut Ledger,
) -> usize {
    let Ok(m) = ManagerProxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
    else {
        return 0;
    };
    let mut acked = 0;
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let op = rng.below(4);
        let done = match op {
            // create a transient device
            0 | 1 if devices.present.len() < 20 => {
                let uuid = MdevUuid::new_v4().to_string();
                devices.in_doubt.insert(uuid.clone());
                let ty = *rng.pick(&["mtty-1", "mtty-2", "mdpy-vga"]);
                let opts = HashMap::from([("uuid", Value::from(uuid.as_str()))]);
                match tokio::time::timeout(left, m.create_device(ty, opts)).await {
                    Ok(Ok(_)) => {
                        devices.in_doubt.remove(&uuid);
                        devices.present.insert(uuid);
                        true
                    }
                    // A refusal (no room) is an answer: nothing was created.
                    Ok(Err(zbus::Error::MethodError(..))) => {
                        devices.in_doubt.remove(&uuid);
                        devices.gone.insert(uuid);
                        true
                    }
                    _ => false,
                }
            }
            // define a device (not started)
            2 if defs.present.len() < 40 => {
                let uuid = MdevUuid::new_v4().to_string();
                defs.in_doubt.insert(uuid.clone());
                let opts = HashMap::from([
                    ("parent", Value::from("mtty")),
                    ("uuid", Value::from(uuid.as_str())),
                ]);
                match tokio::time::timeout(left, m.define_device("mtty-1", opts)).await {
                    Ok(Ok(_)) => {
                        defs.in_doubt.remove(&uuid);
                        defs.present.insert(uuid);
                        true
                    }
                    _ => false,
                }
            }
            // remove a device, or undefine a definition
            _ => {
                let (ledger, undefine) = if op == 3 && !defs.present.is_empty() {
                    (&mut *defs, true)
                } else if !devices.present.is_empty() {
                    (&mut *devices, false)
                } else {
                    continue;
                };
                let pick = rng.below(ledger.present.len());
                let uuid = ledger
                    .present
                    .iter()
                    .nth(pick)
                    .cloned()
                    .expect("picked in range");
                ledger.present.remove(&uuid);
                ledger.in_doubt.insert(uuid.clone());
                let path =
                    vgpud_api::names::device_path(&MdevUuid::parse(&uuid).expect("our own UUID"));
                let Ok(dev) = DeviceProxy::builder(conn).path(path) else {
                    break;
                };
                let Ok(dev) = dev.build().await else { break };
                let call = async {
                    if undefine {
                        dev.undefine().await
                    } else {
                        dev.remove(HashMap::new()).await
                    }
                };
                match tokio::time::timeout(left, call).await {
                    Ok(Ok(())) => {
                        ledger.in_doubt.remove(&uuid);
                        ledger.gone.insert(uuid);
                        true
                    }
                    _ => false,
                }
            }
        };
        if !done {
            break;
        }
        acked += 1;
    }
    acked
}

/// `rounds` kill-and-check rounds on a rig started with [`profiles`].
pub async fn run(rig: &mut Rig, rounds: u32, seed: u64) -> CrashReport {
    let mut rng = Rng::new(seed);
    let (mut devices, mut defs) = (Ledger::default(), Ledger::default());
    let mut report = CrashReport::default();
    for round in 0..rounds {
        report.rounds = round + 1;
        let kill_after = Duration::from_millis(20 + rng.next_u64() % 400);
        let deadline = Instant::now() + kill_after;
        report.acknowledged += storm(rig.conn(), &mut rng, deadline, &mut devices, &mut defs).await;
        rig.kill_daemon();

        let mut problems = Vec::new();
        // The definitions on disk.
        let on_disk: BTreeSet<String> =
            match Store::open(&rig.definitions, &rig.state).and_then(|s| {
                let listed = s.list()?;
                for p in s.problems() {
                    problems.push(format!("definition store: {p:?}"));
                }
                Ok(listed)
            }) {
                Ok(listed) => listed.iter().map(|(d, _)| d.uuid.to_string()).collect(),
                Err(e) => {
                    problems.push(format!("definitions cannot be listed: {e}"));
                    BTreeSet::new()
                }
            };
        problems.extend(defs.violations("definition", &on_disk));
        // The devices in sysfs (the simulated kernel kept running).
        let in_sysfs: BTreeSet<String> = match check::sysfs_picture(&rig.sim.mount) {
            Ok(p) => p.devices.keys().cloned().collect(),
            Err(e) => {
                problems.push(format!("sysfs cannot be read: {e}"));
                BTreeSet::new()
            }
        };
        problems.extend(devices.violations("device", &in_sysfs));
        defs.settle(&on_disk);
        devices.settle(&in_sysfs);

        match rig.start_daemon().await {
            Ok(took) => report.restarts.push(took),
            Err(e) => {
                problems.push(format!("restart failed: {e}"));
                report.violations.extend(
                    problems
                        .into_iter()
                        .map(|p| format!("round {round} (seed {seed}): {p}")),
                );
                break;
            }
        }
        // Adopted: every device in sysfs is on D-Bus again.
        if let Err(diff) = check::settled(rig.conn(), &rig.sim.mount, Duration::from_secs(15)).await
        {
            problems.extend(diff.into_iter().map(|d| format!("after restart: {d}")));
        }
        report.violations.extend(
            problems
                .into_iter()
                .map(|p| format!("round {round} (seed {seed}): {p}")),
        );
    }
    report.final_devices = devices.present.len();
    report.final_definitions = defs.present.len();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_ledger_names_lost_undone_and_unexplained() {
        let ledger = Ledger {
            present: set(&["a", "b"]),
            in_doubt: set(&["c"]),
            gone: set(&["d"]),
        };
        let v = ledger
            .violations("device", &set(&["a", "c", "d", "e"]))
            .join("\n");
        assert!(v.contains("acknowledged device b is lost"), "{v}");
        assert!(
            v.contains("acknowledged removal of device d was undone"),
            "{v}"
        );
        assert!(v.contains("device e is not accounted for"), "{v}");
        assert!(!v.contains(" c "), "{v}");
        assert!(ledger.violations("device", &set(&["a", "b"])).is_empty());
    }

    #[test]
    fn doubt_is_settled_by_what_is_there() {
        let mut ledger = Ledger {
            in_doubt: set(&["x", "y"]),
            ..Default::default()
        };
        ledger.settle(&set(&["x"]));
        assert_eq!(ledger.present, set(&["x"]));
        assert_eq!(ledger.gone, set(&["y"]));
        assert!(ledger.in_doubt.is_empty());
    }
}
