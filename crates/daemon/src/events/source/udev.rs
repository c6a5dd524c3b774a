//! The udev monitor: events as systemd-udevd re-broadcasts them after its rules ran (netlink
//! group 2), read on the runtime through the monitor socket's descriptor.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::context;
use crate::events::{UEvent, UEventError};

/// The udev monitor socket, owned by nothing else.
///
/// libudev objects are reference-counted without atomics, which is why the udev crate does not
/// make them Send by default. Moving this whole value to another thread is nevertheless sound:
/// libudev(3) states that it keeps no global state, that everything hangs off a context, and
/// that a context may be used by any thread as long as no two threads use it at the same time.
/// This struct holds the only references to its context and monitor (the crate's `Udev` and
/// monitor handles, never cloned out), and every `udev::Event` created from it is converted to
/// an owned `UEvent` and dropped inside `read`, before control returns to the caller. It
/// is deliberately not Sync, so two threads can never touch it at once. (This is the same
/// argument behind the udev crate's optional "send" feature.) The alternative, a thread
/// blocking on the monitor, would add a thread per daemon for no gain.
pub(super) struct UdevMonitor {
    socket: udev::MonitorSocket,
}

// SAFETY: see the type's documentation: the value owns every reference to its libudev context
// and monitor, no libudev object derived from it outlives a `read` call, and libudev has no
// thread-affine or global state, so moving it between threads cannot race. It stays !Sync.
unsafe impl Send for UdevMonitor {}

impl UdevMonitor {
    pub(super) fn open() -> io::Result<Self> {
        // No subsystem filter: a parent's registration arrives on its own subsystem (pci, a
        // sample driver's class, css, ap, ...) which no fixed list covers; `is_relevant` sorts.
        let socket = udev::MonitorBuilder::new()
            .and_then(udev::MonitorBuilder::listen)
            .map_err(context("cannot open the udev monitor"))?;
        if !std::path::Path::new("/run/udev/control").exists() {
            tracing::warn!(
                "systemd-udevd does not seem to run (no /run/udev/control): the udev event \
                 source may receive nothing; use the kernel source instead"
            );
        }
        Ok(Self { socket })
    }

    pub(super) fn register(self) -> io::Result<AsyncFd<Self>> {
        // SAFETY: the monitor's descriptor is opened by `listen` and closed only when the
        // monitor is freed, which happens when the AsyncFd drops this value; `as_raw_fd` returns
        // that same descriptor every time (libudev never replaces it).
        let registered = unsafe { AsyncFd::register_with_interest(self, Interest::READABLE) };
        Ok(registered?)
    }
}

impl AsRawFd for UdevMonitor {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

pub(super) fn read(monitor: &UdevMonitor) -> io::Result<Option<UEvent>> {
    if let Some(event) = monitor.socket.iter().next() {
        return match owned_from_udev(&event) {
            Ok(owned) => Ok(Some(owned)),
            Err(e) => {
                tracing::debug!(source = "udev", "skipped a malformed uevent: {e}");
                Ok(None)
            }
        };
    }
    // libudev gives no event both when the socket is drained and when it dropped a message
    // (filtered, untrusted sender, a receive error). Only the first may clear readiness, or a
    // queued event would wait for the next one to arrive.
    let mut fds = [PollFd::new(monitor.socket.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => Ok(None),
        Ok(_) => Err(io::ErrorKind::WouldBlock.into()),
        Err(Errno::EINTR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn owned_from_udev(event: &udev::Event) -> Result<UEvent, UEventError> {
    owned_event(
        event.action(),
        event.devpath(),
        event.subsystem(),
        event.sequence_number(),
        event
            .properties()
            .map(|p| (p.name().to_owned(), p.value().to_owned())),
    )
}

/// Builds a `UEvent` from libudev's view of an event. The header fields are taken from their
/// own accessors and dropped from the properties, as `UEvent::parse` does; properties whose
/// name or value is not UTF-8 (udevd's ID_* values are escaped ASCII, so this is rare) are
/// skipped rather than altered.
fn owned_event<K: AsRef<OsStr>, V: AsRef<OsStr>>(
    action: Option<&OsStr>,
    devpath: &OsStr,
    subsystem: Option<&OsStr>,
    seqnum: u64,
    props: impl IntoIterator<Item = (K, V)>,
) -> Result<UEvent, UEventError> {
    fn text(s: &OsStr) -> Result<&str, UEventError> {
        s.to_str().ok_or(UEventError::NotUtf8)
    }
    let action = text(action.ok_or(UEventError::Missing("ACTION"))?)?;
    let devpath = text(devpath)?;
    if devpath.is_empty() {
        return Err(UEventError::Missing("DEVPATH"));
    }
    let subsystem = text(subsystem.ok_or(UEventError::Missing("SUBSYSTEM"))?)?;
    let mut event = UEvent::new(action, devpath, subsystem);
    event.seqnum = seqnum;
    for (name, value) in props {
        match (name.as_ref().to_str(), value.as_ref().to_str()) {
            (Some("ACTION" | "DEVPATH" | "SUBSYSTEM" | "SEQNUM"), _) => {}
            (Some(name), Some(value)) if !name.is_empty() => {
                event.props.insert(name.to_owned(), value.to_owned());
            }
            _ => tracing::debug!(devpath, "skipped a uevent property that is not UTF-8"),
        }
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// The group systemd-udevd re-broadcasts processed events on (the kernel uses group 1).
    const UDEV_GROUP: u32 = 2;

    use std::os::fd::AsRawFd;

    use nix::sys::socket::{
        sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
    };

    use crate::events::{EventSpec, EventStream};
    // --- udev conversion ---------------------------------------------------------------------

    #[test]
    fn udev_properties_become_an_owned_event() {
        let e = owned_event(
            Some(OsStr::new("bind")),
            OsStr::new("/devices/virtual/mtty/mtty/u"),
            Some(OsStr::new("mdev")),
            7,
            [
                ("ACTION", "bind"),
                ("DEVPATH", "/devices/virtual/mtty/mtty/u"),
                ("SUBSYSTEM", "mdev"),
                ("SEQNUM", "7"),
                ("DRIVER", "mtty"),
                ("USEC_INITIALIZED", "1234"),
            ],
        )
        .unwrap();
        let want = UEvent {
            seqnum: 7,
            ..UEvent::new("bind", "/devices/virtual/mtty/mtty/u", "mdev")
                .with("DRIVER", "mtty")
                .with("USEC_INITIALIZED", "1234")
        };
        assert_eq!(e, want);
    }

    #[test]
    fn udev_event_without_action_or_subsystem_is_refused() {
        let none: [(&str, &str); 0] = [];
        assert_eq!(
            owned_event(
                None,
                OsStr::new("/devices/x"),
                Some(OsStr::new("pci")),
                1,
                none
            ),
            Err(UEventError::Missing("ACTION"))
        );
        assert_eq!(
            owned_event(
                Some(OsStr::new("add")),
                OsStr::new("/devices/x"),
                None,
                1,
                none
            ),
            Err(UEventError::Missing("SUBSYSTEM"))
        );
        assert_eq!(
            owned_event(
                Some(OsStr::new("add")),
                OsStr::new(""),
                Some(OsStr::new("pci")),
                1,
                none
            ),
            Err(UEventError::Missing("DEVPATH"))
        );
    }

    #[test]
    fn udev_property_that_is_not_utf8_is_skipped() {
        use std::os::unix::ffi::OsStrExt;
        let bad = OsStr::from_bytes(b"\xff\xfe");
        let e = owned_event(
            Some(OsStr::new("add")),
            OsStr::new("/devices/x"),
            Some(OsStr::new("pci")),
            1,
            [
                (OsStr::new("ID_MODEL"), bad),
                (OsStr::new("DRIVER"), OsStr::new("vfio-pci")),
            ],
        )
        .unwrap();
        assert_eq!(e.prop("ID_MODEL"), None);
        assert_eq!(e.prop("DRIVER"), Some("vfio-pci"));
    }

    /// Broadcasts `event` on netlink group 2 the way systemd-udevd does after processing it
    /// (libudev's monitor_netlink_header, then the properties), so the udev monitor can be
    /// tested where no udevd runs. libudev accepts it from a root sender.
    fn broadcast_as_udevd(event: &UEvent) {
        let props = event.encode();
        // The kernel header line goes: libudev messages start with the properties.
        let header_len = props.iter().position(|&b| b == 0).unwrap() + 1;
        let props = &props[header_len..];
        let mut msg = Vec::with_capacity(40 + props.len());
        msg.extend_from_slice(b"libudev\0");
        msg.extend_from_slice(&0xfeed_cafe_u32.to_be_bytes()); // magic, network order
        msg.extend_from_slice(&40u32.to_ne_bytes()); // header_size
        msg.extend_from_slice(&40u32.to_ne_bytes()); // properties_off
        msg.extend_from_slice(&(props.len() as u32).to_ne_bytes()); // properties_len
        msg.extend_from_slice(&[0; 16]); // filter hashes and tag bloom: no filters in use
        msg.extend_from_slice(props);
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        )
        .unwrap();
        sendto(
            fd.as_raw_fd(),
            &msg,
            &NetlinkAddr::new(0, UDEV_GROUP),
            MsgFlags::empty(),
        )
        .expect("root may send to the udev group");
    }

    #[tokio::test]
    async fn udev_source_opens() {
        EventStream::open(&EventSpec::Udev).unwrap();
    }

    #[tokio::test]
    async fn udev_source_receives_events_from_udevd() {
        // libudev disables its monitor when neither udevd's control socket nor a devtmpfs /dev
        // exists (a container); every machine here mounts devtmpfs on /dev.
        let mut stream = EventStream::open(&EventSpec::Udev).unwrap();
        let devpath = format!("/devices/virtual/vgpud-test/{}", uuid::Uuid::new_v4());
        let mut sent = UEvent::new("bind", &devpath, "vgpud-test")
            .with("DRIVER", "mtty")
            .with("VGPUD_TEST", "1");
        sent.seqnum = 4242;
        broadcast_as_udevd(&sent);
        let got = tokio::time::timeout(TIMEOUT, async {
            loop {
                let e = stream.next_any().await.unwrap();
                if e.devpath == devpath {
                    return e;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(got, sent);
    }
}
