//! Kernel uevents as one owned value, whatever their source (the udev monitor in production,
//! the simulator's feed in tests and demos). Nothing downstream knows which source it was.

mod uevent;

pub use uevent::{UEvent, UEventError, MAX_UEVENT_LEN};
