//! The daemon core of vgpud: the backends that read and write the kernel's mdev sysfs, the
//! manager that owns the model and every operation on it (with its guests and the holders of
//! devices), persistent definitions, kernel events, metrics, and the D-Bus front end with its
//! bouncer. The binary `vgpud` parses flags and calls [`daemon::run`].

pub mod backend;
pub mod callouts;
pub mod daemon;
pub mod dbus;
pub mod events;
pub mod manager;
pub mod metrics;
pub mod store;
