//! Uevents: raw netlink buffers (mutated kernel encodings and random bytes) and events built
//! from generated fields. `UEvent::parse` must refuse or return an event that encodes back to
//! itself; relevance and what the manager makes of an event must not panic and must name only
//! valid devices and parents.

use super::mutate::{mutate, splice, Rng};
use super::{path_safe, Case};
use vgpud_daemon::events::{is_relevant, Affected, UEvent, MAX_UEVENT_LEN};

const U1: &str = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
const PCI: &str = "/devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0";
const MTTY: &str = "/devices/virtual/mtty/mtty";

/// Words of the format, inserted by mutations.
const TOKENS: &[&str] = &[
    "\0",
    "@",
    "=",
    "ACTION=",
    "DEVPATH=",
    "SUBSYSTEM=",
    "SEQNUM=",
    "DRIVER=",
    "MDEV_STATE=",
    "registered",
    "add",
    "remove",
    "bind",
    "change",
    "mdev",
    "pci",
    "/devices/",
    U1,
];

/// Events as the kernel sends them for mdevs and their parents.
fn samples() -> Vec<UEvent> {
    let mdev = format!("{PCI}/{U1}");
    vec![
        UEvent::new("add", &mdev, "mdev"),
        UEvent::new("bind", &mdev, "mdev").with("DRIVER", "nvidia-vgpu-vfio"),
        UEvent::new("unbind", &mdev, "mdev"),
        UEvent::new("remove", &format!("{MTTY}/{U1}"), "mdev"),
        UEvent::new("change", PCI, "pci").with("MDEV_STATE", "registered"),
        UEvent::new("change", MTTY, "mtty").with("MDEV_STATE", "unregistered"),
        UEvent::new("bind", PCI, "pci")
            .with("DRIVER", "nvidia")
            .with("PCI_CLASS", "30200")
            .with("PCI_ID", "10DE:1EB8")
            .with("PCI_SLOT_NAME", "0000:3b:00.0")
            .with(
                "MODALIAS",
                "pci:v000010DEd00001EB8sv000010DEsd000012A2bc03sc02i00",
            ),
        UEvent::new("add", "/devices/virtual/net/lo", "net").with("IFINDEX", "1"),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, mut e)| {
        e.seqnum = 4000 + i as u64;
        e
    })
    .collect()
}

pub fn run_one(case: &mut Case) -> Result<(), String> {
    if case.rng().one_in(2) {
        let buf = raw(case.rng());
        case.show(&buf);
        match UEvent::parse(&buf) {
            Ok(event) => check_event(&event),
            Err(_) => Ok(()),
        }
    } else {
        let event = built(case.rng());
        let wire = event.encode();
        case.show(&wire);
        match UEvent::parse(&wire) {
            Ok(parsed) if parsed != event => Err(format!(
                "an accepted encoding parses to another event: {event:?} became {parsed:?}"
            )),
            Ok(parsed) => check_event(&parsed),
            Err(_) => Ok(()),
        }
    }
}

/// A buffer as it might arrive on the socket.
fn raw(rng: &mut Rng) -> Vec<u8> {
    let samples = samples();
    match rng.below(8) {
        0 => (0..rng.size(MAX_UEVENT_LEN + 64))
            .map(|_| rng.next_u64() as u8)
            .collect(),
        1 => {
            let head = rng.pick(&samples).encode();
            let tail = rng.pick(&samples).encode();
            splice(rng, &head, &tail)
        }
        _ => {
            let mut buf = rng.pick(&samples).encode();
            mutate(rng, &mut buf, TOKENS);
            buf
        }
    }
}

/// An event whose fields are sample values with hostile text mixed in. A key never holds '='
/// and no field holds a NUL: the wire format has no escape for either, so no event with them
/// can be encoded faithfully.
fn built(rng: &mut Rng) -> UEvent {
    let mut event = rng.pick(&samples()).clone();
    let field = |rng: &mut Rng, value: &mut String| {
        if rng.one_in(3) {
            let at = rng.below(value.len() + 1);
            if value.is_char_boundary(at) {
                value.insert_str(at, rng.hostile_str());
            }
        }
        if rng.one_in(10) {
            *value = rng.word("ab/-.@=:0f", 40);
        }
        *value = value.replace('\0', " ");
    };
    field(rng, &mut event.action);
    field(rng, &mut event.devpath);
    field(rng, &mut event.subsystem);
    if rng.one_in(4) {
        event.seqnum = rng.edgy_i64() as u64;
    }
    for _ in 0..rng.size(4) {
        let mut key = (*rng.pick(&[
            "DRIVER",
            "MDEV_STATE",
            "ACTION",
            "SEQNUM",
            "DEVPATH",
            "SUBSYSTEM",
            "",
            "X",
        ]))
        .to_owned();
        let mut value = "registered".to_owned();
        field(rng, &mut key);
        field(rng, &mut value);
        event.props.insert(key.replace('=', ""), value);
    }
    event
}

/// What holds for any event `parse` accepted.
fn check_event(event: &UEvent) -> Result<(), String> {
    match UEvent::parse(&event.encode()) {
        Ok(again) if again == *event => {}
        Ok(again) => {
            return Err(format!(
                "a parsed event encodes to another: {event:?} became {again:?}"
            ))
        }
        Err(e) => return Err(format!("a parsed event does not parse once encoded: {e}")),
    }
    let relevant = is_relevant(event);
    match event.affected() {
        Affected::Device { uuid, parent } => {
            if event.subsystem != "mdev" || !relevant {
                return Err(format!("a device named by a non-mdev event: {event:?}"));
            }
            let sysname = event.sysname();
            if !uuid
                .to_string()
                .eq_ignore_ascii_case(sysname.trim_end_matches('\n'))
            {
                return Err(format!(
                    "device {uuid} named by devpath {:?}",
                    event.devpath
                ));
            }
            if let Some(parent) = parent {
                path_safe("parent", parent.as_str())?;
            }
        }
        Affected::Parent { name, .. } => path_safe("parent", name.as_str())?,
        Affected::Nothing => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_round_trips() {
        for e in samples() {
            check_event(&e).expect("a kernel event is consistent");
        }
    }
}
