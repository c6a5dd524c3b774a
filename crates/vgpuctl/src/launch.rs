//! `vgpuctl launch UUID... [--payload NAME | --kernel K ...]`: asks vgpud to start a guest
//! with the vGPU attached, then follows its serial console until the guest ends.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use zbus::proxy::CacheProperties;
use zbus::zvariant::{Fd, Value};

use super::client::Client;
use super::error::{Class, CliError};
use vgpud_api::proxies::GuestProxy;

/// What `launch` was asked for.
pub struct LaunchArgs<'a> {
    pub uuids: &'a [String],
    pub payload: Option<&'a str>,
    pub kernel: Option<&'a str>,
    pub initrd: Option<&'a str>,
    pub cmdline: Option<&'a str>,
    pub memory_mib: Option<u32>,
    pub vcpus: Option<u32>,
}

/// Launches and follows the guest; returns the guest's exit status (0 = success).
pub async fn run(client: &mut Client, args: &LaunchArgs<'_>, json: bool) -> Result<u8, CliError> {
    let mut paths = Vec::new();
    for uuid in args.uuids {
        paths.push(client.device_path(uuid).await?);
    }
    // Files are opened here, with the user's rights, and passed as descriptors: vgpud opens no
    // path a caller names.
    let mut files = Vec::new();
    let mut open = |key: &'static str, path: &str| -> Result<(), CliError> {
        let what = key.trim_end_matches("_file");
        let file = std::fs::File::open(path).map_err(|e| {
            CliError::new(
                Class::InvalidArgument,
                format!("cannot read {what} {path}: {e}"),
            )
        })?;
        files.push((key, file));
        Ok(())
    };
    let mut options: HashMap<&str, Value<'_>> = HashMap::new();
    if let Some(p) = args.payload {
        if vgpud_model::guest::BUILTIN_PAYLOADS.contains(&p) {
            options.insert("payload", Value::from(p));
        } else {
            open("payload_file", p)?;
        }
    }
    if let Some(k) = args.kernel {
        open("kernel", k)?;
    }
    if let Some(i) = args.initrd {
        open("initrd", i)?;
    }
    if let Some(c) = args.cmdline {
        options.insert("cmdline", Value::from(c));
    }
    for (key, file) in &files {
        options.insert(key, Value::Fd(Fd::from(file)));
    }
    if let Some(m) = args.memory_mib {
        options.insert("memory_mib", Value::from(m));
    }
    if let Some(v) = args.vcpus {
        options.insert("vcpus", Value::from(v));
    }
    let manager = client.manager().await?;
    let guest_path = client
        .bounded(manager.launch_guest(&paths, options))
        .await?;
    let bus = client.bus().to_owned();
    let guest = GuestProxy::builder(client.connection())
        .path(guest_path.clone())
        .map_err(|e| CliError::from_zbus(e, &bus))?
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(|e| CliError::from_zbus(e, &bus))?;
    let log = guest
        .serial_log()
        .await
        .map_err(|e| CliError::from_zbus(e, &bus))?;
    let emulated = guest.emulated().await.unwrap_or(false);
    if !json {
        eprintln!(
            "vgpuctl: guest {} started{}; serial console follows",
            guest_path.as_str(),
            if emulated {
                " with an EMULATED device (no VFIO on this host)"
            } else {
                ""
            }
        );
    }
    // Follow the serial log the daemon writes until the guest is no longer running.
    let mut offset = 0u64;
    let mut out = std::io::stdout();
    loop {
        let state = guest
            .state()
            .await
            .map_err(|e| CliError::from_zbus(e, &bus))?;
        offset = copy_new(&log, offset, &mut out, json);
        if state != "running" {
            offset = copy_new(&log, offset, &mut out, json);
            let _ = offset;
            let status = guest
                .exit_status()
                .await
                .map_err(|e| CliError::from_zbus(e, &bus))?;
            if json {
                let report = serde_json::json!({
                    "guest": guest_path.as_str(), "state": state, "exit_status": status,
                    "emulated": emulated, "serial_log": log,
                });
                let _ = writeln!(out, "{report}");
            } else {
                eprintln!("vgpuctl: guest {state} with status {status}");
            }
            return Ok(if status == 0 { 0 } else { 1 });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Copies what the log gained since `offset` (console text goes to stdout unless --json).
fn copy_new(path: &str, offset: u64, out: &mut impl Write, json: bool) -> u64 {
    let Ok(mut file) = std::fs::File::open(path) else {
        return offset;
    };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return offset;
    }
    let mut buf = Vec::new();
    let n = file.take(1 << 20).read_to_end(&mut buf).unwrap_or(0);
    if !json && n > 0 {
        let _ = out.write_all(&buf[..n]);
        let _ = out.flush();
    }
    offset + n as u64
}
