//! Kernel uevents as one owned value, whatever their source (the udev monitor in production,
//! the kernel's netlink socket where no udevd runs, the simulator's feed in tests and demos).
//! Nothing downstream knows which source it was.

mod source;

pub use source::{is_relevant, EventSpec, EventSpecError, EventStream, RawEvents};
pub use vgpud_model::uevent::{Affected, UEvent, UEventError, MAX_UEVENT_LEN};
