//! org.vgpud1.Device: one object per UUID, whether the device is live in sysfs, defined
//! persistently, or both.

use std::sync::{Arc, Mutex};

use zbus::interface;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::OwnedObjectPath;

use super::args::{autostart_option, bad, remove_request, Options};
use super::error::VgpudError;
use super::names;
use super::objects::{locked, Ctx};
use crate::manager::{Caller, DefineRequest, DeviceView};

pub struct DeviceObj {
    pub view: Mutex<DeviceView>,
    pub ctx: Arc<Ctx>,
}

impl DeviceObj {
    fn id(&self) -> vgpud_model::MdevUuid {
        locked(&self.view).uuid
    }

    /// The caller, once the bouncer admits it to `method`.
    async fn authorized(&self, hdr: &Header<'_>, method: &str) -> Result<Caller, VgpudError> {
        self.ctx
            .bouncer
            .admit(hdr, "org.vgpud1.Device", method)
            .await
    }
}

#[interface(name = "org.vgpud1.Device")]
impl DeviceObj {
    /// Removes the live device (a definition stays); options: force (b) waits for a holder
    /// instead of answering Busy, timeout_ms (t) bounds that wait.
    async fn remove(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        options: Options,
    ) -> Result<(), VgpudError> {
        super::objects::timed(&self.ctx, "Device.Remove", async {
            let req = remove_request(&options)?;
            let who = self.authorized(&hdr, "Remove").await?;
            self.ctx.manager.remove(who, self.id(), req).await?;
            Ok(())
        })
        .await
    }

    /// Creates the device from its definition.
    async fn start(&self, #[zbus(header)] hdr: Header<'_>) -> Result<(), VgpudError> {
        super::objects::timed(&self.ctx, "Device.Start", async {
            let who = self.authorized(&hdr, "Start").await?;
            self.ctx.manager.start(who, self.id()).await?;
            Ok(())
        })
        .await
    }

    /// Removes the live device of a persistent definition (the definition stays); options as Remove.
    async fn stop(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        options: Options,
    ) -> Result<(), VgpudError> {
        super::objects::timed(&self.ctx, "Device.Stop", async {
            let req = remove_request(&options)?;
            if !locked(&self.view).defined {
                return Err(bad("this device has no definition: use Remove".into()));
            }
            let who = self.authorized(&hdr, "Stop").await?;
            self.ctx.manager.remove(who, self.id(), req).await?;
            Ok(())
        })
        .await
    }

    /// Makes a live device persistent (in mdevctl's layout); options: autostart (b).
    async fn define(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        options: Options,
    ) -> Result<(), VgpudError> {
        super::objects::timed(&self.ctx, "Device.Define", async {
            let autostart = autostart_option(&options)?;
            let (uuid, parent, type_id) = {
                let v = locked(&self.view);
                (v.uuid, v.parent.clone(), v.type_id.clone())
            };
            let type_id =
                type_id.ok_or_else(|| bad("the device's type is not known yet; retry".into()))?;
            let who = self.authorized(&hdr, "Define").await?;
            let req = DefineRequest {
                type_spec: type_id.to_string(),
                parent,
                uuid: Some(uuid),
                attrs: Vec::new(),
                autostart,
            };
            self.ctx.manager.define(who, req).await?;
            Ok(())
        })
        .await
    }

    /// Deletes the persistent definition (a live device stays).
    async fn undefine(&self, #[zbus(header)] hdr: Header<'_>) -> Result<(), VgpudError> {
        super::objects::timed(&self.ctx, "Device.Undefine", async {
            let who = self.authorized(&hdr, "Undefine").await?;
            self.ctx.manager.undefine(who, self.id()).await?;
            Ok(())
        })
        .await
    }

    /// Changes vendor attributes (e.g. nvidia/vgpu_params), in order; options: live (b) on the
    /// running device, all or nothing (a failure restores what was written), defined (b) in
    /// its definition. At least one of the two.
    async fn modify(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        attrs: Vec<(String, String)>,
        options: Options,
    ) -> Result<(), VgpudError> {
        super::objects::timed(&self.ctx, "Device.Modify", async {
            let req = super::args::modify_request(attrs, &options)?;
            let who = self.authorized(&hdr, "Modify").await?;
            self.ctx.manager.modify(who, self.id(), req).await?;
            Ok(())
        })
        .await
    }

    /// Starts the device when its parent registers (true) or only on request (false).
    async fn set_autostart(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        autostart: bool,
    ) -> Result<(), VgpudError> {
        super::objects::timed(&self.ctx, "Device.SetAutostart", async {
            let who = self.authorized(&hdr, "SetAutostart").await?;
            self.ctx
                .manager
                .set_autostart(who, self.id(), autostart)
                .await?;
            Ok(())
        })
        .await
    }

    #[zbus(property)]
    fn uuid(&self) -> String {
        locked(&self.view).uuid.to_string()
    }
    #[zbus(property)]
    fn parent(&self) -> OwnedObjectPath {
        names::parent_path(&locked(&self.view).parent)
    }
    /// The type object, or "/" while the kernel has not linked the type yet.
    #[zbus(property, name = "Type")]
    fn type_path(&self) -> OwnedObjectPath {
        let v = locked(&self.view);
        match &v.type_id {
            Some(t) => names::type_path(&v.parent, t),
            None => names::no_object(),
        }
    }
    #[zbus(property)]
    fn type_id(&self) -> String {
        locked(&self.view)
            .type_id
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_default()
    }
    /// The device exists in sysfs now.
    #[zbus(property)]
    fn active(&self) -> bool {
        locked(&self.view).live.is_some()
    }
    /// A persistent definition exists (mdevctl's layout).
    #[zbus(property)]
    fn persistent(&self) -> bool {
        locked(&self.view).defined
    }
    #[zbus(property)]
    fn autostart(&self) -> bool {
        locked(&self.view).autostart
    }
    /// A process (a VM) holds the device's VFIO group open.
    #[zbus(property)]
    fn in_use(&self) -> bool {
        locked(&self.view).in_use
    }
    /// "" when the device is not live.
    #[zbus(property)]
    fn sysfs_path(&self) -> String {
        locked(&self.view)
            .live
            .as_ref()
            .map(|d| d.sysfs_path.display().to_string())
            .unwrap_or_default()
    }
    /// -1 when the device has no IOMMU group (or is not live).
    #[zbus(property)]
    fn iommu_group(&self) -> i32 {
        locked(&self.view)
            .live
            .as_ref()
            .and_then(|d| d.iommu_group)
            .map_or(-1, |g| g as i32)
    }
    /// The uid that created it through vgpud, -1 when none (root, vgpud itself, another tool).
    #[zbus(property)]
    fn owner(&self) -> i64 {
        locked(&self.view).owner_uid.map_or(-1, i64::from)
    }
    /// What made it: "dbus:<unique name>", "autostart", "ensure:<rule>", "" when unknown.
    #[zbus(property)]
    fn origin(&self) -> String {
        locked(&self.view).origin.clone().unwrap_or_default()
    }
}

impl DeviceObj {
    pub async fn update(&self, new: DeviceView, emitter: &SignalEmitter<'_>) -> zbus::Result<()> {
        let old = std::mem::replace(&mut *locked(&self.view), new.clone());
        if old.type_id != new.type_id {
            self.type_changed(emitter).await?;
            self.type_id_changed(emitter).await?;
        }
        if old.live.is_some() != new.live.is_some() {
            self.active_changed(emitter).await?;
        }
        if old.live.as_ref().map(|d| &d.sysfs_path) != new.live.as_ref().map(|d| &d.sysfs_path) {
            self.sysfs_path_changed(emitter).await?;
        }
        if old.live.as_ref().and_then(|d| d.iommu_group)
            != new.live.as_ref().and_then(|d| d.iommu_group)
        {
            self.iommu_group_changed(emitter).await?;
        }
        if old.defined != new.defined {
            self.persistent_changed(emitter).await?;
        }
        if old.autostart != new.autostart {
            self.autostart_changed(emitter).await?;
        }
        if old.in_use != new.in_use {
            self.in_use_changed(emitter).await?;
        }
        if old.owner_uid != new.owner_uid {
            self.owner_changed(emitter).await?;
        }
        if old.origin != new.origin {
            self.origin_changed(emitter).await?;
        }
        Ok(())
    }
}
