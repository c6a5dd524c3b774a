//! Guests on the manager's loop: LaunchGuest decides (policy, device state) and spawns the VMM;
//! a task per guest waits for it (and stops it on request) and reports back as `GuestExited`.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::ops::decision;
use super::state::Manager;
use super::{Caller, Change, Command};
use crate::error::{Error, Result};
use crate::guests::{self, GuestState, GuestView, LaunchOptions};
use crate::holders::{group_node, holders_of};
use crate::model::MdevUuid;
use crate::policy::Action;

type Reply<T> = oneshot::Sender<Result<T>>;

/// How long a stopped VMM gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for a new VMM to show up as the holder of its device.
const HOLD_WAIT: Duration = Duration::from_secs(2);

pub(crate) struct Guest {
    pub view: GuestView,
    stop: Option<oneshot::Sender<()>>,
    waiters: Vec<Reply<GuestView>>,
}

impl Manager {
    /// The running guest a device is attached to.
    pub(super) fn guest_of(&self, uuid: &MdevUuid) -> Option<&GuestView> {
        self.guests
            .values()
            .map(|g| &g.view)
            .find(|v| v.state == GuestState::Running && v.devices.contains(uuid))
    }

    pub(super) fn launch_guest(
        &mut self,
        caller: &Caller,
        devices: &[MdevUuid],
        opts: LaunchOptions,
    ) -> Result<GuestView> {
        let Some(cfg) = self.config.guests.clone() else {
            return Err(Error::Unsupported("this daemon does not run guests".into()));
        };
        if devices.is_empty() || devices.len() > crate::vmm::bus::MAX_DEVICES {
            return Err(Error::InvalidArgument(format!(
                "a guest takes 1 to {} devices, not {}",
                crate::vmm::bus::MAX_DEVICES,
                devices.len()
            )));
        }
        let mut specs = Vec::new();
        let mut holds = Vec::new();
        for (i, uuid) in devices.iter().enumerate() {
            if devices[..i].contains(uuid) {
                return Err(Error::InvalidArgument(format!(
                    "device {uuid} is given twice"
                )));
            }
            let (spec, hold) = self.attachable(caller, &cfg, uuid)?;
            specs.push(spec);
            holds.push((*uuid, hold));
        }
        let id = self.next_guest;
        let user = (!caller.is_internal()).then_some(caller.uid).flatten();
        let launch = guests::Launch {
            id,
            uuid: uuid::Uuid::new_v4(),
            opts: &opts,
            specs: &specs,
            jail: guests::jail_for(user)?,
            log_owner: user.filter(|u| *u != 0),
        };
        let (mut child, serial_log) = guests::spawn(&cfg, &launch)?;
        self.next_guest += 1;
        let pid = child.id().unwrap_or(0);
        let emulated = specs.iter().any(|s| s.emulated);
        tracing::info!(caller = %caller.origin, uid = ?caller.uid, ?devices, id, pid, emulated, "guest started");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let me = self.me.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                s = child.wait() => s,
                _ = stop_rx => {
                    if let Some(pid) = child.id() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGTERM,
                        );
                    }
                    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
                        Ok(s) => s,
                        Err(_) => {
                            let _ = child.start_kill();
                            child.wait().await
                        }
                    }
                }
            };
            let status = status.unwrap_or_else(|e| {
                tracing::error!("cannot wait for guest {id}: {e}");
                std::process::ExitStatus::from_raw(libc::SIGKILL)
            });
            let _ = me.send(Command::GuestExited(id, status));
        });
        // Show each device in use once the VMM holds it (or give up after a bound).
        for (device, node) in holds {
            let proc_root = self.config.proc_root.clone();
            let me = self.me.clone();
            tokio::spawn(async move {
                if let Some(node) = node {
                    let deadline = Instant::now() + HOLD_WAIT;
                    while Instant::now() < deadline {
                        let node = node.clone();
                        let root = proc_root.clone();
                        let held = tokio::task::spawn_blocking(move || holders_of(&root, &node))
                            .await
                            .unwrap_or_default();
                        if held.iter().any(|h| h.pid == pid) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                let _ = me.send(Command::CheckHolders(vec![device]));
            });
        }
        let gv = GuestView {
            id,
            state: GuestState::Running,
            pid,
            devices: devices.to_vec(),
            serial_log,
            exit_status: -1,
            emulated,
            owner_uid: user,
            uuid: launch.uuid,
        };
        self.guests.insert(
            id,
            Guest {
                view: gv.clone(),
                stop: Some(stop_tx),
                waiters: Vec::new(),
            },
        );
        self.publish(Change::Guest(gv.clone()));
        Ok(gv)
    }

    /// Checks that `uuid` may go to a new guest (started, allowed, not being removed, not in
    /// another guest); how the VMM gets it, and the node that shows it held.
    fn attachable(
        &mut self,
        caller: &Caller,
        cfg: &guests::GuestConfig,
        uuid: &MdevUuid,
    ) -> Result<(guests::AttachSpec, Option<std::path::PathBuf>)> {
        if !self.live.contains_key(uuid) {
            self.refresh_device(uuid);
        }
        let view = self
            .devices
            .get(uuid)
            .cloned()
            .ok_or_else(|| Error::UnknownDevice(uuid.to_string()))?;
        let Some(live) = view.live.clone() else {
            return Err(Error::InvalidArgument(format!(
                "{uuid} is defined but not started; start it first"
            )));
        };
        decision(self.policy.decide(
            &caller.subject(),
            Action::LaunchGuest,
            self.parents.get(&live.parent),
            live.type_id.as_ref(),
            view.owner_uid,
        ))?;
        if view.removing {
            return Err(Error::Busy(format!("device {uuid} is being removed")));
        }
        if let Some(g) = self.guest_of(uuid) {
            return Err(Error::Busy(format!(
                "device {uuid} is already attached to guest {} (pid {})",
                g.id, g.pid
            )));
        }
        let spec = cfg.source.attach_arg(&view)?;
        let node = spec.hold.clone().or_else(|| {
            live.iommu_group
                .map(|g| group_node(&self.config.dev_root, g))
        });
        Ok((spec, node))
    }

    pub(super) fn stop_guest(&mut self, caller: &Caller, id: u64, reply: Reply<GuestView>) {
        let Some(g) = self.guests.get_mut(&id) else {
            let _ = reply.send(Err(Error::Missing(format!("no guest {id}"))));
            return;
        };
        let allowed =
            caller.uid == Some(0) || (caller.uid.is_some() && caller.uid == g.view.owner_uid);
        if !allowed {
            let _ = reply.send(Err(Error::AccessDenied(format!(
                "only root or the user who launched guest {id} may stop it"
            ))));
            return;
        }
        if g.view.state != GuestState::Running {
            let _ = reply.send(Ok(g.view.clone()));
            return;
        }
        tracing::info!(caller = %caller.origin, id, pid = g.view.pid, "stopping a guest");
        g.waiters.push(reply);
        if let Some(stop) = g.stop.take() {
            let _ = stop.send(());
        }
    }

    pub(super) fn guest_exited(&mut self, id: u64, status: std::process::ExitStatus) {
        let Some(g) = self.guests.get_mut(&id) else {
            return;
        };
        let (state, code) = guests::status_of(&status);
        g.view.state = state;
        g.view.exit_status = code;
        g.stop = None;
        let view = g.view.clone();
        let waiters = std::mem::take(&mut g.waiters);
        tracing::info!(id, state = state.as_str(), status = code, "guest ended");
        self.publish(Change::Guest(view.clone()));
        for uuid in &view.devices {
            self.refresh_device(uuid);
        }
        self.check_holders(&view.devices);
        for w in waiters {
            let _ = w.send(Ok(view.clone()));
        }
    }
}
