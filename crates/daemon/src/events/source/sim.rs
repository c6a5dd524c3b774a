//! The simulator's uevent feed: a SOCK_SEQPACKET Unix socket carrying one kernel-format
//! message per packet (see vgpud_sim::feed).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{
    connect, recv, socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr,
};

use super::{context, decode};
use vgpud_model::uevent::UEvent;

pub(super) fn open(path: &Path) -> io::Result<OwnedFd> {
    let what = || {
        format!(
            "cannot connect to the simulator's uevent feed at {}",
            path.display()
        )
    };
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
    .map_err(context(what()))?;
    let addr = UnixAddr::new(path)
        .map_err(io::Error::from)
        .map_err(context(what()))?;
    // Connected while still blocking: a Unix connect only waits when the listener's backlog is
    // full, and then waiting is right; the reads that follow are non-blocking.
    connect(fd.as_raw_fd(), &addr)
        .map_err(io::Error::from)
        .map_err(context(what()))?;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
        .map_err(io::Error::from)
        .map_err(context(what()))?;
    Ok(fd)
}

pub(super) fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<UEvent>> {
    match recv(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
        Ok(0) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the simulator closed its uevent feed",
        )),
        Ok(len) => Ok(decode(&buf[..len], "sim")),
        Err(Errno::EINTR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    use std::path::PathBuf;

    use nix::sys::socket::{accept, bind, listen, send, Backlog};

    use crate::events::{EventSpec, EventStream, MAX_UEVENT_LEN};

    fn mdev_event(action: &str, seqnum: u64) -> UEvent {
        let mut e = UEvent::new(
            action,
            "/devices/virtual/mtty/mtty/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001",
            "mdev",
        );
        e.seqnum = seqnum;
        e
    }

    /// A listening SEQPACKET socket standing in for the simulator's feed.
    struct FakeFeed {
        _dir: tempfile::TempDir,
        path: PathBuf,
        listener: OwnedFd,
    }

    impl FakeFeed {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("uevents");
            let listener = socket(
                AddressFamily::Unix,
                SockType::SeqPacket,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .unwrap();
            bind(listener.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
            listen(&listener, Backlog::new(4).unwrap()).unwrap();
            Self {
                _dir: dir,
                path,
                listener,
            }
        }

        fn spec(&self) -> EventSpec {
            EventSpec::Sim(self.path.clone())
        }

        /// The subscriber's end; the stream has connected already, so this does not block.
        fn accept(&self) -> OwnedFd {
            let raw = accept(self.listener.as_raw_fd()).unwrap();
            // SAFETY: accept returned a new descriptor that nothing else owns.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
        }
    }

    fn send_packet(fd: &OwnedFd, packet: &[u8]) {
        send(fd.as_raw_fd(), packet, MsgFlags::MSG_NOSIGNAL).unwrap();
    }

    #[tokio::test]
    async fn sim_source_yields_events_in_order() {
        let feed = FakeFeed::new();
        let mut stream = EventStream::open(&feed.spec()).unwrap();
        let peer = feed.accept();
        let events = [mdev_event("add", 1), mdev_event("bind", 2)];
        for e in &events {
            send_packet(&peer, &e.encode());
        }
        let got = tokio::time::timeout(TIMEOUT, async {
            [stream.recv().await.unwrap(), stream.recv().await.unwrap()]
        })
        .await
        .unwrap();
        assert_eq!(got, events);
    }

    #[tokio::test]
    async fn sim_source_drops_irrelevant_events() {
        let feed = FakeFeed::new();
        let mut stream = EventStream::open(&feed.spec()).unwrap();
        let peer = feed.accept();
        send_packet(
            &peer,
            &UEvent::new("change", "/devices/virtual/mem/null", "mem").encode(),
        );
        send_packet(&peer, &mdev_event("remove", 9).encode());
        let got = tokio::time::timeout(TIMEOUT, stream.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, mdev_event("remove", 9));
    }

    #[tokio::test]
    async fn sim_source_skips_malformed_packets() {
        let feed = FakeFeed::new();
        let mut stream = EventStream::open(&feed.spec()).unwrap();
        let peer = feed.accept();
        send_packet(&peer, b"add@/devices/x\0ACTION=add\0garbage\0");
        send_packet(&peer, b"\xff\xfe");
        send_packet(&peer, &vec![b'a'; MAX_UEVENT_LEN + 100]);
        send_packet(&peer, &mdev_event("unbind", 3).encode());
        let got = tokio::time::timeout(TIMEOUT, stream.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, mdev_event("unbind", 3));
    }

    #[tokio::test]
    async fn sim_source_reports_eof_as_an_error() {
        let feed = FakeFeed::new();
        let mut stream = EventStream::open(&feed.spec()).unwrap();
        drop(feed.accept());
        let err = tokio::time::timeout(TIMEOUT, stream.recv())
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(err.to_string(), "the simulator closed its uevent feed");
    }

    #[tokio::test]
    async fn sim_source_that_does_not_exist_fails_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent");
        let err = match EventStream::open(&EventSpec::Sim(path.clone())) {
            Ok(_) => panic!("opened a feed that does not exist"),
            Err(e) => e,
        };
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}
