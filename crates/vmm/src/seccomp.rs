//! The VMM's seccomp-bpf allow-list (rust-vmm's seccompiler, as Firecracker uses), installed
//! once every file is open and the guest is loaded, before the vCPUs start: the threads they
//! run on inherit it. A system call outside the list kills the whole process (SIGSYS).

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

/// What the VMM does after start-up: KVM and VFIO ioctls, port and MMIO emulation with
/// region reads and writes, the serial log, vCPU threads and their kick signal, and memory
/// slots for BARs. Measured with `strace -f` on pci-probe, the tiny kernel and a Linux boot.
pub const ALLOWED: &[(&str, i64)] = &[
    ("brk", libc::SYS_brk),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("clone", libc::SYS_clone),
    ("clone3", libc::SYS_clone3),
    ("close", libc::SYS_close),
    ("dup", libc::SYS_dup),
    ("eventfd2", libc::SYS_eventfd2),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    ("fcntl", libc::SYS_fcntl),
    ("fstat", libc::SYS_fstat),
    ("futex", libc::SYS_futex),
    ("getpid", libc::SYS_getpid),
    ("getrandom", libc::SYS_getrandom),
    ("gettid", libc::SYS_gettid),
    ("ioctl", libc::SYS_ioctl),
    ("lseek", libc::SYS_lseek),
    ("madvise", libc::SYS_madvise),
    ("mmap", libc::SYS_mmap),
    ("mprotect", libc::SYS_mprotect),
    ("mremap", libc::SYS_mremap),
    ("munmap", libc::SYS_munmap),
    ("nanosleep", libc::SYS_nanosleep),
    ("poll", libc::SYS_poll),
    ("pread64", libc::SYS_pread64),
    ("prctl", libc::SYS_prctl),
    ("pwrite64", libc::SYS_pwrite64),
    ("read", libc::SYS_read),
    ("rseq", libc::SYS_rseq),
    ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("sched_yield", libc::SYS_sched_yield),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("tgkill", libc::SYS_tgkill),
    ("write", libc::SYS_write),
    ("writev", libc::SYS_writev),
];

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("{0} is not in the seccomp allow-list")]
    Unknown(String),
    #[error("seccomp filter cannot be built")]
    Build(#[source] seccompiler::BackendError),
    #[error("seccomp filter cannot be installed")]
    Install(#[source] seccompiler::Error),
}

/// The filter without the system call `without` (a test's way to prove the filter kills).
pub fn program(without: Option<&str>) -> Result<BpfProgram, SeccompError> {
    if let Some(name) = without {
        if !ALLOWED.iter().any(|(n, _)| *n == name) {
            return Err(SeccompError::Unknown(name.to_owned()));
        }
    }
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = ALLOWED
        .iter()
        .filter(|(n, _)| Some(*n) != without)
        .map(|(_, nr)| (*nr, Vec::new()))
        .collect();
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(SeccompError::Build)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(SeccompError::Build)?;
    BpfProgram::try_from(filter).map_err(SeccompError::Build)
}

/// Installs the filter on the calling thread (threads it starts later inherit it).
pub fn apply(without: Option<&str>) -> Result<(), SeccompError> {
    seccompiler::apply_filter(&program(without)?).map_err(SeccompError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_builds_and_has_no_duplicates() {
        let p = program(None).unwrap();
        assert!(p.len() > ALLOWED.len());
        let mut nrs: Vec<i64> = ALLOWED.iter().map(|(_, n)| *n).collect();
        nrs.sort();
        nrs.dedup();
        assert_eq!(nrs.len(), ALLOWED.len());
    }

    #[test]
    fn dropping_a_call_shortens_the_program() {
        let full = program(None).unwrap().len();
        assert!(program(Some("ioctl")).unwrap().len() < full);
    }

    #[test]
    fn dropping_an_unknown_call_is_an_error() {
        assert!(matches!(
            program(Some("openat")),
            Err(SeccompError::Unknown(n)) if n == "openat"
        ));
    }
}
