//! vgpud-sim: a FUSE file system that behaves like the kernel's sysfs for mdev parents and
//! vGPUs, with a uevent feed and a control channel. Any tool written against /sys (vgpud,
//! mdevctl, a shell) sees the same tree and the same errors as on a real host.

pub mod cache;
pub mod cli;
pub mod control;
pub mod errno;
pub mod feed;
pub mod fs;
pub mod inodes;
pub mod kernel;
pub mod mount;
pub mod netlink;
pub mod pci_config;
pub mod profile;
pub mod tree;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use self::control::Control;
use self::feed::Feed;
use self::fs::{Shared, SysFs};
use self::kernel::Kernel;
use self::profile::DeviceTemplate;

#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    pub mountpoint: PathBuf,
    /// `NAME[:COUNT]` of built-in profiles.
    pub profiles: Vec<String>,
    pub profile_files: Vec<PathBuf>,
    /// Where the control and uevent sockets go; default `<mountpoint>.sim`.
    pub run_dir: Option<PathBuf>,
    /// Where held devices get an open `vfio/<group>` node; default `<run dir>/dev`.
    pub dev_dir: Option<PathBuf>,
    /// Also broadcast uevents on NETLINK_KOBJECT_UEVENT in this network namespace (group 1
    /// as the kernel, group 2 as udevd), for udev-based tools.
    pub netlink_uevents: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Profile(#[from] profile::ProfileError),
    #[error("{0}")]
    Setup(String),
    #[error("cannot mount the simulator at {path} (it needs root and /dev/fuse)")]
    Mount {
        path: String,
        source: std::io::Error,
    },
}

/// A running simulator; dropping it (or `stop`) unmounts.
pub struct Simulator {
    shared: Arc<Shared>,
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    run_dir: PathBuf,
    dev_dir: PathBuf,
}

/// Control socket path for a run directory.
pub fn control_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("control")
}

/// uevent feed socket path for a run directory.
pub fn uevent_socket(run_dir: &Path) -> PathBuf {
    run_dir.join("uevents")
}

/// The default run directory of a mount point: `<mountpoint>.sim`.
pub fn default_run_dir(mountpoint: &Path) -> PathBuf {
    let mut s = mountpoint.as_os_str().to_owned();
    s.push(".sim");
    PathBuf::from(s)
}

/// `dir` as /proc/self/mountinfo shows it, found without stat'ing `dir` itself (a stale mount
/// point answers ENOTCONN): its parent with links resolved, then its own name.
fn mountinfo_path(dir: &Path) -> PathBuf {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(absolute),
        _ => absolute,
    }
}

impl Simulator {
    pub fn start(opts: &SimOptions) -> Result<Self, SimError> {
        let setup = |what: &str, e: &dyn std::fmt::Display| SimError::Setup(format!("{what}: {e}"));
        let mut templates: Vec<DeviceTemplate> = Vec::new();
        for spec in &opts.profiles {
            templates.extend(profile::builtin(spec)?);
        }
        for file in &opts.profile_files {
            templates.extend(profile::load_file(file)?);
        }
        let mut catalog: BTreeMap<String, DeviceTemplate> = BTreeMap::new();
        for name in profile::BUILTIN_NAMES {
            for t in profile::builtin(name)? {
                catalog.insert(t.profile.clone(), t);
            }
        }
        for t in &templates {
            catalog.insert(t.profile.clone(), t.clone());
        }

        // A stale mount point cannot even be stat'ed: clear it before touching the directory.
        mount::clear_stale(&mountinfo_path(&opts.mountpoint)).map_err(SimError::Setup)?;
        std::fs::create_dir_all(&opts.mountpoint)
            .map_err(|e| setup(&format!("cannot create {}", opts.mountpoint.display()), &e))?;
        let mountpoint = std::fs::canonicalize(&opts.mountpoint)
            .map_err(|e| setup(&format!("cannot resolve {}", opts.mountpoint.display()), &e))?;
        let run_dir = opts
            .run_dir
            .clone()
            .unwrap_or_else(|| default_run_dir(&mountpoint));
        std::fs::create_dir_all(&run_dir)
            .map_err(|e| setup(&format!("cannot create {}", run_dir.display()), &e))?;
        let dev_dir = opts.dev_dir.clone().unwrap_or_else(|| run_dir.join("dev"));
        std::fs::create_dir_all(dev_dir.join("vfio"))
            .map_err(|e| setup(&format!("cannot create {}", dev_dir.display()), &e))?;

        let feed = Arc::new(Feed::default());
        if opts.netlink_uevents {
            let broadcast = netlink::Broadcast::open()
                .map_err(|e| setup("cannot open a NETLINK_KOBJECT_UEVENT socket", &e))?;
            // Just made: the cell is empty.
            let _ = feed.netlink.set(broadcast);
        }
        let mut kernel = Kernel::new(feed.clone());
        for t in templates {
            for _ in 0..t.count {
                kernel
                    .plug_template(Arc::new(t.clone()))
                    .map_err(SimError::Setup)?;
            }
        }
        let shared = Arc::new(Shared {
            kernel: Mutex::new(kernel),
            changed: Condvar::new(),
            cache: cache::Cache::default(),
            inodes: inodes::Inodes::default(),
        });

        feed::serve(feed, &uevent_socket(&run_dir))
            .map_err(|e| setup("cannot serve the uevent feed", &e))?;
        let control = Arc::new(Control {
            shared: shared.clone(),
            catalog,
            dev_dir: Some(dev_dir.clone()),
            holders: Mutex::new(BTreeMap::new()),
        });
        control::serve(control, &control_socket(&run_dir))
            .map_err(|e| setup("cannot serve the control socket", &e))?;

        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("vgpud-sim".into()),
            MountOption::Subtype("vgpud-sim".into()),
            MountOption::NoExec,
            MountOption::NoSuid,
            MountOption::NoDev,
        ];
        config.acl = SessionACL::All;
        config.n_threads = Some(4);
        let session = fuser::spawn_mount(SysFs::new(shared.clone()), &mountpoint, &config)
            .map_err(|source| SimError::Mount {
                path: mountpoint.display().to_string(),
                source,
            })?;
        shared.cache.set_notifier(session.notifier());
        Ok(Self {
            shared,
            session: Some(session),
            mountpoint,
            run_dir,
            dev_dir,
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    pub fn dev_dir(&self) -> &Path {
        &self.dev_dir
    }

    pub fn control_socket(&self) -> PathBuf {
        control_socket(&self.run_dir)
    }

    pub fn uevent_socket(&self) -> PathBuf {
        uevent_socket(&self.run_dir)
    }

    /// FUSE requests served so far, by kind (what the kernel did not answer from its cache).
    pub fn requests(&self) -> cache::RequestCounts {
        self.shared.cache.requests.snapshot()
    }

    /// Releases every blocked writer and unmounts.
    pub fn stop(mut self) -> std::io::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> std::io::Result<()> {
        self.shared.lock().shutting_down = true;
        self.shared.changed.notify_all();
        let result = match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        };
        // Something still has a file or directory open in the mount (a shell's cwd, a writer
        // the shutdown just released): detach it as `umount -l` does, so the mount point is free.
        let result = match result {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH)
                    .map_err(std::io::Error::from)
            }
            // The kernel ended the connection (a worker's read of /dev/fuse raced the unmount
            // and saw it torn down as aborted rather than gone; seen once on 6.18): the session
            // is over either way, which is what stopping asked for.
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
                tracing::debug!("the FUSE connection ended as aborted: {e}");
                Ok(())
            }
            other => other,
        };
        let _ = std::fs::remove_file(control_socket(&self.run_dir));
        let _ = std::fs::remove_file(uevent_socket(&self.run_dir));
        result
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if self.session.is_some() {
            if let Err(e) = self.stop_inner() {
                tracing::warn!("unmounting {} failed: {e}", self.mountpoint.display());
            }
        }
    }
}
