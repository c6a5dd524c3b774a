//! The FUSE inode numbers of the simulated tree: a path's number is a hash of it, so the same
//! path keeps its number while the kernel holds it, and the table maps numbers back to paths.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

pub fn path_ino(path: &str) -> u64 {
    if path.is_empty() {
        return 1;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    (h.finish() >> 1).max(2)
}

pub fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

/// The paths the kernel holds inodes of, with its lookup count of each.
pub struct Inodes(Mutex<HashMap<u64, (String, u64)>>);

impl Default for Inodes {
    fn default() -> Self {
        Self(Mutex::new(HashMap::from([(1, (String::new(), 1))])))
    }
}

impl Inodes {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, (String, u64)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn path_of(&self, ino: u64) -> Option<String> {
        self.lock().get(&ino).map(|(p, _)| p.clone())
    }

    /// The inode the kernel holds for `path`, if any.
    pub fn ino_of(&self, path: &str) -> Option<u64> {
        let paths = self.lock();
        let mut ino = path_ino(path);
        loop {
            match paths.get(&ino) {
                Some((p, _)) if p == path => return Some(ino),
                Some(_) => ino = ino.wrapping_add(1).max(2),
                None => return None,
            }
        }
    }

    /// Gives `path` an inode number and counts one kernel lookup of it.
    pub fn remember(&self, path: &str) -> u64 {
        let mut paths = self.lock();
        let mut ino = path_ino(path);
        loop {
            match paths.get_mut(&ino) {
                Some((p, n)) if p == path => {
                    *n += 1;
                    return ino;
                }
                Some(_) => ino = ino.wrapping_add(1).max(2),
                None => {
                    paths.insert(ino, (path.to_owned(), 1));
                    return ino;
                }
            }
        }
    }

    /// Counts `nlookup` kernel references of `ino` as dropped.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        if ino == 1 {
            return;
        }
        let mut paths = self.lock();
        if let Some((_, n)) = paths.get_mut(&ino) {
            *n = n.saturating_sub(nlookup);
            if *n == 0 {
                paths.remove(&ino);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_keeps_its_number_until_the_kernel_forgets_every_lookup() {
        let inodes = Inodes::default();
        let a = inodes.remember("class/mdev_bus");
        assert_eq!(inodes.remember("class/mdev_bus"), a);
        assert_eq!(inodes.ino_of("class/mdev_bus"), Some(a));
        assert_eq!(inodes.path_of(a).as_deref(), Some("class/mdev_bus"));
        inodes.forget(a, 1);
        assert_eq!(inodes.ino_of("class/mdev_bus"), Some(a));
        inodes.forget(a, 1);
        assert_eq!(inodes.ino_of("class/mdev_bus"), None);
        assert_eq!(inodes.path_of(a), None);
    }

    #[test]
    fn the_root_is_never_forgotten() {
        let inodes = Inodes::default();
        inodes.forget(1, 5);
        assert_eq!(inodes.path_of(1).as_deref(), Some(""));
        assert_eq!(inodes.ino_of(""), Some(1));
    }
}
