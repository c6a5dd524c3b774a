//! Guests on the manager's loop: LaunchGuest decides (policy, device state) and spawns the VMM;
//! a task per guest waits for it (and stops it on request) and reports back as `GuestExited`.
//! A running guest is recorded on disk, so a restarted daemon re-adopts its VMM; an ended one
//! leaves the bus after the retention or when asked (`ForgetGuest`).

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::ops::decision;
use super::state::Manager;
use super::{Caller, Change, Completion};
use vgpud_model::error::{Error, Result};
pub mod launch;
pub mod record;

use crate::manager::holders::{group_node, holders_of};
use launch as guests;
pub use launch::{
    CallerFile, DeviceSource, GuestConfig, GuestState, GuestView, LaunchOptions, SimSource,
    VfioSource, RETENTION_ENV, SECCOMP_WITHOUT_ENV,
};
use vgpud_model::MdevUuid;
use vgpud_policy::Action;

use super::Reply;

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
        if devices.is_empty() || devices.len() > vgpud_launch::MAX_DEVICES {
            return Err(Error::InvalidArgument(format!(
                "a guest takes 1 to {} devices, not {}",
                vgpud_launch::MAX_DEVICES,
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
            let _ = me.send(Completion::GuestExited(id, Some(status)));
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
                let _ = me.send(Completion::CheckHolders(vec![device]));
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
            vfio_api: specs.first().map(|s| s.api()).unwrap_or("emulated").into(),
        };
        match record::start_time(&self.config.proc_root, pid) {
            Some(t) => {
                if let Err(e) = record::write(&cfg.dir, &record::GuestRecord::of(&gv, t)) {
                    tracing::warn!(
                        id,
                        "cannot record the guest; a restart will not adopt it: {e}"
                    );
                }
            }
            None => tracing::warn!(id, pid, "the VMM is gone before it could be recorded"),
        }
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

    /// Takes back the guests whose VMMs outlived a previous daemon (by their records); drops
    /// the records of those that ended meanwhile.
    pub(crate) fn adopt_guests(&mut self) {
        let Some(cfg) = self.config.guests.clone() else {
            return;
        };
        for rec in record::load_all(&cfg.dir) {
            let view = rec.view();
            let running = record::is_running(&self.config.proc_root, &rec);
            let (Some(view), true) = (view, running) else {
                tracing::info!(
                    id = rec.id,
                    pid = rec.pid,
                    "a recorded guest ended while vgpud was down"
                );
                remove_file(&record::path(&cfg.dir, rec.id));
                continue;
            };
            let pidfd = match record::pidfd(rec.pid) {
                Ok(fd) => fd,
                Err(e) => {
                    tracing::warn!(id = rec.id, pid = rec.pid, "cannot watch the VMM: {e}");
                    continue;
                }
            };
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let (id, me) = (view.id, self.me.clone());
            tokio::spawn(async move {
                if let Err(e) = watch_adopted(pidfd, stop_rx).await {
                    tracing::error!("cannot wait for guest {id}: {e}");
                }
                let _ = me.send(Completion::GuestExited(id, None));
            });
            tracing::info!(id, pid = view.pid, uuid = %view.uuid, "adopted a running guest");
            self.next_guest = self.next_guest.max(id + 1);
            self.guests.insert(
                id,
                Guest {
                    view: view.clone(),
                    stop: Some(stop_tx),
                    waiters: Vec::new(),
                },
            );
            self.publish(Change::Guest(view));
        }
    }

    /// Removes an ended guest from the bus with its logs and record; `caller` None is the
    /// retention timer.
    pub(super) fn forget_guest(&mut self, caller: Option<&Caller>, id: u64) -> Result<()> {
        let Some(g) = self.guests.get(&id) else {
            return match caller {
                Some(_) => Err(Error::Missing(format!("no guest {id}"))),
                None => Ok(()),
            };
        };
        if let Some(c) = caller {
            if !may_manage(c, &g.view) {
                return Err(Error::AccessDenied(format!(
                    "only root or the user who launched guest {id} may remove it"
                )));
            }
        }
        if g.view.state == GuestState::Running {
            return match caller {
                Some(_) => Err(Error::Busy(format!("guest {id} is running; stop it first"))),
                None => Ok(()),
            };
        }
        let view = g.view.clone();
        self.guests.remove(&id);
        if let Some(cfg) = &self.config.guests {
            remove_file(&view.serial_log);
            remove_file(&cfg.dir.join(format!("{id}.vmm.log")));
            remove_file(&record::path(&cfg.dir, id));
        }
        tracing::info!(id, "guest forgotten");
        self.publish(Change::GuestRemoved(id));
        Ok(())
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
        if !may_manage(caller, &g.view) {
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

    pub(super) fn guest_exited(&mut self, id: u64, status: Option<std::process::ExitStatus>) {
        let Some(g) = self.guests.get_mut(&id) else {
            return;
        };
        // An adopted VMM's status went to its new parent: ended, status unknown (-1).
        let (state, code) = status
            .map(|s| guests::status_of(&s))
            .unwrap_or((GuestState::Exited, -1));
        g.view.state = state;
        g.view.exit_status = code;
        g.stop = None;
        let view = g.view.clone();
        let waiters = std::mem::take(&mut g.waiters);
        tracing::info!(id, state = state.as_str(), status = code, "guest ended");
        if let Some(cfg) = self.config.guests.clone() {
            remove_file(&record::path(&cfg.dir, id));
            let me = self.me.clone();
            tokio::spawn(async move {
                tokio::time::sleep(cfg.retention).await;
                let _ = me.send(Completion::RetentionOver(id));
            });
        }
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

/// Root, or the user who launched the guest.
fn may_manage(caller: &Caller, view: &GuestView) -> bool {
    caller.uid == Some(0) || (caller.uid.is_some() && caller.uid == view.owner_uid)
}

fn remove_file(path: &std::path::Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("cannot remove {}: {e}", path.display());
        }
    }
}

/// Waits for an adopted VMM (not our child) to end; on a stop request, SIGTERM and after the
/// grace SIGKILL, through its pidfd.
async fn watch_adopted(
    pidfd: std::os::fd::OwnedFd,
    stop: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let interest = tokio::io::Interest::READABLE;
    // SAFETY: an OwnedFd keeps its descriptor open and returns the same number until the
    // AsyncFd that owns it is dropped.
    let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(pidfd, interest) }
        .map_err(|e| e.into_parts().1)?;
    tokio::select! {
        r = fd.readable() => return r.map(|_| ()),
        _ = stop => {}
    }
    record::pidfd_signal(fd.get_ref(), libc::SIGTERM)?;
    if tokio::time::timeout(STOP_GRACE, fd.readable())
        .await
        .is_err()
    {
        record::pidfd_signal(fd.get_ref(), libc::SIGKILL)?;
        let _ended = fd.readable().await?;
    }
    Ok(())
}
