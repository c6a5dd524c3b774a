//! vgpud on the real kernel with the parts a host adds: systemd-udevd running in the guest
//! (`--events udev`, so the udev monitor source sees the real kernel's devices after udevd
//! processed them), and `--private-bus`: a dbus-daemon with the real polkitd on it, a policy
//! file, and callers that run as other uids (busctl through setpriv).

#[path = "common/real_kernel.rs"]
mod real_kernel;

use std::sync::OnceLock;

use real_kernel::GuestRun;

const SCRIPT: &str = r#"
U1=c0ffee00-0000-4000-8000-0000000000d1
insmod mtty || exit 3
mkdir -p /run/udev /tmp/defs /tmp/conf/policy.d /tmp/state
/lib/systemd/systemd-udevd --daemon >/tmp/udevd.log 2>&1 || { echo "UDEVD=failed"; cat /tmp/udevd.log; exit 3; }
echo "UDEVD=started"
cat >/tmp/conf/policy.d/10-serial.toml <<'POLICY'
[[allow]]
name = "serial-ports"
groups = ["daemon"]
types = ["mtty-1"]
max_per_user = 2
POLICY
"$VGPUD" --private-bus --sysfs /sys --events udev --definitions-dir /tmp/defs \
    --config-dir /tmp/conf --state-dir /tmp/state >/tmp/vgpud.out 2>/tmp/vgpud.log &
for _ in $(seq 300); do grep -q '^VGPUD_POLKIT=' /tmp/vgpud.out && break; sleep 0.1; done
cat /tmp/vgpud.out
A=$(sed -n 's/^VGPUD_BUS_ADDRESS=//p' /tmp/vgpud.out)
[ -n "$A" ] || { echo "vgpud did not come up"; cat /tmp/vgpud.log; exit 3; }
# as UID NAME METHOD-ARGS...: busctl as another user; prints NAME_RC and NAME_ERR.
as() {
    local uid=$1 name=$2; shift 2
    local err
    err=$(setpriv --reuid="$uid" --regid="$uid" --init-groups busctl --address="$A" \
        call org.vgpud /org/vgpud org.vgpud1.Manager "$@" 2>&1 >/dev/null); local rc=$?
    echo "${name}_RC=$rc"
    echo "${name}_ERR=$(printf '%s' "$err" | tr '\n' ' ')"
}
as 1 FIRST CreateDevice 'sa{sv}' mtty-1 0
as 1 SECOND CreateDevice 'sa{sv}' mtty-1 0
as 1 THIRD CreateDevice 'sa{sv}' mtty-1 0
as 1 OTHER_TYPE CreateDevice 'sa{sv}' mtty-2 0
as 1 PERSISTENT CreateDevice 'sa{sv}' mtty-1 1 persistent b true
as 2 STRANGER CreateDevice 'sa{sv}' mtty-1 0
as 1 RELOAD ReloadPolicy
echo "SYSFS_DEVICES=$(ls /sys/bus/mdev/devices | wc -l)"
# A device made by a shell reaches vgpud through udevd.
echo $U1 > /sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create
for _ in $(seq 50); do "$VGPUCTL" --address "$A" --json list | grep -q $U1 && { echo "UDEV_SEEN=yes"; break; }; sleep 0.1; done
echo 1 > /sys/bus/mdev/devices/$U1/remove
for _ in $(seq 50); do "$VGPUCTL" --address "$A" --json list | grep -q $U1 || { echo "UDEV_GONE=yes"; break; }; sleep 0.1; done
echo "LISTED=$("$VGPUCTL" --address "$A" list | tail -n +2 | wc -l)"
exit 0
"#;

fn story() -> &'static GuestRun {
    static RUN: OnceLock<GuestRun> = OnceLock::new();
    real_kernel::run_once(&RUN, SCRIPT)
}

#[test]
fn polkit_runs_beside_vgpud_on_the_real_kernel() {
    let run = story();
    assert_eq!(run.value("VGPUD_POLKIT"), "polkitd", "{}", run.output);
}

#[test]
fn a_policy_grant_holds_its_quota_on_the_real_kernel() {
    let run = story();
    assert_eq!(run.value("FIRST_RC"), "0", "{}", run.value("FIRST_ERR"));
    assert_eq!(run.value("SECOND_RC"), "0", "{}", run.value("SECOND_ERR"));
    assert_ne!(run.value("THIRD_RC"), "0");
    assert!(
        run.value("THIRD_ERR").contains("allows at most 2 per user"),
        "{}",
        run.value("THIRD_ERR")
    );
    assert_ne!(run.value("OTHER_TYPE_RC"), "0");
    assert!(
        run.value("OTHER_TYPE_ERR")
            .contains("create type Dual port serial (mtty-2)"),
        "{}",
        run.value("OTHER_TYPE_ERR")
    );
    assert_ne!(run.value("STRANGER_RC"), "0");
    assert!(
        run.value("STRANGER_ERR").contains("default"),
        "{}",
        run.value("STRANGER_ERR")
    );
    // Two devices on the kernel, no more: the refusals changed nothing.
    assert_eq!(run.value("SYSFS_DEVICES"), "2");
}

#[test]
fn polkit_is_asked_about_the_caller_on_the_real_kernel() {
    let run = story();
    assert_ne!(run.value("PERSISTENT_RC"), "0");
    assert!(
        run.value("PERSISTENT_ERR")
            .contains("org.vgpud.manage-definitions"),
        "{}",
        run.value("PERSISTENT_ERR")
    );
    assert_ne!(run.value("RELOAD_RC"), "0", "{}", run.value("RELOAD_ERR"));
}

#[test]
fn the_udev_source_follows_the_real_kernel_through_udevd() {
    let run = story();
    assert_eq!(run.value("UDEVD"), "started");
    assert_eq!(run.value("UDEV_SEEN"), "yes", "{}", run.output);
    assert_eq!(run.value("UDEV_GONE"), "yes", "{}", run.output);
    assert_eq!(run.value("LISTED"), "2");
}
