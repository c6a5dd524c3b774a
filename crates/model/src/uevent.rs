//! The kernel's uevent wire format (netlink group 1):
//! `ACTION@DEVPATH\0ACTION=..\0DEVPATH=..\0SUBSYSTEM=..\0SEQNUM=..\0...`.

use std::collections::BTreeMap;

use crate::{MdevUuid, ParentName};

/// Longest message accepted; the kernel's own limit (UEVENT_BUFFER_SIZE) is 2048 bytes.
pub const MAX_UEVENT_LEN: usize = 8192;

/// The properties the kernel itself writes into every event.
const CORE_KEYS: [&str; 4] = ["ACTION", "DEVPATH", "SUBSYSTEM", "SEQNUM"];

/// One kernel event, owned and `Send`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UEvent {
    pub action: String,
    pub devpath: String,
    pub subsystem: String,
    pub seqnum: u64,
    /// Every other property (DRIVER, MDEV_STATE, PCI_SLOT_NAME, ...).
    pub props: BTreeMap<String, String>,
}

/// What an event is about, in the model's names: the manager re-reads what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Affected {
    /// An mdev; `parent` is the directory above it in DEVPATH, when that is a valid name.
    Device {
        uuid: MdevUuid,
        parent: Option<ParentName>,
    },
    /// A possible parent; `registered` when it (re)registered with the mdev core or bound a
    /// driver, which is when autostart and ensure rules apply.
    Parent { name: ParentName, registered: bool },
    /// Nothing vgpud can name (an mdev event whose device is not a UUID, a bad name).
    Nothing,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UEventError {
    #[error("uevent is {0} bytes, more than the {MAX_UEVENT_LEN} allowed")]
    TooLong(usize),
    #[error("uevent has no ACTION@DEVPATH header")]
    NoHeader,
    #[error("uevent property {0:?} is not KEY=VALUE")]
    BadProperty(String),
    #[error("uevent lacks {0}")]
    Missing(&'static str),
    #[error("uevent header says {header:?} but its properties say {props:?}")]
    HeaderMismatch { header: String, props: String },
    #[error("uevent SEQNUM {0:?} is not a number")]
    BadSeqnum(String),
    #[error("uevent is not UTF-8")]
    NotUtf8,
    #[error("uevent repeats {0}")]
    Repeated(&'static str),
}

impl UEvent {
    pub fn new(action: &str, devpath: &str, subsystem: &str) -> Self {
        Self {
            action: action.to_owned(),
            devpath: devpath.to_owned(),
            subsystem: subsystem.to_owned(),
            seqnum: 0,
            props: BTreeMap::new(),
        }
    }

    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.props.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn prop(&self, key: &str) -> Option<&str> {
        self.props.get(key).map(String::as_str)
    }

    /// Last element of DEVPATH: the device's kernel name (a PCI address, an mdev UUID, ...).
    pub fn sysname(&self) -> &str {
        self.devpath.rsplit('/').next().unwrap_or("")
    }

    /// What this event is about. Names come from DEVPATH, so each is validated here.
    pub fn affected(&self) -> Affected {
        if self.subsystem == "mdev" {
            let Ok(uuid) = MdevUuid::parse(self.sysname()) else {
                return Affected::Nothing;
            };
            let parent = self
                .devpath
                .rsplit('/')
                .nth(1)
                .and_then(|p| ParentName::new(p).ok());
            return Affected::Device { uuid, parent };
        }
        match ParentName::new(self.sysname()) {
            Ok(name) => Affected::Parent {
                name,
                registered: self.prop("MDEV_STATE") == Some("registered") || self.action == "bind",
            },
            Err(_) => Affected::Nothing,
        }
    }

    /// Encodes in the kernel's order: header, ACTION, DEVPATH, SUBSYSTEM, the rest, SEQNUM.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let mut field = |s: &str| {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        };
        field(&format!("{}@{}", self.action, self.devpath));
        field(&format!("ACTION={}", self.action));
        field(&format!("DEVPATH={}", self.devpath));
        field(&format!("SUBSYSTEM={}", self.subsystem));
        for (k, v) in &self.props {
            field(&format!("{k}={v}"));
        }
        field(&format!("SEQNUM={}", self.seqnum));
        out
    }

    pub fn parse(buf: &[u8]) -> Result<Self, UEventError> {
        if buf.len() > MAX_UEVENT_LEN {
            return Err(UEventError::TooLong(buf.len()));
        }
        let text = std::str::from_utf8(buf).map_err(|_| UEventError::NotUtf8)?;
        let mut fields = text.split('\0').filter(|f| !f.is_empty());
        let header = fields.next().ok_or(UEventError::NoHeader)?;
        let (h_action, h_devpath) = header.split_once('@').ok_or(UEventError::NoHeader)?;
        let mut props = BTreeMap::new();
        for f in fields {
            let (k, v) = f
                .split_once('=')
                .ok_or_else(|| UEventError::BadProperty(f.chars().take(64).collect()))?;
            if k.is_empty() {
                return Err(UEventError::BadProperty(f.chars().take(64).collect()));
            }
            // The kernel writes each of these once; a second one would silently replace what
            // the event is about (its subsystem, say), so the message is refused instead.
            if let Some(key) = CORE_KEYS.iter().find(|c| **c == k) {
                if props.contains_key(k) {
                    return Err(UEventError::Repeated(key));
                }
            }
            props.insert(k.to_owned(), v.to_owned());
        }
        let action = props
            .remove("ACTION")
            .ok_or(UEventError::Missing("ACTION"))?;
        let devpath = props
            .remove("DEVPATH")
            .ok_or(UEventError::Missing("DEVPATH"))?;
        let subsystem = props
            .remove("SUBSYSTEM")
            .ok_or(UEventError::Missing("SUBSYSTEM"))?;
        if action != h_action || devpath != h_devpath {
            return Err(UEventError::HeaderMismatch {
                header: header.chars().take(128).collect(),
                props: format!("{action}@{devpath}").chars().take(128).collect(),
            });
        }
        let seqnum = match props.remove("SEQNUM") {
            Some(s) => s.parse().map_err(|_| UEventError::BadSeqnum(s))?,
            None => 0,
        };
        Ok(Self {
            action,
            devpath,
            subsystem,
            seqnum,
            props,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> UEvent {
        let mut e = UEvent::new(
            "bind",
            "/devices/virtual/mtty/mtty/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001",
            "mdev",
        )
        .with("DRIVER", "mtty");
        e.seqnum = 42;
        e
    }

    #[test]
    fn round_trips_in_kernel_order() {
        let e = sample();
        let wire = e.encode();
        let text = String::from_utf8(wire.clone()).unwrap();
        assert!(text.starts_with("bind@/devices/virtual/mtty/mtty/83b8f4f2"));
        assert!(text.contains("\0ACTION=bind\0DEVPATH=/devices/"));
        assert!(text.ends_with("\0SEQNUM=42\0"));
        assert_eq!(UEvent::parse(&wire).unwrap(), e);
        assert_eq!(e.sysname(), "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001");
    }

    #[test]
    fn rejects_missing_header() {
        assert_eq!(UEvent::parse(b"ACTION=add\0"), Err(UEventError::NoHeader));
        assert_eq!(UEvent::parse(b""), Err(UEventError::NoHeader));
    }

    #[test]
    fn rejects_property_without_equals() {
        let err = UEvent::parse(b"add@/devices/x\0ACTION=add\0garbage\0").unwrap_err();
        assert!(matches!(err, UEventError::BadProperty(_)));
    }

    #[test]
    fn rejects_header_that_disagrees() {
        let err =
            UEvent::parse(b"add@/devices/x\0ACTION=remove\0DEVPATH=/devices/x\0SUBSYSTEM=mdev\0")
                .unwrap_err();
        assert!(matches!(err, UEventError::HeaderMismatch { .. }));
    }

    #[test]
    fn rejects_missing_subsystem_and_bad_seqnum() {
        assert_eq!(
            UEvent::parse(b"add@/d\0ACTION=add\0DEVPATH=/d\0"),
            Err(UEventError::Missing("SUBSYSTEM"))
        );
        assert!(matches!(
            UEvent::parse(b"add@/d\0ACTION=add\0DEVPATH=/d\0SUBSYSTEM=pci\0SEQNUM=x\0"),
            Err(UEventError::BadSeqnum(_))
        ));
    }

    #[test]
    fn rejects_oversize_and_non_utf8() {
        assert_eq!(
            UEvent::parse(&vec![b'a'; MAX_UEVENT_LEN + 1]),
            Err(UEventError::TooLong(MAX_UEVENT_LEN + 1))
        );
        assert_eq!(UEvent::parse(b"add@/d\0\xff\0"), Err(UEventError::NotUtf8));
    }

    #[test]
    fn rejects_a_repeated_core_property() {
        // Found by fuzzing: a second SUBSYSTEM replaced the first, and an event whose props held
        // SEQNUM encoded to a message that parsed back as a different event.
        let wire = b"add@/d\0ACTION=add\0DEVPATH=/d\0SUBSYSTEM=mdev\0SUBSYSTEM=pci\0";
        assert_eq!(UEvent::parse(wire), Err(UEventError::Repeated("SUBSYSTEM")));
        let mut e = sample().with("SEQNUM", "7");
        e.seqnum = 9;
        assert_eq!(
            UEvent::parse(&e.encode()),
            Err(UEventError::Repeated("SEQNUM"))
        );
    }

    #[test]
    fn a_repeated_other_property_keeps_the_last() {
        let wire = b"bind@/d\0ACTION=bind\0DEVPATH=/d\0SUBSYSTEM=pci\0DRIVER=a\0DRIVER=b\0";
        assert_eq!(UEvent::parse(wire).unwrap().prop("DRIVER"), Some("b"));
    }

    #[test]
    fn affected_names_the_device_and_its_parent() {
        let e = sample();
        let uuid = MdevUuid::parse("83b8f4f2-509f-382f-3c1e-e6bfe0fa1001").unwrap();
        let parent = ParentName::new("mtty").ok();
        assert_eq!(e.affected(), Affected::Device { uuid, parent });
    }

    #[test]
    fn affected_parent_registers_on_mdev_state_or_bind() {
        let pci = "/devices/pci0000:00/0000:00:02.0";
        let name = ParentName::new("0000:00:02.0").unwrap();
        let change = UEvent::new("change", pci, "pci").with("MDEV_STATE", "registered");
        let unbind = UEvent::new("unbind", pci, "pci");
        assert_eq!(
            change.affected(),
            Affected::Parent {
                name: name.clone(),
                registered: true
            }
        );
        assert_eq!(
            unbind.affected(),
            Affected::Parent {
                name,
                registered: false
            }
        );
    }

    #[test]
    fn affected_is_nothing_for_names_that_are_not_valid() {
        assert_eq!(
            UEvent::new("add", "/devices/x/not-a-uuid", "mdev").affected(),
            Affected::Nothing
        );
        assert_eq!(
            UEvent::new("add", "/devices/x/..", "pci").affected(),
            Affected::Nothing
        );
        assert_eq!(
            UEvent::new("add", "/devices/x/", "pci").affected(),
            Affected::Nothing
        );
    }
}
