//! The manager: the single owner of vgpud's picture of the host. Front ends (D-Bus, the
//! libvirt hook) send it a `Command` with a reply channel; it reconciles its model with sysfs on
//! start, on every uevent and after every write, and publishes each difference as a `Change`.

mod placement;
mod state;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::backend::Host;
use crate::error::{Error, Result};
use crate::events::UEvent;
use crate::model::{Device, MdevUuid, Parent, ParentName};

pub use placement::{place, InFlight, Placement};

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
}

impl ManagerConfig {
    pub fn new(host: Host) -> Self {
        Self {
            host,
            dev_root: PathBuf::from("/dev"),
            proc_root: PathBuf::from("/proc"),
            create_timeout: Duration::from_secs(10),
            remove_timeout: Duration::from_secs(10),
        }
    }
}

/// A device as vgpud presents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    pub device: Device,
    /// A process holds its VFIO group open (a VM uses it).
    pub in_use: bool,
    /// A remove is in progress.
    pub removing: bool,
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
}

/// What the manager sends its publisher: changes, and barriers that are answered once every
/// change before them has been applied (so a reply never overtakes the state it reports).
#[derive(Debug)]
pub enum Update {
    Change(Change),
    Barrier(oneshot::Sender<()>),
}

/// Who asks, as the front end established it (for policy and logs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The D-Bus unique name, when the request came over D-Bus.
    pub bus_name: Option<String>,
    pub uid: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    /// A type id (`nvidia-231`) or a type name (`GRID T4-2Q`).
    pub type_spec: String,
    pub parent: Option<ParentName>,
    pub uuid: Option<MdevUuid>,
    /// Vendor attributes written in order after create.
    pub attrs: Vec<(String, String)>,
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
}

pub(crate) enum Command {
    Snapshot(oneshot::Sender<Snapshot>),
    Create(Caller, CreateRequest, oneshot::Sender<Result<DeviceView>>),
    Remove(Caller, MdevUuid, RemoveRequest, oneshot::Sender<Result<()>>),
    Device(MdevUuid, oneshot::Sender<Option<DeviceView>>),
    Event(UEvent),
    /// Re-read one device (the add-before-mdev_type race), `n` retries left.
    RefreshDevice(MdevUuid, ParentName, u32),
    CreateDone(state::CreateDone),
    RemoveDone(state::RemoveDone),
    Barrier(oneshot::Sender<()>),
}

/// A cheap, cloneable handle for front ends.
#[derive(Clone)]
pub struct ManagerHandle {
    tx: mpsc::UnboundedSender<Command>,
}

fn gone() -> Error {
    Error::Failed("the manager has stopped".into())
}

impl ManagerHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    pub async fn snapshot(&self) -> Result<Snapshot> {
        self.ask(Command::Snapshot).await
    }

    pub async fn create(&self, caller: Caller, req: CreateRequest) -> Result<DeviceView> {
        self.ask(|tx| Command::Create(caller, req, tx)).await?
    }

    pub async fn remove(&self, caller: Caller, uuid: MdevUuid, req: RemoveRequest) -> Result<()> {
        self.ask(|tx| Command::Remove(caller, uuid, req, tx))
            .await?
    }

    pub async fn device(&self, uuid: MdevUuid) -> Result<Option<DeviceView>> {
        self.ask(|tx| Command::Device(uuid, tx)).await
    }

    /// Returns once every change the manager made so far is published.
    pub async fn published(&self) -> Result<()> {
        self.ask(Command::Barrier).await
    }

    /// Feeds one uevent to the manager.
    pub fn event(&self, event: UEvent) -> Result<()> {
        self.tx.send(Command::Event(event)).map_err(|_| gone())
    }
}

/// Starts the manager task: it scans the host first, then serves commands. Every difference
/// (the initial scan included) is sent on the returned channel.
pub fn spawn(config: ManagerConfig) -> Result<(ManagerHandle, mpsc::UnboundedReceiver<Update>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (changes_tx, changes_rx) = mpsc::unbounded_channel();
    let mut manager = state::Manager::new(config, tx.clone(), changes_tx);
    manager.scan()?;
    tokio::spawn(manager.run(rx));
    Ok((ManagerHandle { tx }, changes_rx))
}
