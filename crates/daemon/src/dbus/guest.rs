//! org.vgpud1.Guest: one object per guest vgpud started or adopted (kept for a while after it
//! ends, with its status).

use std::sync::{Arc, Mutex};

use zbus::interface;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::OwnedObjectPath;

use super::error::VgpudError;
use super::names;
use super::objects::{locked, Ctx};
use crate::manager::guests::GuestView;

const GUEST: &str = "org.vgpud1.Guest";

pub struct GuestObj {
    pub view: Mutex<GuestView>,
    pub ctx: Arc<Ctx>,
}

#[interface(name = "org.vgpud1.Guest")]
impl GuestObj {
    /// Stops the guest (SIGTERM to its VMM, SIGKILL after 5 s); returns once it has ended.
    async fn stop(&self, #[zbus(header)] hdr: Header<'_>) -> Result<(), VgpudError> {
        super::objects::timed(&self.ctx, "Guest.Stop", async {
            let who = self.ctx.bouncer.admit(&hdr, GUEST, "Stop").await?;
            let id = locked(&self.view).id;
            self.ctx.manager.stop_guest(who, id).await?;
            Ok(())
        })
        .await
    }

    /// Removes the ended guest from the bus, with its serial log (Busy while it runs). Ended
    /// guests also leave by themselves after the daemon's retention (10 minutes by default).
    async fn forget(&self, #[zbus(header)] hdr: Header<'_>) -> Result<(), VgpudError> {
        let who = self.ctx.bouncer.admit(&hdr, GUEST, "Forget").await?;
        let id = locked(&self.view).id;
        self.ctx.manager.forget_guest(who, id).await?;
        Ok(())
    }

    /// "running", "exited" or "crashed" (the VMM was killed by a signal).
    #[zbus(property)]
    fn state(&self) -> String {
        locked(&self.view).state.as_str().to_owned()
    }
    /// The VMM's process id.
    #[zbus(property)]
    fn pid(&self) -> u32 {
        locked(&self.view).pid
    }
    #[zbus(property)]
    fn devices(&self) -> Vec<OwnedObjectPath> {
        locked(&self.view)
            .devices
            .iter()
            .map(names::device_path)
            .collect()
    }
    /// The file that receives the guest's serial console.
    #[zbus(property)]
    fn serial_log(&self) -> String {
        locked(&self.view).serial_log.display().to_string()
    }
    /// The VMM's exit code (128 + signal when killed); -1 while running, or once ended if the
    /// VMM was adopted after a daemon restart (its status went to its new parent).
    #[zbus(property)]
    fn exit_status(&self) -> i32 {
        locked(&self.view).exit_status
    }
    /// The guest sees an emulated PCI function (a simulated host), not the device itself.
    #[zbus(property)]
    fn emulated(&self) -> bool {
        locked(&self.view).emulated
    }
    /// How the devices reach the guest: "cdev" (VFIO device cdev + iommufd), "group" (the VFIO
    /// group API) or "emulated".
    #[zbus(property)]
    fn vfio_api(&self) -> String {
        locked(&self.view).vfio_api.clone()
    }
    /// The VM's UUID (on the VMM's command line as `-uuid`, where NVIDIA's host driver reads it).
    #[zbus(property)]
    fn uuid(&self) -> String {
        locked(&self.view).uuid.to_string()
    }
}

impl GuestObj {
    pub async fn update(&self, new: GuestView, emitter: &SignalEmitter<'_>) -> zbus::Result<()> {
        let old = std::mem::replace(&mut *locked(&self.view), new.clone());
        if old.state != new.state {
            self.state_changed(emitter).await?;
        }
        if old.pid != new.pid {
            self.pid_changed(emitter).await?;
        }
        if old.devices != new.devices {
            self.devices_changed(emitter).await?;
        }
        if old.serial_log != new.serial_log {
            self.serial_log_changed(emitter).await?;
        }
        if old.exit_status != new.exit_status {
            self.exit_status_changed(emitter).await?;
        }
        if old.emulated != new.emulated {
            self.emulated_changed(emitter).await?;
        }
        if old.uuid != new.uuid {
            self.uuid_changed(emitter).await?;
        }
        if old.vfio_api != new.vfio_api {
            self.vfio_api_changed(emitter).await?;
        }
        Ok(())
    }
}
