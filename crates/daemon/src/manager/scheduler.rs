//! NVIDIA's vGPU scheduler (best effort, equal share, fixed share) as policy. The NVIDIA driver
//! reads it from its `RmPVMRL` registry key when it loads, per GPU through the module option
//! `NVreg_RegistryDwordsPerDevice`; nothing in sysfs changes it at run time. So vgpud writes
//! `<modprobe-dir>/vgpud-nvidia-scheduler.conf` (one `options nvidia` line covering every
//! NVIDIA GPU a `[[scheduler]]` rule picks, by its physical function's address), atomically and
//! only when it changes, and says in Problems that the driver must be reloaded to apply it.

use std::collections::BTreeMap;

use super::state::Manager;
use super::Change;

pub(super) const FILE: &str = "vgpud-nvidia-scheduler.conf";
const NVIDIA: u16 = 0x10de;

/// The file's contents for `wanted` (GPU address -> (rule, RmPVMRL value)); None when empty.
pub(super) fn contents(wanted: &BTreeMap<String, (String, u32)>) -> Option<String> {
    if wanted.is_empty() {
        return None;
    }
    let mut text = String::from(
        "# Written by vgpud from its [[scheduler]] policy rules; edits are overwritten.\n\
         # The NVIDIA driver reads it when it loads: reload the driver (vGPU manager) to apply.\n",
    );
    for (gpu, (rule, value)) in wanted {
        text.push_str(&format!("# {gpu}: rule {rule}, RmPVMRL=0x{value:02x}\n"));
    }
    let per_device: Vec<String> = wanted
        .iter()
        .map(|(gpu, (_, value))| format!("pci={gpu};RmPVMRL=0x{value:02x}"))
        .collect();
    text.push_str(&format!(
        "options nvidia NVreg_RegistryDwordsPerDevice=\"{}\"\n",
        per_device.join(";")
    ));
    Some(text)
}

impl Manager {
    /// Brings the scheduler file in line with the policy and the NVIDIA GPUs present.
    pub(super) fn apply_scheduler(&mut self) {
        let Some(dir) = self.config.modprobe_dir.clone() else {
            return;
        };
        let mut wanted: BTreeMap<String, (String, u32)> = BTreeMap::new();
        for p in self.parents.values() {
            if p.pci.as_ref().map(|i| i.vendor) != Some(NVIDIA) {
                continue;
            }
            if let Some((rule, policy, slice)) = self.policy.scheduler_for(p) {
                wanted
                    .entry(p.physical_gpu().to_string())
                    .or_insert_with(|| (rule.to_owned(), policy.rmpvmrl(slice)));
            }
        }
        let path = dir.join(FILE);
        let current = std::fs::read_to_string(&path).ok();
        let next = contents(&wanted);
        if current == next {
            return;
        }
        let result = match &next {
            Some(text) => std::fs::create_dir_all(&dir)
                .map_err(|e| vgpud_model::error::Error::io(&dir, e))
                .and_then(|()| crate::store::replace_file(&dir, FILE, text.as_bytes(), 0o644)),
            None => {
                std::fs::remove_file(&path).map_err(|e| vgpud_model::error::Error::io(&path, e))
            }
        };
        self.scheduler_problem = match result {
            Ok(()) if next.is_some() => Some(format!(
                "scheduler: {} written for {} GPU(s); reload the NVIDIA driver to apply it",
                path.display(),
                wanted.len()
            )),
            Ok(()) => Some(format!(
                "scheduler: {} removed (no rule); reload the NVIDIA driver to return to best effort",
                path.display()
            )),
            Err(e) => Some(format!("scheduler: cannot write {}: {e}", path.display())),
        };
        tracing::info!("{}", self.scheduler_problem.as_deref().unwrap_or_default());
        self.publish(Change::Problems(self.all_problems()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgpud_policy::SchedulerPolicy;

    #[test]
    fn rmpvmrl_encodes_policy_and_time_slice_as_nvidia_documents() {
        assert_eq!(SchedulerPolicy::BestEffort.rmpvmrl(None), 0x00);
        assert_eq!(SchedulerPolicy::EqualShare.rmpvmrl(None), 0x01);
        assert_eq!(SchedulerPolicy::FixedShare.rmpvmrl(None), 0x11);
        assert_eq!(SchedulerPolicy::EqualShare.rmpvmrl(Some(3)), 0x0003_0001);
        assert_eq!(SchedulerPolicy::FixedShare.rmpvmrl(Some(0x1e)), 0x001e_0011);
    }

    #[test]
    fn one_options_line_names_every_gpu() {
        let wanted: BTreeMap<String, (String, u32)> = [
            ("0000:20:00.0".to_owned(), ("vdi".to_owned(), 0x01)),
            ("0000:21:00.0".to_owned(), ("ai".to_owned(), 0x0003_0011)),
        ]
        .into();
        let text = contents(&wanted).unwrap();
        assert!(text.ends_with(
            "options nvidia NVreg_RegistryDwordsPerDevice=\"pci=0000:20:00.0;RmPVMRL=0x01;pci=0000:21:00.0;RmPVMRL=0x30011\"\n"
        ), "{text}");
        assert_eq!(contents(&BTreeMap::new()), None);
    }
}
