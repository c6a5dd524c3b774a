//! The daemon's main job, as a library function so tests link the same code: open the event
//! source, adopt the host, publish it on the bus, then follow events until told to stop.

use std::future::Future;
use std::path::PathBuf;

use crate::backend::Host;
use crate::dbus::{self, BusChoice};
use crate::error::{Error, Result};
use crate::events::{EventSpec, EventStream};
use crate::manager::{self, ManagerConfig};
use crate::sysfs::SysfsRoot;

/// Every root the daemon reads or writes under, and how it talks to the world.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub bus: BusChoice,
    pub sysfs: PathBuf,
    pub dev: PathBuf,
    pub proc_root: PathBuf,
    pub events: EventSpec,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            bus: BusChoice::System,
            sysfs: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
            proc_root: PathBuf::from("/proc"),
            events: EventSpec::Udev,
        }
    }
}

/// Runs until `shutdown` completes. `ready` is called once the bus name is owned.
pub async fn run(
    opts: DaemonOptions,
    ready: impl FnOnce(&zbus::Connection),
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    // Subscribe before the first scan, so nothing that happens in between is missed.
    let mut events = EventStream::open(&opts.events).map_err(|e| {
        Error::Failed(format!(
            "cannot open the event source {:?}: {e}",
            opts.events
        ))
    })?;
    let host = Host::new(SysfsRoot::new(&opts.sysfs)?);
    let mut config = ManagerConfig::new(host);
    config.dev_root = opts.dev.clone();
    config.proc_root = opts.proc_root.clone();
    let (handle, changes) = manager::spawn(config)?;
    let conn = dbus::connect(&opts.bus).await.map_err(|e| {
        Error::Failed(format!(
            "cannot connect to the {} bus: {e} (no bus here? try `vgpud --simulate`, --session or --address)",
            match &opts.bus {
                BusChoice::System => "system".to_owned(),
                BusChoice::Session => "session".to_owned(),
                BusChoice::Address(a) => a.clone(),
            }
        ))
    })?;
    let publisher = dbus::serve(&conn, handle.clone(), changes)
        .await
        .map_err(|e| Error::Failed(format!("cannot serve on the bus: {e}")))?;
    ready(&conn);
    let feeder = {
        let handle = handle.clone();
        async move {
            loop {
                match events.recv().await {
                    Ok(e) => {
                        if handle.event(e).is_err() {
                            return Err(Error::Failed("the manager stopped".into()));
                        }
                    }
                    Err(e) => return Err(Error::Failed(format!("the event source failed: {e}"))),
                }
            }
        }
    };
    let result = tokio::select! {
        r = feeder => r,
        _ = shutdown => Ok(()),
    };
    publisher.abort();
    drop(conn);
    result
}
