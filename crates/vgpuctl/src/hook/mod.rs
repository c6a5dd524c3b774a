//! libvirt's QEMU hook (`vgpuctl libvirt-hook`, installed as /etc/libvirt/hooks/qemu.d/vgpud).
//! At `prepare begin` it makes every mdev the domain uses exist, all or nothing; at
//! `release end` it removes what it created and stops the definitions it started (they stay
//! defined, and the GPU's capacity comes back). Every other operation returns at once. It never
//! calls libvirt back, and every D-Bus call shares one deadline.

pub mod domain;
pub mod state;

use std::io::{self, Read};
use std::time::Duration;

use zbus::zvariant::{OwnedObjectPath, Value};

use super::args::HookArgs;
use super::client::{device_options, Client, Options};
use super::error::{Class, CliError};
use domain::{Domain, METADATA_NS};
use state::{Record, StateFile};
use vgpud_api::BusChoice;
use vgpud_model::MdevUuid;

/// libvirt passes the whole domain XML; anything larger than this is refused unread.
pub const STDIN_CAP: u64 = 32 << 20;
/// The default bound on all of one hook call's D-Bus calls.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// Extra time to undo a failed `prepare` (the first deadline may be what failed).
const UNDO_TIME: Duration = Duration::from_secs(10);
/// How long a remove waits for a process still holding the device (QEMU exiting).
const HOLDER_WAIT_MS: u64 = 5000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Prepare,
    Release,
    Nothing,
}

pub fn step(operation: &str, sub_operation: &str) -> Step {
    match (operation, sub_operation) {
        ("prepare", "begin") => Step::Prepare,
        ("release", "end") => Step::Release,
        _ => Step::Nothing,
    }
}

/// Runs the hook; `runtime` builds the async runtime only when the bus is needed.
pub fn run(
    args: &HookArgs,
    bus: &BusChoice,
    timeout: Duration,
    runtime: impl FnOnce() -> Result<tokio::runtime::Runtime, CliError>,
) -> Result<(), CliError> {
    let name = args.domain.as_str();
    match step(&args.operation, &args.sub_operation) {
        Step::Nothing => Ok(()),
        Step::Prepare => {
            let xml = read_stdin(STDIN_CAP).map_err(|e| e.context(format!("domain {name}")))?;
            let domain = domain::parse(&xml)
                .map_err(|e| CliError::invalid(e).context(format!("domain {name}")))?;
            if domain.mdevs.is_empty() {
                return Ok(());
            }
            let state = StateFile::new(&args.state_dir, name);
            let record = state
                .load()
                .map_err(|e| {
                    CliError::other(format!("{e}; remove it if no vGPU of this domain is live"))
                })?
                .unwrap_or_else(|| Record {
                    domain: name.to_owned(),
                    ..Record::default()
                });
            runtime()?.block_on(prepare(bus, timeout, name, &domain, &state, record))
        }
        Step::Release => {
            // The record, not the XML, says what to remove; bad XML is only worth a note.
            if let Err(e) =
                read_stdin(STDIN_CAP).and_then(|xml| domain::parse(&xml).map_err(CliError::invalid))
            {
                eprintln!("vgpuctl: domain {name}: ignoring its XML at release: {e}");
            }
            let state = StateFile::new(&args.state_dir, name);
            let Some(record) = state.load().map_err(CliError::other)? else {
                return Ok(());
            };
            if record.created.is_empty() && record.started.is_empty() {
                return state.save(&record).map_err(CliError::other);
            }
            runtime()?.block_on(release(bus, timeout, name, &state, record))
        }
    }
}

fn read_stdin(cap: u64) -> Result<String, CliError> {
    let mut bytes = Vec::new();
    io::stdin()
        .lock()
        .take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CliError::other(format!("cannot read the domain XML on stdin: {e}")))?;
    if bytes.len() as u64 > cap {
        return Err(CliError::invalid(format!(
            "the domain XML on stdin is larger than {} MiB",
            cap >> 20
        )));
    }
    String::from_utf8(bytes)
        .map_err(|e| CliError::invalid(format!("the domain XML is not UTF-8: {e}")))
}

/// What one prepare call did, to undo in reverse on failure.
enum Done {
    Created(MdevUuid, OwnedObjectPath),
    Started(MdevUuid, OwnedObjectPath),
}

async fn prepare(
    bus: &BusChoice,
    timeout: Duration,
    name: &str,
    domain: &Domain,
    state: &StateFile,
    mut record: Record,
) -> Result<(), CliError> {
    let mut client = Client::connect(bus, timeout)
        .await
        .map_err(|e| e.context(format!("domain {name}")))?;
    let mut done = Vec::new();
    for uuid in &domain.mdevs {
        if let Err(e) = provide(&client, *uuid, domain, state, &mut record, &mut done).await {
            client.renew(UNDO_TIME);
            undo(&client, name, done, state, &mut record).await;
            return Err(e.context(format!("domain {name}: cannot provide vGPU {uuid}")));
        }
    }
    Ok(())
}

/// Makes one device exist: used as it is when active, started when defined, else created
/// from the domain's metadata.
async fn provide(
    client: &Client,
    uuid: MdevUuid,
    domain: &Domain,
    state: &StateFile,
    record: &mut Record,
    done: &mut Vec<Done>,
) -> Result<(), CliError> {
    let text = uuid.to_string();
    let known = match client.device_path(&text).await {
        Ok(path) => client.device(&path).await?.map(|d| (path, d)),
        Err(e) if e.class == Class::NotFound => None,
        Err(e) => return Err(e),
    };
    match known {
        Some((_, device)) if device.active => return Ok(()),
        Some((path, device)) if device.persistent => {
            let proxy = client.device_proxy(&path).await?;
            client.bounded(proxy.start()).await?;
            if !record.started.contains(&uuid) {
                record.started.push(uuid);
            }
            done.push(Done::Started(uuid, path));
            return state.save(record).map_err(CliError::other);
        }
        _ => {}
    }
    let spec = domain.specs.get(&uuid).ok_or_else(|| {
        CliError::new(
            Class::NotFound,
            format!(
                "the device does not exist, has no definition, and the domain's metadata does \
                 not say which type to create: add <vgpud:device uuid=\"{uuid}\" \
                 type=\"TYPE\"/> inside <metadata><vgpud:devices xmlns:vgpud=\"{METADATA_NS}\">"
            ),
        )
    })?;
    // Recorded before the call, so a hook killed meanwhile still leaves a note of it.
    if !record.created.contains(&uuid) {
        record.created.push(uuid);
    }
    state.save(record).map_err(CliError::other)?;
    let manager = client.manager().await?;
    let options = device_options(spec.parent.as_deref(), Some(&text), &[]);
    match client
        .bounded(manager.create_device(&spec.type_spec, options))
        .await
    {
        Ok(path) => {
            done.push(Done::Created(uuid, path));
            Ok(())
        }
        Err(e) => {
            record.created.retain(|u| *u != uuid);
            state.save(record).map_err(CliError::other)?;
            // Someone else made it since we looked: it exists, which is all the domain needs.
            if e.class == Class::AlreadyExists {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

fn removal_options() -> Options<'static> {
    let mut options = Options::new();
    options.insert("force", Value::from(true));
    options.insert("timeout_ms", Value::from(HOLDER_WAIT_MS));
    options
}

/// Undoes one failed prepare call, newest first; what cannot be undone stays recorded.
async fn undo(
    client: &Client,
    name: &str,
    done: Vec<Done>,
    state: &StateFile,
    record: &mut Record,
) {
    for step in done.into_iter().rev() {
        let (uuid, path, created) = match step {
            Done::Created(u, p) => (u, p, true),
            Done::Started(u, p) => (u, p, false),
        };
        let result = async {
            let proxy = client.device_proxy(&path).await?;
            if created {
                client.bounded(proxy.remove(removal_options())).await
            } else {
                client.bounded(proxy.stop(removal_options())).await
            }
        }
        .await;
        match result {
            Ok(()) => {
                let verb = if created { "removed" } else { "stopped" };
                eprintln!(
                    "vgpuctl: domain {name}: {verb} vGPU {uuid}, which this call had {}",
                    if created { "created" } else { "started" }
                );
            }
            Err(e) if e.class == Class::NotFound => {}
            Err(e) => {
                eprintln!("vgpuctl: domain {name}: could not undo vGPU {uuid}: {e}");
                continue;
            }
        }
        record.created.retain(|u| *u != uuid);
        record.started.retain(|u| *u != uuid);
    }
    if let Err(e) = state.save(record) {
        eprintln!("vgpuctl: domain {name}: {e}");
    }
}

async fn release(
    bus: &BusChoice,
    timeout: Duration,
    name: &str,
    state: &StateFile,
    mut record: Record,
) -> Result<(), CliError> {
    let client = Client::connect(bus, timeout)
        .await
        .map_err(|e| e.context(format!("domain {name}: cannot remove its vGPUs")))?;
    let mut first_failure = None;
    for uuid in record.created.clone() {
        match remove_created(&client, uuid).await {
            Ok(()) => record.created.retain(|u| *u != uuid),
            Err(e) => {
                let e = e.context(format!("domain {name}: cannot remove vGPU {uuid}"));
                eprintln!("vgpuctl: {e}");
                first_failure.get_or_insert(e);
            }
        }
    }
    for uuid in record.started.clone() {
        match stop_started(&client, uuid).await {
            Ok(()) => record.started.retain(|u| *u != uuid),
            Err(e) => {
                let e = e.context(format!("domain {name}: cannot stop vGPU {uuid}"));
                eprintln!("vgpuctl: {e}");
                first_failure.get_or_insert(e);
            }
        }
    }
    state.save(&record).map_err(CliError::other)?;
    match first_failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Removes a device the hook created, unless it is gone or was made persistent since.
async fn remove_created(client: &Client, uuid: MdevUuid) -> Result<(), CliError> {
    let path = match client.device_path(&uuid.to_string()).await {
        Ok(p) => p,
        Err(e) if e.class == Class::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    match client.device(&path).await? {
        Some(d) if d.active && !d.persistent => {}
        _ => return Ok(()),
    }
    let proxy = client.device_proxy(&path).await?;
    match client.bounded(proxy.remove(removal_options())).await {
        Err(e) if e.class != Class::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Stops a definition the hook started; its definition stays. A device that is gone, or no
/// longer defined (someone undefined it meanwhile), is left alone.
async fn stop_started(client: &Client, uuid: MdevUuid) -> Result<(), CliError> {
    let path = match client.device_path(&uuid.to_string()).await {
        Ok(p) => p,
        Err(e) if e.class == Class::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    match client.device(&path).await? {
        Some(d) if d.active && d.persistent => {}
        _ => return Ok(()),
    }
    let proxy = client.device_proxy(&path).await?;
    match client.bounded(proxy.stop(removal_options())).await {
        Err(e) if e.class != Class::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_prepare_begin_and_release_end_do_anything() {
        assert_eq!(step("prepare", "begin"), Step::Prepare);
        assert_eq!(step("release", "end"), Step::Release);
        for (op, sub) in [
            ("start", "begin"),
            ("started", "begin"),
            ("stopped", "end"),
            ("prepare", "end"),
            ("migrate", "begin"),
            ("restore", "begin"),
            ("reconnect", "begin"),
            ("attach", "begin"),
            ("", ""),
        ] {
            assert_eq!(step(op, sub), Step::Nothing, "{op} {sub}");
        }
    }
}
