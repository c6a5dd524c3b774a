//! `vgpud-prove`: the proof that vgpud keeps working under load, faults, hostile input and
//! crashes, and what it costs next to the alternatives. Every part runs the real binaries
//! (vgpud, vgpud-sim, dbus-daemon, mdevctl) on a simulated host in a temporary directory.
//!
//! - [`rig`]: the simulator, a private bus and the daemon as child processes;
//! - [`check`]: the consistency checker (the D-Bus picture against the sysfs tree);
//! - [`load`], [`faults`], [`crash`], [`dbus_fuzz`], [`compare`]: the sections of the run;
//! - [`fuzz`]: the parsers' property-based fuzz targets;
//! - [`abi`]: the kernel-ABI scenarios, run alike on a real kernel and on the simulator.

pub mod abi;
pub mod check;
pub mod cli;
pub mod compare;
pub mod crash;
pub mod dbus_fuzz;
pub mod faults;
pub mod fuzz;
pub mod load;
pub mod rig;
pub mod stats;
pub mod throughput;

/// One line of the summary table.
#[derive(Debug, Clone)]
pub struct Row {
    pub section: &'static str,
    pub item: String,
    /// What was measured or found, in a few words.
    pub result: String,
    pub ok: bool,
}

impl Row {
    pub fn new(
        section: &'static str,
        item: impl Into<String>,
        ok: bool,
        result: impl Into<String>,
    ) -> Self {
        Row {
            section,
            item: item.into(),
            result: result.into(),
            ok,
        }
    }
}

/// A small deterministic generator (xorshift64*), so every random choice can be replayed from
/// the seed the run prints.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn chance(&mut self, one_in: u64) -> bool {
        self.next_u64() % one_in == 0
    }
}

/// A seed from the clock, for runs that did not ask for one.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
}
