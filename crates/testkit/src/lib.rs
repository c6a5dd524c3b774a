//! What tests, benchmarks and the simulated host need around vgpud, and a host does not: a
//! private dbus-daemon with vgpud's bus policy, a polkitd on it, and the proof suite that
//! `vgpud-prove` runs. Nothing of the daemon core depends on it.

pub mod polkitd;
pub mod privbus;
pub mod prove;
