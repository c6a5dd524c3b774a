//! The manager: the single owner of vgpud's picture of the host. Front ends (D-Bus, the
//! libvirt hook) send it a `Command` with a reply channel; it reconciles its model with sysfs on
//! start, on every uevent and after every write, and publishes each difference as a `Change`.

mod converge;
pub mod guests;
pub mod holders;
mod modify;
mod ops;
mod owners;
mod plan;
mod readings;
mod retry;
mod scheduler;
mod state;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::backend::Host;
use crate::store::Store;
use vgpud_model::error::{Error, Result};
use vgpud_model::uevent::UEvent;
use vgpud_model::{Device, MdevUuid, Parent, ParentName, TypeId};
use vgpud_policy::{Policy, Subject};

pub use modify::ModifyRequest;
pub use owners::Owner;
pub use plan::PlanStep;

/// What the manager needs from the outside world; every path comes from injected roots.
#[derive(Clone)]
pub struct ManagerConfig {
    pub host: Host,
    /// Root of device nodes (`/dev`): VFIO groups are `<dev>/vfio/<group>`.
    pub dev_root: PathBuf,
    /// Where to look for processes holding a group open (`/proc`).
    pub proc_root: PathBuf,
    /// Bound on a create (a vendor driver can be slow, but not forever).
    pub create_timeout: Duration,
    /// Bound on a remove; a forced remove may ask for longer.
    pub remove_timeout: Duration,
    /// Persistent definitions (mdevctl's layout); None = definitions are not managed.
    pub store: Option<Store>,
    /// vgpud's own state (device owners).
    pub state_dir: Option<PathBuf>,
    /// `<config-dir>/policy.d/*.toml`; None = the built-in policy only.
    pub policy_dir: Option<PathBuf>,
    pub policy: Policy,
    /// How guests are run; None = LaunchGuest is not supported.
    pub guests: Option<crate::manager::guests::GuestConfig>,
    /// mdevctl's call-out and notifier scripts around every start, stop, define, undefine and
    /// modify; None = no scripts are run.
    pub callouts: Option<crate::callouts::Callouts>,
    /// Where the NVIDIA scheduler's modprobe options are written; None = not managed.
    pub modprobe_dir: Option<PathBuf>,
}

impl ManagerConfig {
    pub fn new(host: Host) -> Self {
        Self {
            host,
            dev_root: PathBuf::from("/dev"),
            proc_root: PathBuf::from("/proc"),
            create_timeout: Duration::from_secs(10),
            remove_timeout: Duration::from_secs(10),
            store: None,
            state_dir: None,
            policy_dir: None,
            policy: Policy::default(),
            guests: None,
            callouts: None,
            modprobe_dir: None,
        }
    }
}

/// A device as vgpud presents it: live in sysfs, defined persistently, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    pub uuid: MdevUuid,
    pub parent: ParentName,
    /// None while the kernel has not linked the type of a live device yet.
    pub type_id: Option<TypeId>,
    /// The device in sysfs now; None for a definition that is not started.
    pub live: Option<Device>,
    /// A persistent definition exists (in mdevctl's layout).
    pub defined: bool,
    pub autostart: bool,
    /// A process (a VM) holds its VFIO group open.
    pub in_use: bool,
    /// A remove is in progress.
    pub removing: bool,
    pub owner_uid: Option<u32>,
    pub origin: Option<String>,
}

/// One difference between the manager's model before and after a reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    ParentAdded(Parent),
    ParentUpdated(Parent),
    ParentRemoved(ParentName),
    DeviceAdded(DeviceView),
    DeviceUpdated(DeviceView),
    DeviceRemoved(MdevUuid),
    /// A guest appeared or changed.
    Guest(crate::manager::guests::GuestView),
    /// An ended guest was forgotten.
    GuestRemoved(u64),
    /// What the daemon cannot make true (ensure rules, autostart failures, policy problems).
    Problems(Vec<String>),
}

/// What the manager sends its publisher: changes, and answers to callers, in the order the
/// manager made them. The publisher applies each change and delivers each answer only once every
/// change before it is on the bus, so a reply never overtakes the state it reports.
#[allow(clippy::large_enum_variant)] // each update is moved once through a channel; boxing buys nothing
pub enum Update {
    Change(Change),
    Answer(Box<dyn FnOnce() + Send>),
}

impl std::fmt::Debug for Update {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Update::Change(c) => f.debug_tuple("Change").field(c).finish(),
            Update::Answer(_) => f.write_str("Answer"),
        }
    }
}

/// Where the answer to a request goes: through the publisher, behind every change the manager
/// published before answering (see [`Update`]).
pub(crate) struct Reply<T> {
    tx: oneshot::Sender<Result<T>>,
    updates: mpsc::UnboundedSender<Update>,
}

impl<T: Send + 'static> Reply<T> {
    /// A reply and where its answer arrives.
    pub(crate) fn channel(
        updates: &mpsc::UnboundedSender<Update>,
    ) -> (Self, oneshot::Receiver<Result<T>>) {
        let (tx, rx) = oneshot::channel();
        let reply = Reply {
            tx,
            updates: updates.clone(),
        };
        (reply, rx)
    }

    /// Queues the answer behind the changes published so far; Err when the daemon is stopping.
    pub(crate) fn send(self, result: Result<T>) -> std::result::Result<(), ()> {
        let tx = self.tx;
        self.updates
            .send(Update::Answer(Box::new(move || {
                let _ = tx.send(result);
            })))
            .map_err(|_| ())
    }
}

/// Who asks, as the front end established it (for policy and logs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The D-Bus unique name, when the request came over D-Bus.
    pub bus_name: Option<String>,
    pub uid: Option<u32>,
    /// The user's name and groups, resolved once by the front end.
    pub user: Option<String>,
    pub groups: Vec<String>,
    /// The caller allows polkit to ask for authentication (ALLOW_INTERACTIVE_AUTHORIZATION).
    pub interactive: bool,
    /// What made the request, recorded with what it creates: "dbus:<name>", "autostart", "ensure:<rule>".
    pub origin: String,
}

impl Caller {
    /// vgpud acting on its own (autostart, ensure rules): root's rights, no owner.
    pub fn internal(origin: impl Into<String>) -> Self {
        Caller {
            uid: Some(0),
            user: Some("root".into()),
            origin: origin.into(),
            ..Caller::default()
        }
    }

    pub fn subject(&self) -> Subject {
        Subject {
            // A caller the bus could not identify gets no rights at all.
            uid: self.uid.unwrap_or(u32::MAX),
            user: self.user.clone(),
            groups: self.groups.clone(),
        }
    }

    fn is_internal(&self) -> bool {
        self.bus_name.is_none() && self.uid == Some(0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreateRequest {
    /// A type id (`nvidia-231`) or a type name (`GRID T4-2Q`).
    pub type_spec: String,
    pub parent: Option<ParentName>,
    pub uuid: Option<MdevUuid>,
    /// Vendor attributes written in order after create.
    pub attrs: Vec<(String, String)>,
    /// Prefer parents on this NUMA node (numa-local placement).
    pub numa_node: Option<i32>,
    /// Also store a persistent definition.
    pub persistent: bool,
    /// Persistent and started when its parent registers.
    pub autostart: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefineRequest {
    pub type_spec: String,
    pub parent: ParentName,
    pub uuid: Option<MdevUuid>,
    pub attrs: Vec<(String, String)>,
    pub autostart: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoveRequest {
    /// Wait for a holder to let go instead of answering Busy.
    pub force: bool,
    /// Bound on a forced wait; default the manager's remove timeout.
    pub timeout: Option<Duration>,
}

/// A full picture, for front ends starting up and for tests.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub parents: Vec<Parent>,
    pub devices: Vec<DeviceView>,
    pub problems: Vec<String>,
}

/// What reaches the manager's loop: a front end's request, news from the world, or a
/// completion of the manager's own work.
pub(crate) enum Command {
    Request(Request),
    Event(UEvent),
    /// Something wrote to the definitions tree: read it again.
    DefinitionsChanged,
    Done(Completion),
}

/// What front ends ask; each is answered once.
pub(crate) enum Request {
    Snapshot(oneshot::Sender<Snapshot>),
    Plan(oneshot::Sender<Vec<PlanStep>>),
    Capacity(
        Caller,
        vgpud_policy::CapacityFilter,
        oneshot::Sender<Vec<vgpud_policy::TypeCapacity>>,
    ),
    Create(Caller, CreateRequest, Reply<DeviceView>),
    Remove(Caller, MdevUuid, RemoveRequest, Reply<()>),
    Define(Caller, DefineRequest, Reply<DeviceView>),
    Undefine(Caller, MdevUuid, Reply<()>),
    Start(Caller, MdevUuid, Reply<DeviceView>),
    SetAutostart(Caller, MdevUuid, bool, Reply<()>),
    ReloadPolicy(Caller, Reply<String>),
    Device(MdevUuid, Reply<Option<DeviceView>>),
    Modify(Caller, MdevUuid, ModifyRequest, Reply<()>),
    LaunchGuest(
        Caller,
        Vec<MdevUuid>,
        crate::manager::guests::LaunchOptions,
        Reply<crate::manager::guests::GuestView>,
    ),
    StopGuest(Caller, u64, Reply<crate::manager::guests::GuestView>),
    /// An ended guest leaves the bus on request.
    ForgetGuest(Caller, u64, Reply<()>),
}

/// What the manager's own jobs, timers and watchers report back to its loop.
pub(crate) enum Completion {
    /// Re-read one device (the add-before-mdev_type race), `n` retries left.
    RefreshDevice(MdevUuid, u32),
    /// Check these devices for holders now.
    CheckHolders(Vec<MdevUuid>),
    /// Time for the periodic holders check.
    PollHolders,
    /// The periodic check's answer: (device, held).
    HoldersPolled(Vec<(MdevUuid, bool)>),
    ModifyDone(modify::ModifyDone),
    CreateDone(ops::CreateDone),
    RemoveDone(ops::RemoveDone),
    /// Autostart or an ensure rule failed on a parent (`may_pass`: the vendor side not ready).
    RetryFailed {
        parent: ParentName,
        what: String,
        error: String,
        may_pass: bool,
    },
    /// Autostart or an ensure rule succeeded on a parent.
    RetrySucceeded(ParentName),
    /// A scheduled retry of a parent is due (with its generation).
    RetryDue(ParentName, u64),
    /// A VMM ended: its status, or `None` for one adopted after a restart (not our child).
    GuestExited(u64, Option<std::process::ExitStatus>),
    /// An ended guest's retention is over: it leaves the bus.
    RetentionOver(u64),
}

/// Where the manager's jobs send their completions.
#[derive(Clone)]
pub(crate) struct Completions(mpsc::UnboundedSender<Command>);

impl Completions {
    /// Err when the manager has stopped.
    pub(crate) fn send(&self, done: Completion) -> std::result::Result<(), ()> {
        self.0.send(Command::Done(done)).map_err(|_| ())
    }
}

/// A cheap, cloneable handle for front ends.
#[derive(Clone)]
pub struct ManagerHandle {
    tx: mpsc::UnboundedSender<Command>,
    /// The publisher's queue, which answers go through.
    updates: mpsc::UnboundedSender<Update>,
}

fn gone() -> Error {
    Error::Failed("the manager has stopped".into())
}

impl ManagerHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Request(make(tx)))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    /// Asks for a change: answered once what it changed is published.
    async fn request<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> Request,
    ) -> Result<T> {
        let (reply, rx) = Reply::channel(&self.updates);
        self.tx
            .send(Command::Request(make(reply)))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub async fn snapshot(&self) -> Result<Snapshot> {
        self.ask(Request::Snapshot).await
    }

    /// Changes a device's vendor attributes live, in its definition, or both.
    pub async fn modify(&self, caller: Caller, uuid: MdevUuid, req: ModifyRequest) -> Result<()> {
        self.request(|tx| Request::Modify(caller, uuid, req, tx))
            .await
    }

    /// What the ensure rules would do now, without doing it.
    pub async fn plan(&self) -> Result<Vec<PlanStep>> {
        self.ask(Request::Plan).await
    }

    /// Per type, how many more devices `caller` could create now (from the model, no sysfs read).
    pub async fn capacity(
        &self,
        caller: Caller,
        filter: vgpud_policy::CapacityFilter,
    ) -> Result<Vec<vgpud_policy::TypeCapacity>> {
        self.ask(|tx| Request::Capacity(caller, filter, tx)).await
    }

    pub async fn create(&self, caller: Caller, req: CreateRequest) -> Result<DeviceView> {
        self.request(|tx| Request::Create(caller, req, tx)).await
    }

    pub async fn remove(&self, caller: Caller, uuid: MdevUuid, req: RemoveRequest) -> Result<()> {
        self.request(|tx| Request::Remove(caller, uuid, req, tx))
            .await
    }

    pub async fn define(&self, caller: Caller, req: DefineRequest) -> Result<DeviceView> {
        self.request(|tx| Request::Define(caller, req, tx)).await
    }

    pub async fn undefine(&self, caller: Caller, uuid: MdevUuid) -> Result<()> {
        self.request(|tx| Request::Undefine(caller, uuid, tx)).await
    }

    pub async fn start(&self, caller: Caller, uuid: MdevUuid) -> Result<DeviceView> {
        self.request(|tx| Request::Start(caller, uuid, tx)).await
    }

    pub async fn set_autostart(&self, caller: Caller, uuid: MdevUuid, on: bool) -> Result<()> {
        self.request(|tx| Request::SetAutostart(caller, uuid, on, tx))
            .await
    }

    /// Re-reads the policy files and the definitions; returns the policy summary.
    pub async fn reload(&self, caller: Caller) -> Result<String> {
        self.request(|tx| Request::ReloadPolicy(caller, tx)).await
    }

    /// The device with this UUID, read from sysfs if the model does not know it yet (and then
    /// published before the answer).
    pub async fn device(&self, uuid: MdevUuid) -> Result<Option<DeviceView>> {
        self.request(|tx| Request::Device(uuid, tx)).await
    }

    /// Starts a guest with these devices (one, for now).
    pub async fn launch_guest(
        &self,
        caller: Caller,
        devices: Vec<MdevUuid>,
        opts: crate::manager::guests::LaunchOptions,
    ) -> Result<crate::manager::guests::GuestView> {
        self.request(|tx| Request::LaunchGuest(caller, devices, opts, tx))
            .await
    }

    /// Stops a guest (SIGTERM, then SIGKILL after 5 s); answers once it has ended.
    pub async fn stop_guest(
        &self,
        caller: Caller,
        id: u64,
    ) -> Result<crate::manager::guests::GuestView> {
        self.request(|tx| Request::StopGuest(caller, id, tx)).await
    }

    /// Removes an ended guest (Busy while it runs).
    pub async fn forget_guest(&self, caller: Caller, id: u64) -> Result<()> {
        self.request(|tx| Request::ForgetGuest(caller, id, tx))
            .await
    }

    /// Tells the manager the definitions tree changed (the inotify watch, debounced).
    pub fn definitions_changed(&self) -> Result<()> {
        self.tx
            .send(Command::DefinitionsChanged)
            .map_err(|_| gone())
    }

    /// Feeds one uevent to the manager.
    pub fn event(&self, event: UEvent) -> Result<()> {
        self.tx.send(Command::Event(event)).map_err(|_| gone())
    }
}

/// Starts the manager task: it scans the host first, then serves commands. Every difference
/// (the initial scan included) is sent on the returned channel.
/// The scan reads all of sysfs, so it runs on a blocking thread, not on the runtime.
pub async fn spawn(
    config: ManagerConfig,
) -> Result<(ManagerHandle, mpsc::UnboundedReceiver<Update>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (changes_tx, changes_rx) = mpsc::unbounded_channel();
    let me = Completions(tx.clone());
    let changes_tx_handle = changes_tx.clone();
    let manager = tokio::task::spawn_blocking(move || {
        let mut manager = state::Manager::new(config, me, changes_tx)?;
        manager.scan()?;
        manager.adopt_guests();
        Ok::<_, Error>(manager)
    })
    .await
    .map_err(|e| Error::Failed(format!("the start-up scan failed: {e}")))??;
    tokio::spawn(manager.run(rx));
    Ok((
        ManagerHandle {
            tx,
            updates: changes_tx_handle,
        },
        changes_rx,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer waits in the publisher's queue behind every change made before it, and
    /// arrives only once the publisher has come to it.
    #[tokio::test]
    async fn an_answer_comes_after_the_changes_before_it() {
        let (updates, mut published) = mpsc::unbounded_channel();
        let (reply, mut answered) = Reply::<u32>::channel(&updates);
        let _ = updates.send(Update::Change(Change::Problems(vec!["first".into()])));
        reply.send(Ok(7)).unwrap();
        let _ = updates.send(Update::Change(Change::Problems(vec!["after".into()])));
        assert!(
            answered.try_recv().is_err(),
            "answered before it was published"
        );
        match published.recv().await {
            Some(Update::Change(Change::Problems(p))) => assert_eq!(p, ["first"]),
            other => panic!("the change before the answer came first, not {other:?}"),
        }
        assert!(answered.try_recv().is_err());
        match published.recv().await {
            Some(Update::Answer(deliver)) => deliver(),
            other => panic!("the answer came second, not {other:?}"),
        }
        assert_eq!(answered.await.unwrap().unwrap(), 7);
    }

    /// With the publisher gone (the daemon stopping), a caller is told so instead of waiting.
    #[tokio::test]
    async fn an_answer_without_a_publisher_fails_at_once() {
        let (updates, published) = mpsc::unbounded_channel();
        drop(published);
        let (reply, answered) = Reply::<u32>::channel(&updates);
        assert!(reply.send(Ok(7)).is_err());
        assert!(answered.await.is_err());
    }
}
