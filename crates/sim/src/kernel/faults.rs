//! What tests do to the kernel from outside: devices held open by a simulated VM, errno or
//! delay injections on a write path, and the synthetic events a `uevent` write asks for.

use super::{Errno, Kernel};
use vgpud_model::uevent::UEvent;

/// A fault armed on one write path (or a `*` pattern): fail it with `errno`, delay it, or both,
/// for the next `remaining` writes.
#[derive(Debug, Clone)]
pub struct Injection {
    pub path: String,
    pub errno: Option<Errno>,
    pub delay: Option<std::time::Duration>,
    pub remaining: u32,
}

impl Kernel {
    /// A `uevent` file write: the kernel sends a synthetic event with that action.
    pub fn synthetic_event(
        &mut self,
        devpath: &str,
        subsystem: &str,
        buf: &[u8],
    ) -> Result<(), Errno> {
        let text = std::str::from_utf8(buf).map_err(|_| libc::EINVAL)?;
        let action = text.split_whitespace().next().ok_or(libc::EINVAL)?;
        if ![
            "add", "remove", "change", "bind", "unbind", "online", "offline", "move",
        ]
        .contains(&action)
        {
            return Err(libc::EINVAL);
        }
        self.emit(UEvent::new(action, &format!("/{devpath}"), subsystem).with("SYNTH_UUID", "0"));
        Ok(())
    }

    // ---- holds and injections --------------------------------------------------------------

    pub fn hold(&mut self, id: &str) -> Result<(), String> {
        let exists = self.devices.get(id).is_some_and(|d| !d.removing)
            || self.parents.get(id).is_some_and(|p| p.current_vgpu != 0);
        if !exists {
            return Err(format!("no device {id} to hold"));
        }
        self.held.insert(id.to_owned());
        Ok(())
    }

    pub fn release(&mut self, id: &str) -> Result<(), String> {
        if self.held.remove(id) {
            Ok(())
        } else {
            Err(format!("{id} is not held"))
        }
    }

    /// Takes the first injection for `path`, if any.
    pub fn take_injection(&mut self, path: &str) -> Option<Injection> {
        let i = self
            .injections
            .iter()
            .position(|j| j.path == path || (j.path.contains('*') && wildcard(&j.path, path)))?;
        let inj = self.injections[i].clone();
        if self.injections[i].remaining <= 1 {
            self.injections.remove(i);
        } else {
            self.injections[i].remaining -= 1;
        }
        Some(inj)
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_matches_runs_including_slashes() {
        assert!(wildcard(
            "*/nvidia/vgpu_params",
            "devices/pci0000:00/0000:20:00.0/u/nvidia/vgpu_params"
        ));
        assert!(wildcard("devices/*/remove", "devices/a/b/remove"));
        assert!(wildcard("a*b*c", "abc"));
        assert!(wildcard("exact", "exact"));
        assert!(!wildcard(
            "*/nvidia/vgpu_params",
            "devices/u/nvidia/vgpu_params2"
        ));
        assert!(!wildcard("devices/*/remove", "class/x/remove"));
        assert!(!wildcard("a*b*c", "acb"));
        assert!(!wildcard("exact", "exactly"));
    }
}
