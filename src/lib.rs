//! vgpud: a vendor-neutral manager for mediated devices (mdev) and vGPUs.
//!
//! The library holds everything; the binaries in src/bin parse flags and call in.

pub mod backend;
pub mod callouts;
pub mod cli;
pub mod daemon;
pub mod dbus;
pub mod error;
pub mod events;
pub mod manager;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod polkitd;
pub mod privbus;
pub mod prove;
pub mod sim;
pub mod store;
pub mod vmm;

pub use error::{Error, ErrorClass, Result};
