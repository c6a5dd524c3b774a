//! Who holds a VFIO group open: the processes with an open descriptor on /dev/vfio/<group>.
//! Writing an mdev's `remove` blocks while such a holder exists, so the manager asks first.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

/// A process with the node open.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Holder {
    pub pid: u32,
    /// The process's short name from /proc/<pid>/comm; empty if it could not be read.
    pub comm: String,
}

/// The VFIO group node for `group` under the device root (`--dev`, default /dev).
pub fn group_node(dev_root: &Path, group: u32) -> PathBuf {
    dev_root.join("vfio").join(group.to_string())
}

/// The device nodes through which a VM can hold a device: its IOMMU group's node and, where
/// the kernel gives the device one (`<sysfs dir>/vfio-dev/vfioN`), its VFIO cdev — a guest
/// attached through iommufd never opens the group. Only nodes that exist (a node that does not
/// exist cannot be held). Reads sysfs and /dev: off the manager's loop where it can be.
pub fn device_nodes(dev_root: &Path, group: Option<u32>, sysfs_dir: &Path) -> Vec<PathBuf> {
    let group = group
        .map(|g| group_node(dev_root, g))
        .filter(|n| n.exists());
    group
        .into_iter()
        .chain(vfio_cdev(sysfs_dir, dev_root))
        .collect()
}

/// The device's VFIO cdev: `<sysfs dir>/vfio-dev/vfioN` names `<dev>/vfio/devices/vfioN`.
pub fn vfio_cdev(sysfs_dir: &Path, dev_root: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sysfs_dir.join("vfio-dev")).ok()?;
    entries.flatten().find_map(|e| {
        let name = e.file_name().into_string().ok()?;
        name.strip_prefix("vfio")?.parse::<u32>().ok()?;
        let node = dev_root.join("vfio/devices").join(&name);
        node.exists().then_some(node)
    })
}

/// Every process under `proc_root` with a descriptor open on `node`, one entry per process,
/// ordered by pid. Processes that exit during the scan, or whose descriptors this process may
/// not read, are skipped: the answer is advisory, as it is for `fuser`.
///
/// A descriptor matches when its /proc link reads as `node`'s canonical path. The kernel
/// writes that link with every symlink already resolved, so this needs no call into the file
/// system that holds the node (a stat could hang on a stuck FUSE mount). Processes in another
/// mount namespace or chroot see other paths and are not found.
pub fn holders_of(proc_root: &Path, node: &Path) -> Vec<Holder> {
    let target = fs::canonicalize(node).unwrap_or_else(|_| node.to_path_buf());
    let Ok(entries) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut holders: Vec<Holder> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| pid_of(&entry.file_name()))
        .filter(|&pid| holds(&proc_root.join(pid.to_string()), &target))
        .map(|pid| Holder {
            pid,
            comm: comm_of(&proc_root.join(pid.to_string())),
        })
        .collect();
    holders.sort();
    holders
}

/// Which of `nodes` some process under `proc_root` holds open, in one pass over /proc (the
/// same matching and the same limits as [`holders_of`]).
pub fn held_among(proc_root: &Path, nodes: &[PathBuf]) -> BTreeSet<PathBuf> {
    let targets: Vec<(PathBuf, &PathBuf)> = nodes
        .iter()
        .map(|n| (fs::canonicalize(n).unwrap_or_else(|_| n.clone()), n))
        .collect();
    let mut held = BTreeSet::new();
    if targets.is_empty() {
        return held;
    }
    let Ok(entries) = fs::read_dir(proc_root) else {
        return held;
    };
    for pid in entries
        .filter_map(Result::ok)
        .filter_map(|e| pid_of(&e.file_name()))
    {
        let Ok(fds) = fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            };
            if let Some((_, node)) = targets.iter().find(|(t, _)| *t == link) {
                held.insert((*node).clone());
            }
        }
        if held.len() == targets.len() {
            break;
        }
    }
    held
}

fn pid_of(name: &OsStr) -> Option<u32> {
    let name = name.to_str()?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

fn holds(process: &Path, target: &Path) -> bool {
    let Ok(fds) = fs::read_dir(process.join("fd")) else {
        return false; // gone, or not ours to read (EACCES)
    };
    fds.filter_map(Result::ok)
        .any(|fd| fs::read_link(fd.path()).is_ok_and(|link| link == target))
}

fn comm_of(process: &Path) -> String {
    fs::read_to_string(process.join("comm"))
        .map(|s| s.trim_end_matches('\n').to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Holder {
        Holder {
            pid: std::process::id(),
            comm: comm_of(Path::new("/proc/self")),
        }
    }

    #[test]
    fn a_device_is_held_through_its_group_or_its_cdev() {
        let dir = tempfile::tempdir().unwrap();
        let (dev, sys) = (dir.path().join("dev"), dir.path().join("sys/mdev0"));
        std::fs::create_dir_all(dev.join("vfio/devices")).unwrap();
        std::fs::create_dir_all(sys.join("vfio-dev/vfio2")).unwrap();
        // Neither node exists yet: nothing can hold the device.
        assert!(device_nodes(&dev, Some(7), &sys).is_empty());
        std::fs::write(dev.join("vfio/7"), "").unwrap();
        std::fs::write(dev.join("vfio/devices/vfio2"), "").unwrap();
        let nodes = device_nodes(&dev, Some(7), &sys);
        assert_eq!(nodes, [dev.join("vfio/7"), dev.join("vfio/devices/vfio2")]);
        // A process holding only the cdev (an iommufd guest) holds the device.
        let cdev = std::fs::File::open(dev.join("vfio/devices/vfio2")).unwrap();
        let held = held_among(Path::new("/proc"), &nodes);
        assert!(held.contains(&dev.join("vfio/devices/vfio2")));
        assert!(!held.contains(&dev.join("vfio/7")));
        drop(cdev);
        assert!(held_among(Path::new("/proc"), &nodes).is_empty());
    }

    #[test]
    fn group_node_is_under_dev_vfio() {
        assert_eq!(
            group_node(Path::new("/tmp/sim/dev"), 17),
            PathBuf::from("/tmp/sim/dev/vfio/17")
        );
        assert_eq!(
            group_node(Path::new("/dev"), 0),
            PathBuf::from("/dev/vfio/0")
        );
    }

    #[test]
    fn held_among_names_only_the_nodes_held() {
        let dir = tempfile::tempdir().unwrap();
        let held = group_node(dir.path(), 1);
        let free = group_node(dir.path(), 2);
        fs::create_dir_all(held.parent().unwrap()).unwrap();
        let _open = fs::File::create(&held).unwrap();
        drop(fs::File::create(&free).unwrap());
        let found = held_among(Path::new("/proc"), &[held.clone(), free]);
        assert_eq!(found, BTreeSet::from([held]));
        assert!(held_among(Path::new("/proc"), &[]).is_empty());
    }

    #[test]
    fn finds_this_process_holding_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let node = group_node(dir.path(), 5);
        fs::create_dir_all(node.parent().unwrap()).unwrap();
        let _open = fs::File::create(&node).unwrap();
        let found = holders_of(Path::new("/proc"), &node);
        assert!(found.contains(&me()), "{found:?}");
        assert!(!me().comm.is_empty());
    }

    #[test]
    fn finds_the_holder_through_a_symlinked_path() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("dev")).unwrap();
        let node = group_node(&dir.path().join("dev"), 3);
        fs::create_dir(real.join("vfio")).unwrap();
        let _open = fs::File::create(&node).unwrap();
        let found = holders_of(Path::new("/proc"), &node);
        assert!(found.contains(&me()), "{found:?}");
    }

    #[test]
    fn one_entry_per_process_with_several_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("7");
        let _a = fs::File::create(&node).unwrap();
        let _b = fs::File::open(&node).unwrap();
        let found = holders_of(Path::new("/proc"), &node);
        assert_eq!(
            found.iter().filter(|h| h.pid == std::process::id()).count(),
            1
        );
    }

    #[test]
    fn a_file_nobody_holds_has_no_holders() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("9");
        fs::write(&node, b"").unwrap();
        assert_eq!(holders_of(Path::new("/proc"), &node), Vec::new());
    }

    #[test]
    fn a_missing_node_has_no_holders() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            holders_of(Path::new("/proc"), &dir.path().join("vfio/1")),
            Vec::new()
        );
    }

    #[test]
    fn a_proc_root_without_processes_gives_none() {
        let proc_root = tempfile::tempdir().unwrap();
        fs::create_dir(proc_root.path().join("self")).unwrap();
        fs::create_dir(proc_root.path().join("sys")).unwrap();
        fs::write(proc_root.path().join("uptime"), b"1.0 1.0\n").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("4");
        let _open = fs::File::create(&node).unwrap();
        assert_eq!(holders_of(proc_root.path(), &node), Vec::new());
    }

    #[test]
    fn a_missing_proc_root_gives_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            holders_of(&dir.path().join("proc"), Path::new("/dev/null")),
            Vec::new()
        );
    }

    #[test]
    fn pid_names_are_all_digits() {
        assert_eq!(pid_of(OsStr::new("1234")), Some(1234));
        assert_eq!(pid_of(OsStr::new("self")), None);
        assert_eq!(pid_of(OsStr::new("")), None);
        assert_eq!(pid_of(OsStr::new("+12")), None);
        assert_eq!(pid_of(OsStr::new("99999999999")), None);
    }
}
