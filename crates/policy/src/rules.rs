//! The validated rules of a policy and how each one matches subjects, types and parents.
//! Built only by `parse`; every value here has already been checked.

use std::fmt;
use std::path::PathBuf;

use super::glob::Glob;
use super::Subject;
use vgpud_model::{MdevType, Parent};

/// Where a rule or setting was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// How requests that name no parent are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Most free instances first: spread load over the parents.
    #[default]
    Spread,
    /// Fewest free instances (but some) first: fill one parent before the next.
    Pack,
    /// Parents on the requested NUMA node first, then the rest; each group by spread.
    NumaLocal,
}

impl Strategy {
    pub const NAMES: [&'static str; 3] = ["spread", "pack", "numa-local"];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Spread => "spread",
            Strategy::Pack => "pack",
            Strategy::NumaLocal => "numa-local",
        }
    }

    pub fn parse(s: &str) -> Option<Strategy> {
        match s {
            "spread" => Some(Strategy::Spread),
            "pack" => Some(Strategy::Pack),
            "numa-local" => Some(Strategy::NumaLocal),
            _ => None,
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user entry: a name, a uid, or everyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UserRef {
    Anyone,
    Uid(u32),
    Name(String),
}

/// The subjects a rule is about: any listed user, or any member of a listed group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Who {
    pub users: Vec<UserRef>,
    pub groups: Vec<String>,
}

impl Who {
    pub fn matches(&self, subject: &Subject) -> bool {
        self.matches_user(subject) || self.groups.iter().any(|g| subject.groups.contains(g))
    }

    fn matches_user(&self, subject: &Subject) -> bool {
        self.users.iter().any(|u| match u {
            UserRef::Anyone => true,
            UserRef::Uid(uid) => *uid == subject.uid,
            UserRef::Name(name) => subject.user.as_deref() == Some(name.as_str()),
        })
    }

    /// The rule's groups that `groups` (a subject's or an owner's) includes.
    pub fn shared_groups<'a>(&'a self, groups: &'a [String]) -> impl Iterator<Item = &'a String> {
        self.groups.iter().filter(|g| groups.contains(g))
    }
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let users: Vec<String> = self
            .users
            .iter()
            .map(|u| match u {
                UserRef::Anyone => "everyone".to_owned(),
                UserRef::Uid(uid) => format!("uid {uid}"),
                UserRef::Name(n) => n.clone(),
            })
            .collect();
        let mut parts = Vec::new();
        if !users.is_empty() {
            parts.push(format!("users {}", users.join(", ")));
        }
        if !self.groups.is_empty() {
            parts.push(format!("groups {}", self.groups.join(", ")));
        }
        f.write_str(&parts.join(" or "))
    }
}

/// Which parents a rule covers; every condition given must hold. Empty = every parent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ParentMatch {
    pub vendor: Option<u16>,
    pub device: Option<u16>,
    pub driver: Option<Glob>,
    /// Matched against the parent's sysfs name, which is its PCI address for PCI parents.
    pub address: Option<Glob>,
}

impl ParentMatch {
    pub fn matches(&self, parent: &Parent) -> bool {
        let pci = parent.pci.as_ref();
        self.vendor
            .is_none_or(|v| pci.is_some_and(|id| id.vendor == v))
            && self
                .device
                .is_none_or(|d| pci.is_some_and(|id| id.device == d))
            && self
                .driver
                .as_ref()
                .is_none_or(|g| parent.driver.as_deref().is_some_and(|drv| g.matches(drv)))
            && self
                .address
                .as_ref()
                .is_none_or(|g| g.matches(parent.name.as_str()))
    }
}

impl fmt::Display for ParentMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(v) = self.vendor {
            parts.push(format!("vendor=0x{v:04x}"));
        }
        if let Some(d) = self.device {
            parts.push(format!("device=0x{d:04x}"));
        }
        if let Some(g) = &self.driver {
            parts.push(format!("driver={g}"));
        }
        if let Some(g) = &self.address {
            parts.push(format!("address={g}"));
        }
        if parts.is_empty() {
            f.write_str("all parents")
        } else {
            f.write_str(&parts.join(" "))
        }
    }
}

/// Type globs, each matched against a type's id and its name. `None` = every type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TypeMatch(pub Option<Vec<Glob>>);

impl TypeMatch {
    pub fn matches(&self, ty: &MdevType) -> bool {
        self.matches_id_or_name(ty.id.as_str(), ty.name.as_deref())
    }

    pub fn matches_id_or_name(&self, id: &str, name: Option<&str>) -> bool {
        match &self.0 {
            None => true,
            Some(globs) => globs
                .iter()
                .any(|g| g.matches(id) || name.is_some_and(|n| g.matches(n))),
        }
    }
}

impl fmt::Display for TypeMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("all types"),
            Some(globs) => {
                let quoted: Vec<String> =
                    globs.iter().map(|g| format!("{:?}", g.as_str())).collect();
                write!(f, "types {}", quoted.join(", "))
            }
        }
    }
}

/// `[[allow]]`: who may create which types on which parents, within which limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AllowRule {
    pub name: String,
    pub origin: Origin,
    pub who: Who,
    pub types: TypeMatch,
    pub parents: ParentMatch,
    pub max_per_user: Option<u32>,
    pub max_per_group: Option<u32>,
    pub max_per_parent: Option<u32>,
}

/// `[[reserve]]`: keep `instances` of every matching parent free for `who`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReserveRule {
    pub name: String,
    pub origin: Origin,
    pub who: Who,
    pub parents: ParentMatch,
    pub instances: u32,
}

/// `[[ensure]]`: `count` devices of `type_spec` (an exact id or name) on every matching parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnsureRule {
    pub name: String,
    pub origin: Origin,
    pub parents: ParentMatch,
    pub type_spec: String,
    pub count: u32,
}

/// NVIDIA's vGPU scheduler for time-sliced vGPUs, as its `RmPVMRL` registry key encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerPolicy {
    BestEffort,
    EqualShare,
    FixedShare,
}

impl SchedulerPolicy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "best-effort" => Some(Self::BestEffort),
            "equal-share" => Some(Self::EqualShare),
            "fixed-share" => Some(Self::FixedShare),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BestEffort => "best-effort",
            Self::EqualShare => "equal-share",
            Self::FixedShare => "fixed-share",
        }
    }

    /// The `RmPVMRL` value: 0x00 best effort; 0x01 equal share and 0x11 fixed share, with a
    /// time slice of TT milliseconds as 0x00TT0001 / 0x00TT0011 (NVIDIA's vGPU documentation).
    pub fn rmpvmrl(self, time_slice_ms: Option<u8>) -> u32 {
        let base = match self {
            Self::BestEffort => return 0,
            Self::EqualShare => 0x01,
            Self::FixedShare => 0x11,
        };
        base | time_slice_ms.map_or(0, |ms| u32::from(ms) << 16)
    }
}

/// `[[scheduler]]`: the vGPU scheduler of the GPUs a parent selector picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SchedulerRule {
    pub name: String,
    pub origin: Origin,
    pub parents: ParentMatch,
    pub policy: SchedulerPolicy,
    /// 1..=30 ms; None = the driver's default slice.
    pub time_slice_ms: Option<u8>,
}
