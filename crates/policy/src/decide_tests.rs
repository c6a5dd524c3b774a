//! Authorization, limits, reservations and placement, one case per test.

use super::*;
use crate::fixtures::*;

const LAB: &str = r#"
[[allow]]
name = "lab-t4"
groups = ["lab"]
types = ["GRID T4-*Q"]
parents = { vendor = "0x10de", device = "0x1eb8" }
max_per_user = 2
"#;

fn parents_of(plan: &CreatePlan) -> Vec<&str> {
    plan.candidates.iter().map(|c| c.parent.as_str()).collect()
}

fn plan(
    p: &Policy,
    s: &Subject,
    type_spec: &str,
    parents: &[Parent],
    devices: &[Owned],
) -> Result<CreatePlan, Denial> {
    p.plan_create(s, type_spec, None, None, parents, devices)
}

fn denial(r: Result<CreatePlan, Denial>) -> Denial {
    match r {
        Ok(p) => panic!("expected a denial, got {p:?}"),
        Err(d) => d,
    }
}

fn three_t4s() -> Vec<Parent> {
    vec![
        t4("0000:3b:00.0", 4),
        t4("0000:3c:00.0", 8),
        t4("0000:3d:00.0", 2),
    ]
}

// --- who may create ------------------------------------------------------------------------

#[test]
fn root_may_create_under_the_default_policy() {
    let r = plan(&Policy::default(), &root(), "GRID T4-2Q", &three_t4s(), &[]).unwrap();
    assert_eq!(r.candidates[0].rule, "root");
    assert_eq!(
        parents_of(&r),
        ["0000:3c:00.0", "0000:3b:00.0", "0000:3d:00.0"]
    );
}

#[test]
fn a_user_is_denied_by_the_default_policy() {
    let d = denial(plan(
        &Policy::default(),
        &alice(),
        "GRID T4-2Q",
        &three_t4s(),
        &[],
    ));
    assert_eq!(
        (d.kind, d.rule.as_str()),
        (DenialKind::AccessDenied, "default")
    );
    assert!(d.reason.contains("user alice"), "{}", d.reason);
}

#[test]
fn an_unknown_user_is_denied_with_rule_default() {
    let d = denial(plan(
        &policy(LAB),
        &mallory(),
        "GRID T4-2Q",
        &three_t4s(),
        &[],
    ));
    assert_eq!(
        (d.kind, d.rule.as_str()),
        (DenialKind::AccessDenied, "default")
    );
}

#[test]
fn a_subject_without_a_name_is_described_by_uid() {
    let nameless = Subject {
        uid: 4242,
        user: None,
        groups: vec![],
    };
    let d = denial(plan(
        &policy(LAB),
        &nameless,
        "GRID T4-2Q",
        &three_t4s(),
        &[],
    ));
    assert!(d.reason.contains("uid 4242"), "{}", d.reason);
}

#[test]
fn a_group_member_is_allowed_by_the_rule() {
    let r = plan(&policy(LAB), &alice(), "GRID T4-2Q", &three_t4s(), &[]).unwrap();
    assert!(r.candidates.iter().all(|c| c.rule == "lab-t4"));
}

#[test]
fn users_match_by_name() {
    let p = policy("[[allow]]\nname = \"a\"\nusers = [\"alice\"]\n");
    assert!(plan(&p, &alice(), "GRID T4-2Q", &three_t4s(), &[]).is_ok());
    assert!(plan(&p, &bob(), "GRID T4-2Q", &three_t4s(), &[]).is_err());
}

#[test]
fn users_match_by_uid() {
    let p = policy("[[allow]]\nname = \"a\"\nusers = [\"1002\"]\n");
    assert!(plan(&p, &bob(), "GRID T4-2Q", &three_t4s(), &[]).is_ok());
    assert!(plan(&p, &alice(), "GRID T4-2Q", &three_t4s(), &[]).is_err());
}

#[test]
fn star_matches_everyone() {
    let p = policy("[[allow]]\nname = \"a\"\nusers = [\"*\"]\n");
    assert!(plan(&p, &mallory(), "mtty-1", &[mtty("mtty", 1)], &[]).is_ok());
}

#[test]
fn type_globs_match_the_name() {
    let p = policy(LAB);
    assert!(plan(&p, &alice(), "GRID T4-4Q", &three_t4s(), &[]).is_ok());
    let d = denial(plan(&p, &alice(), "GRID T4-1B", &three_t4s(), &[]));
    assert_eq!(d.rule, "default");
}

#[test]
fn type_globs_match_the_id() {
    let p = policy("[[allow]]\nname = \"ids\"\nusers = [\"*\"]\ntypes = [\"nvidia-23?\"]\n");
    // Asked for by name, allowed because the id matches.
    assert!(plan(&p, &alice(), "GRID T4-2Q", &three_t4s(), &[]).is_ok());
    assert!(plan(&p, &alice(), "nvidia-222", &three_t4s(), &[]).is_err());
}

#[test]
fn parents_match_by_vendor_and_device() {
    let p = policy(LAB);
    let hosts = [a100("0000:81:00.0", 0, 4)];
    let d = denial(plan(&p, &alice(), "GRID A100-4C", &hosts, &[]));
    assert_eq!(d.kind, DenialKind::AccessDenied);
}

#[test]
fn parents_match_by_address_glob() {
    let p = policy(
        "[[allow]]\nname = \"a\"\nusers = [\"*\"]\nparents = { address = \"0000:3[bc]:*\" }\n",
    );
    let r = plan(&p, &alice(), "GRID T4-2Q", &three_t4s(), &[]).unwrap();
    assert_eq!(parents_of(&r), ["0000:3c:00.0", "0000:3b:00.0"]);
}

#[test]
fn parents_match_by_driver() {
    let p = policy("[[allow]]\nname = \"a\"\nusers = [\"*\"]\nparents = { driver = \"mtty\" }\n");
    assert!(plan(&p, &alice(), "mtty-1", &[mtty("mtty", 1)], &[]).is_ok());
    assert!(plan(&p, &alice(), "GRID T4-2Q", &three_t4s(), &[]).is_err());
}

#[test]
fn a_vendor_condition_never_matches_a_parent_without_pci() {
    let p = policy("[[allow]]\nname = \"a\"\nusers = [\"*\"]\nparents = { vendor = \"0x10de\" }\n");
    assert!(plan(&p, &alice(), "mtty-1", &[mtty("mtty", 1)], &[]).is_err());
}

#[test]
fn the_first_matching_rule_decides_and_its_limits_apply() {
    let p = policy(&format!(
        "[[allow]]\nname = \"alice-one\"\nusers = [\"alice\"]\nmax_per_user = 1\n{}",
        "[[allow]]\nname = \"everyone\"\nusers = [\"*\"]\n"
    ));
    let have = [owned("0000:3b:00.0", "nvidia-231", Some(&alice()))];
    let d = denial(plan(&p, &alice(), "GRID T4-2Q", &three_t4s(), &have));
    assert_eq!(
        (d.kind, d.rule.as_str()),
        (DenialKind::PolicyDenied, "alice-one")
    );
    let r = plan(&p, &bob(), "GRID T4-2Q", &three_t4s(), &have).unwrap();
    assert_eq!(r.candidates[0].rule, "everyone");
}

// --- limits ----------------------------------------------------------------------------------

#[test]
fn max_per_user_stops_the_user_at_the_limit() {
    let have = [
        owned("0000:3b:00.0", "nvidia-231", Some(&alice())),
        owned("0000:3c:00.0", "nvidia-232", Some(&alice())),
    ];
    let d = denial(plan(
        &policy(LAB),
        &alice(),
        "GRID T4-2Q",
        &three_t4s(),
        &have,
    ));
    assert_eq!(
        (d.kind, d.rule.as_str()),
        (DenialKind::PolicyDenied, "lab-t4")
    );
    assert!(d.reason.contains("at most 2 per user"), "{}", d.reason);
}

#[test]
fn max_per_user_leaves_other_users_alone() {
    let have = [
        owned("0000:3b:00.0", "nvidia-231", Some(&alice())),
        owned("0000:3c:00.0", "nvidia-231", Some(&alice())),
    ];
    assert!(plan(&policy(LAB), &bob(), "GRID T4-2Q", &three_t4s(), &have).is_ok());
}

#[test]
fn limits_count_only_devices_the_rule_covers() {
    let mut hosts = three_t4s();
    hosts.push(mtty("mtty", 4));
    let have = [
        // Not a Q type, and not on a T4: neither counts against lab-t4.
        owned("0000:3b:00.0", "nvidia-222", Some(&alice())),
        owned("mtty", "mtty-1", Some(&alice())),
        owned("mtty", "mtty-1", Some(&alice())),
    ];
    assert!(plan(&policy(LAB), &alice(), "GRID T4-2Q", &hosts, &have).is_ok());
}

#[test]
fn a_device_whose_type_is_not_known_yet_counts() {
    let mut pending = owned("0000:3b:00.0", "nvidia-231", Some(&alice()));
    pending.type_id = None;
    let have = [pending, owned("0000:3c:00.0", "nvidia-231", Some(&alice()))];
    assert!(plan(&policy(LAB), &alice(), "GRID T4-2Q", &three_t4s(), &have).is_err());
}

#[test]
fn max_per_group_counts_devices_of_all_members() {
    let p = policy("[[allow]]\nname = \"lab\"\ngroups = [\"lab\", \"ops\"]\nmax_per_group = 2\n");
    let have = [
        owned("0000:3b:00.0", "nvidia-231", Some(&alice())),
        owned("0000:3c:00.0", "nvidia-231", Some(&bob())),
    ];
    let d = denial(plan(&p, &alice(), "GRID T4-2Q", &three_t4s(), &have));
    assert_eq!((d.kind, d.rule.as_str()), (DenialKind::PolicyDenied, "lab"));
    assert!(d.reason.contains("group lab"), "{}", d.reason);
    let carol = user(1003, "carol", &["ops"]);
    assert!(plan(&p, &carol, "GRID T4-2Q", &three_t4s(), &have).is_ok());
}

#[test]
fn max_per_parent_skips_full_parents() {
    let p = policy("[[allow]]\nname = \"two-each\"\nusers = [\"*\"]\nmax_per_parent = 1\n");
    let have = [owned("0000:3c:00.0", "nvidia-231", None)];
    let r = plan(&p, &alice(), "GRID T4-2Q", &three_t4s(), &have).unwrap();
    assert_eq!(parents_of(&r), ["0000:3b:00.0", "0000:3d:00.0"]);
}

#[test]
fn max_per_parent_on_a_named_parent_is_policy_denied() {
    let p = policy("[[allow]]\nname = \"one-each\"\nusers = [\"*\"]\nmax_per_parent = 1\n");
    let have = [owned("0000:3c:00.0", "nvidia-231", None)];
    let name = pn("0000:3c:00.0");
    let d = denial(p.plan_create(
        &alice(),
        "GRID T4-2Q",
        Some(&name),
        None,
        &three_t4s(),
        &have,
    ));
    assert_eq!(
        (d.kind, d.rule.as_str()),
        (DenialKind::PolicyDenied, "one-each")
    );
}

#[test]
fn a_zero_limit_denies_by_that_rule() {
    let p = policy("[[allow]]\nname = \"not-mallory\"\nusers = [\"mallory\"]\nmax_per_user = 0\n");
    let d = denial(plan(&p, &mallory(), "GRID T4-2Q", &three_t4s(), &[]));
    assert_eq!(
        (d.kind, d.rule.as_str()),
        (DenialKind::PolicyDenied, "not-mallory")
    );
}

#[test]
fn root_is_not_limited() {
    let p = policy("[[allow]]\nname = \"none\"\nusers = [\"*\"]\nmax_per_user = 0\n");
    assert!(plan(&p, &root(), "GRID T4-2Q", &three_t4s(), &[]).is_ok());
}

// --- placement -------------------------------------------------------------------------------

#[test]
fn spread_puts_most_free_first_ties_by_name() {
    let hosts = [
        t4("0000:3d:00.0", 4),
        t4("0000:3b:00.0", 4),
        t4("0000:3c:00.0", 8),
    ];
    let r = plan(&Policy::default(), &root(), "nvidia-231", &hosts, &[]).unwrap();
    assert_eq!(
        parents_of(&r),
        ["0000:3c:00.0", "0000:3b:00.0", "0000:3d:00.0"]
    );
    assert_eq!(r.candidates[0].free, 8);
}

#[test]
fn pack_puts_fewest_free_first_and_skips_full_parents() {
    let p = policy("[placement]\nstrategy = \"pack\"\n");
    let hosts = [
        t4("0000:3b:00.0", 4),
        t4("0000:3c:00.0", 0),
        t4("0000:3d:00.0", 1),
    ];
    let r = plan(&p, &root(), "GRID T4-2Q", &hosts, &[]).unwrap();
    assert_eq!(parents_of(&r), ["0000:3d:00.0", "0000:3b:00.0"]);
}

#[test]
fn numa_local_puts_the_requested_node_first_then_spreads() {
    let p = policy("[placement]\nstrategy = \"numa-local\"\n");
    let hosts = [
        a100("0000:17:00.0", 0, 7),
        a100("0000:65:00.0", 0, 2),
        a100("0000:b1:00.0", 1, 3),
        a100("0000:ca:00.0", 1, 5),
    ];
    let r = p
        .plan_create(&root(), "GRID A100-4C", None, Some(1), &hosts, &[])
        .unwrap();
    assert_eq!(
        parents_of(&r),
        [
            "0000:ca:00.0",
            "0000:b1:00.0",
            "0000:17:00.0",
            "0000:65:00.0"
        ]
    );
}

#[test]
fn numa_local_without_a_node_is_spread() {
    let p = policy("[placement]\nstrategy = \"numa-local\"\n");
    let hosts = [a100("0000:17:00.0", 0, 2), a100("0000:ca:00.0", 1, 5)];
    let r = p
        .plan_create(&root(), "GRID A100-4C", None, None, &hosts, &[])
        .unwrap();
    assert_eq!(parents_of(&r), ["0000:ca:00.0", "0000:17:00.0"]);
}

#[test]
fn numa_strict_uses_only_the_requested_node() {
    let p = policy("[placement]\nstrategy = \"numa-local\"\nnuma_strict = true\n");
    let hosts = [a100("0000:17:00.0", 0, 7), a100("0000:ca:00.0", 1, 5)];
    let r = p
        .plan_create(&root(), "GRID A100-4C", None, Some(1), &hosts, &[])
        .unwrap();
    assert_eq!(parents_of(&r), ["0000:ca:00.0"]);
    let d = denial(p.plan_create(&root(), "GRID A100-4C", None, Some(3), &hosts, &[]));
    assert_eq!(d.kind, DenialKind::NoCapacity);
}

#[test]
fn spread_ignores_a_requested_node() {
    let hosts = [a100("0000:17:00.0", 0, 7), a100("0000:ca:00.0", 1, 5)];
    let r = Policy::default()
        .plan_create(&root(), "GRID A100-4C", None, Some(1), &hosts, &[])
        .unwrap();
    assert_eq!(parents_of(&r), ["0000:17:00.0", "0000:ca:00.0"]);
}

#[test]
fn a_named_parent_is_planned_even_at_zero_free() {
    let name = pn("0000:3b:00.0");
    let hosts = [t4("0000:3b:00.0", 0)];
    let r = policy(LAB)
        .plan_create(&alice(), "GRID T4-2Q", Some(&name), None, &hosts, &[])
        .unwrap();
    assert_eq!(parents_of(&r), ["0000:3b:00.0"]);
    assert_eq!(r.candidates[0].type_id.as_str(), "nvidia-231");
}

#[test]
fn an_unknown_named_parent_is_not_found() {
    let name = pn("0000:99:00.0");
    let d = denial(Policy::default().plan_create(
        &root(),
        "GRID T4-2Q",
        Some(&name),
        None,
        &three_t4s(),
        &[],
    ));
    assert_eq!(d.kind, DenialKind::NotFound);
}

#[test]
fn a_type_the_named_parent_lacks_is_not_found() {
    let name = pn("mtty");
    let d = denial(Policy::default().plan_create(
        &root(),
        "GRID T4-2Q",
        Some(&name),
        None,
        &[mtty("mtty", 1)],
        &[],
    ));
    assert_eq!(d.kind, DenialKind::NotFound);
}

#[test]
fn a_type_no_parent_offers_is_not_found() {
    let d = denial(plan(&policy(LAB), &alice(), "GRID X", &three_t4s(), &[]));
    assert_eq!((d.kind, d.rule.as_str()), (DenialKind::NotFound, ""));
}

#[test]
fn allowed_but_full_everywhere_is_no_capacity() {
    let hosts = [t4("0000:3b:00.0", 0), t4("0000:3c:00.0", 0)];
    let d = denial(plan(&policy(LAB), &alice(), "GRID T4-2Q", &hosts, &[]));
    assert_eq!(d.kind, DenialKind::NoCapacity);
}

#[test]
fn a_full_permitted_parent_outranks_a_forbidden_one_in_the_denial() {
    let p = policy(
        "[[allow]]\nname = \"3b-only\"\nusers = [\"*\"]\nparents = { address = \"0000:3b:*\" }\n",
    );
    let hosts = [t4("0000:3b:00.0", 0), t4("0000:3c:00.0", 8)];
    let d = denial(plan(&p, &alice(), "GRID T4-2Q", &hosts, &[]));
    assert_eq!(d.kind, DenialKind::NoCapacity);
}

// --- reservations ----------------------------------------------------------------------------

const RESERVE_OPS: &str = r#"
[[allow]]
name = "everyone"
users = ["*"]

[[reserve]]
name = "keep-for-ops"
groups = ["ops"]
parents = { address = "0000:3c:*" }
instances = 6
"#;

#[test]
fn a_reservation_hides_instances_from_others() {
    let r = plan(
        &policy(RESERVE_OPS),
        &alice(),
        "GRID T4-2Q",
        &three_t4s(),
        &[],
    )
    .unwrap();
    // 0000:3c has 8 free but alice sees 2 of them, so it drops from first to last.
    assert_eq!(
        parents_of(&r),
        ["0000:3b:00.0", "0000:3c:00.0", "0000:3d:00.0"]
    );
    assert_eq!(r.candidates[1].free, 2);
}

#[test]
fn a_reservation_does_not_hide_from_its_group() {
    let ops = user(1005, "olga", &["ops"]);
    let r = plan(&policy(RESERVE_OPS), &ops, "GRID T4-2Q", &three_t4s(), &[]).unwrap();
    assert_eq!(parents_of(&r)[0], "0000:3c:00.0");
    assert_eq!(r.candidates[0].free, 8);
}

#[test]
fn a_reservation_that_hides_everything_is_policy_denied() {
    let hosts = [t4("0000:3c:00.0", 6)];
    let d = denial(plan(
        &policy(RESERVE_OPS),
        &alice(),
        "GRID T4-2Q",
        &hosts,
        &[],
    ));
    assert_eq!(
        (d.kind, d.rule.as_str()),
        (DenialKind::PolicyDenied, "keep-for-ops")
    );
}

#[test]
fn a_reservation_also_denies_on_a_named_parent() {
    let name = pn("0000:3c:00.0");
    let hosts = [t4("0000:3c:00.0", 6)];
    let d = denial(policy(RESERVE_OPS).plan_create(
        &alice(),
        "GRID T4-2Q",
        Some(&name),
        None,
        &hosts,
        &[],
    ));
    assert_eq!(d.rule, "keep-for-ops");
}

#[test]
fn root_uses_reserved_parents_last() {
    let hosts = [t4("0000:3c:00.0", 6), t4("0000:3d:00.0", 1)];
    let r = plan(&policy(RESERVE_OPS), &root(), "GRID T4-2Q", &hosts, &[]).unwrap();
    assert_eq!(parents_of(&r), ["0000:3d:00.0", "0000:3c:00.0"]);
    assert_eq!(r.candidates[1].free, 6);
}

// --- decide ----------------------------------------------------------------------------------

#[test]
fn root_is_allowed_every_action() {
    for action in Action::ALL {
        let d = Policy::default().decide(&root(), action, None, None, None);
        assert_eq!(
            d,
            Decision::Allow {
                rule: "root".into()
            },
            "{action:?}"
        );
    }
}

#[test]
fn the_owner_may_remove_its_device() {
    let p = t4("0000:3b:00.0", 1);
    let d = Policy::default().decide(&alice(), Action::RemoveDevice, Some(&p), None, Some(1001));
    assert_eq!(
        d,
        Decision::Allow {
            rule: "owner".into()
        }
    );
}

#[test]
fn a_stranger_may_not_remove_a_device() {
    let p = t4("0000:3b:00.0", 1);
    let d = policy(LAB).decide(&mallory(), Action::RemoveDevice, Some(&p), None, Some(1001));
    assert!(
        matches!(d, Decision::Deny { ref rule, .. } if rule == "default"),
        "{d:?}"
    );
}

#[test]
fn a_rule_covering_the_parent_and_type_allows_removal() {
    let p = t4("0000:3b:00.0", 1);
    let q = tid("nvidia-231");
    let d = policy(LAB).decide(&bob(), Action::RemoveDevice, Some(&p), Some(&q), Some(1001));
    assert_eq!(
        d,
        Decision::Allow {
            rule: "lab-t4".into()
        }
    );
}

#[test]
fn a_rule_for_other_types_does_not_allow_removal() {
    let p = t4("0000:3b:00.0", 1);
    let b = tid("nvidia-222");
    let d = policy(LAB).decide(&bob(), Action::RemoveDevice, Some(&p), Some(&b), None);
    assert!(!d.is_allowed());
}

#[test]
fn a_rule_for_other_parents_does_not_allow_removal() {
    let p = mtty("mtty", 1);
    let d = policy(LAB).decide(&bob(), Action::RemoveDevice, Some(&p), None, None);
    assert!(!d.is_allowed());
}

#[test]
fn without_a_known_parent_only_the_owner_may_remove() {
    let p = policy("[[allow]]\nname = \"all\"\nusers = [\"*\"]\n");
    assert!(!p
        .decide(&bob(), Action::RemoveDevice, None, None, Some(1001))
        .is_allowed());
    assert!(p
        .decide(&alice(), Action::RemoveDevice, None, None, Some(1001))
        .is_allowed());
}

#[test]
fn create_is_decided_by_the_rules_not_by_ownership() {
    let p = t4("0000:3b:00.0", 1);
    let d = Policy::default().decide(&alice(), Action::CreateDevice, Some(&p), None, Some(1001));
    assert!(!d.is_allowed());
    let d = policy(LAB).decide(&alice(), Action::CreateDevice, None, None, None);
    assert_eq!(
        d,
        Decision::Allow {
            rule: "lab-t4".into()
        }
    );
}

#[test]
fn launch_and_definitions_follow_ownership_and_rules() {
    let p = t4("0000:3b:00.0", 1);
    for action in [Action::LaunchGuest, Action::ManageDefinitions] {
        assert!(Policy::default()
            .decide(&alice(), action, Some(&p), None, Some(1001))
            .is_allowed());
        assert!(!Policy::default()
            .decide(&bob(), action, Some(&p), None, Some(1001))
            .is_allowed());
        assert!(policy(LAB)
            .decide(&bob(), action, Some(&p), None, None)
            .is_allowed());
    }
}

#[test]
fn reload_is_left_to_polkit() {
    let d = Policy::default().decide(&mallory(), Action::ReloadPolicy, None, None, None);
    assert_eq!(
        d,
        Decision::Allow {
            rule: "polkit".into()
        }
    );
}

#[test]
fn polkit_action_ids() {
    let ids: Vec<&str> = Action::ALL.iter().map(|a| a.polkit_id()).collect();
    assert_eq!(
        ids,
        [
            "org.vgpud.create-device",
            "org.vgpud.remove-device",
            "org.vgpud.manage-definitions",
            "org.vgpud.launch-guest",
            "org.vgpud.reload-policy",
        ]
    );
}

#[test]
fn denial_display_names_the_rule() {
    let d = denial(plan(
        &Policy::default(),
        &alice(),
        "GRID T4-2Q",
        &three_t4s(),
        &[],
    ));
    assert!(d.to_string().ends_with("(policy rule \"default\")"), "{d}");
}

#[test]
fn summary_lists_every_rule() {
    let s = policy(&format!("{LAB}{RESERVE_OPS}")).summary();
    assert!(s.contains("placement: spread"), "{s}");
    assert!(s.contains("allow \"lab-t4\": groups lab may create types \"GRID T4-*Q\" on vendor=0x10de device=0x1eb8; at most 2 per user"), "{s}");
    assert!(
        s.contains(
            "reserve \"keep-for-ops\": 6 instances on address=0000:3c:* kept for groups ops"
        ),
        "{s}"
    );
}

#[test]
fn default_summary_says_root_only() {
    let s = Policy::default().summary();
    assert!(
        s.contains("built-in default") && s.contains("only root"),
        "{s}"
    );
}
