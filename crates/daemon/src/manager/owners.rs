//! Who owns each device vgpud made (for per-user and per-group limits and for who may remove
//! it), kept in `<state-dir>/devices/<uuid>.json` so quotas survive a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use vgpud_model::error::{Error, Result};
use vgpud_model::MdevUuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub uid: Option<u32>,
    /// The owner's groups when the device was made (max_per_group counts by these).
    #[serde(default)]
    pub groups: Vec<String>,
    /// "dbus:<name>", "autostart", "ensure:<rule>".
    pub origin: String,
    /// The policy rule that allowed it.
    #[serde(default)]
    pub rule: String,
}

/// Writes the record of `uuid` under `dir` atomically, off the manager's loop by the job that
/// made the device. Not synced: the record is about a transient device, which a machine crash
/// removes too; a crash of vgpud leaves the old record or the new one.
pub fn write_record(dir: &Path, uuid: &MdevUuid, owner: &Owner) -> Result<()> {
    let json = serde_json::to_vec_pretty(owner).map_err(|e| Error::Failed(e.to_string()))?;
    crate::store::write_file_transient(dir, &format!("{uuid}.json"), &json, 0o600)
}

#[derive(Default)]
pub struct Owners {
    dir: Option<PathBuf>,
    map: BTreeMap<MdevUuid, Owner>,
}

impl Owners {
    /// Loads every record under `<state_dir>/devices`; unreadable records are skipped with a
    /// warning (they only cost a quota count).
    pub fn open(state_dir: Option<&Path>) -> Result<Self> {
        let Some(state) = state_dir else {
            return Ok(Self::default());
        };
        let dir = state.join("devices");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut map = BTreeMap::new();
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            let Ok(uuid) = MdevUuid::parse(stem) else {
                continue;
            };
            let record = std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|t| serde_json::from_str::<Owner>(&t).ok());
            match record {
                Some(o) => {
                    map.insert(uuid, o);
                }
                None => tracing::warn!(
                    "skipping unreadable owner record {}",
                    entry.path().display()
                ),
            }
        }
        Ok(Self {
            dir: Some(dir),
            map,
        })
    }

    pub fn get(&self, uuid: &MdevUuid) -> Option<&Owner> {
        self.map.get(uuid)
    }

    /// Where records are kept (None: not kept).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Takes an owner whose record a job already wrote (see [`write_record`]).
    pub fn insert(&mut self, uuid: MdevUuid, owner: Owner) {
        self.map.insert(uuid, owner);
    }

    pub fn forget(&mut self, uuid: &MdevUuid) {
        if self.map.remove(uuid).is_some() {
            if let Some(dir) = &self.dir {
                let path = dir.join(format!("{uuid}.json"));
                if let Err(e) = std::fs::remove_file(&path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!("cannot remove {}: {e}", path.display());
                    }
                }
            }
        }
    }

    /// Drops records of devices that no longer exist (removed while vgpud was not running).
    pub fn retain(&mut self, mut keep: impl FnMut(&MdevUuid) -> bool) {
        let gone: Vec<MdevUuid> = self.map.keys().filter(|u| !keep(u)).copied().collect();
        for u in gone {
            self.forget(&u);
        }
    }
}
