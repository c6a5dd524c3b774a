//! One test per kind of problem a policy file can have, each checking where it is reported.

use super::*;
use crate::rules::UserRef;

fn errors(text: &str) -> Vec<Diagnostic> {
    match parse_file(Path::new("p.toml"), text) {
        Ok(f) => panic!("expected errors, parsed {f:?}"),
        Err(d) => d,
    }
}

/// The only diagnostic's (line, column), and checks its message contains `needle`.
fn one_error(text: &str, needle: &str) -> (usize, usize) {
    let d = errors(text);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].message.contains(needle),
        "{:?} lacks {needle:?}",
        d[0].message
    );
    (d[0].line, d[0].column)
}

fn ok(text: &str) -> PolicyFile {
    match parse_file(Path::new("p.toml"), text) {
        Ok(f) => f,
        Err(d) => panic!("unexpected errors: {d:?}"),
    }
}

fn allow(body: &str) -> String {
    format!("[[allow]]\nname = \"r\"\nusers = [\"alice\"]\n{body}")
}

#[test]
fn diagnostic_displays_file_line_column_message() {
    let d = Diagnostic {
        file: "/etc/vgpud/policy.d/10-lab.toml".into(),
        line: 3,
        column: 7,
        message: "bad".into(),
    };
    assert_eq!(d.to_string(), "/etc/vgpud/policy.d/10-lab.toml:3:7: bad");
}

#[test]
fn toml_syntax_error() {
    assert_eq!(one_error("# x\n[[allow]\n", "invalid table header"), (2, 8));
}

#[test]
fn syntax_error_message_is_one_line() {
    let d = errors("[[allow]\n");
    assert!(!d[0].message.contains('\n'), "{:?}", d[0].message);
}

#[test]
fn control_character_in_a_comment_is_named() {
    // Found by fuzzing: the TOML parser's message for this is empty, so the diagnostic said
    // nothing but its position.
    let (line, col) = one_error("a = 1\n# x\u{0}y\n", "control character U+0000");
    assert_eq!((line, col), (2, 4));
    let (line, col) = one_error("# \u{7f}\n", "control character U+007F");
    assert_eq!((line, col), (1, 3));
}

#[test]
fn hostile_values_are_quoted_cut_short() {
    // Found by fuzzing: a megabyte-long user, group, pattern, strategy or key was copied whole
    // into its diagnostic.
    let long = "x".repeat(1 << 20);
    let cases = [
        allow(&format!("groups = [\"{long} \"]\n")),
        allow(&format!("types = [\"[{long}\"]\n")),
        format!("[placement]\nstrategy = \"{long}\"\n"),
        format!("{long} = 1\n"),
        format!(
            "[[allow]]\nname = \"r\"\ngroups = [\"{}\"]\n",
            "1".repeat(1000)
        ),
    ];
    for text in cases {
        let d = errors(&text);
        assert!(d[0].message.len() < 400, "{} bytes", d[0].message.len());
        assert!(d[0].message.contains("..."), "{}", d[0].message);
    }
}

#[test]
fn unknown_top_level_key() {
    assert_eq!(
        one_error("\n\nbogus = 1\n", "unknown field `bogus`"),
        (3, 1)
    );
}

#[test]
fn unknown_key_in_a_rule() {
    assert_eq!(
        one_error(&allow("max_devices = 2\n"), "unknown field `max_devices`"),
        (4, 1)
    );
}

#[test]
fn unknown_key_in_parents() {
    let (line, col) = one_error(
        &allow("parents = { vendor = \"0x10de\", bus = \"3b\" }\n"),
        "`bus`",
    );
    assert_eq!((line, col), (4, 32));
}

#[test]
fn unknown_key_in_placement() {
    assert_eq!(
        one_error("[placement]\nstrategy = \"pack\"\nnode = 1\n", "`node`"),
        (3, 1)
    );
}

#[test]
fn missing_name_points_at_the_table() {
    let text = "[[allow]]\nname = \"a\"\nusers = [\"x\"]\n\n[[allow]]\nusers = [\"y\"]\n";
    assert_eq!(one_error(text, "missing field `name`"), (5, 1));
}

#[test]
fn missing_ensure_count() {
    assert_eq!(
        one_error(
            "[[ensure]]\nname = \"e\"\ntype = \"T\"\n",
            "missing field `count`"
        ),
        (1, 1)
    );
}

#[test]
fn wrong_value_type_says_list() {
    assert_eq!(
        one_error(
            "[[allow]]\nname = \"r\"\nusers = \"alice\"\n",
            "expected a list"
        ),
        (3, 9)
    );
}

#[test]
fn quoted_number_says_integer() {
    assert_eq!(
        one_error(&allow("max_per_user = \"4\"\n"), "expected an integer"),
        (4, 16)
    );
}

#[test]
fn bad_type_glob() {
    let (line, col) = one_error(
        &allow("types = [\"GRID T4-*Q\", \"nvidia-[23\"]\n"),
        "bad type pattern \"nvidia-[23\"",
    );
    assert_eq!((line, col), (4, 24));
}

#[test]
fn bad_address_glob() {
    assert_eq!(
        one_error(
            &allow("parents = { address = \"0000:3b]*\" }\n"),
            "bad address pattern"
        ),
        (4, 23)
    );
}

#[test]
fn bad_driver_glob() {
    assert_eq!(
        one_error(
            &allow("parents = { driver = \"\" }\n"),
            "bad driver pattern \"\": it is empty"
        ),
        (4, 22)
    );
}

#[test]
fn bad_hex_vendor() {
    assert_eq!(
        one_error(
            &allow("parents = { vendor = \"0x10dg\" }\n"),
            "bad vendor id \"0x10dg\""
        ),
        (4, 22)
    );
}

#[test]
fn too_long_hex_device() {
    assert_eq!(
        one_error(
            &allow("parents = { device = \"0x11eb8\" }\n"),
            "bad device id"
        ),
        (4, 22)
    );
}

#[test]
fn integer_pci_id_out_of_range() {
    assert_eq!(
        one_error(
            &allow("parents = { vendor = 0x10000 }\n"),
            "bad vendor id 65536"
        ),
        (4, 22)
    );
}

#[test]
fn pci_ids_in_every_written_form() {
    for form in ["\"0x10de\"", "\"0X10DE\"", "\"10de\"", "0x10de", "4318"] {
        let f = ok(&allow(&format!("parents = {{ vendor = {form} }}\n")));
        assert_eq!(f.allow[0].parents.vendor, Some(0x10de), "{form}");
    }
}

#[test]
fn negative_limit() {
    assert_eq!(
        one_error(
            &allow("max_per_user = -1\n"),
            "max_per_user must be 0 or more, not -1"
        ),
        (4, 16)
    );
}

#[test]
fn limit_too_large() {
    assert_eq!(
        one_error(&allow("max_per_parent = 4294967296\n"), "too large"),
        (4, 18)
    );
}

#[test]
fn zero_limit_is_allowed() {
    assert_eq!(
        ok(&allow("max_per_user = 0\n")).allow[0].max_per_user,
        Some(0)
    );
}

#[test]
fn zero_reserved_instances() {
    let text = "[[reserve]]\nname = \"r\"\ngroups = [\"ops\"]\ninstances = 0\n";
    assert_eq!(
        one_error(text, "instances must be at least 1, not 0"),
        (4, 13)
    );
}

#[test]
fn negative_ensure_count() {
    let text = "[[ensure]]\nname = \"e\"\ntype = \"T\"\ncount = -3\n";
    assert_eq!(one_error(text, "count must be at least 1, not -3"), (4, 9));
}

#[test]
fn duplicate_rule_name_in_one_file_across_kinds() {
    let text = format!(
        "{}\n[[ensure]]\nname = \"r\"\ntype = \"T\"\ncount = 1\n",
        allow("")
    );
    let (line, col) = one_error(&text, "rule name \"r\" is already used at p.toml:2:8");
    assert_eq!((line, col), (6, 8));
}

#[test]
fn reserved_rule_name() {
    let text = "[[allow]]\nname = \"default\"\nusers = [\"*\"]\n";
    assert_eq!(one_error(text, "is reserved"), (2, 8));
}

#[test]
fn rule_name_with_spaces() {
    let text = "[[allow]]\nname = \"ml team\"\nusers = [\"*\"]\n";
    assert_eq!(one_error(text, "may hold only letters"), (2, 8));
}

#[test]
fn empty_rule_name() {
    assert_eq!(
        one_error(
            "[[allow]]\nname = \"\"\nusers = [\"*\"]\n",
            "must not be empty"
        ),
        (2, 8)
    );
}

#[test]
fn unknown_strategy() {
    assert_eq!(
        one_error(
            "[placement]\nstrategy = \"random\"\n",
            "expected one of \"spread\", \"pack\", \"numa-local\""
        ),
        (2, 12)
    );
}

#[test]
fn numa_strict_needs_numa_local_in_the_same_file() {
    let text = "[placement]\nstrategy = \"pack\"\nnuma_strict = true\n";
    assert_eq!(one_error(text, "numa_strict applies only"), (3, 15));
}

#[test]
fn rule_without_users_or_groups() {
    let text = "[[allow]]\nname = \"nobody\"\nusers = []\ntypes = [\"*\"]\n";
    assert_eq!(one_error(text, "names no users or groups"), (2, 8));
}

#[test]
fn empty_types_list() {
    assert_eq!(
        one_error(&allow("types = []\n"), "empty types list"),
        (4, 9)
    );
}

#[test]
fn numeric_group() {
    let text = "[[allow]]\nname = \"r\"\ngroups = [\"lab\", \"1001\"]\n";
    assert_eq!(one_error(text, "matched by name, not by gid"), (3, 18));
}

#[test]
fn user_glob_is_refused() {
    let text = "[[allow]]\nname = \"r\"\nusers = [\"al*\"]\n";
    assert_eq!(one_error(text, "not globs"), (3, 10));
}

#[test]
fn user_with_whitespace_is_refused() {
    let text = "[[allow]]\nname = \"r\"\nusers = [\"al ice\"]\n";
    assert_eq!(one_error(text, "whitespace"), (3, 10));
}

#[test]
fn uid_out_of_range() {
    let text = "[[allow]]\nname = \"r\"\nusers = [\"99999999999\"]\n";
    assert_eq!(one_error(text, "out of range"), (3, 10));
}

#[test]
fn users_by_name_uid_and_everyone() {
    let f = ok("[[allow]]\nname = \"r\"\nusers = [\"alice\", \"1001\", \"*\"]\n");
    assert_eq!(
        f.allow[0].who.users,
        [
            UserRef::Name("alice".into()),
            UserRef::Uid(1001),
            UserRef::Anyone
        ]
    );
}

#[test]
fn ensure_type_must_not_be_a_glob() {
    let text = "[[ensure]]\nname = \"e\"\ntype = \"GRID T4-*\"\ncount = 1\n";
    assert_eq!(one_error(text, "looks like a glob"), (3, 8));
}

#[test]
fn max_per_group_needs_groups() {
    assert_eq!(
        one_error(&allow("max_per_group = 4\n"), "needs groups"),
        (4, 17)
    );
}

#[test]
fn every_semantic_problem_is_reported_in_order() {
    let text = "[placement]\nstrategy = \"fast\"\n\n[[allow]]\nname = \"a b\"\nusers = [\"x\"]\nmax_per_user = -1\n\n[[reserve]]\nname = \"r\"\ngroups = [\"ops\"]\ninstances = 0\n";
    let d = errors(text);
    let at: Vec<(usize, usize)> = d.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(at, [(2, 12), (5, 8), (7, 16), (12, 13)]);
}

#[test]
fn column_counts_characters_not_bytes() {
    let text = "[[allow]]\nname = \"r\"\nusers = [\"é\", \"a b\"]\n";
    assert_eq!(one_error(text, "whitespace"), (3, 15));
}

#[test]
fn line_column_of_offsets() {
    assert_eq!(line_column("ab\ncd", 0), (1, 1));
    assert_eq!(line_column("ab\ncd", 3), (2, 1));
    assert_eq!(line_column("ab\ncd", 4), (2, 2));
    assert_eq!(line_column("ab", 99), (1, 3));
    assert_eq!(line_column("é", 1), (1, 1));
}

#[test]
fn a_full_rule_parses_into_its_parts() {
    let f = ok(r#"
[placement]
strategy = "numa-local"
numa_strict = true

[[allow]]
name = "ml-team-t4"
users = ["alice", "1001"]
groups = ["vgpu-users"]
types = ["GRID T4-*Q", "nvidia-23?"]
parents = { vendor = "0x10de", device = "0x1eb8", driver = "nvidia", address = "0000:3b:*" }
max_per_user = 4
max_per_group = 16
max_per_parent = 8
"#);
    assert_eq!(f.strategy.as_ref().map(|s| s.0), Some(Strategy::NumaLocal));
    assert_eq!(f.numa_strict.as_ref().map(|s| s.0), Some(true));
    let r = &f.allow[0];
    assert_eq!((r.origin.line, r.origin.column), (7, 8));
    assert_eq!(r.who.groups, ["vgpu-users"]);
    assert_eq!(r.parents.device, Some(0x1eb8));
    assert_eq!(
        r.parents.driver.as_ref().map(|g| g.as_str()),
        Some("nvidia")
    );
    assert_eq!(
        (r.max_per_user, r.max_per_group, r.max_per_parent),
        (Some(4), Some(16), Some(8))
    );
}

#[test]
fn empty_file_is_valid_and_empty() {
    let f = ok("# nothing here\n");
    assert!(f.allow.is_empty() && f.reserve.is_empty() && f.ensure.is_empty());
    assert!(f.strategy.is_none());
}
