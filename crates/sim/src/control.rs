//! The simulator's control channel: one JSON request per line on a Unix stream socket, one
//! JSON reply per line. `vgpud-sim ctl` is its client; tests and benchmarks use `Client`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::fs::{Completion, Shared};
use super::kernel::{Injection, Kernel, Role};
use super::profile::DeviceTemplate;
use super::{errno, tree};

/// A request on the control channel; also the commands of `vgpud-sim ctl`, which sends them.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Subcommand)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Parents, devices and counters (as JSON).
    Status,
    /// Plug a new GPU of PROFILE, or re-plug an unplugged one by name (--parent).
    Plug {
        #[serde(default)]
        profile: Option<String>,
        #[serde(default)]
        #[arg(long)]
        parent: Option<String>,
    },
    /// Surprise-remove a parent (and its VFs); blocks while one of its vGPUs is held.
    Unplug { parent: String },
    /// Bind the parent's driver (it registers with the mdev core).
    Bind { parent: String },
    /// Unbind the parent's driver (its vGPUs go first); blocks while one of its vGPUs is held,
    /// like the kernel.
    Unbind { parent: String },
    /// Hold a vGPU open as a VM would: `remove` blocks until `release`.
    Hold { device: String },
    /// Let go of a vGPU held with `hold`.
    Release { device: String },
    /// Fail (errno) and/or delay the next COUNT writes to PATH (relative to the mount). A PATH
    /// with `*` is a pattern over canonical paths (`*` matches any run of characters, `/`
    /// included), so it can name files that do not exist yet: `'*/nvidia/vgpu_params'`.
    Inject {
        path: String,
        #[serde(default)]
        #[arg(long)]
        errno: Option<String>,
        #[serde(default)]
        #[arg(long)]
        delay_ms: Option<u64>,
        #[serde(default)]
        #[arg(long)]
        count: Option<u32>,
    },
    /// Drop every pending injection.
    ClearInjections,
    /// The PCI identity a guest sees for a vGPU (from the profile).
    GuestPci { device: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub result: Value,
}

pub struct Control {
    pub shared: Arc<Shared>,
    pub catalog: BTreeMap<String, DeviceTemplate>,
    /// Where held devices get an open `vfio/<group>` node, so /proc shows the holder.
    pub dev_dir: Option<PathBuf>,
    pub holders: Mutex<BTreeMap<String, File>>,
}

impl Control {
    pub fn handle(&self, req: Request) -> Result<Value, String> {
        let topology = matches!(
            req,
            Request::Plug { .. }
                | Request::Unplug { .. }
                | Request::Bind { .. }
                | Request::Unbind { .. }
        );
        let result = self.apply(req);
        // Done or failed half-way: either way the kernel's cached view may be stale now.
        if topology {
            self.shared.topology_changed();
        }
        result
    }

    fn apply(&self, req: Request) -> Result<Value, String> {
        match req {
            Request::Status => Ok(status(&self.shared.lock())),
            Request::Plug { profile, parent } => {
                let names = match (profile, parent) {
                    (Some(spec), None) => {
                        let t = self
                            .catalog
                            .get(&spec)
                            .cloned()
                            .ok_or_else(|| format!("unknown profile {spec:?}"))?;
                        let mut t = t;
                        t.count = 1;
                        self.shared.lock().plug_template(Arc::new(t))?
                    }
                    (None, Some(name)) => self.shared.lock().replug(&name)?,
                    _ => return Err("plug takes either a profile or a parent".into()),
                };
                self.shared.changed.notify_all();
                Ok(json!({ "parents": names }))
            }
            Request::Unplug { parent } => {
                let functions = {
                    let k = self.shared.lock();
                    // Unloading a sample driver's module is refused while a VM holds one of
                    // its devices (rmmod: EAGAIN), where a PCI removal waits for the holder.
                    if let Some(module) = k.module_of(&parent) {
                        if k.devices
                            .values()
                            .any(|d| d.parent == parent && k.held.contains(&d.uuid))
                        {
                            return Err(format!(
                                "EAGAIN: module {module} is in use by a held device"
                            ));
                        }
                    }
                    k.unit_functions(&parent)?
                };
                for f in &functions {
                    let bound = self
                        .shared
                        .lock()
                        .parents
                        .get(f)
                        .is_some_and(|p| p.driver.is_some());
                    if bound {
                        self.unbind(f)?;
                    }
                    self.shared.lock().finish_unplug(f);
                }
                self.shared.changed.notify_all();
                Ok(json!({ "parents": functions }))
            }
            Request::Bind { parent } => {
                self.shared.lock().bind_driver(&parent)?;
                Ok(Value::Null)
            }
            Request::Unbind { parent } => self.unbind(&parent).map(|_| Value::Null),
            Request::Hold { device } => {
                let group = {
                    let mut k = self.shared.lock();
                    k.hold(&device)?;
                    group_of(&k, &device)
                };
                self.open_holder(&device, group)?;
                Ok(Value::Null)
            }
            Request::Release { device } => {
                self.shared.lock().release(&device)?;
                self.holders.lock().map_err(|_| "poisoned")?.remove(&device);
                self.shared.changed.notify_all();
                Ok(Value::Null)
            }
            Request::Inject {
                path,
                errno: e,
                delay_ms,
                count,
            } => {
                let mut k = self.shared.lock();
                let canonical = if path.contains('*') {
                    path.trim_start_matches('/').to_owned()
                } else {
                    tree::canonicalize(&k, &path)
                        .ok_or_else(|| format!("{path} does not exist in the simulated tree"))?
                };
                let errno = match e {
                    Some(name) => Some(
                        errno::from_name(&name).ok_or_else(|| format!("unknown errno {name}"))?,
                    ),
                    None => None,
                };
                if errno.is_none() && delay_ms.is_none() {
                    return Err("inject needs an errno, a delay, or both".into());
                }
                k.injections.push(Injection {
                    path: canonical.clone(),
                    errno,
                    delay: delay_ms.map(Duration::from_millis),
                    remaining: count.unwrap_or(1).max(1),
                });
                Ok(json!({ "path": canonical }))
            }
            Request::ClearInjections => {
                self.shared.lock().injections.clear();
                Ok(Value::Null)
            }
            Request::GuestPci { device } => {
                let k = self.shared.lock();
                let g = k
                    .guest_pci(&device)
                    .ok_or_else(|| format!("no device {device}"))?;
                serde_json::to_value(g).map_err(|e| e.to_string())
            }
        }
    }

    fn unbind(&self, parent: &str) -> Result<(), String> {
        let waiting = self.shared.lock().begin_unbind(parent)?;
        // The parent is unregistering: its types are gone while it waits for a holder.
        self.shared.topology_changed();
        Completion::Unbind(parent.to_owned(), waiting).run(&self.shared);
        Ok(())
    }

    fn open_holder(&self, device: &str, group: Option<u32>) -> Result<(), String> {
        let (Some(dev), Some(group)) = (&self.dev_dir, group) else {
            return Ok(());
        };
        let dir = dev.join("vfio");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let node = dir.join(group.to_string());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&node)
            .map_err(|e| format!("cannot open {}: {e}", node.display()))?;
        self.holders
            .lock()
            .map_err(|_| "poisoned")?
            .insert(device.to_owned(), file);
        Ok(())
    }

    /// Closes holder files of devices that no longer exist.
    pub fn forget_gone_holders(&self) {
        let k = self.shared.lock();
        if let Ok(mut h) = self.holders.lock() {
            h.retain(|id, _| k.held.contains(id));
        }
    }
}

fn group_of(k: &Kernel, id: &str) -> Option<u32> {
    k.devices
        .get(id)
        .map(|d| d.iommu_group)
        .or_else(|| k.parents.get(id)?.iommu_group)
}

fn status(k: &Kernel) -> Value {
    let parents: Vec<Value> = k
        .parents
        .values()
        .map(|p| {
            let types: Vec<Value> = p
                .types()
                .iter()
                .map(|t| json!({ "id": t.id, "name": t.name, "available": k.available(p, t) }))
                .collect();
            json!({
                "name": p.name,
                "devpath": p.devpath,
                "profile": p.template.profile,
                "driver": p.driver,
                "role": match p.role { Role::MdevParent => "mdev", Role::VendorVf => "nvidia-vendor", Role::Plain => "plain" },
                "registered": p.registered(),
                "numa_node": p.numa_node,
                "iommu_group": p.iommu_group,
                "current_vgpu_type": p.current_vgpu,
                "types": types,
            })
        })
        .collect();
    let devices: Vec<Value> = k
        .devices
        .values()
        .map(|d| {
            json!({
                "uuid": d.uuid, "parent": d.parent, "type": d.type_id, "iommu_group": d.iommu_group,
                "held": k.held.contains(&d.uuid), "removing": d.removing, "attributes": d.attributes,
            })
        })
        .collect();
    json!({ "parents": parents, "devices": devices, "seqnum": k.seqnum(), "held": k.held })
}

/// Serves the control socket on a thread; each connection gets its own thread, so a request
/// that blocks (an unplug waiting for a held device) does not stop the others.
pub fn serve(control: Arc<Control>, path: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("sim-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let control = control.clone();
                let _ = std::thread::Builder::new()
                    .name("sim-control-conn".into())
                    .spawn(move || {
                        let _ = handle_conn(&control, conn);
                    });
            }
        })?;
    Ok(())
}

fn handle_conn(control: &Control, conn: UnixStream) -> std::io::Result<()> {
    let mut writer = conn.try_clone()?;
    let reader = BufReader::new(conn);
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(req) => match control.handle(req) {
                Ok(result) => Response {
                    ok: true,
                    error: None,
                    result,
                },
                Err(e) => Response {
                    ok: false,
                    error: Some(e),
                    result: Value::Null,
                },
            },
            Err(e) => Response {
                ok: false,
                error: Some(format!("bad request: {e}")),
                result: Value::Null,
            },
        };
        control.forget_gone_holders();
        let mut text = serde_json::to_string(&response).unwrap_or_else(|_| "{\"ok\":false}".into());
        text.push('\n');
        writer.write_all(text.as_bytes())?;
    }
    Ok(())
}

/// A blocking client of the control socket.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> std::io::Result<Self> {
        let writer = UnixStream::connect(path)?;
        let reader = BufReader::new(writer.try_clone()?);
        Ok(Self { reader, writer })
    }

    pub fn call(&mut self, req: &Request) -> std::io::Result<Response> {
        let mut text = serde_json::to_string(req).map_err(std::io::Error::other)?;
        text.push('\n');
        self.writer.write_all(text.as_bytes())?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the simulator hung up",
            ));
        }
        serde_json::from_str(&line).map_err(std::io::Error::other)
    }

    /// `call`, with a failed request turned into an error.
    pub fn ok(&mut self, req: &Request) -> std::io::Result<Value> {
        let r = self.call(req)?;
        if r.ok {
            Ok(r.result)
        } else {
            Err(std::io::Error::other(
                r.error.unwrap_or_else(|| "request failed".into()),
            ))
        }
    }
}
