//! How many more devices of each type a subject could create now, host-wide: the parents' own
//! counts (which already reflect shared pools and one-type GPUs), less what reservations keep
//! for others, capped by the subject's limits. Pure: the same inputs `plan_create` takes, so the
//! answer agrees with what a create would then do.

use std::collections::BTreeMap;

use super::decide::Snapshot;
use super::{Owned, Policy, Subject};
use vgpud_model::{Parent, ParentName, TypeId};

/// Which types and parents to count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapacityFilter {
    /// A type id or name; None = every type.
    pub type_spec: Option<String>,
    pub parent: Option<ParentName>,
    pub numa_node: Option<i32>,
}

/// One parent's share of a type's capacity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentCapacity {
    pub parent: ParentName,
    pub type_id: TypeId,
    pub numa_node: Option<i32>,
    /// Creatable there by this subject now (after reservations and per-parent limits).
    pub free: u32,
}

/// A type (by name where it has one, else by id) across the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeCapacity {
    pub type_name: String,
    /// Creatable by this subject now across `parents`, after its per-user and per-group limits
    /// (so it can be less than the sum of the parents' shares).
    pub total: u32,
    pub parents: Vec<ParentCapacity>,
}

impl Policy {
    /// Per type, how many more `subject` may create now, on which parents. Types the subject
    /// may not create at all are left out; so are parents with nothing free for it.
    pub fn capacity(
        &self,
        subject: &Subject,
        parents: &[impl std::borrow::Borrow<Parent>],
        devices: &[Owned],
        filter: &CapacityFilter,
    ) -> Vec<TypeCapacity> {
        let snapshot = Snapshot::new(parents, devices);
        // type label -> rule name -> (shares, the rule's remaining per-user/group quota)
        let mut by_type: BTreeMap<String, BTreeMap<String, (Vec<ParentCapacity>, u32)>> =
            BTreeMap::new();
        for p in parents.iter().map(|p| p.borrow()) {
            if filter.parent.as_ref().is_some_and(|f| *f != p.name)
                || filter.numa_node.is_some_and(|n| p.numa_node != Some(n))
            {
                continue;
            }
            for t in &p.types {
                if filter.type_spec.as_ref().is_some_and(|s| !t.matches(s)) {
                    continue;
                }
                let Some((rule, free, quota)) = self.share(subject, p, t, &snapshot) else {
                    continue;
                };
                if free == 0 {
                    continue;
                }
                let label = t.name.clone().unwrap_or_else(|| t.id.to_string());
                let entry = by_type
                    .entry(label)
                    .or_default()
                    .entry(rule)
                    .or_insert((Vec::new(), quota));
                entry.0.push(ParentCapacity {
                    parent: p.name.clone(),
                    type_id: t.id.clone(),
                    numa_node: p.numa_node,
                    free,
                });
            }
        }
        by_type
            .into_iter()
            .map(|(type_name, rules)| {
                let mut total = 0u32;
                let mut shares = Vec::new();
                for (_, (parents, quota)) in rules {
                    let sum: u32 = parents.iter().map(|s| s.free).sum();
                    total = total.saturating_add(sum.min(quota));
                    shares.extend(parents);
                }
                shares.sort_by(|a, b| a.parent.cmp(&b.parent));
                TypeCapacity {
                    type_name,
                    total,
                    parents: shares,
                }
            })
            .filter(|c| c.total > 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    const LAB: &str = r#"
[[allow]]
name = "lab"
groups = ["lab"]
types = ["GRID T4-*Q"]
max_per_user = 2
"#;

    fn totals(caps: &[TypeCapacity]) -> Vec<(&str, u32)> {
        caps.iter()
            .map(|c| (c.type_name.as_str(), c.total))
            .collect()
    }

    fn only(type_spec: &str) -> CapacityFilter {
        CapacityFilter {
            type_spec: Some(type_spec.into()),
            ..Default::default()
        }
    }

    #[test]
    fn root_sees_every_free_instance_by_type_name() {
        let mut b = t4("0000:21:00.0", 8);
        b.numa_node = Some(1);
        let parents = [t4("0000:20:00.0", 8), b];
        let caps = Policy::default().capacity(&root(), &parents, &[], &CapacityFilter::default());
        assert_eq!(
            totals(&caps),
            [("GRID T4-1B", 32), ("GRID T4-2Q", 16), ("GRID T4-4Q", 8)]
        );
        let q2 = &caps[1];
        assert_eq!(q2.parents.len(), 2);
        assert_eq!(q2.parents[1].numa_node, Some(1));
    }

    #[test]
    fn a_user_without_a_rule_gets_nothing() {
        let parents = [t4("0000:20:00.0", 8)];
        let caps = Policy::default().capacity(&alice(), &parents, &[], &CapacityFilter::default());
        assert!(caps.is_empty(), "{caps:?}");
    }

    #[test]
    fn the_per_user_limit_caps_the_total_across_parents() {
        let lab = policy(LAB);
        let parents = [t4("0000:20:00.0", 8), t4("0000:21:00.0", 8)];
        let caps = lab.capacity(&alice(), &parents, &[], &only("GRID T4-2Q"));
        assert_eq!(totals(&caps), [("GRID T4-2Q", 2)]);
        assert_eq!(caps[0].parents.len(), 2, "both parents have room");
        let one = owned("0000:20:00.0", "nvidia-231", Some(&alice()));
        let caps = lab.capacity(
            &alice(),
            &parents,
            std::slice::from_ref(&one),
            &only("GRID T4-2Q"),
        );
        assert_eq!(totals(&caps), [("GRID T4-2Q", 1)]);
        let two = owned("0000:21:00.0", "nvidia-231", Some(&alice()));
        assert!(lab
            .capacity(
                &alice(),
                &parents,
                &[one.clone(), two.clone()],
                &only("GRID T4-2Q")
            )
            .is_empty());
        // Bob's quota is his own.
        let caps = lab.capacity(&bob(), &parents, &[one, two], &only("GRID T4-2Q"));
        assert_eq!(totals(&caps), [("GRID T4-2Q", 2)]);
    }

    #[test]
    fn types_outside_the_rule_are_left_out() {
        let lab = policy(LAB);
        let caps = lab.capacity(
            &alice(),
            &[t4("0000:20:00.0", 8)],
            &[],
            &CapacityFilter::default(),
        );
        assert_eq!(totals(&caps), [("GRID T4-2Q", 2), ("GRID T4-4Q", 2)]);
    }

    #[test]
    fn filters_pick_a_parent_and_a_node() {
        let parents = [a100("0000:3b:00.4", 0, 1), a100("0000:af:00.4", 1, 1)];
        let on_node_1 = CapacityFilter {
            numa_node: Some(1),
            ..Default::default()
        };
        let caps = Policy::default().capacity(&root(), &parents, &[], &on_node_1);
        assert_eq!(totals(&caps), [("GRID A100-4C", 1)]);
        assert_eq!(caps[0].parents[0].parent.as_str(), "0000:af:00.4");
        let on_parent = CapacityFilter {
            parent: Some(pn("0000:3b:00.4")),
            ..Default::default()
        };
        let caps = Policy::default().capacity(&root(), &parents, &[], &on_parent);
        assert_eq!(caps[0].parents[0].parent.as_str(), "0000:3b:00.4");
    }

    #[test]
    fn a_full_parent_offers_nothing() {
        let caps = Policy::default().capacity(
            &root(),
            &[t4("0000:20:00.0", 0)],
            &[],
            &CapacityFilter::default(),
        );
        assert!(caps.is_empty(), "{caps:?}");
    }
}
