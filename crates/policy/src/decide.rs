//! Authorization and placement decisions: pure functions of a policy, a subject and a snapshot.
//! For a create the first allow rule (in merge order) that matches the subject, the type and the
//! parent decides, and only its limits apply; reservations then hide instances from subjects
//! they are not for; the strategy orders what is left.

use std::borrow::Borrow;
use std::cmp::{Ordering, Reverse};
use std::collections::HashMap;

use super::rules::{AllowRule, Strategy};
use super::{Action, Candidate, CreatePlan, Decision, Denial, DenialKind, Owned, Policy, Subject};
use vgpud_model::{MdevType, Parent, ParentName, TypeId};

/// The parents and devices a decision looks at, indexed once.
pub(super) struct Snapshot<'a> {
    parents: HashMap<&'a ParentName, &'a Parent>,
    devices: &'a [Owned],
}

impl<'a> Snapshot<'a> {
    pub(super) fn new<P: Borrow<Parent>>(parents: &'a [P], devices: &'a [Owned]) -> Self {
        Snapshot {
            parents: parents
                .iter()
                .map(|p| {
                    let p = p.borrow();
                    (&p.name, p)
                })
                .collect(),
            devices,
        }
    }

    /// Devices that `rule` covers: on a parent it matches, of a type it matches. A device whose
    /// type is not known yet counts; one whose parent is gone does not.
    fn in_scope<'s>(&'s self, rule: &'s AllowRule) -> impl Iterator<Item = &'a Owned> + 's {
        self.devices.iter().filter(move |d| {
            let Some(parent) = self.parents.get(&d.parent) else {
                return false;
            };
            rule.parents.matches(parent)
                && d.type_id.as_ref().is_none_or(|id| {
                    let name = parent
                        .types
                        .iter()
                        .find(|t| t.id == *id)
                        .and_then(|t| t.name.as_deref());
                    rule.types.matches_id_or_name(id.as_str(), name)
                })
        })
    }
}

/// How a type is named in messages: "GRID T4-2Q (nvidia-231)" or just the id.
fn type_label(ty: &MdevType) -> String {
    match &ty.name {
        Some(name) => format!("{name} ({})", ty.id),
        None => ty.id.to_string(),
    }
}

/// Which denial to report when no parent is possible: the one that tells the caller most.
fn rank(kind: DenialKind) -> u8 {
    match kind {
        DenialKind::PolicyDenied => 3,
        DenialKind::NoCapacity => 2,
        DenialKind::AccessDenied => 1,
        DenialKind::NotFound => 0,
    }
}

/// A candidate with what ordering needs.
struct Ranked {
    candidate: Candidate,
    numa_node: Option<i32>,
    /// 0, or 1 for root's candidates whose free instances are all reserved for others.
    tier: u8,
    /// The free count the strategy orders by.
    weight: u32,
}

impl Policy {
    /// Where `subject` may create `type_spec` (a type id or name): on `parent`, or, without
    /// one, on every permitted parent with a free instance, best first by the placement strategy
    /// (`numa_node` is the request's node, used by numa-local). `parents` is the current
    /// snapshot; `devices` are the devices that exist plus creates in flight (subtract in-flight
    /// creates from `available_instances` too). A named parent is planned even at zero free
    /// instances: the count is advisory and the kernel's answer is authoritative.
    pub fn plan_create(
        &self,
        subject: &Subject,
        type_spec: &str,
        parent: Option<&ParentName>,
        numa_node: Option<i32>,
        parents: &[impl Borrow<Parent>],
        devices: &[Owned],
    ) -> Result<CreatePlan, Denial> {
        let mut offers = offers(type_spec, parent, parents)?;
        let named = parent.is_some();
        if let (false, Strategy::NumaLocal, true, Some(node)) = (
            named,
            self.placement.strategy,
            self.placement.numa_strict,
            numa_node,
        ) {
            offers.retain(|(p, _)| p.numa_node == Some(node));
            if offers.is_empty() {
                return Err(Denial::new(
                    DenialKind::NoCapacity,
                    "",
                    format!("no parent on NUMA node {node} offers type {type_spec}"),
                ));
            }
        }
        let snapshot = Snapshot::new(parents, devices);
        let mut ranked = Vec::new();
        let mut denial: Option<Denial> = None;
        for (p, t) in offers {
            let result = if subject.is_root() {
                self.evaluate_root(subject, p, t, named)
            } else {
                self.evaluate(subject, p, t, named, &snapshot)
            };
            match result {
                Ok(r) => ranked.push(r),
                Err(d) => {
                    if denial
                        .as_ref()
                        .is_none_or(|best| rank(d.kind) > rank(best.kind))
                    {
                        denial = Some(d);
                    }
                }
            }
        }
        if ranked.is_empty() {
            return Err(denial.unwrap_or_else(|| {
                Denial::new(
                    DenialKind::NotFound,
                    "",
                    format!("no parent offers a type with id or name {type_spec:?}"),
                )
            }));
        }
        let strategy = self.placement.strategy;
        ranked.sort_by(|a, b| order(strategy, numa_node, a, b));
        Ok(CreatePlan {
            candidates: ranked.into_iter().map(|r| r.candidate).collect(),
        })
    }

    /// Root is always allowed and limits do not apply; reservations only push the parents they
    /// would hide to the end, so automatic placement keeps them free when it can.
    fn evaluate_root(
        &self,
        subject: &Subject,
        parent: &Parent,
        ty: &MdevType,
        named: bool,
    ) -> Result<Ranked, Denial> {
        let raw = ty.available_instances;
        if raw == 0 && !named {
            return Err(no_free(parent, ty));
        }
        let visible = raw.saturating_sub(self.hidden(subject, parent).0);
        let tier = u8::from(visible == 0);
        Ok(Ranked {
            candidate: Candidate {
                parent: parent.name.clone(),
                type_id: ty.id.clone(),
                free: raw,
                rule: "root".into(),
            },
            numa_node: parent.numa_node,
            tier,
            weight: if tier == 0 { visible } else { raw },
        })
    }

    fn evaluate(
        &self,
        subject: &Subject,
        parent: &Parent,
        ty: &MdevType,
        named: bool,
        snapshot: &Snapshot<'_>,
    ) -> Result<Ranked, Denial> {
        let rule = self
            .allow
            .iter()
            .find(|r| r.who.matches(subject) && r.types.matches(ty) && r.parents.matches(parent))
            .ok_or_else(|| {
                Denial::new(
                    DenialKind::AccessDenied,
                    "default",
                    format!(
                        "no policy rule lets {} create type {} on parent {}",
                        subject.describe(),
                        type_label(ty),
                        parent.name
                    ),
                )
            })?;
        check_limits(rule, subject, parent, snapshot)?;
        let raw = ty.available_instances;
        if raw == 0 && !named {
            return Err(no_free(parent, ty));
        }
        let (hidden, reservation) = self.hidden(subject, parent);
        let free = raw.saturating_sub(hidden);
        if free == 0 && raw > 0 {
            return Err(Denial::new(
                DenialKind::PolicyDenied,
                reservation.unwrap_or_default(),
                format!(
                    "the {raw} free instances of type {} on parent {} are reserved for others",
                    type_label(ty),
                    parent.name
                ),
            ));
        }
        Ok(Ranked {
            candidate: Candidate {
                parent: parent.name.clone(),
                type_id: ty.id.clone(),
                free,
                rule: rule.name.clone(),
            },
            numa_node: parent.numa_node,
            tier: 0,
            weight: free,
        })
    }

    /// What `subject` may still create of `ty` on `parent`, for `capacity`: the rule that allows
    /// it ("root" for root), the free instances there (after reservations and the rule's
    /// per-parent limit), and the rule's remaining per-user and per-group quota. None when no
    /// rule allows it or a limit is already reached.
    pub(super) fn share(
        &self,
        subject: &Subject,
        parent: &Parent,
        ty: &MdevType,
        snapshot: &Snapshot<'_>,
    ) -> Option<(String, u32, u32)> {
        if subject.is_root() {
            return Some(("root".into(), ty.available_instances, u32::MAX));
        }
        let rule = self
            .allow
            .iter()
            .find(|r| r.who.matches(subject) && r.types.matches(ty) && r.parents.matches(parent))?;
        check_limits(rule, subject, parent, snapshot).ok()?;
        let left = |max: Option<u32>, count: usize| {
            max.map_or(u32::MAX, |m| m.saturating_sub(count as u32))
        };
        let on_parent = snapshot
            .in_scope(rule)
            .filter(|d| d.parent == parent.name)
            .count();
        let free = ty
            .available_instances
            .saturating_sub(self.hidden(subject, parent).0)
            .min(left(rule.max_per_parent, on_parent));
        let mine = snapshot
            .in_scope(rule)
            .filter(|d| d.owner_uid == Some(subject.uid))
            .count();
        let mut quota = left(rule.max_per_user, mine);
        for group in rule.who.shared_groups(&subject.groups) {
            let theirs = snapshot
                .in_scope(rule)
                .filter(|d| d.owner_groups.contains(group))
                .count();
            quota = quota.min(left(rule.max_per_group, theirs));
        }
        Some((rule.name.clone(), free, quota))
    }

    /// Instances of `parent` that reservations keep from `subject`, and the first such
    /// reservation's name.
    fn hidden(&self, subject: &Subject, parent: &Parent) -> (u32, Option<String>) {
        let mut total = 0u32;
        let mut first = None;
        for r in &self.reserve {
            if r.parents.matches(parent) && !r.who.matches(subject) {
                total = total.saturating_add(r.instances);
                first.get_or_insert_with(|| r.name.clone());
            }
        }
        (total, first)
    }

    /// May `subject` do `action`? For a device, pass its parent, type and owner; for a create,
    /// the parent and type if known (limits and capacity are `plan_create`'s job).
    /// Root is always allowed; the owner of a device may remove it, manage its definition and
    /// launch a guest with it; otherwise an allow rule whose subjects, parents and types cover
    /// the target allows it. Reloading the policy is left to polkit alone.
    pub fn decide(
        &self,
        subject: &Subject,
        action: Action,
        parent: Option<&Parent>,
        type_id: Option<&TypeId>,
        owner_uid: Option<u32>,
    ) -> Decision {
        if subject.is_root() {
            return Decision::Allow {
                rule: "root".into(),
            };
        }
        if action == Action::ReloadPolicy {
            return Decision::Allow {
                rule: "polkit".into(),
            };
        }
        if action != Action::CreateDevice && owner_uid == Some(subject.uid) {
            return Decision::Allow {
                rule: "owner".into(),
            };
        }
        // An existing device on an unknown parent is covered by no rule.
        if action != Action::CreateDevice && parent.is_none() {
            return deny_default(subject, action, None);
        }
        let covering = self.allow.iter().find(|r| {
            r.who.matches(subject)
                && parent.is_none_or(|p| r.parents.matches(p))
                && type_id.is_none_or(|id| {
                    let name = parent
                        .and_then(|p| p.types.iter().find(|t| t.id == *id))
                        .and_then(|t| t.name.as_deref());
                    r.types.matches_id_or_name(id.as_str(), name)
                })
        });
        match covering {
            Some(rule) => Decision::Allow {
                rule: rule.name.clone(),
            },
            None => deny_default(subject, action, parent),
        }
    }
}

fn deny_default(subject: &Subject, action: Action, parent: Option<&Parent>) -> Decision {
    let on = parent
        .map(|p| format!(" on parent {}", p.name))
        .unwrap_or_default();
    Decision::Deny {
        rule: "default".into(),
        reason: format!(
            "no policy rule lets {} {}{on}",
            subject.describe(),
            action.verb()
        ),
    }
}

fn no_free(parent: &Parent, ty: &MdevType) -> Denial {
    Denial::new(
        DenialKind::NoCapacity,
        "",
        format!(
            "parent {} has no free instance of type {}",
            parent.name,
            type_label(ty)
        ),
    )
}

/// The (parent, type) pairs offering `type_spec`, by parent name; NotFound when there are none.
fn offers<'a, P: Borrow<Parent>>(
    type_spec: &str,
    parent: Option<&ParentName>,
    parents: &'a [P],
) -> Result<Vec<(&'a Parent, &'a MdevType)>, Denial> {
    let mut parents = parents.iter().map(|p| p.borrow());
    if let Some(name) = parent {
        let p = parents.find(|p| p.name == *name).ok_or_else(|| {
            Denial::new(
                DenialKind::NotFound,
                "",
                format!("no parent device named {name}"),
            )
        })?;
        let t = p
            .types
            .iter()
            .find(|t| t.matches(type_spec))
            .ok_or_else(|| {
                Denial::new(
                    DenialKind::NotFound,
                    "",
                    format!("parent {name} has no type with id or name {type_spec:?}"),
                )
            })?;
        return Ok(vec![(p, t)]);
    }
    let mut found: Vec<(&Parent, &MdevType)> = parents
        .flat_map(|p| {
            p.types
                .iter()
                .filter(|t| t.matches(type_spec))
                .map(move |t| (p, t))
        })
        .collect();
    found.sort_by(|a, b| (&a.0.name, &a.1.id).cmp(&(&b.0.name, &b.1.id)));
    if found.is_empty() {
        return Err(Denial::new(
            DenialKind::NotFound,
            "",
            format!("no parent offers a type with id or name {type_spec:?}"),
        ));
    }
    Ok(found)
}

/// The rule's limits, each counted over the devices the rule covers.
fn check_limits(
    rule: &AllowRule,
    subject: &Subject,
    parent: &Parent,
    snapshot: &Snapshot<'_>,
) -> Result<(), Denial> {
    let limited = |count: usize, max: u32, who: String, per: &str| {
        Denial::new(
            DenialKind::PolicyDenied,
            rule.name.clone(),
            format!(
                "{who} already has {count} devices under rule {:?}, which allows at most {max} per {per}",
                rule.name
            ),
        )
    };
    if let Some(max) = rule.max_per_user {
        let count = snapshot
            .in_scope(rule)
            .filter(|d| d.owner_uid == Some(subject.uid))
            .count();
        if count >= max as usize {
            return Err(limited(count, max, subject.describe(), "user"));
        }
    }
    if let Some(max) = rule.max_per_group {
        for group in rule.who.shared_groups(&subject.groups) {
            let count = snapshot
                .in_scope(rule)
                .filter(|d| d.owner_groups.contains(group))
                .count();
            if count >= max as usize {
                return Err(limited(count, max, format!("group {group}"), "group"));
            }
        }
    }
    if let Some(max) = rule.max_per_parent {
        let count = snapshot
            .in_scope(rule)
            .filter(|d| d.parent == parent.name)
            .count();
        if count >= max as usize {
            return Err(limited(
                count,
                max,
                format!("parent {}", parent.name),
                "parent",
            ));
        }
    }
    Ok(())
}

/// Best candidate first: by tier, then (numa-local) on the requested node, then by the
/// strategy's free-instance order, then by parent name so the choice is reproducible.
fn order(strategy: Strategy, numa_node: Option<i32>, a: &Ranked, b: &Ranked) -> Ordering {
    let remote = |r: &Ranked| match (strategy, numa_node) {
        (Strategy::NumaLocal, Some(node)) => r.numa_node != Some(node),
        _ => false,
    };
    let by_free = match strategy {
        Strategy::Pack => a.weight.cmp(&b.weight),
        Strategy::Spread | Strategy::NumaLocal => Reverse(a.weight).cmp(&Reverse(b.weight)),
    };
    a.tier
        .cmp(&b.tier)
        .then(remote(a).cmp(&remote(b)))
        .then(by_free)
        .then_with(|| a.candidate.parent.cmp(&b.candidate.parent))
        .then_with(|| a.candidate.type_id.cmp(&b.candidate.type_id))
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
