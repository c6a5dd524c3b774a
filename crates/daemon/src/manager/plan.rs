//! What the ensure rules would do on this host now, without doing it (`vgpuctl plan`), and the
//! devices that stand in the way where a parent's capacity is held by other types (a one-type
//! GPU serving another type, a shared pool): what a reshape would have to drain.

use std::collections::BTreeMap;

use super::state::Manager;
use vgpud_model::{MdevUuid, ParentName, TypeId};
use vgpud_policy::{EnsureAction, EnsureCount};

/// One line of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanStep {
    pub rule: String,
    pub parent: ParentName,
    /// "create" (count devices of type_id), "no-type" (the parent offers no such type) or
    /// "no-room" (count more do not fit).
    pub action: &'static str,
    /// The type id, or for "no-type" the rule's type as written.
    pub type_spec: String,
    pub count: u32,
    /// For "no-room": live devices of other types on the parent, which hold its capacity.
    pub in_the_way: Vec<MdevUuid>,
}

impl Manager {
    /// The ensure rules' plan for every present parent, counting live devices and creates in
    /// flight, as `converge_appeared` would act on it.
    pub(super) fn plan(&self) -> Vec<PlanStep> {
        let parents: Vec<_> = self.parents.values().cloned().collect();
        let steps = self.policy.ensure_plan(&parents, &self.ensure_counts());
        steps
            .into_iter()
            .map(|s| {
                let (action, type_spec, count, in_the_way) = match s.action {
                    EnsureAction::Create { type_id, count } => {
                        ("create", type_id.to_string(), count, Vec::new())
                    }
                    EnsureAction::TypeAbsent { type_spec } => ("no-type", type_spec, 0, Vec::new()),
                    EnsureAction::NoCapacity { type_id, missing } => {
                        let others = self.others_on(&s.parent, &type_id);
                        ("no-room", type_id.to_string(), missing, others)
                    }
                };
                PlanStep {
                    rule: s.rule,
                    parent: s.parent,
                    action,
                    type_spec,
                    count,
                    in_the_way,
                }
            })
            .collect()
    }

    /// Devices per (parent, type) that ensure rules count: live ones and creates in flight.
    pub(super) fn ensure_counts(&self) -> Vec<EnsureCount> {
        let mut counts: BTreeMap<(ParentName, TypeId), u32> = BTreeMap::new();
        for d in self.live.values() {
            if let Some(t) = &d.type_id {
                *counts.entry((d.parent.clone(), t.clone())).or_default() += 1;
            }
        }
        for p in self.pending.values() {
            if !p.uuid.is_some_and(|u| self.live.contains_key(&u)) {
                *counts
                    .entry((p.parent.clone(), p.type_id.clone()))
                    .or_default() += 1;
            }
        }
        counts
            .into_iter()
            .map(|((parent, type_id), count)| EnsureCount {
                parent,
                type_id,
                count,
            })
            .collect()
    }

    /// Live devices of a type other than `type_id` on the physical GPU of `parent` (every VF
    /// of an SR-IOV GPU), in UUID order.
    pub(super) fn others_on(&self, parent: &ParentName, type_id: &TypeId) -> Vec<MdevUuid> {
        let gpu_of = |name: &ParentName| {
            self.parents
                .get(name)
                .map_or_else(|| name.clone(), |p| p.physical_gpu().clone())
        };
        let gpu = gpu_of(parent);
        self.live
            .values()
            .filter(|d| gpu_of(&d.parent) == gpu && d.type_id.as_ref() != Some(type_id))
            .map(|d| d.uuid)
            .collect()
    }
}
