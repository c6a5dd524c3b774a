//! Boot-aware autostart on the real kernel: the vendor driver is loaded after vgpud started
//! and, like a vendor whose daemon is still starting, answers its first creates with EAGAIN
//! (`mtty_late`: the kernel's mtty sample with a `not_ready` countdown in its probe, built by
//! scripts/fetch-real-kernel). vgpud retries the parent's autostart definition until it starts.

#[path = "common/real_kernel.rs"]
mod real_kernel;

const SCRIPT: &str = r#"
A=unix:path=/tmp/bus
U=c0ffee00-0000-4000-8000-0000000000b1
ctl() { "$VGPUCTL" --address "$A" --timeout 20 "$@"; }
problems() { busctl --address="$A" get-property org.vgpud /org/vgpud org.vgpud1.Manager Problems; }
mkdir -p /tmp/defs /tmp/conf/policy.d /tmp/state
dbus-daemon --session --address="$A" --nofork --nopidfile >/tmp/bus.log 2>&1 &
sleep 0.3
"$VGPUD" --address "$A" --sysfs /sys --events kernel --definitions-dir /tmp/defs \
    --config-dir /tmp/conf --state-dir /tmp/state >/tmp/vgpud.log 2>&1 &
for _ in $(seq 200); do ctl parents >/dev/null 2>&1 && break; sleep 0.1; done
ctl define mtty-1 --parent mtty --uuid $U --auto >/dev/null || { echo "DEFINE=failed"; exit 3; }
echo "PARENTS_BEFORE=$(ls /sys/class/mdev_bus | wc -l)"
insmod mtty_late not_ready=3 || exit 3
seen=no
for _ in $(seq 600); do
    problems | grep -q 'vendor side not ready' && seen=yes
    [ -e /sys/bus/mdev/devices/$U ] && break
    sleep 0.1
done
echo "RETRY_SEEN=$seen"
echo "STARTED=$([ -e /sys/bus/mdev/devices/$U ] && echo yes || echo no)"
echo "NOT_READY_LEFT=$(cat /sys/module/mtty_late/parameters/not_ready)"
echo "EAGAIN_LOGGED=$(grep -c 'EAGAIN\|Resource temporarily unavailable' /tmp/vgpud.log)"
for _ in $(seq 50); do problems | grep -q 'vendor side not ready' || break; sleep 0.1; done
echo "PROBLEMS_AFTER=$(problems)"
"#;

#[test]
fn autostart_waits_out_a_vendor_driver_that_is_not_ready() {
    let run = real_kernel::run(SCRIPT);
    run.assert_ok();
    assert_eq!(run.value("PARENTS_BEFORE"), "0", "{}", run.output);
    assert_eq!(run.value("STARTED"), "yes", "{}", run.output);
    assert_eq!(
        run.value("NOT_READY_LEFT"),
        "0",
        "all three refusals were met: {}",
        run.output
    );
    assert_eq!(
        run.value("RETRY_SEEN"),
        "yes",
        "the pending retry was in Problems: {}",
        run.output
    );
    assert_ne!(run.value("EAGAIN_LOGGED"), "0", "{}", run.output);
    assert!(
        !run.value("PROBLEMS_AFTER")
            .contains("vendor side not ready"),
        "{}",
        run.output
    );
}
