//! The simulator's uevent feed: a SOCK_SEQPACKET Unix socket; every subscriber gets every
//! event from the moment it connects, one kernel-format message per packet (like netlink).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    accept4, bind, listen, send, socket, AddressFamily, Backlog, MsgFlags, SockFlag, SockType,
    UnixAddr,
};

use vgpud_model::uevent::UEvent;

#[derive(Default)]
pub struct Feed {
    subscribers: Mutex<Vec<OwnedFd>>,
    /// The listening socket (non-blocking). Connections waiting on it are accepted before every
    /// event is sent, so a subscriber gets each event published after its connect() returned,
    /// as with a netlink bind; accepting only on a thread would lose events in between.
    listener: std::sync::OnceLock<OwnedFd>,
    /// Events every subscriber has been sent (or dropped, as netlink does when a reader lags).
    sent: std::sync::atomic::AtomicU64,
    /// Also broadcast every event on NETLINK_KOBJECT_UEVENT (`--netlink-uevents`).
    pub netlink: std::sync::OnceLock<super::netlink::Broadcast>,
}

impl Feed {
    /// Sends to every subscriber without blocking: a subscriber that does not read loses
    /// messages (netlink's ENOBUFS), one that hung up is forgotten.
    pub fn publish(&self, event: &UEvent) {
        let wire = event.encode();
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        self.accept_waiting(&mut subs);
        subs.retain(|fd| {
            match send(
                fd.as_raw_fd(),
                &wire,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(_) => true,
                Err(nix::errno::Errno::EAGAIN) => {
                    tracing::warn!(
                        seqnum = event.seqnum,
                        "a uevent subscriber is not reading; event dropped"
                    );
                    true
                }
                Err(_) => false,
            }
        });
        self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(netlink) = self.netlink.get() {
            netlink.send(event);
        }
    }

    pub fn subscriber_count(&self) -> usize {
        self.subscribers.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Accepts every connection waiting on the listener.
    fn accept_waiting(&self, subs: &mut Vec<OwnedFd>) {
        let Some(listener) = self.listener.get() else {
            return;
        };
        loop {
            match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(raw) => {
                    // SAFETY: accept4 returned a new descriptor that nothing else owns.
                    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
                    let _ = nix::sys::socket::setsockopt(
                        &fd,
                        nix::sys::socket::sockopt::SndBuf,
                        &(4 << 20),
                    );
                    subs.push(fd);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(e) => {
                    tracing::error!("uevent feed cannot accept a subscriber: {e}");
                    return;
                }
            }
        }
    }
}

/// Binds the feed socket; subscribers are accepted before each event and, between events, on
/// a thread until the process ends.
pub fn serve(feed: std::sync::Arc<Feed>, path: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    bind(listener.as_raw_fd(), &UnixAddr::new(path)?)?;
    listen(&listener, Backlog::new(64)?)?;
    feed.listener
        .set(listener)
        .map_err(|_| std::io::Error::other("the uevent feed is already being served"))?;
    std::thread::Builder::new()
        .name("sim-feed".into())
        .spawn(move || {
            let Some(listener) = feed.listener.get() else {
                return;
            };
            loop {
                let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => {
                        tracing::error!("uevent feed stopped accepting: {e}");
                        return;
                    }
                }
                let mut subs = feed.subscribers.lock().unwrap_or_else(|p| p.into_inner());
                feed.accept_waiting(&mut subs);
            }
        })?;
    Ok(())
}

/// A blocking subscriber, for tests and `vgpud-sim ctl monitor`.
pub struct Subscriber {
    fd: OwnedFd,
}

impl Subscriber {
    pub fn connect(path: &Path) -> std::io::Result<Self> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        nix::sys::socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        Ok(Self { fd })
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Waits up to `timeout` for the next event.
    pub fn next(&self, timeout: std::time::Duration) -> std::io::Result<Option<UEvent>> {
        let tv =
            nix::sys::time::TimeVal::new(timeout.as_secs() as i64, timeout.subsec_micros() as i64);
        nix::sys::socket::setsockopt(&self.fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)?;
        let mut buf = vec![0u8; vgpud_model::uevent::MAX_UEVENT_LEN];
        match nix::sys::socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the simulator closed the uevent feed",
            )),
            Ok(n) => UEvent::parse(&buf[..n])
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(nix::errno::Errno::EAGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
