//! Mount-point housekeeping: find and clear a stale FUSE mount left by a crashed simulator.

use std::path::Path;

/// Mount points from /proc/self/mountinfo with their file-system type.
fn mounts() -> std::io::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some((unescape(fields.get(4)?), (*fields.get(sep + 1)?).to_owned()))
        })
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Debug, PartialEq, Eq)]
pub enum MountState {
    NotMounted,
    /// A FUSE mount whose server is gone (stat says ENOTCONN).
    Stale,
    /// Something live is mounted there.
    Busy(String),
}

pub fn state(dir: &Path) -> std::io::Result<MountState> {
    let shown = dir.to_string_lossy().into_owned();
    let Some((_, fstype)) = mounts()?.into_iter().rev().find(|(m, _)| *m == shown) else {
        return Ok(MountState::NotMounted);
    };
    match std::fs::metadata(dir) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) && fstype.starts_with("fuse") => {
            Ok(MountState::Stale)
        }
        _ => Ok(MountState::Busy(fstype)),
    }
}

/// Clears a stale mount at `dir`; refuses to touch a live one.
pub fn clear_stale(dir: &Path) -> Result<bool, String> {
    match state(dir).map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))? {
        MountState::NotMounted => Ok(false),
        MountState::Stale => {
            nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH)
                .map_err(|e| format!("cannot clear the stale mount at {}: {e}", dir.display()))?;
            tracing::warn!("cleared a stale simulator mount at {}", dir.display());
            Ok(true)
        }
        MountState::Busy(fstype) => Err(format!(
            "{} is already a live {fstype} mount (is another vgpud-sim running there?)",
            dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape("/tmp/plain"), "/tmp/plain");
        assert_eq!(unescape("/tmp/x\\"), "/tmp/x\\");
    }

    #[test]
    fn an_ordinary_directory_is_not_mounted() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(state(d.path()).unwrap(), MountState::NotMounted);
    }
}
