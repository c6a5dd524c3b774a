//! What a D-Bus client of vgpud links: the bus, interface and error names, object paths, the
//! proxies of vgpud's interfaces, and how to connect. vgpuctl, the libvirt hook and the tests
//! use it; the daemon serves what it names. It depends on the model and zbus only.

pub mod names;
pub mod proxies;

use zbus::Connection;

pub use vgpud_model as model;

/// Which bus to serve on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusChoice {
    System,
    Session,
    Address(String),
}

/// How many incoming messages the daemon's connection queues for a consumer that is behind (the
/// bouncer's watch of names leaving the bus): zbus stops reading the socket, method calls
/// included, while any queue is full. A storm of clients coming and going must not stall calls.
pub const MAX_QUEUED: usize = 4096;

pub async fn connect(bus: &BusChoice) -> zbus::Result<Connection> {
    let builder = match bus {
        BusChoice::System => zbus::connection::Builder::system()?,
        BusChoice::Session => zbus::connection::Builder::session()?,
        BusChoice::Address(a) => zbus::connection::Builder::address(a.as_str())?,
    };
    builder.max_queued(MAX_QUEUED).build().await
}
