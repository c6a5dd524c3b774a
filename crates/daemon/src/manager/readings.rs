//! Readings of sysfs taken off the manager's loop, and how the loop tells a fresh one from a
//! stale one.
//!
//! A create or remove job reads back what its write changed (the device, the available
//! instances of its parent and of every parent sharing that capacity) on its own blocking
//! thread, so the loop only applies readings and creates on different parents run at once.
//! Readings then reach the loop out of order: a job's reading can arrive after the loop read the
//! same parent again for an event. Every reading is stamped when it starts, from one counter,
//! and the loop keeps the stamp of what it applied last per parent and device: an older reading
//! is dropped.
//!
//! The events of a job's own write (add and bind, or unbind and remove) are held while the job
//! is in flight and checked against its reading when it lands; only an event the reading does
//! not explain is read again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::Host;
use vgpud_model::error::Result;
use vgpud_model::uevent::UEvent;
use vgpud_model::{Device, MdevUuid, Parent, ParentName};

static STAMPS: AtomicU64 = AtomicU64::new(1);

/// The stamp of a reading about to start.
pub(super) fn stamp() -> u64 {
    STAMPS.fetch_add(1, Ordering::SeqCst)
}

/// What a job read after its write, stamped before the reads began.
#[derive(Debug)]
pub(crate) struct Reading {
    pub stamp: u64,
    pub parents: Vec<(ParentName, Result<Option<Parent>>)>,
}

impl Reading {
    /// Nothing read (the read-back could not run); older than any reading.
    pub(super) fn none() -> Reading {
        Reading {
            stamp: 0,
            parents: Vec::new(),
        }
    }

    /// The available instances of `known` parents (each snapshot as the model had it), read
    /// again; a parent whose types changed is read in full.
    pub(super) fn parents(host: &Host, known: &[Parent]) -> Reading {
        let stamp = stamp();
        let parents = known
            .iter()
            .map(|p| (p.name.clone(), host.refresh_availability(p)))
            .collect();
        Reading { stamp, parents }
    }
}

/// The last applied stamp per parent and per device.
#[derive(Debug, Default)]
pub(super) struct Stamps {
    parents: BTreeMap<ParentName, u64>,
    devices: BTreeMap<MdevUuid, u64>,
}

impl Stamps {
    /// True (and remembered) when a reading stamped `stamp` is newer than what `name` shows.
    pub fn parent_fresh(&mut self, name: &ParentName, stamp: u64) -> bool {
        fresher(self.parents.entry(name.clone()).or_default(), stamp)
    }

    pub fn device_fresh(&mut self, uuid: &MdevUuid, stamp: u64) -> bool {
        fresher(self.devices.entry(*uuid).or_default(), stamp)
    }

    /// Forgets stamps older than every reading still to come (`oldest`: the stamp taken when
    /// the oldest job in flight started; none in flight: everything).
    pub fn prune(&mut self, oldest: Option<u64>) {
        match oldest {
            None => {
                self.parents.clear();
                self.devices.clear();
            }
            Some(o) => {
                self.parents.retain(|_, s| *s >= o);
                self.devices.retain(|_, s| *s >= o);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.parents.len() + self.devices.len()
    }
}

fn fresher(seen: &mut u64, stamp: u64) -> bool {
    if stamp >= *seen {
        *seen = stamp;
        true
    } else {
        false
    }
}

/// Whether the model's picture of a device already says what `event` says, so reading sysfs
/// for it would change nothing: an `add` of a live device, a `bind` to the driver the device
/// shows, an `unbind` or `remove` of a device not live (or live without a driver, for unbind).
/// A `change` or anything else is never explained.
pub(super) fn explained(event: &UEvent, live: Option<&Device>) -> bool {
    match (event.action.as_str(), live) {
        ("add", Some(_)) => true,
        ("bind", Some(d)) => d.driver.is_some() && d.driver.as_deref() == event.prop("DRIVER"),
        ("unbind", None) | ("remove", None) => true,
        ("unbind", Some(d)) => d.driver.is_none(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgpud_model::{BackendKind, TypeId};

    fn device(driver: Option<&str>) -> Device {
        Device {
            uuid: MdevUuid::parse("83b8f4f2-509f-382f-3c1e-e6bfe0fa1001").unwrap(),
            parent: ParentName::new("mtty").unwrap(),
            type_id: Some(TypeId::new("mtty-1".to_owned()).unwrap()),
            iommu_group: Some(3),
            driver: driver.map(str::to_owned),
            active: true,
            sysfs_path: "/sys/devices/virtual/mtty/mtty/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"
                .into(),
            backend: BackendKind::Mdev,
        }
    }

    fn event(action: &str, driver: Option<&str>) -> UEvent {
        let e = UEvent::new(
            action,
            "/devices/virtual/mtty/mtty/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001",
            "mdev",
        );
        match driver {
            Some(d) => e.with("DRIVER", d),
            None => e,
        }
    }

    #[test]
    fn a_reading_older_than_the_applied_one_is_stale() {
        let mut s = Stamps::default();
        let p = ParentName::new("0000:20:00.0").unwrap();
        let (a, b) = (stamp(), stamp());
        assert!(s.parent_fresh(&p, b));
        assert!(!s.parent_fresh(&p, a), "the older reading landed last");
        assert!(s.parent_fresh(&p, stamp()));
        let u = MdevUuid::new_v4();
        assert!(s.device_fresh(&u, b));
        assert!(!s.device_fresh(&u, a));
        s.prune(None);
        assert_eq!(s.len(), 0);
        assert!(s.device_fresh(&u, a), "forgotten stamps accept anything");
    }

    #[test]
    fn prune_keeps_what_a_job_in_flight_could_contest() {
        let mut s = Stamps::default();
        let p = ParentName::new("mtty").unwrap();
        let q = ParentName::new("mdpy").unwrap();
        let old = stamp();
        let oldest_job = stamp();
        let new = stamp();
        s.parent_fresh(&p, old);
        s.parent_fresh(&q, new);
        s.prune(Some(oldest_job));
        assert_eq!(s.len(), 1);
        assert!(!s.parent_fresh(&q, oldest_job));
    }

    #[test]
    fn events_the_model_already_shows_need_no_read() {
        let bound = device(Some("vfio_mdev"));
        assert!(explained(&event("add", None), Some(&bound)));
        assert!(explained(&event("bind", Some("vfio_mdev")), Some(&bound)));
        assert!(!explained(&event("bind", Some("other")), Some(&bound)));
        assert!(!explained(
            &event("bind", Some("vfio_mdev")),
            Some(&device(None))
        ));
        assert!(explained(&event("unbind", None), Some(&device(None))));
        assert!(!explained(&event("unbind", None), Some(&bound)));
        assert!(explained(&event("remove", None), None));
        assert!(explained(&event("unbind", None), None));
        assert!(!explained(&event("add", None), None));
        assert!(!explained(&event("remove", None), Some(&bound)));
        assert!(!explained(&event("change", None), Some(&bound)));
    }
}
