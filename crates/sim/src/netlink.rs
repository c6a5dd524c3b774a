//! Broadcasting the simulator's uevents on NETLINK_KOBJECT_UEVENT in the caller's network
//! namespace, so udev-based tools (libvirt, `udevadm monitor`, libudev) see simulated devices
//! come and go: group 1 in the kernel's format, group 2 in the format systemd-udevd re-sends
//! (libudev's header, then the properties). Sending to these groups needs CAP_NET_ADMIN.
//! Receivers that check the sender (libudev's kernel monitor, vgpud's `--events kernel`) ignore
//! group 1 from a process, as they should; group 2 is accepted from root.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use vgpud_model::uevent::UEvent;

/// The kernel's multicast group for uevents.
pub const KERNEL_GROUP: u32 = 1;
/// The group systemd-udevd re-broadcasts processed events on (libudev's "udev" monitor).
pub const UDEV_GROUP: u32 = 2;
/// libudev's monitor_netlink_header: prefix, magic and seven 32-bit fields.
const HEADER_LEN: usize = 40;
const MAGIC: u32 = 0xfeed_cafe;

pub struct Broadcast {
    fd: OwnedFd,
}

impl Broadcast {
    /// A netlink socket in the calling thread's network namespace.
    pub fn open() -> std::io::Result<Self> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkKObjectUEvent,
        )?;
        Ok(Broadcast { fd })
    }

    /// Sends `event` to both groups; a failure is logged, never fatal (nobody may listen).
    pub fn send(&self, event: &UEvent) {
        for (group, wire) in [
            (KERNEL_GROUP, event.encode()),
            (UDEV_GROUP, libudev_message(event)),
        ] {
            let to = NetlinkAddr::new(0, group);
            if let Err(e) = sendto(self.fd.as_raw_fd(), &wire, &to, MsgFlags::MSG_DONTWAIT) {
                // ECONNREFUSED / ESRCH: no listener in this namespace, which is fine.
                if !matches!(
                    e,
                    nix::errno::Errno::ECONNREFUSED | nix::errno::Errno::ESRCH
                ) {
                    tracing::warn!(
                        seqnum = event.seqnum,
                        group,
                        "cannot broadcast a uevent: {e}"
                    );
                }
            }
        }
    }
}

/// An event as systemd-udevd sends it on group 2: libudev's header, then `KEY=VALUE\0`
/// properties (no `ACTION@DEVPATH` line), with the subsystem and devtype hashes its receivers'
/// socket filters compare.
pub fn libudev_message(event: &UEvent) -> Vec<u8> {
    let kernel = event.encode();
    let first = kernel.iter().position(|&b| b == 0).map_or(0, |i| i + 1);
    let props = &kernel[first..];
    let devtype = event.props.get("DEVTYPE").map(String::as_str);
    let mut msg = Vec::with_capacity(HEADER_LEN + props.len());
    msg.extend_from_slice(b"libudev\0");
    msg.extend_from_slice(&MAGIC.to_be_bytes());
    msg.extend_from_slice(&(HEADER_LEN as u32).to_ne_bytes());
    msg.extend_from_slice(&(HEADER_LEN as u32).to_ne_bytes());
    msg.extend_from_slice(&(props.len() as u32).to_ne_bytes());
    msg.extend_from_slice(&murmur2(event.subsystem.as_bytes()).to_be_bytes());
    msg.extend_from_slice(&devtype.map_or(0, |d| murmur2(d.as_bytes())).to_be_bytes());
    // No tags: the tag bloom filter is empty.
    msg.extend_from_slice(&[0; 8]);
    msg.extend_from_slice(props);
    msg
}

/// MurmurHash2 with seed 0, as systemd's `string_hash32` computes the filter hashes.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h = data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_reference() {
        // The tail and the whole-word paths; libudev's subsystem filter accepting the messages
        // (tests/sim_netlink.rs, `udevadm monitor --subsystem-match`) checks it end to end.
        assert_eq!(murmur2(b""), 0);
        assert_eq!(murmur2(b"a"), 0x9268_5f5e);
        assert_eq!(murmur2(b"abcd"), 0x2687_3021);
        assert_eq!(murmur2(b"mdev"), 0xbb52_11c7);
    }

    #[test]
    fn a_libudev_message_has_the_header_then_the_properties() {
        let mut e = UEvent::new("add", "/devices/virtual/mtty/mtty/u", "mdev");
        e.seqnum = 7;
        let msg = libudev_message(&e);
        assert_eq!(&msg[..8], b"libudev\0");
        assert_eq!(&msg[8..12], &MAGIC.to_be_bytes());
        let len = u32::from_ne_bytes([msg[20], msg[21], msg[22], msg[23]]) as usize;
        assert_eq!(msg.len(), HEADER_LEN + len);
        let props = std::str::from_utf8(&msg[HEADER_LEN..]).unwrap();
        assert!(props.starts_with("ACTION=add\0DEVPATH=/devices/virtual/mtty/mtty/u\0"));
        assert!(props.ends_with("SEQNUM=7\0"));
    }
}
