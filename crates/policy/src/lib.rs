//! The device policy: who may create which types on which parents, limits, reservations,
//! placement and desired state, read from TOML files in <config-dir>/policy.d.
//! Decisions are pure: a request plus a snapshot of parents and devices in, a plan or a denial
//! out. Only `load_dir` and `check_files` touch the file system. The file format is documented
//! in policies/default.toml and the examples beside it.

mod capacity;
mod decide;
mod ensure;
mod glob;
mod load;
mod parse;
mod rules;

/// Parents modelled on real GPUs, subjects and policies from text, for tests here and for the
/// proof suite's policy fuzzing (feature `fixtures`).
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
#[cfg(test)]
mod shipped_tests;

use std::fmt;
use std::path::PathBuf;

use vgpud_model::{MdevUuid, Parent, ParentName, TypeId};

pub use capacity::{CapacityFilter, ParentCapacity, TypeCapacity};
pub use ensure::{EnsureAction, EnsureCount, EnsureStep};
pub use glob::Glob;
pub use load::{check_files, load_dir, merge};
pub use parse::{parse_file, Diagnostic, PolicyFile};
pub use rules::{SchedulerPolicy, Strategy};

use rules::{AllowRule, EnsureRule, ReserveRule};

/// The caller of a request, resolved to names by the front end (from the D-Bus credentials).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subject {
    pub uid: u32,
    /// The user name, if the uid has one.
    pub user: Option<String>,
    /// Names of all groups the caller is in, primary and supplementary.
    pub groups: Vec<String>,
}

impl Subject {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// How denials name the subject: "user alice" or "uid 1001".
    fn describe(&self) -> String {
        match &self.user {
            Some(name) => format!("user {name}"),
            None => format!("uid {}", self.uid),
        }
    }
}

/// Something a caller asks to do that needs authorization (reading needs none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    CreateDevice,
    RemoveDevice,
    ManageDefinitions,
    LaunchGuest,
    ReloadPolicy,
}

impl Action {
    pub const ALL: [Action; 5] = [
        Action::CreateDevice,
        Action::RemoveDevice,
        Action::ManageDefinitions,
        Action::LaunchGuest,
        Action::ReloadPolicy,
    ];

    /// The polkit action id, as declared in policies/org.vgpud.policy.
    pub fn polkit_id(self) -> &'static str {
        match self {
            Action::CreateDevice => "org.vgpud.create-device",
            Action::RemoveDevice => "org.vgpud.remove-device",
            Action::ManageDefinitions => "org.vgpud.manage-definitions",
            Action::LaunchGuest => "org.vgpud.launch-guest",
            Action::ReloadPolicy => "org.vgpud.reload-policy",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Action::CreateDevice => "create devices",
            Action::RemoveDevice => "remove this device",
            Action::ManageDefinitions => "manage this definition",
            Action::LaunchGuest => "launch a guest with this device",
            Action::ReloadPolicy => "reload the policy",
        }
    }
}

/// A device that exists (or a create in flight), with who owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub uuid: MdevUuid,
    pub parent: ParentName,
    /// `None` while the kernel has not linked the type yet; such a device counts against every
    /// rule covering its parent.
    pub type_id: Option<TypeId>,
    /// `None` for devices vgpud did not create (found at start, made by mdevctl).
    pub owner_uid: Option<u32>,
    /// The owner's group names when it created the device (recorded with the owner), so
    /// `max_per_group` counts without asking the user database at decision time.
    pub owner_groups: Vec<String>,
}

/// The answer to `Policy::decide`. A `Deny` always maps to org.vgpud1.Error.AccessDenied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `rule` is the allow rule that granted it, or "root", "owner", "polkit" (the policy
    /// leaves the action to polkit alone).
    Allow { rule: String },
    /// `rule` is "default" (nothing allowed it).
    Deny { rule: String, reason: String },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// Why a create cannot go ahead, in the categories the D-Bus errors distinguish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenialKind {
    /// No rule lets the subject do this (org.vgpud1.Error.AccessDenied, rule "default").
    AccessDenied,
    /// A rule allows it but one of its limits, or a reservation, stops it
    /// (org.vgpud1.Error.PolicyDenied, rule = that rule's name).
    PolicyDenied,
    /// The named parent does not exist, or no parent offers the type (NotFound, rule "").
    NotFound,
    /// Allowed, but no permitted parent has a free instance (NoCapacity, rule "").
    NoCapacity,
}

/// A create that the policy refuses or cannot place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub kind: DenialKind,
    /// The rule that denied: a rule name, "default", or "" for NotFound and NoCapacity.
    pub rule: String,
    /// A sentence for the caller.
    pub reason: String,
}

impl Denial {
    fn new(kind: DenialKind, rule: impl Into<String>, reason: impl Into<String>) -> Self {
        Denial {
            kind,
            rule: rule.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            DenialKind::AccessDenied | DenialKind::PolicyDenied => {
                write!(f, "{} (policy rule {:?})", self.reason, self.rule)
            }
            DenialKind::NotFound | DenialKind::NoCapacity => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for Denial {}

/// One place a create may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub parent: ParentName,
    pub type_id: TypeId,
    /// Free instances this subject may use there (after reservations; advisory).
    pub free: u32,
    /// The allow rule that permits this placement ("root" for uid 0): record it with the owner.
    pub rule: String,
}

/// Where a create may go, best first: try each in turn until the kernel accepts one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatePlan {
    pub candidates: Vec<Candidate>,
}

/// `[placement]`, merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Placement {
    pub strategy: Strategy,
    /// With numa-local: never fall back to parents on other nodes.
    pub numa_strict: bool,
}

/// A merged, validated policy. `Default` is the built-in policy: only root may create,
/// placement by spread.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    placement: Placement,
    allow: Vec<AllowRule>,
    reserve: Vec<ReserveRule>,
    ensure: Vec<EnsureRule>,
    scheduler: Vec<rules::SchedulerRule>,
    sources: Vec<PathBuf>,
}

impl Policy {
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// The vGPU scheduler the first matching `[[scheduler]]` rule gives `parent`: (rule name,
    /// policy, time slice in ms).
    pub fn scheduler_for(&self, parent: &Parent) -> Option<(&str, SchedulerPolicy, Option<u8>)> {
        self.scheduler
            .iter()
            .find(|r| r.parents.matches(parent))
            .map(|r| (r.name.as_str(), r.policy, r.time_slice_ms))
    }

    /// The files this policy was merged from, in merge order (empty for the built-in default).
    pub fn sources(&self) -> &[PathBuf] {
        &self.sources
    }

    /// Every rule name, allow rules first, each kind in merge order.
    pub fn rule_names(&self) -> Vec<&str> {
        let allow = self.allow.iter().map(|r| r.name.as_str());
        let reserve = self.reserve.iter().map(|r| r.name.as_str());
        let ensure = self.ensure.iter().map(|r| r.name.as_str());
        allow.chain(reserve).chain(ensure).collect()
    }

    /// A few lines describing the policy, for the log and `vgpud check-policy`.
    pub fn summary(&self) -> String {
        let mut out = Vec::new();
        if self.sources.is_empty() {
            out.push("built-in default policy".to_owned());
        } else {
            let files: Vec<String> = self
                .sources
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            out.push(format!("policy from {}", files.join(", ")));
        }
        let strict = if self.placement.numa_strict {
            " (strict)"
        } else {
            ""
        };
        out.push(format!("placement: {}{strict}", self.placement.strategy));
        if self.allow.is_empty() {
            out.push("only root may create devices".to_owned());
        }
        for r in &self.allow {
            let mut limits = Vec::new();
            for (what, v) in [
                ("per user", r.max_per_user),
                ("per group", r.max_per_group),
                ("per parent", r.max_per_parent),
            ] {
                if let Some(v) = v {
                    limits.push(format!("at most {v} {what}"));
                }
            }
            let limits = if limits.is_empty() {
                String::new()
            } else {
                format!("; {}", limits.join(", "))
            };
            out.push(format!(
                "allow {:?}: {} may create {} on {}{limits}",
                r.name, r.who, r.types, r.parents
            ));
        }
        for r in &self.reserve {
            out.push(format!(
                "reserve {:?}: {} instance{} on {} kept for {}",
                r.name,
                r.instances,
                if r.instances == 1 { "" } else { "s" },
                r.parents,
                r.who
            ));
        }
        for r in &self.ensure {
            out.push(format!(
                "ensure {:?}: {} x {:?} on {}",
                r.name, r.count, r.type_spec, r.parents
            ));
        }
        out.join("\n")
    }
}
