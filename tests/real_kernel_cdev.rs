//! VFIO through the device cdev and iommufd on a real kernel: Debian 12's 6.12 under QEMU (TCG),
//! its iommufd, VFIO (with VFIO_DEVICE_CDEV), mdev and mtty modules rebuilt from its source by
//! `scripts/fetch-real-kernel --series 6.12`, and the nested /dev/kvm inside it. The same mdev
//! also goes through the group API there. Each test is one boot; the built-in payload pci-probe
//! runs in the nested guest and prints what each step did.

#[path = "common/real_kernel.rs"]
mod real_kernel;

use real_kernel::{assert_line, assert_no_dev_opened, GuestRun};

const UUID: &str = "6c1d0000-0000-4000-8000-0000000000c1";

/// Creates an mtty-2 device and prints where the kernel put its cdev (`CDEV`, empty without
/// one), whether /dev/iommu exists and its group node.
fn create_mtty() -> String {
    format!(
        r#"
insmod mtty
echo {UUID} > /sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2/create
D=/sys/bus/mdev/devices/{UUID}
CDEV=/dev/vfio/devices/$(ls $D/vfio-dev 2>/dev/null)
echo "CDEV=$(test -c $CDEV && echo $CDEV)"
echo "IOMMUFD=$(test -c /dev/iommu && echo yes)"
G=/dev/vfio/$(basename $(readlink $D/iommu_group))
"#
    )
}

/// Runs pci-probe on the mtty device as vgpud runs the VMM — jailed, with seccomp, every file
/// by descriptor, opened here — under strace (every open it makes, in $SCRATCH/strace.log),
/// then removes the device, which the kernel allows once the VMM let go of it. `files` opens
/// descriptors 7 and 8, `device` names them to the VMM.
fn probe_script(files: &str, device: &str) -> String {
    format!(
        r#"{create}
exec 5</dev/kvm 6>"$SCRATCH/probe.log" {files}
timeout 120 strace -f --seccomp-bpf -e trace=open,openat,openat2 -o "$SCRATCH/strace.log" \
    "$VGPUD_VMM" {device} --payload pci-probe --serial-log fd:6 --kvm fd:5 \
    --jail-uid 65534 --jail-gid 65534 --seccomp
echo "VMM_STATUS=$?"
exec 5<&- 6>&- 7<&- 8<&-
timeout 20 sh -c 'echo 1 > /sys/bus/mdev/devices/{UUID}/remove' && echo "REMOVED=yes"
"#,
        create = create_mtty()
    )
}

/// What pci-probe shows of a working mtty: its UART's scratch register through VFIO region
/// accesses, and its INTx twice (the second needs the first one unmasked after the guest's
/// acknowledgement).
fn assert_mtty_probe(log: &str) {
    assert!(!log.contains("MISMATCH"), "{log}");
    assert_line(log, "00:01.0 4348:3253 class 070002");
    assert_line(log, "  bar0 io addr=0000c000 size=00000008");
    assert_line(log, "  bar1 io addr=0000c008 size=00000008");
    assert_line(log, "target 00:01");
    assert_line(log, "kind: 16550 UART (class 0700, io bar0)");
    assert_line(log, "bar0 moved to 0000d000");
    assert_line(log, "uart scratch bar0+7 wrote 5a read 5a ok");
    assert_line(log, "irq line=0a");
    assert_line(log, "irq count=1");
    assert_line(log, "irq again count=1");
    assert_line(log, "pci-probe: done");
}

/// The checks every direct probe shares: the device exists both ways, the VMM ran the probe to
/// its end through VFIO and let go of the device.
fn assert_probe_ran(run: &GuestRun) -> String {
    run.assert_ok();
    let log = run.file("probe.log");
    assert_eq!(
        run.value("CDEV"),
        "/dev/vfio/devices/vfio0",
        "{}",
        run.output
    );
    assert_eq!(run.value("IOMMUFD"), "yes", "{}", run.output);
    assert_eq!(run.value("VMM_STATUS"), "0", "{}\n{log}", run.output);
    assert!(!run.output.contains("emulated"), "{}", run.output);
    assert_mtty_probe(&log);
    assert_eq!(run.value("REMOVED"), "yes", "{}", run.output);
    assert_no_dev_opened(&run.file("strace.log"));
    log
}

#[test]
fn mtty_passes_through_its_vfio_cdev_bound_to_an_iommufd() {
    let run = real_kernel::run_on_cdev_kernel(&probe_script(
        "7<>/dev/iommu 8<>$CDEV",
        "--device vfio-cdev:fd:8 --iommufd fd:7",
    ));
    assert_probe_ran(&run);
    assert!(
        run.output.contains("device: 00:01.0 VFIO cdev fd:8"),
        "{}",
        run.output
    );
}

#[test]
fn mtty_passes_through_its_vfio_group_on_the_cdev_kernel() {
    let run = real_kernel::run_on_cdev_kernel(&probe_script(
        "7<>/dev/vfio/vfio 8<>$G",
        &format!("--device vfio-group:fd:8:/sys/bus/mdev/devices/{UUID} --vfio-container fd:7"),
    ));
    assert_probe_ran(&run);
    assert!(
        run.output.contains(&format!(
            "device: 00:01.0 VFIO /sys/bus/mdev/devices/{UUID}"
        )),
        "{}",
        run.output
    );
}

/// vgpud on its private bus (see `real_kernel::VGPUD_ON_PRIVATE_BUS`), started, with the
/// device made.
fn with_vgpud(body: &str) -> String {
    format!(
        "{create}\n{prelude}start_vgpud\n{body}\n",
        create = create_mtty(),
        prelude = real_kernel::VGPUD_ON_PRIVATE_BUS
    )
}

#[test]
fn vgpud_launches_a_guest_through_the_vfio_cdev() {
    let run = real_kernel::run_on_cdev_kernel(&with_vgpud(&format!(
        r#"
timeout 120 $C launch {UUID} --payload pci-probe >"$SCRATCH/launch.log" 2>&1
echo "LAUNCH_STATUS=$?"
echo "API=$($B get-property org.vgpud /org/vgpud/guests/1 org.vgpud1.Guest VfioApi)"
cat /tmp/state/guests/*.vmm.log >"$SCRATCH/vmm.log"
$C remove {UUID}
echo "REMOVE_STATUS=$?"
"#
    )));
    run.assert_ok();
    let log = run.file("launch.log");
    let daemon = run.file("vgpud.log");
    let vmm = run.file("vmm.log");
    assert_eq!(run.value("IOMMUFD"), "yes", "{}", run.output);
    assert_eq!(run.value("LAUNCH_STATUS"), "0", "{log}\n{vmm}\n{daemon}");
    assert_eq!(run.value("API"), "s \"cdev\"", "{}\n{daemon}", run.output);
    // The VMM's own report: the device came as a cdev descriptor, not a path or a group.
    assert!(vmm.contains("device: 00:01.0 VFIO cdev fd:"), "{vmm}");
    assert_mtty_probe(&log);
    assert_line(&log, "vgpuctl: guest exited with status 0");
    assert_eq!(run.value("REMOVE_STATUS"), "0", "{}\n{daemon}", run.output);
}

/// A running guest vgpud launched: its jailed VMM holds the device's cdev and /dev/iommu at the
/// numbers its command line gives, no other VFIO or iommufd node (no container, no group), and
/// was given no /dev path; the device shows InUse and cannot be removed until the guest stops.
/// A process outside vgpud holding only the cdev makes it InUse too, and Remove names it.
#[test]
fn a_guest_on_the_vfio_cdev_holds_exactly_the_cdev_and_the_iommufd() {
    let run = real_kernel::run_on_cdev_kernel(&with_vgpud(&format!(
        r#"
$C launch {UUID} --payload loop >/dev/null 2>&1 &
for i in $(seq 100); do [ -f /tmp/state/guests/1.guest.json ] && break; sleep 0.1; done
VMM=$($B get-property org.vgpud /org/vgpud/guests/1 org.vgpud1.Guest Pid | cut -d' ' -f2)
for i in $(seq 100); do grep -q '^Seccomp:.2' /proc/$VMM/status && break; sleep 0.1; done
echo "VMM_FDS=$(for f in /proc/$VMM/fd/*; do echo "${{f##*/}}>$(readlink $f)"; done | grep -e '>/dev/vfio' -e '>/dev/iommu' | sort -n | tr '\n' ' ')"
echo "VMM_ARGV=$(tr '\0' ' ' </proc/$VMM/cmdline)"
echo "API=$($B get-property org.vgpud /org/vgpud/guests/1 org.vgpud1.Guest VfioApi)"
$C remove {UUID} >"$SCRATCH/busy.log" 2>&1
echo "BUSY_STATUS=$?"
DEV=/org/vgpud/devices/$(echo {UUID} | tr - _)
in_use() {{ $B get-property org.vgpud $DEV org.vgpud1.Device InUse; }}
for i in $(seq 50); do [ "$(in_use)" = "b true" ] && break; sleep 0.1; done
echo "INUSE_GUEST=$(in_use)"
$B call org.vgpud /org/vgpud/guests/1 org.vgpud1.Guest Stop
echo "STOP_STATUS=$?"
echo "STATE_STOPPED=$($B get-property org.vgpud /org/vgpud/guests/1 org.vgpud1.Guest State)"
for i in $(seq 50); do [ "$(in_use)" = "b false" ] && break; sleep 0.1; done
echo "INUSE_STOPPED=$(in_use)"
# Someone else holds the cdev (as a VM manager vgpud did not start would): seen by the
# periodic check, and Remove names it.
exec 9<>/dev/vfio/devices/vfio0
for i in $(seq 60); do [ "$(in_use)" = "b true" ] && break; sleep 0.1; done
echo "INUSE_OUTSIDE=$(in_use)"
$C remove {UUID} >"$SCRATCH/busy2.log" 2>&1
echo "BUSY2_STATUS=$?"
exec 9<&-
$C remove {UUID}
echo "REMOVE_STATUS=$?"
"#
    )));
    run.assert_ok();
    let daemon = run.file("vgpud.log");
    let argv = run.value("VMM_ARGV");
    let fds: Vec<(String, String)> = run
        .value("VMM_FDS")
        .split_whitespace()
        .filter_map(|e| e.split_once('>'))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect();
    let fd_of = |node: &str| {
        let hits: Vec<&String> = fds
            .iter()
            .filter(|(_, t)| t == node)
            .map(|(n, _)| n)
            .collect();
        match hits.as_slice() {
            [n] => n.to_string(),
            _ => panic!("{node} not held exactly once: {fds:?}\n{argv}"),
        }
    };
    let cdev = fd_of("/dev/vfio/devices/vfio0");
    let iommufd = fd_of("/dev/iommu");
    assert_eq!(fds.len(), 2, "{fds:?}");
    assert!(
        argv.contains(&format!("--device vfio-cdev:fd:{cdev} ")),
        "{argv}\n{fds:?}"
    );
    assert!(
        argv.contains(&format!("--iommufd fd:{iommufd} ")),
        "{argv}\n{fds:?}"
    );
    assert!(!argv.contains("/dev/"), "{argv}");
    assert!(!argv.contains("--vfio-container"), "{argv}");
    assert_eq!(run.value("API"), "s \"cdev\"", "{}\n{daemon}", run.output);
    assert_eq!(run.value("BUSY_STATUS"), "7", "{}", run.file("busy.log"));
    assert_eq!(run.value("STOP_STATUS"), "0", "{}\n{daemon}", run.output);
    assert_eq!(run.value("STATE_STOPPED"), "s \"exited\"");
    assert_eq!(
        run.value("INUSE_GUEST"),
        "b true",
        "{}\n{daemon}",
        run.output
    );
    assert_eq!(
        run.value("INUSE_STOPPED"),
        "b false",
        "{}\n{daemon}",
        run.output
    );
    assert_eq!(
        run.value("INUSE_OUTSIDE"),
        "b true",
        "{}\n{daemon}",
        run.output
    );
    assert_eq!(run.value("BUSY2_STATUS"), "7", "{}", run.file("busy2.log"));
    assert!(
        run.file("busy2.log").contains("held open by pid"),
        "{}",
        run.file("busy2.log")
    );
    assert_eq!(run.value("REMOVE_STATUS"), "0", "{}\n{daemon}", run.output);
}
