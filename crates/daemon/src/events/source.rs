//! Where uevents come from: the udev monitor (production: events after systemd-udevd ran its
//! rules), the kernel's netlink socket directly (hosts without udevd), or the simulator's feed.
//! Every source yields the same owned `UEvent`, already filtered down to what vgpud acts on.

mod kernel;
mod sim;
mod udev;

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::str::FromStr;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::{UEvent, MAX_UEVENT_LEN};

/// Which event source the daemon listens to, as given on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSpec {
    /// The udev monitor: events after systemd-udevd processed them (needs udevd running).
    Udev,
    /// The kernel's uevent netlink socket, for hosts without udevd.
    Kernel,
    /// The simulator's feed socket.
    Sim(PathBuf),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventSpecError {
    #[error(
        "unknown event source {0:?}: expected \"udev\", \"kernel\" or \"sim:/path/to/feed-socket\""
    )]
    Unknown(String),
    #[error("event source \"sim:\" needs the path of the simulator's feed socket after the colon")]
    NoSimPath,
}

impl FromStr for EventSpec {
    type Err = EventSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "udev" => Ok(Self::Udev),
            "kernel" => Ok(Self::Kernel),
            _ => match s.strip_prefix("sim:") {
                Some("") => Err(EventSpecError::NoSimPath),
                Some(path) => Ok(Self::Sim(PathBuf::from(path))),
                None => Err(EventSpecError::Unknown(s.chars().take(64).collect())),
            },
        }
    }
}

impl fmt::Display for EventSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Udev => f.write_str("udev"),
            Self::Kernel => f.write_str("kernel"),
            Self::Sim(path) => write!(f, "sim:{}", path.display()),
        }
    }
}

/// What vgpud acts on: anything on the mdev bus, a parent (un)registering with the mdev core
/// (a `change` carrying MDEV_STATE on the parent's own subsystem, which may be pci, a sample
/// driver's class, css, ...), and PCI devices appearing, disappearing or changing driver (a
/// parent on kernels without MDEV_STATE, an SR-IOV VF, a vendor-sysfs GPU).
pub fn is_relevant(e: &UEvent) -> bool {
    e.subsystem == "mdev"
        || e.prop("MDEV_STATE").is_some()
        || (e.subsystem == "pci"
            && matches!(e.action.as_str(), "add" | "remove" | "bind" | "unbind"))
}

/// A stream of relevant uevents from one source.
pub struct EventStream {
    source: Source,
    /// One byte more than the longest accepted message, so an oversize one is seen as such.
    buf: Vec<u8>,
}

enum Source {
    Udev(AsyncFd<udev::UdevMonitor>),
    Kernel(AsyncFd<OwnedFd>),
    Sim(AsyncFd<OwnedFd>),
}

impl EventStream {
    /// Opens the source. Must be called inside a tokio runtime (the socket is registered with
    /// its reactor); outside one this is an error, not a panic.
    pub fn open(spec: &EventSpec) -> io::Result<Self> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other(
                "an event source must be opened inside a tokio runtime",
            ));
        }
        let source = match spec {
            EventSpec::Udev => Source::Udev(udev::UdevMonitor::open()?.register()?),
            EventSpec::Kernel => Source::Kernel(register(kernel::open()?)?),
            EventSpec::Sim(path) => Source::Sim(register(sim::open(path)?)?),
        };
        Ok(Self {
            source,
            buf: vec![0; MAX_UEVENT_LEN + 1],
        })
    }

    /// The next relevant event. Malformed messages and irrelevant events are skipped; an error
    /// means the source itself failed (or, for the simulator, closed its feed).
    pub async fn recv(&mut self) -> io::Result<UEvent> {
        loop {
            let event = self.next_any().await?;
            if is_relevant(&event) {
                return Ok(event);
            }
            tracing::trace!(
                action = %event.action,
                devpath = %event.devpath,
                subsystem = %event.subsystem,
                "uevent not relevant to vgpud"
            );
        }
    }

    /// The next well-formed event of any kind.
    async fn next_any(&mut self) -> io::Result<UEvent> {
        // `readable_mut` (not `readable`) so the future holds `&mut AsyncFd`, which is Send
        // for the udev monitor that is Send but not Sync.
        loop {
            let read = match &mut self.source {
                Source::Udev(fd) => {
                    let mut guard = fd.readable_mut().await?;
                    guard.try_io(|fd| udev::read(fd.get_ref()))
                }
                Source::Kernel(fd) => {
                    let mut guard = fd.readable_mut().await?;
                    guard.try_io(|fd| kernel::read(fd.get_ref(), &mut self.buf))
                }
                Source::Sim(fd) => {
                    let mut guard = fd.readable_mut().await?;
                    guard.try_io(|fd| sim::read(fd.get_ref(), &mut self.buf))
                }
            };
            match read {
                Ok(Ok(Some(event))) => return Ok(event),
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// A blocking reader of every well-formed uevent, relevant to vgpud or not, from the kernel's
/// socket or the simulator's feed: what `vgpud-prove abi` records to compare the two.
pub struct RawEvents {
    fd: OwnedFd,
    kernel: bool,
    buf: Vec<u8>,
}

impl RawEvents {
    /// Opens the kernel's socket or the simulator's feed (the udev monitor is not offered:
    /// what the kernel itself sends is the question).
    pub fn open(spec: &EventSpec) -> io::Result<Self> {
        let (fd, kernel) = match spec {
            EventSpec::Kernel => (kernel::open()?, true),
            EventSpec::Sim(path) => (sim::open(path)?, false),
            EventSpec::Udev => {
                return Err(io::Error::other(
                    "raw events come from the kernel or the simulator, not udev",
                ))
            }
        };
        Ok(Self {
            fd,
            kernel,
            buf: vec![0; MAX_UEVENT_LEN + 1],
        })
    }

    /// The next event within `timeout`, or None when none came.
    pub fn next(&mut self, timeout: std::time::Duration) -> io::Result<Option<UEvent>> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ms = PollTimeout::try_from(left.as_millis().min(60_000) as u32)
                .unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, ms) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let read = if self.kernel {
                kernel::read(&self.fd, &mut self.buf)
            } else {
                sim::read(&self.fd, &mut self.buf)
            };
            match read {
                Ok(Some(event)) => return Ok(Some(event)),
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Hands a socket to the runtime's reactor.
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the OwnedFd, which keeps the same open descriptor until the
    // AsyncFd drops it; nothing else can close it.
    let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
    Ok(registered?)
}

/// An io::Error that keeps its cause as `source()`, so the chain prints once.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
struct Context {
    what: String,
    #[source]
    source: io::Error,
}

fn context(what: impl Into<String>) -> impl FnOnce(io::Error) -> io::Error {
    move |source| {
        io::Error::new(
            source.kind(),
            Context {
                what: what.into(),
                source,
            },
        )
    }
}

/// Turns one received message into an event; `None` (logged at debug) for anything malformed.
fn decode(wire: &[u8], source: &str) -> Option<UEvent> {
    match UEvent::parse(wire) {
        Ok(event) => Some(event),
        Err(e) => {
            tracing::debug!(source, "skipped a malformed uevent: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // --- EventSpec ---------------------------------------------------------------------------

    #[test]
    fn spec_parses_udev_kernel_and_sim() {
        assert_eq!("udev".parse(), Ok(EventSpec::Udev));
        assert_eq!("kernel".parse(), Ok(EventSpec::Kernel));
        assert_eq!(
            "sim:/run/vgpud-sim/uevents".parse(),
            Ok(EventSpec::Sim(PathBuf::from("/run/vgpud-sim/uevents")))
        );
    }

    #[test]
    fn spec_display_round_trips() {
        for text in ["udev", "kernel", "sim:/tmp/feed"] {
            let spec: EventSpec = text.parse().unwrap();
            assert_eq!(spec.to_string(), text);
        }
    }

    #[test]
    fn spec_rejects_unknown_names() {
        for bad in ["", "Udev", "netlink", "sim", "sim/tmp/x", " udev"] {
            assert_eq!(
                bad.parse::<EventSpec>(),
                Err(EventSpecError::Unknown(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn spec_rejects_sim_without_path() {
        assert_eq!("sim:".parse::<EventSpec>(), Err(EventSpecError::NoSimPath));
        let msg = EventSpecError::Unknown("x".into()).to_string();
        assert!(msg.contains("\"udev\", \"kernel\" or \"sim:"), "{msg}");
    }

    // --- is_relevant -------------------------------------------------------------------------

    #[test]
    fn relevance_table() {
        let pci = "/devices/pci0000:00/0000:00:02.0";
        let cases = [
            ("mdev add", UEvent::new("add", "/devices/x/u", "mdev"), true),
            (
                "mdev bind",
                UEvent::new("bind", "/devices/x/u", "mdev"),
                true,
            ),
            (
                "mdev change",
                UEvent::new("change", "/devices/x/u", "mdev"),
                true,
            ),
            (
                "mtty parent registers",
                UEvent::new("change", "/devices/virtual/mtty/mtty", "mtty")
                    .with("MDEV_STATE", "registered"),
                true,
            ),
            (
                "pci parent unregisters",
                UEvent::new("change", pci, "pci").with("MDEV_STATE", "unregistered"),
                true,
            ),
            ("pci add", UEvent::new("add", pci, "pci"), true),
            ("pci remove", UEvent::new("remove", pci, "pci"), true),
            (
                "pci bind",
                UEvent::new("bind", pci, "pci").with("DRIVER", "nvidia"),
                true,
            ),
            ("pci unbind", UEvent::new("unbind", pci, "pci"), true),
            (
                "pci change without MDEV_STATE",
                UEvent::new("change", pci, "pci"),
                false,
            ),
            ("pci online", UEvent::new("online", pci, "pci"), false),
            (
                "mem change",
                UEvent::new("change", "/devices/virtual/mem/null", "mem"),
                false,
            ),
            ("usb add", UEvent::new("add", "/devices/usb1", "usb"), false),
            (
                "net add",
                UEvent::new("add", "/devices/virtual/net/lo", "net"),
                false,
            ),
        ];
        for (name, event, want) in cases {
            assert_eq!(is_relevant(&event), want, "{name}");
        }
    }

    #[test]
    fn stream_and_its_recv_future_are_send() {
        fn assert_send<T: Send>(_: &T) {}
        fn recv_future(s: &mut EventStream) {
            assert_send(&s.recv());
        }
        let _ = recv_future;
    }

    #[test]
    fn open_outside_a_runtime_is_an_error() {
        let err = match EventStream::open(&EventSpec::Kernel) {
            Ok(_) => panic!("opened outside a runtime"),
            Err(e) => e,
        };
        assert!(err.to_string().contains("tokio runtime"), "{err}");
    }
}
