//! Crash safety of definitions: the daemon is SIGKILLed at random moments during
//! define/undefine storms; after each crash every definition file parses, every acknowledged
//! definition is there and no acknowledged undefine came back.

#[path = "common/daemon.rs"]
mod common;

use std::collections::HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{manager_proxy, Daemon};
use vgpud_api::proxies::DeviceProxy;
use vgpud_daemon::store::Store;
use vgpud_model::MdevUuid;
use vgpud_testkit::privbus::{BusKind, PrivateBus};
use zbus::zvariant::Value;

/// A small deterministic generator (xorshift64*), so a failure can be replayed from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[derive(Default)]
struct Ledger {
    /// Defined and acknowledged, not being undefined.
    present: BTreeSet<String>,
    /// An undefine was sent: it may or may not have happened.
    in_doubt: BTreeSet<String>,
    /// Undefined and acknowledged.
    gone: BTreeSet<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn definitions_survive_sigkill_during_storms() {
    let rounds: u32 = std::env::var("VGPUD_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("VGPUD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
                | 1
        });
    eprintln!("crash test seed {seed} (VGPUD_CRASH_SEED to replay), {rounds} rounds");
    let mut rng = Rng(seed);
    let dirs = tempfile::tempdir().unwrap();
    let (defs, state, config) = (
        dirs.path().join("mdevctl.d"),
        dirs.path().join("state"),
        dirs.path().join("config"),
    );
    let bus = PrivateBus::start_with_policy(BusKind::System, &[]).unwrap();
    let args = [
        format!("--address={}", bus.address()),
        format!("--definitions-dir={}", defs.display()),
        format!("--state-dir={}", state.display()),
        format!("--config-dir={}", config.display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut ledger = Ledger::default();
    let started = Instant::now();
    for round in 0..rounds {
        let d = Daemon::start_with(&["mtty"], &args);
        let conn = d.conn().await;
        let m = manager_proxy(&conn).await;
        let kill_after = Duration::from_millis(20 + rng.next() % 300);
        let deadline = Instant::now() + kill_after;
        let mut acked = 0;
        while Instant::now() < deadline {
            let undefine = !ledger.present.is_empty() && rng.next() % 3 == 0;
            if undefine {
                let pick = (rng.next() as usize) % ledger.present.len();
                let uuid = ledger.present.iter().nth(pick).cloned().unwrap();
                ledger.present.remove(&uuid);
                ledger.in_doubt.insert(uuid.clone());
                let Ok(path) = m.get_device(&uuid).await else {
                    break;
                };
                let Ok(dev) = DeviceProxy::builder(&conn)
                    .path(path)
                    .unwrap()
                    .cache_properties(zbus::proxy::CacheProperties::No)
                    .build()
                    .await
                else {
                    break;
                };
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, dev.undefine()).await {
                    Ok(Ok(())) => {
                        ledger.in_doubt.remove(&uuid);
                        ledger.gone.insert(uuid);
                        acked += 1;
                    }
                    _ => break,
                }
            } else {
                let uuid = MdevUuid::new_v4().to_string();
                ledger.in_doubt.insert(uuid.clone());
                let opts = HashMap::from([
                    ("parent", Value::from("mtty")),
                    ("uuid", Value::from(uuid.as_str())),
                ]);
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, m.define_device("mtty-1", opts)).await {
                    Ok(Ok(_)) => {
                        ledger.in_doubt.remove(&uuid);
                        ledger.present.insert(uuid);
                        acked += 1;
                    }
                    _ => break,
                }
            }
        }
        d.crash();
        // After the crash: every file parses, nothing acknowledged was lost or came back.
        let store = Store::open(&defs, &state).unwrap();
        let listed = store.list().unwrap();
        assert!(
            store.problems().is_empty(),
            "round {round} (seed {seed}): {:?}",
            store.problems()
        );
        let on_disk: BTreeMap<String, ()> = listed
            .iter()
            .map(|(def, _)| (def.uuid.to_string(), ()))
            .collect();
        for u in &ledger.present {
            assert!(
                on_disk.contains_key(u),
                "round {round} (seed {seed}): acknowledged definition {u} lost"
            );
        }
        for u in &ledger.gone {
            assert!(
                !on_disk.contains_key(u),
                "round {round} (seed {seed}): acknowledged undefine of {u} undone"
            );
        }
        // What was in flight is settled by what the disk says.
        for u in std::mem::take(&mut ledger.in_doubt) {
            if on_disk.contains_key(&u) {
                ledger.present.insert(u);
            } else {
                ledger.gone.insert(u);
            }
        }
        assert_eq!(
            on_disk.len(),
            ledger.present.len(),
            "round {round} (seed {seed}): unexpected files"
        );
        eprintln!(
            "round {round}: killed after {kill_after:?}, {acked} acknowledged, {} defined",
            ledger.present.len()
        );
    }
    eprintln!("{rounds} rounds in {:?}", started.elapsed());
}
