//! Desired state: what `[[ensure]]` rules ask for on each parent, minus what exists.
//! Existing devices of the type count whoever made them, so the plan is idempotent across
//! restarts; several rules asking for one type on one parent want the largest count, not the sum.

use super::Policy;
use vgpud_model::{Parent, ParentName, TypeId};

/// How many devices of a type exist on a parent now (include creates in flight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsureCount {
    pub parent: ParentName,
    pub type_id: TypeId,
    pub count: u32,
}

/// One thing to do, or to report, for an ensure rule on a parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsureStep {
    pub rule: String,
    pub parent: ParentName,
    pub action: EnsureAction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnsureAction {
    /// Create `count` devices of `type_id` (owned by no user).
    Create { type_id: TypeId, count: u32 },
    /// The parent offers no type with this id or name: report it.
    TypeAbsent { type_spec: String },
    /// `missing` devices cannot be created because the type reports too few free instances:
    /// report it (and retry when capacity changes).
    NoCapacity { type_id: TypeId, missing: u32 },
}

/// What the rules want of one type on one parent.
struct Want<'a> {
    type_id: &'a TypeId,
    count: u32,
    available: u32,
    rule: &'a str,
}

impl Policy {
    /// The steps that bring `parents` to the state the ensure rules describe, by parent name
    /// and then rule order. Pass every parent at start, or only the one that appeared on
    /// hot-plug. Capacity is checked per type; when types share a parent's capacity the kernel
    /// may still refuse some creates, which the caller reports.
    pub fn ensure_plan(&self, parents: &[Parent], devices: &[EnsureCount]) -> Vec<EnsureStep> {
        let mut sorted: Vec<&Parent> = parents.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        let mut steps = Vec::new();
        for parent in sorted {
            let mut wants: Vec<Want<'_>> = Vec::new();
            for rule in self.ensure.iter().filter(|r| r.parents.matches(parent)) {
                let Some(ty) = parent.types.iter().find(|t| t.matches(&rule.type_spec)) else {
                    steps.push(EnsureStep {
                        rule: rule.name.clone(),
                        parent: parent.name.clone(),
                        action: EnsureAction::TypeAbsent {
                            type_spec: rule.type_spec.clone(),
                        },
                    });
                    continue;
                };
                match wants.iter_mut().find(|w| *w.type_id == ty.id) {
                    Some(w) if w.count >= rule.count => {}
                    Some(w) => {
                        w.count = rule.count;
                        w.rule = &rule.name;
                    }
                    None => wants.push(Want {
                        type_id: &ty.id,
                        count: rule.count,
                        available: ty.available_instances,
                        rule: &rule.name,
                    }),
                }
            }
            for want in wants {
                let existing: u32 = devices
                    .iter()
                    .filter(|d| d.parent == parent.name && d.type_id == *want.type_id)
                    .map(|d| d.count)
                    .fold(0, u32::saturating_add);
                let missing = want.count.saturating_sub(existing);
                let creatable = missing.min(want.available);
                let step = |action| EnsureStep {
                    rule: want.rule.to_owned(),
                    parent: parent.name.clone(),
                    action,
                };
                if creatable > 0 {
                    steps.push(step(EnsureAction::Create {
                        type_id: want.type_id.clone(),
                        count: creatable,
                    }));
                }
                if missing > creatable {
                    steps.push(step(EnsureAction::NoCapacity {
                        type_id: want.type_id.clone(),
                        missing: missing - creatable,
                    }));
                }
            }
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;

    const TWO_Q2: &str = r#"
[[ensure]]
name = "two-q2-per-t4"
parents = { device = "0x1eb8" }
type = "GRID T4-2Q"
count = 2
"#;

    fn count(parent: &str, type_id: &str, n: u32) -> EnsureCount {
        EnsureCount {
            parent: pn(parent),
            type_id: tid(type_id),
            count: n,
        }
    }

    fn create(rule: &str, parent: &str, type_id: &str, n: u32) -> EnsureStep {
        EnsureStep {
            rule: rule.into(),
            parent: pn(parent),
            action: EnsureAction::Create {
                type_id: tid(type_id),
                count: n,
            },
        }
    }

    #[test]
    fn creates_what_is_missing_on_every_matching_parent() {
        let p = policy(TWO_Q2);
        let steps = p.ensure_plan(&[t4("0000:3b:00.0", 8), t4("0000:3c:00.0", 8)], &[]);
        assert_eq!(
            steps,
            [
                create("two-q2-per-t4", "0000:3b:00.0", "nvidia-231", 2),
                create("two-q2-per-t4", "0000:3c:00.0", "nvidia-231", 2),
            ]
        );
    }

    #[test]
    fn counts_existing_devices() {
        let p = policy(TWO_Q2);
        let have = [
            count("0000:3b:00.0", "nvidia-231", 1),
            count("0000:3c:00.0", "nvidia-231", 2),
        ];
        let steps = p.ensure_plan(&[t4("0000:3b:00.0", 8), t4("0000:3c:00.0", 8)], &have);
        assert_eq!(
            steps,
            [create("two-q2-per-t4", "0000:3b:00.0", "nvidia-231", 1)]
        );
    }

    #[test]
    fn devices_of_other_types_do_not_count() {
        let p = policy(TWO_Q2);
        let have = [count("0000:3b:00.0", "nvidia-232", 5)];
        let steps = p.ensure_plan(&[t4("0000:3b:00.0", 8)], &have);
        assert_eq!(
            steps,
            [create("two-q2-per-t4", "0000:3b:00.0", "nvidia-231", 2)]
        );
    }

    #[test]
    fn ignores_parents_that_do_not_match() {
        let p = policy(TWO_Q2);
        assert!(p.ensure_plan(&[a100("0000:81:00.0", 0, 7)], &[]).is_empty());
        assert!(p.ensure_plan(&[mtty("mtty", 4)], &[]).is_empty());
    }

    #[test]
    fn reports_a_type_absent_on_a_matching_parent() {
        let p = policy(
            "[[ensure]]\nname = \"e\"\nparents = { vendor = \"0x10de\" }\ntype = \"GRID T4-2Q\"\ncount = 1\n",
        );
        let steps = p.ensure_plan(&[a100("0000:81:00.0", 0, 7)], &[]);
        assert_eq!(
            steps,
            [EnsureStep {
                rule: "e".into(),
                parent: pn("0000:81:00.0"),
                action: EnsureAction::TypeAbsent {
                    type_spec: "GRID T4-2Q".into()
                },
            }]
        );
    }

    #[test]
    fn reports_what_capacity_does_not_allow() {
        let p = policy(TWO_Q2);
        let steps = p.ensure_plan(&[t4("0000:3b:00.0", 1)], &[]);
        assert_eq!(
            steps,
            [
                create("two-q2-per-t4", "0000:3b:00.0", "nvidia-231", 1),
                EnsureStep {
                    rule: "two-q2-per-t4".into(),
                    parent: pn("0000:3b:00.0"),
                    action: EnsureAction::NoCapacity {
                        type_id: tid("nvidia-231"),
                        missing: 1
                    },
                },
            ]
        );
    }

    #[test]
    fn overlapping_rules_want_the_largest_count() {
        let p = policy(&format!(
            "{TWO_Q2}\n[[ensure]]\nname = \"three-here\"\nparents = {{ address = \"0000:3b:*\" }}\ntype = \"nvidia-231\"\ncount = 3\n\n[[ensure]]\nname = \"one-anywhere\"\ntype = \"nvidia-231\"\ncount = 1\n"
        ));
        let steps = p.ensure_plan(&[t4("0000:3b:00.0", 8)], &[]);
        assert_eq!(
            steps,
            [create("three-here", "0000:3b:00.0", "nvidia-231", 3)]
        );
    }

    #[test]
    fn satisfied_rules_produce_no_steps() {
        let p = policy(TWO_Q2);
        let have = [count("0000:3b:00.0", "nvidia-231", 3)];
        assert!(p.ensure_plan(&[t4("0000:3b:00.0", 8)], &have).is_empty());
    }

    #[test]
    fn default_policy_ensures_nothing() {
        assert!(Policy::default()
            .ensure_plan(&[t4("0000:3b:00.0", 8)], &[])
            .is_empty());
    }
}
