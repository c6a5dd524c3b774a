//! What vgpud keeps on disk about a running guest (`<guests dir>/<id>.guest.json`, written when
//! its VMM starts, removed when it ends), so a restarted daemon re-adopts the VMMs still
//! running; and the wait on a VMM that is no longer vgpud's child (a pidfd).

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{GuestState, GuestView};
use vgpud_model::MdevUuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRecord {
    pub id: u64,
    pub pid: u32,
    /// The VMM's start time (field 22 of /proc/PID/stat): a pid reused by another process
    /// has another.
    pub start_time: u64,
    pub uuid: String,
    pub devices: Vec<String>,
    pub serial_log: PathBuf,
    pub emulated: bool,
    pub owner_uid: Option<u32>,
    #[serde(default)]
    pub vfio_api: String,
}

impl GuestRecord {
    pub fn of(view: &GuestView, start_time: u64) -> Self {
        Self {
            id: view.id,
            pid: view.pid,
            start_time,
            uuid: view.uuid.to_string(),
            devices: view.devices.iter().map(|d| d.to_string()).collect(),
            serial_log: view.serial_log.clone(),
            emulated: view.emulated,
            owner_uid: view.owner_uid,
            vfio_api: view.vfio_api.clone(),
        }
    }

    /// The running guest this record describes; `None` if a UUID in it does not parse.
    pub fn view(&self) -> Option<GuestView> {
        let devices = self
            .devices
            .iter()
            .map(|d| MdevUuid::parse(d).ok())
            .collect::<Option<Vec<_>>>()?;
        Some(GuestView {
            id: self.id,
            state: GuestState::Running,
            pid: self.pid,
            devices,
            serial_log: self.serial_log.clone(),
            exit_status: -1,
            emulated: self.emulated,
            owner_uid: self.owner_uid,
            uuid: uuid::Uuid::parse_str(&self.uuid).ok()?,
            vfio_api: self.vfio_api.clone(),
        })
    }
}

pub fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id}.guest.json"))
}

/// Writes the record whole or not at all (a temporary file renamed over it).
pub fn write(dir: &Path, rec: &GuestRecord) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{}.guest.json.tmp", rec.id));
    std::fs::write(&tmp, serde_json::to_vec(rec)?)?;
    std::fs::rename(&tmp, path(dir, rec.id))
}

/// Every record in `dir`; one that does not parse is reported and skipped.
pub fn load_all(dir: &Path) -> Vec<GuestRecord> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let p = entry.path();
        if !p.to_string_lossy().ends_with(".guest.json") {
            continue;
        }
        match std::fs::read(&p).map(|b| serde_json::from_slice::<GuestRecord>(&b)) {
            Ok(Ok(rec)) => out.push(rec),
            Ok(Err(e)) => tracing::warn!("ignoring guest record {}: {e}", p.display()),
            Err(e) => tracing::warn!("cannot read guest record {}: {e}", p.display()),
        }
    }
    out.sort_by_key(|r| r.id);
    out
}

/// Field 22 of `/proc/PID/stat` (after the command name, which may hold spaces and parens).
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn start_time(proc_root: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(format!("{pid}/stat"))).ok()?;
    parse_start_time(&stat)
}

/// The record's VMM still runs: the same process (start time) with the guest's `-uuid`.
pub fn is_running(proc_root: &Path, rec: &GuestRecord) -> bool {
    if start_time(proc_root, rec.pid) != Some(rec.start_time) {
        return false;
    }
    let Ok(cmdline) = std::fs::read(proc_root.join(format!("{}/cmdline", rec.pid))) else {
        return false;
    };
    let uuid = &rec.uuid;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .any(|w| w[0] == b"-uuid" && w[1] == uuid.as_bytes())
}

/// A descriptor that becomes readable when process `pid` ends.
pub fn pidfd(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Sends `signal` to the process behind `pidfd` (never to a later process with its pid).
pub fn pidfd_signal(pidfd: &OwnedFd, signal: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_a_command_name_with_parens_and_spaces() {
        let stat =
            "42 (vgpud (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("42 (x) S 1"), None);
        assert_eq!(parse_start_time("garbage"), None);
    }

    fn record(pid: u32, start_time: u64, uuid: uuid::Uuid) -> GuestRecord {
        GuestRecord {
            id: 3,
            pid,
            start_time,
            uuid: uuid.to_string(),
            devices: vec!["6c1d0000-0000-4000-8000-0000000000a1".into()],
            serial_log: "/var/lib/vgpud/guests/3.log".into(),
            emulated: true,
            owner_uid: Some(1000),
            vfio_api: "emulated".into(),
        }
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let rec = record(10, 20, uuid::Uuid::new_v4());
        write(dir.path(), &rec).unwrap();
        std::fs::write(dir.path().join("9.guest.json"), b"{not json").unwrap();
        std::fs::write(dir.path().join("3.log"), b"console").unwrap();
        assert_eq!(load_all(dir.path()), vec![rec.clone()]);
        let view = rec.view().unwrap();
        assert_eq!(view.state, GuestState::Running);
        assert_eq!(GuestRecord::of(&view, 20), rec);
    }

    #[test]
    fn a_running_vmm_is_recognised_by_start_time_and_uuid() {
        let uuid = uuid::Uuid::new_v4();
        // sh keeps its argv (`; true` stops it from exec'ing sleep in its place).
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; true", "-uuid", &uuid.to_string()])
            .spawn()
            .unwrap();
        let proc_root = Path::new("/proc");
        let pid = child.id();
        // The child may still be between fork and exec (its command line the test's own).
        let cmdline = proc_root.join(pid.to_string()).join("cmdline");
        for _ in 0..200 {
            let argv = std::fs::read(&cmdline).unwrap_or_default();
            if String::from_utf8_lossy(&argv).contains(&uuid.to_string()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let started = start_time(proc_root, pid).unwrap();
        let alive = is_running(proc_root, &record(pid, started, uuid));
        let other_uuid = is_running(proc_root, &record(pid, started, uuid::Uuid::new_v4()));
        let reused_pid = is_running(proc_root, &record(pid, started + 1, uuid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!other_uuid);
        assert!(!reused_pid);
        assert!(alive);
        assert!(!is_running(proc_root, &record(pid, started, uuid)));
    }
}
