//! The kernel's uevent netlink socket (group 1), read directly: what a host without
//! systemd-udevd offers. Only messages from the kernel itself are believed.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recvfrom, setsockopt, socket, sockopt, AddressFamily, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};

use super::{context, decode};
use vgpud_model::uevent::UEvent;

/// The kernel's multicast group for uevents on NETLINK_KOBJECT_UEVENT (udevd re-broadcasts
/// processed events on group 2, which the udev monitor reads).
const KERNEL_GROUP: u32 = 1;

/// Receive buffer asked for on the netlink socket, so a burst (SR-IOV enabling dozens of VFs)
/// does not overflow it while the manager is busy.
const NETLINK_RCVBUF: usize = 4 << 20;

pub(super) fn open() -> io::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkKObjectUEvent,
    )
    .map_err(io::Error::from)
    .map_err(context("cannot create the kernel uevent socket"))?;
    // SO_RCVBUFFORCE needs CAP_NET_ADMIN; without it the plain option still raises the buffer
    // up to net.core.rmem_max. A small buffer only risks overflow, so neither is fatal.
    if setsockopt(&fd, sockopt::RcvBufForce, &NETLINK_RCVBUF).is_err() {
        if let Err(e) = setsockopt(&fd, sockopt::RcvBuf, &NETLINK_RCVBUF) {
            tracing::debug!("cannot enlarge the uevent socket's receive buffer: {e}");
        }
    }
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, KERNEL_GROUP))
        .map_err(io::Error::from)
        .map_err(context(
            "cannot subscribe to kernel uevents (netlink group 1)",
        ))?;
    Ok(fd)
}

pub(super) fn read(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<UEvent>> {
    let (len, from) = match recvfrom::<NetlinkAddr>(fd.as_raw_fd(), buf) {
        Ok(got) => got,
        Err(Errno::ENOBUFS) => {
            tracing::warn!("the kernel dropped uevents: the receive buffer overflowed");
            return Ok(None);
        }
        Err(Errno::EINTR) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // Only the kernel (port id 0) speaks on group 1; a root process could forge messages there.
    if from.map(|a| a.pid()) != Some(0) {
        tracing::debug!("ignored a uevent message not sent by the kernel");
        return Ok(None);
    }
    let wire = &buf[..len];
    if wire.starts_with(b"libudev\0") {
        tracing::debug!("ignored a libudev-format message on the kernel uevent socket");
        return Ok(None);
    }
    Ok(decode(wire, "kernel"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    use nix::sys::socket::{sendto, MsgFlags};

    use crate::events::{is_relevant, EventSpec, EventStream};

    /// Makes the kernel send a real `change` uevent for /dev/null, marked with a fresh
    /// SYNTH_UUID (the synthetic-uevent interface of /sys/.../uevent, Linux 4.13+).
    fn trigger_synthetic_uevent() -> String {
        let marker = uuid::Uuid::new_v4().to_string();
        std::fs::write(
            "/sys/devices/virtual/mem/null/uevent",
            format!("change {marker}"),
        )
        .expect("writing /sys/devices/virtual/mem/null/uevent (needs root)");
        marker
    }

    async fn next_with_marker(stream: &mut EventStream, marker: &str) -> Vec<UEvent> {
        let mut seen = Vec::new();
        loop {
            let e = stream.next_any().await.unwrap();
            let done = e.prop("SYNTH_UUID") == Some(marker);
            seen.push(e);
            if done {
                return seen;
            }
        }
    }

    #[tokio::test]
    async fn kernel_source_opens() {
        // Not skipped on EPERM: the daemon runs as root and must be able to subscribe.
        EventStream::open(&EventSpec::Kernel).unwrap();
    }

    #[tokio::test]
    async fn kernel_source_receives_real_uevents() {
        let mut stream = EventStream::open(&EventSpec::Kernel).unwrap();
        let marker = trigger_synthetic_uevent();
        let seen = tokio::time::timeout(TIMEOUT, next_with_marker(&mut stream, &marker))
            .await
            .unwrap();
        let e = seen.last().unwrap();
        assert_eq!(e.action, "change");
        assert_eq!(e.devpath, "/devices/virtual/mem/null");
        assert_eq!(e.subsystem, "mem");
        assert!(e.seqnum > 0);
        assert!(!is_relevant(e));
    }

    #[tokio::test]
    async fn kernel_source_ignores_messages_not_from_the_kernel() {
        let mut stream = EventStream::open(&EventSpec::Kernel).unwrap();
        let forger = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        )
        .unwrap();
        let forged_path = format!("/devices/virtual/vgpud-test/{}", uuid::Uuid::new_v4());
        let forged = UEvent::new("add", &forged_path, "vgpud-test").encode();
        sendto(
            forger.as_raw_fd(),
            &forged,
            &NetlinkAddr::new(0, KERNEL_GROUP),
            MsgFlags::empty(),
        )
        .expect("root may send to the uevent group");
        let marker = trigger_synthetic_uevent();
        let seen = tokio::time::timeout(TIMEOUT, next_with_marker(&mut stream, &marker))
            .await
            .unwrap();
        assert!(seen.iter().all(|e| e.devpath != forged_path), "{seen:?}");
    }
}
