//! vgpud on the real kernel: the daemon on Debian's kernel with the real mtty, mdpy and mbochs
//! (`--sysfs /sys --events kernel`, a private dbus-daemon in the guest), driven by vgpuctl as an
//! administrator would. One boot runs the whole story, so the tier stays within its budget:
//! enumeration, create with every refusal mapped, devices made by a shell and by mdevctl seen,
//! a remove blocked by a process holding the VFIO group (Busy naming it, then a forced remove
//! that waits off the loop), autostart definitions across rmmod/insmod, and a restart that
//! adopts what is live.

#[path = "common/real_kernel.rs"]
mod real_kernel;

use std::sync::OnceLock;

use real_kernel::GuestRun;

const SCRIPT: &str = r#"
A=unix:path=/tmp/bus
U1=c0ffee00-0000-4000-8000-000000000001
U2=c0ffee00-0000-4000-8000-000000000002
U3=c0ffee00-0000-4000-8000-000000000003
U4=c0ffee00-0000-4000-8000-000000000004
U5=c0ffee00-0000-4000-8000-000000000005
ctl() { "$VGPUCTL" --address "$A" --timeout 20 "$@"; }
# Runs vgpuctl and prints NAME_RC=status and NAME_ERR=its error line.
try() {
    local name=$1; shift
    local err
    err=$(ctl "$@" 2>&1 >/dev/null); local rc=$?
    echo "${name}_RC=$rc"
    echo "${name}_ERR=$(printf '%s' "$err" | tr '\n' ' ')"
}
start_vgpud() {
    "$VGPUD" --address "$A" --sysfs /sys --events kernel --definitions-dir /tmp/defs \
        --config-dir /tmp/conf --state-dir /tmp/state >>/tmp/vgpud.log 2>&1 &
    VGPUD_PID=$!
    for _ in $(seq 200); do ctl parents >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "vgpud did not come up"; cat /tmp/vgpud.log; exit 3
}
# Waits up to 5 s for `vgpuctl list --json` to contain (or, with !, not contain) a UUID.
wait_list() {
    for _ in $(seq 50); do
        if [ "$1" = "!" ]; then ctl --json list | grep -q "$2" || return 0
        else ctl --json list | grep -q "$1" && return 0; fi
        sleep 0.1
    done
    return 1
}

insmod mtty && insmod mdpy && insmod mbochs || exit 3
mkdir -p /tmp/defs /tmp/conf/policy.d /tmp/state
dbus-daemon --session --address="$A" --nofork --nopidfile >/tmp/bus.log 2>&1 &
sleep 0.3
start_vgpud

echo "PARENTS=$(ctl --json parents | tr -d '\n')"
echo "TYPES=$(ctl --json types | tr -d '\n')"

# ---- create and every refusal ------------------------------------------------------------------
try CREATE create mtty-2 --uuid $U1
echo "SYSFS_U1_TYPE=$(basename "$(readlink /sys/bus/mdev/devices/$U1/mdev_type)")"
try DUP create mtty-2 --uuid $U1
try DUP_UPPER create mtty-1 --uuid C0FFEE00-0000-4000-8000-000000000001
try BAD_UUID create mtty-1 --uuid not-a-uuid
try NO_TYPE create mtty-9
for i in 1 2 3 4; do ctl create mdpy-vga >/dev/null || echo "MDPY_FILL_FAILED=$i"; done
try MDPY_FULL create mdpy-vga --parent mdpy
echo "MTTY1_AVAILABLE=$(cat /sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1/available_instances)"
echo "AVAILABLE_ON_BUS=$(ctl --json types --parent mtty | tr -d '\n')"

# ---- devices made by others --------------------------------------------------------------------
echo $U2 > /sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create
wait_list $U2 && echo "SHELL_DEVICE_SEEN=yes"
mdevctl start -u $U3 -p mtty -t mtty-1 && wait_list $U3 && echo "MDEVCTL_DEVICE_SEEN=yes"
echo 1 > /sys/bus/mdev/devices/$U3/remove
wait_list ! $U3 && echo "EXTERNAL_REMOVE_SEEN=yes"

# ---- a remove blocked by a VM holding the group --------------------------------------------------
G=$(basename "$(readlink /sys/bus/mdev/devices/$U2/iommu_group)")
"$VGPUD_PROVE" abi-hold "$U2" >/tmp/holder.out 2>&1 &
HOLDER=$!
for _ in $(seq 50); do grep -q held /tmp/holder.out && break; sleep 0.1; done
echo "HOLDER_PID=$HOLDER"
echo "HOLDER_SAYS=$(cat /tmp/holder.out)"
try HELD_REMOVE remove $U2
ctl remove --force $U2 >/tmp/force.out 2>&1 &
FORCE=$!
sleep 1
kill -0 $FORCE 2>/dev/null && echo "FORCE_WAITING=yes"
t0=$(date +%s%N); ctl parents >/dev/null && echo "ANSWERED_WHILE_WAITING_MS=$(( ($(date +%s%N) - t0) / 1000000 ))"
kill $HOLDER
wait $FORCE; echo "FORCE_RC=$?"
wait_list ! $U2 && echo "FORCED_GONE=yes"

# ---- definitions across rmmod / insmod ---------------------------------------------------------
try DEFINE define mtty-1 --parent mtty --uuid $U4
try START start $U4
try AUTOSTART autostart $U4 on
ctl remove $U1 >/dev/null
ctl stop $U4 >/dev/null
rmmod mtty && echo "RMMOD=ok"
for _ in $(seq 50); do ctl --json parents | grep -q '"mtty"' || break; sleep 0.1; done
echo "PARENTS_AFTER_RMMOD=$(ctl --json parents | tr -d '\n')"
insmod mtty && echo "INSMOD=ok"
wait_list $U4 && echo "AUTOSTARTED=yes"
echo "SYSFS_AFTER_INSMOD=$(ls /sys/bus/mdev/devices | tr '\n' ' ')"
echo "DEFINED=$(ctl --json list --defined | tr -d '\n')"

# ---- a restart adopts what is live -------------------------------------------------------------
ctl create mtty-2 --uuid $U5 >/dev/null
kill -9 $VGPUD_PID; wait $VGPUD_PID 2>/dev/null
start_vgpud
echo "AFTER_RESTART=$(ctl --json list | tr -d '\n')"
echo "SYSFS_AT_END=$(ls /sys/bus/mdev/devices | tr '\n' ' ')"
grep -c ' ERROR ' /tmp/vgpud.log | sed 's/^/LOGGED_ERRORS=/'
grep -i panick /tmp/vgpud.log && echo "PANICKED=yes"
exit 0
"#;

/// The story runs once; each test below checks one chapter of it.
fn story() -> &'static GuestRun {
    static RUN: OnceLock<GuestRun> = OnceLock::new();
    real_kernel::run_once(&RUN, SCRIPT)
}

fn json(run: &GuestRun, key: &str) -> serde_json::Value {
    let text = run.value(key);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{key} is not JSON ({e}): {text}"))
}

#[test]
fn enumerates_the_real_parents_and_types() {
    let run = story();
    let parents = json(run, "PARENTS");
    let names: Vec<&str> = parents["parents"]
        .as_array()
        .expect("parents")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["mbochs", "mdpy", "mtty"], "{parents}");
    let types = json(run, "TYPES");
    let mtty1 = types["types"]
        .as_array()
        .expect("types")
        .iter()
        .find(|t| t["id"] == "mtty-1")
        .unwrap_or_else(|| panic!("no mtty-1 in {types}"));
    assert_eq!(mtty1["name"], "Single port serial");
    assert_eq!(mtty1["available_instances"], 24);
}

#[test]
fn creates_on_the_real_kernel_and_maps_every_refusal() {
    let run = story();
    assert_eq!(run.value("CREATE_RC"), "0", "{}", run.value("CREATE_ERR"));
    assert_eq!(run.value("SYSFS_U1_TYPE"), "mtty-2");
    assert_eq!(run.value("DUP_RC"), "5");
    // Regression: the message once read "... exists already exists".
    assert_eq!(
        run.value("DUP_ERR"),
        "vgpuctl: a device with UUID c0ffee00-0000-4000-8000-000000000001 already exists (org.vgpud1.Error.AlreadyExists)"
    );
    assert_eq!(
        run.value("DUP_UPPER_RC"),
        "5",
        "{}",
        run.value("DUP_UPPER_ERR")
    );
    assert_eq!(
        run.value("BAD_UUID_RC"),
        "3",
        "{}",
        run.value("BAD_UUID_ERR")
    );
    assert_eq!(run.value("NO_TYPE_RC"), "4", "{}", run.value("NO_TYPE_ERR"));
    assert!(
        !run.values().contains_key("MDPY_FILL_FAILED"),
        "{}",
        run.output
    );
    assert_eq!(
        run.value("MDPY_FULL_RC"),
        "6",
        "{}",
        run.value("MDPY_FULL_ERR")
    );
    // One dual port of the pool of 24 is gone, on the kernel and on the bus alike.
    assert_eq!(run.value("MTTY1_AVAILABLE"), "22");
    let on_bus = json(run, "AVAILABLE_ON_BUS");
    let mtty1 = on_bus["types"]
        .as_array()
        .expect("types")
        .iter()
        .find(|t| t["id"] == "mtty-1")
        .expect("mtty-1");
    assert_eq!(mtty1["available_instances"], 22, "{on_bus}");
}

#[test]
fn devices_made_by_a_shell_and_by_mdevctl_appear_and_go() {
    let run = story();
    assert_eq!(run.value("SHELL_DEVICE_SEEN"), "yes");
    assert_eq!(run.value("MDEVCTL_DEVICE_SEEN"), "yes");
    assert_eq!(run.value("EXTERNAL_REMOVE_SEEN"), "yes");
}

#[test]
fn a_held_device_is_busy_then_a_forced_remove_waits_off_the_loop() {
    let run = story();
    assert!(run.value("HOLDER_SAYS").contains("held"), "{}", run.output);
    assert_eq!(
        run.value("HELD_REMOVE_RC"),
        "7",
        "{}",
        run.value("HELD_REMOVE_ERR")
    );
    let holder = run.value("HOLDER_PID");
    assert!(
        run.value("HELD_REMOVE_ERR").contains(&holder),
        "Busy must name the holder's pid {holder}: {}",
        run.value("HELD_REMOVE_ERR")
    );
    assert_eq!(
        run.value("FORCE_WAITING"),
        "yes",
        "the forced remove must wait for the holder"
    );
    run.value("ANSWERED_WHILE_WAITING_MS");
    assert_eq!(run.value("FORCE_RC"), "0");
    assert_eq!(run.value("FORCED_GONE"), "yes");
}

#[test]
fn autostart_definitions_come_back_after_rmmod_and_insmod() {
    let run = story();
    assert_eq!(run.value("DEFINE_RC"), "0", "{}", run.value("DEFINE_ERR"));
    assert_eq!(run.value("START_RC"), "0", "{}", run.value("START_ERR"));
    assert_eq!(
        run.value("AUTOSTART_RC"),
        "0",
        "{}",
        run.value("AUTOSTART_ERR")
    );
    assert_eq!(run.value("RMMOD"), "ok");
    assert!(
        !run.value("PARENTS_AFTER_RMMOD").contains("\"mtty\""),
        "{}",
        run.value("PARENTS_AFTER_RMMOD")
    );
    assert_eq!(run.value("INSMOD"), "ok");
    assert_eq!(run.value("AUTOSTARTED"), "yes", "{}", run.output);
    assert!(run
        .value("SYSFS_AFTER_INSMOD")
        .contains("c0ffee00-0000-4000-8000-000000000004"));
    assert!(run
        .value("DEFINED")
        .contains("c0ffee00-0000-4000-8000-000000000004"));
}

#[test]
fn a_restart_adopts_the_live_devices() {
    let run = story();
    let after = json(run, "AFTER_RESTART");
    let mut listed: Vec<&str> = after["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|d| d["uuid"].as_str())
        .collect();
    listed.sort();
    let at_end = run.value("SYSFS_AT_END");
    let mut in_sysfs: Vec<&str> = at_end.split_whitespace().collect();
    in_sysfs.sort();
    assert_eq!(listed, in_sysfs, "{after}");
    assert!(listed.contains(&"c0ffee00-0000-4000-8000-000000000005"));
    assert!(!run.values().contains_key("PANICKED"), "{}", run.output);
}
