//! Changing a device's vendor attributes (`nvidia/vgpu_params`: NVIDIA's frame rate limiter and
//! the like), as mdevctl's `modify` does: on the live device (`--live`, where the driver lets
//! it: the kernel's errno passes through), in its definition (`--defined`), or both. A live
//! change is all or nothing: each attribute's old value is read first, and a failed write
//! restores the ones already written, in reverse order. The writes run off the manager's loop.

use super::ops::decision;
use super::state::Manager;
use super::{Caller, Completion};
use vgpud_model::error::{Error, Result};
use vgpud_model::MdevUuid;
use vgpud_policy::Action;

/// What to change, and where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModifyRequest {
    pub attrs: Vec<(String, String)>,
    pub live: bool,
    pub defined: bool,
}

pub(crate) struct ModifyDone {
    pub(super) uuid: MdevUuid,
    pub(super) result: Result<()>,
    pub(super) reply: super::Reply<()>,
}

/// Writes `attrs` to the live device in order; on a failure restores what was written.
fn write_all(
    host: &crate::backend::Host,
    uuid: &MdevUuid,
    attrs: &[(String, String)],
) -> Result<()> {
    let mut old = Vec::new();
    for (name, _) in attrs {
        old.push(host.device_attr(uuid, name)?);
    }
    for (i, (name, value)) in attrs.iter().enumerate() {
        if let Err(e) = host.set_device_attr(uuid, name, value) {
            for ((name, _), before) in attrs[..i].iter().zip(&old).rev() {
                if let Err(undo) = host.set_device_attr(uuid, name, before) {
                    tracing::error!("cannot restore {name} of {uuid}: {undo}");
                }
            }
            return Err(Error::Failed(format!(
                "writing {name} of {uuid} failed, so the attributes written before it were restored: {e}"
            )));
        }
    }
    Ok(())
}

impl Manager {
    pub(super) fn start_modify(
        &mut self,
        caller: Caller,
        uuid: MdevUuid,
        req: ModifyRequest,
        reply: super::Reply<()>,
    ) {
        match self.check_modify(&caller, &uuid, &req) {
            Ok(()) => {}
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        }
        if req.defined {
            if let Err(e) = self.modify_definition(&uuid, &req.attrs) {
                let _ = reply.send(Err(e));
                return;
            }
        }
        if !req.live {
            let _ = reply.send(Ok(()));
            return;
        }
        let host = self.config.host.clone();
        let me = self.me.clone();
        let attrs = req.attrs;
        tokio::spawn(async move {
            let work = tokio::task::spawn_blocking(move || write_all(&host, &uuid, &attrs));
            let result = work
                .await
                .unwrap_or_else(|e| Err(Error::Failed(format!("the write thread failed: {e}"))));
            let _ = me.send(Completion::ModifyDone(ModifyDone {
                uuid,
                result,
                reply,
            }));
        });
    }

    pub(super) fn finish_modify(&mut self, done: ModifyDone) {
        if done.result.is_ok() {
            tracing::info!(uuid = %done.uuid, "device attributes changed");
        }
        let _ = done.reply.send(done.result);
    }

    fn check_modify(&self, caller: &Caller, uuid: &MdevUuid, req: &ModifyRequest) -> Result<()> {
        if !req.live && !req.defined {
            return Err(Error::InvalidArgument(
                "say where to change the attributes: live, defined, or both".into(),
            ));
        }
        if req.attrs.is_empty() {
            return Err(Error::InvalidArgument("no attribute to change".into()));
        }
        let view = self
            .devices
            .get(uuid)
            .ok_or_else(|| Error::UnknownDevice(uuid.to_string()))?;
        if req.live && view.live.is_none() {
            return Err(Error::InvalidArgument(format!(
                "{uuid} is not started: change its definition instead"
            )));
        }
        if req.defined && !view.defined {
            return Err(Error::InvalidArgument(format!(
                "{uuid} has no definition: define it first, or change it live"
            )));
        }
        decision(self.policy.decide(
            &caller.subject(),
            Action::ManageDefinitions,
            self.parents.get(&view.parent),
            view.type_id.as_ref(),
            view.owner_uid,
        ))
        .map(|_| ())
    }

    /// Sets `attrs` in the device's definition (replacing those of the same name, keeping the
    /// order of the others), with the call-outs of `modify`.
    fn modify_definition(&mut self, uuid: &MdevUuid, attrs: &[(String, String)]) -> Result<()> {
        let store =
            self.config.store.clone().ok_or_else(|| {
                Error::Unsupported("this daemon has no definitions directory".into())
            })?;
        let live_parent = self.live.get(uuid).map(|d| d.parent.clone());
        let mut def = self
            .definitions
            .get(uuid)
            .and_then(|defs| {
                defs.iter()
                    .find(|(d, _)| Some(&d.parent) == live_parent.as_ref())
                    .or(defs.first())
            })
            .map(|(d, _)| d.clone())
            .ok_or_else(|| Error::UnknownDevice(format!("{uuid} (no definition)")))?;
        for (name, value) in attrs {
            match def.attrs.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = value.clone(),
                None => def.attrs.push((name.clone(), value.clone())),
            }
        }
        let device = super::ops::defined_device(&def);
        self.with_callouts(&device, crate::callouts::Action::Modify, || {
            store.update(&def)
        })?;
        self.load_definitions();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::sysfs::SysfsRoot;
    use crate::backend::Host;

    const U: &str = "0b2d8a04-6c5c-4f5e-9b1a-3d2f1e0c9a77";

    /// A device directory with two vendor attributes; `b` is a directory, so writing it fails.
    fn host() -> (tempfile::TempDir, Host, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let vendor = tmp
            .path()
            .join("sys/bus/mdev/devices")
            .join(U)
            .join("vendor");
        std::fs::create_dir_all(vendor.join("b")).unwrap();
        std::fs::write(vendor.join("a"), "old\n").unwrap();
        let host = Host::new(SysfsRoot::new(tmp.path().join("sys")).unwrap());
        (tmp, host, vendor)
    }

    #[test]
    fn a_failed_write_restores_the_attributes_written_before_it() {
        let (_tmp, host, vendor) = host();
        let uuid = MdevUuid::parse(U).unwrap();
        let attrs = vec![
            ("vendor/a".to_owned(), "new".to_owned()),
            ("vendor/b".to_owned(), "x".to_owned()),
        ];
        let e = write_all(&host, &uuid, &attrs).unwrap_err();
        assert!(e.to_string().contains("vendor/b"), "{e}");
        assert_eq!(
            std::fs::read_to_string(vendor.join("a")).unwrap().trim(),
            "old"
        );
    }

    #[test]
    fn every_attribute_is_written_in_order() {
        let (_tmp, host, vendor) = host();
        let uuid = MdevUuid::parse(U).unwrap();
        let attrs = vec![
            ("vendor/a".to_owned(), "first".to_owned()),
            ("vendor/a".to_owned(), "second".to_owned()),
        ];
        write_all(&host, &uuid, &attrs).unwrap();
        assert_eq!(
            std::fs::read_to_string(vendor.join("a")).unwrap().trim(),
            "second"
        );
    }

    #[test]
    fn kernel_files_are_never_written() {
        let (_tmp, host, _vendor) = host();
        let uuid = MdevUuid::parse(U).unwrap();
        let e = write_all(&host, &uuid, &[("remove".into(), "1".into())]).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    }
}
