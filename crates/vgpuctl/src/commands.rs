//! The commands that talk to vgpud: each turns its words into one or two D-Bus calls and
//! prints the result as a table or line (people) or as JSON (scripts).

use std::time::Duration;

use serde_json::json;
use zbus::zvariant::{OwnedObjectPath, Value};

use super::args::{Command, DeviceSpec, OnOff};
use super::client::{device_options, Client, Options};
use super::error::{Class, CliError};
use super::model::uuid_of;
use super::output;
use vgpud_model::MdevUuid;

/// Runs a command that needs the bus (every one but policy, launch, completions, man and the
/// hook, which `cli::run` handles).
pub async fn run(command: &Command, client: &Client, json: bool) -> Result<(), CliError> {
    match command {
        Command::Parents => parents(client, json).await,
        Command::Types { parent } => types(client, parent.as_deref(), json).await,
        Command::List { defined } => list(client, *defined, json).await,
        Command::Plan => plan(client, json).await,
        Command::Modify {
            uuid,
            attrs,
            live,
            defined,
        } => {
            let path = client.device_path(uuid).await?;
            let proxy = client.device_proxy(&path).await?;
            let pairs: Vec<(&str, &str)> = attrs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let options: std::collections::HashMap<&str, Value<'_>> = [
                ("live", Value::from(*live)),
                ("defined", Value::from(*defined)),
            ]
            .into();
            client.bounded(proxy.modify(&pairs, options)).await?;
            report(client, "modified", &path, json).await
        }
        Command::Reshape {
            parent,
            type_spec,
            count,
            drain,
        } => {
            let manager = client.manager().await?;
            let options: std::collections::HashMap<&str, Value<'_>> = [
                ("count", Value::from(*count)),
                ("drain", Value::from(*drain)),
            ]
            .into();
            let made = client
                .bounded(manager.reshape(parent, type_spec, options))
                .await?;
            let uuids: Vec<String> = made.iter().filter_map(|p| uuid_of(p.as_str())).collect();
            if json {
                output::json(&json!({ "parent": parent, "type": type_spec, "created": uuids }))
            } else {
                output::line(&format!(
                    "{parent} now serves {type_spec}: created {}",
                    uuids.join(" ")
                ))
            }
        }
        Command::Capacity {
            type_spec,
            parent,
            numa_node,
        } => {
            capacity(
                client,
                type_spec.as_deref(),
                parent.as_deref(),
                *numa_node,
                json,
            )
            .await
        }
        Command::Create {
            type_spec,
            spec,
            define,
        } => create(client, type_spec, spec, *define, json).await,
        Command::Remove { uuid, force } => {
            let path = client.device_path(uuid).await?;
            let proxy = client.device_proxy(&path).await?;
            client
                .bounded(proxy.remove(force_option(*force, client.limit())))
                .await?;
            report(client, "removed", &path, json).await
        }
        Command::Define { target, spec } => define(client, target, spec, json).await,
        Command::Undefine { uuid } => {
            let path = client.device_path(uuid).await?;
            let proxy = client.device_proxy(&path).await?;
            client.bounded(proxy.undefine()).await?;
            report(client, "undefined", &path, json).await
        }
        Command::Start { uuid } => {
            let path = client.device_path(uuid).await?;
            let proxy = client.device_proxy(&path).await?;
            client.bounded(proxy.start()).await?;
            report(client, "started", &path, json).await
        }
        Command::Stop { uuid, force } => {
            let path = client.device_path(uuid).await?;
            let proxy = client.device_proxy(&path).await?;
            client
                .bounded(proxy.stop(force_option(*force, client.limit())))
                .await?;
            report(client, "stopped", &path, json).await
        }
        Command::Autostart { uuid, state } => {
            let path = client.device_path(uuid).await?;
            let proxy = client.device_proxy(&path).await?;
            client
                .bounded(proxy.set_autostart(*state == OnOff::On))
                .await?;
            let verb = match state {
                OnOff::On => "autostart on for",
                OnOff::Off => "autostart off for",
            };
            report(client, verb, &path, json).await
        }
        Command::Reload => {
            let manager = client.manager().await?;
            let summary = client.bounded(manager.reload_policy()).await?;
            if json {
                output::json(&json!({ "policy": summary }))
            } else {
                output::line(&format!("policy reloaded; in force now:\n{summary}"))
            }
        }
        Command::Monitor => super::monitor::run(client, json).await,
        Command::Policy { .. }
        | Command::Launch { .. }
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::LibvirtHook(_) => Err(CliError::other(
            "internal error: this command does not use the bus",
        )),
    }
}

/// Remove/Stop options: with force, vgpud waits for a holder for three quarters of the
/// command's time limit, so it answers Busy before vgpuctl gives up on it.
fn force_option(force: bool, limit: Duration) -> Options<'static> {
    let mut options = Options::new();
    if force {
        let wait = limit.as_millis().saturating_mul(3) / 4;
        options.insert("force", Value::from(true));
        options.insert(
            "timeout_ms",
            Value::from(u64::try_from(wait).unwrap_or(u64::MAX)),
        );
    }
    options
}

async fn parents(client: &Client, json: bool) -> Result<(), CliError> {
    let snap = client.snapshot().await?;
    if json {
        output::json(&json!({ "parents": snap.parents }))
    } else if snap.parents.is_empty() {
        output::line("no parent devices")
    } else {
        output::line(&output::parents_table(&snap.parents))
    }
}

async fn plan(client: &Client, json: bool) -> Result<(), CliError> {
    let manager = client.manager().await?;
    let steps = client.bounded(manager.plan()).await?;
    if json {
        let steps: Vec<_> = steps
            .iter()
            .map(|(rule, parent, action, type_spec, count, in_the_way)| {
                json!({
                    "rule": rule, "parent": parent, "action": action,
                    "type": type_spec, "count": count, "in_the_way": in_the_way,
                })
            })
            .collect();
        output::json(&json!({ "plan": steps }))
    } else if steps.is_empty() {
        output::line("nothing to do: the ensure rules are met")
    } else {
        output::line(&output::plan_table(&steps))
    }
}

async fn capacity(
    client: &Client,
    type_spec: Option<&str>,
    parent: Option<&str>,
    numa_node: Option<i32>,
    json: bool,
) -> Result<(), CliError> {
    let mut filter: std::collections::HashMap<&str, Value<'_>> = Default::default();
    if let Some(t) = type_spec {
        filter.insert("type", Value::from(t));
    }
    if let Some(p) = parent {
        filter.insert("parent", Value::from(p));
    }
    if let Some(n) = numa_node {
        filter.insert("numa_node", Value::from(n));
    }
    let manager = client.manager().await?;
    let caps = client.bounded(manager.get_capacity(filter)).await?;
    if json {
        let types: Vec<_> = caps
            .iter()
            .map(|(name, total, parents)| {
                let parents: Vec<_> = parents
                    .iter()
                    .map(|(parent, type_id, numa, free)| {
                        json!({
                            "parent": parent,
                            "type_id": type_id,
                            "numa_node": (*numa >= 0).then_some(*numa),
                            "free": free,
                        })
                    })
                    .collect();
                json!({ "type": name, "total": total, "parents": parents })
            })
            .collect();
        output::json(&json!({ "capacity": types }))
    } else if caps.is_empty() {
        output::line("nothing you may create is free")
    } else {
        output::line(&output::capacity_table(&caps))
    }
}

async fn types(client: &Client, parent: Option<&str>, json: bool) -> Result<(), CliError> {
    let snap = client.snapshot().await?;
    if let Some(p) = parent {
        if !snap.parents.iter().any(|x| x.name == p) {
            return Err(CliError::new(
                Class::NotFound,
                format!("no parent device named {p}"),
            ));
        }
    }
    let types: Vec<_> = snap
        .types
        .into_iter()
        .filter(|t| parent.is_none_or(|p| t.parent == p))
        .collect();
    if json {
        output::json(&json!({ "types": types }))
    } else if types.is_empty() {
        output::line("no types")
    } else {
        output::line(&output::types_table(&types))
    }
}

async fn list(client: &Client, defined: bool, json: bool) -> Result<(), CliError> {
    let snap = client.snapshot().await?;
    let devices: Vec<_> = snap
        .devices
        .into_iter()
        .filter(|d| if defined { d.persistent } else { d.active })
        .collect();
    if json {
        output::json(&json!({ "devices": devices }))
    } else if devices.is_empty() {
        output::line(if defined {
            "no defined devices"
        } else {
            "no active devices"
        })
    } else {
        output::line(&output::devices_table(&devices))
    }
}

async fn create(
    client: &Client,
    type_spec: &str,
    spec: &DeviceSpec,
    define: bool,
    json: bool,
) -> Result<(), CliError> {
    let mut options = device_options(spec.parent.as_deref(), spec.uuid.as_deref(), &spec.attrs);
    if define || spec.auto {
        options.insert("persistent", Value::from(true));
    }
    if spec.auto {
        options.insert("autostart", Value::from(true));
    }
    let manager = client.manager().await?;
    let path = client
        .bounded(manager.create_device(type_spec, options))
        .await?;
    report(client, "created", &path, json).await
}

async fn define(
    client: &Client,
    target: &str,
    spec: &DeviceSpec,
    json: bool,
) -> Result<(), CliError> {
    if spec.parent.is_none() && MdevUuid::parse(target).is_ok() {
        if spec.uuid.is_some() || !spec.attrs.is_empty() {
            return Err(CliError::usage(
                "define UUID makes a live device persistent as it is: --uuid and --attr apply \
                 only to define TYPE --parent PARENT",
            ));
        }
        let path = client.device_path(target).await?;
        let proxy = client.device_proxy(&path).await?;
        let mut options = Options::new();
        if spec.auto {
            options.insert("autostart", Value::from(true));
        }
        client.bounded(proxy.define(options)).await?;
        return report(client, "defined", &path, json).await;
    }
    let Some(parent) = spec.parent.as_deref() else {
        return Err(CliError::usage(format!(
            "define {target:?} needs --parent PARENT (or give the UUID of a live device to make \
             it persistent)"
        )));
    };
    let mut options = device_options(Some(parent), spec.uuid.as_deref(), &spec.attrs);
    if spec.auto {
        options.insert("autostart", Value::from(true));
    }
    let manager = client.manager().await?;
    let path = client
        .bounded(manager.define_device(target, options))
        .await?;
    report(client, "defined", &path, json).await
}

/// Prints the device after a command: `{"uuid", "device"}` or one sentence.
async fn report(
    client: &Client,
    verb: &str,
    path: &OwnedObjectPath,
    json: bool,
) -> Result<(), CliError> {
    let device = client.device(path).await?;
    let uuid = device
        .as_ref()
        .map(|d| d.uuid.clone())
        .or_else(|| uuid_of(path.as_str()))
        .unwrap_or_default();
    if json {
        output::json(&json!({ "uuid": uuid, "device": device }))
    } else {
        output::line(&output::device_sentence(verb, &uuid, device.as_ref()))
    }
}
