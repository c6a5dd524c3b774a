//! vgpud-vmm attaches real mdev devices through real VFIO: Debian's kernel under QEMU (TCG)
//! with the sample drivers mtty (a 16550 UART), mdpy and mbochs (displays with a memory BAR),
//! and the nested /dev/kvm that kvm_amd gives inside it. Each test is one boot; the built-in
//! payload pci-probe runs in the nested guest and prints what each step did.

#[path = "common/real_kernel.rs"]
mod real_kernel;

use real_kernel::{assert_line, assert_no_dev_opened, GuestRun};

const UUID: &str = "6c1d0000-0000-4000-8000-0000000000a1";

/// A script that creates one `mdev_type` device of `parent`, runs pci-probe on it through VFIO
/// (serial log in $SCRATCH/probe.log), and removes the device, which the kernel only allows
/// once the VMM has closed its VFIO group. The VMM runs as vgpud runs it: jailed, every file
/// by descriptor — the container and the group opened here as vgpud opens them — and under
/// strace, which logs every open it makes (in $SCRATCH/strace.log).
fn probe_script(parent: &str, mdev_type: &str) -> String {
    format!(
        r#"
insmod {parent}
echo {UUID} > /sys/class/mdev_bus/{parent}/mdev_supported_types/{mdev_type}/create
G=/dev/vfio/$(basename $(readlink /sys/bus/mdev/devices/{UUID}/iommu_group))
echo "GROUP=$(test -c $G && echo yes)"
exec 5</dev/kvm 6>"$SCRATCH/probe.log" 7<>/dev/vfio/vfio 8<>$G
timeout 120 strace -f --seccomp-bpf -e trace=open,openat,openat2 -o "$SCRATCH/strace.log" \
    "$VGPUD_VMM" --device vfio-group:fd:8:/sys/bus/mdev/devices/{UUID} --vfio-container fd:7 \
    --payload pci-probe --serial-log fd:6 --kvm fd:5 --jail-uid 65534 --jail-gid 65534 --seccomp
echo "VMM_STATUS=$?"
exec 5<&- 6>&- 7<&- 8<&-
timeout 20 sh -c 'echo 1 > /sys/bus/mdev/devices/{UUID}/remove' && echo "REMOVED=yes"
"#
    )
}

/// Runs `probe_script` and checks what every device shows: a VFIO device (not emulated), the
/// probe ran to its end, nothing mismatched, and the VMM let go of the device.
fn probe(parent: &str, mdev_type: &str) -> (GuestRun, String) {
    let run = real_kernel::run(&probe_script(parent, mdev_type));
    run.assert_ok();
    let log = run.file("probe.log");
    assert_eq!(run.value("GROUP"), "yes", "{}", run.output);
    assert_eq!(run.value("VMM_STATUS"), "0", "{}\n{log}", run.output);
    assert!(
        run.output.contains(&format!(
            "device: 00:01.0 VFIO /sys/bus/mdev/devices/{UUID}"
        )),
        "{}",
        run.output
    );
    assert!(!run.output.contains("emulated"), "{}", run.output);
    assert!(!log.contains("MISMATCH"), "{log}");
    assert_line(&log, "target 00:01");
    assert_line(&log, "pci-probe: done");
    assert_eq!(run.value("REMOVED"), "yes", "{}", run.output);
    assert_no_dev_opened(&run.file("strace.log"));
    (run, log)
}

#[test]
fn mtty_uart_passes_scratch_and_intx_through_vfio() {
    let (_, log) = probe("mtty", "mtty-2");
    assert_line(&log, "00:01.0 4348:3253 class 070002");
    assert_line(&log, "  bar0 io addr=0000c000 size=00000008");
    assert_line(&log, "  bar1 io addr=0000c008 size=00000008");
    assert_line(&log, "kind: 16550 UART (class 0700, io bar0)");
    assert_line(&log, "bar0 moved to 0000d000");
    // SCR, the 16550's 8-bit scratch register, through VFIO region writes and reads.
    assert_line(&log, "uart scratch bar0+7 wrote 5a read 5a ok");
    // mtty signals its INTx eventfd when IER's THR-empty bit is set; KVM injects it (irqfd).
    assert_line(&log, "irq line=0a");
    assert_line(&log, "irq count=1");
    assert_line(&log, "irq again count=1");
    // mtty's config space has no capability list: MSI and MSI-X cannot be programmed.
    assert_line(&log, "msi: not applicable (no MSI capability)");
    assert_line(&log, "msix: not applicable (no MSI-X capability)");
    assert_line(&log, "ram bar: not applicable (no prefetchable memory BAR)");
}

/// The display samples' framebuffer BAR is mmapped from the VFIO device fd and becomes a KVM
/// memory slot: the guest's write is in the VMM's mapping, follows the BAR's move, and no
/// access traps.
fn assert_memory_bar_round_trip(log: &str) {
    assert_line(log, "kind: no registers known to pci-probe (class 0380)");
    assert_line(log, "bar0 moved to e0000000");
    assert_line(log, "scratch: not applicable (no scratch register known)");
    assert_line(log, "irq: not applicable (interrupt pin 0)");
    assert_line(log, "msi: not applicable (no MSI capability)");
    assert_line(log, "msix: not applicable (no MSI-X capability)");
    assert_line(
        log,
        "ram bar0 at e0000000 wrote 1234abcd host saw 1234abcd ok",
    );
    assert_line(log, "ram bar moved to e2000000 read 1234abcd ok");
    assert_line(log, "ram traps=0");
}

#[test]
fn mdpy_framebuffer_bar_is_a_memory_slot_through_vfio() {
    let (_, log) = probe("mdpy", "mdpy-vga");
    assert_line(&log, "00:01.0 1b36:000f class 038000");
    // 640x480x4 bytes, rounded up to a power of two for the BAR.
    assert_line(&log, "  bar0 mem32 prefetch addr=c0000000 size=00200000");
    assert_memory_bar_round_trip(&log);
}

#[test]
fn mbochs_framebuffer_bar_is_a_memory_slot_through_vfio() {
    let (_, log) = probe("mbochs", "mbochs-small");
    assert_line(&log, "00:01.0 1234:1111 class 038000");
    assert_line(&log, "  bar0 mem32 prefetch addr=c0000000 size=00400000");
    // The MMIO register BAR is not mmappable: it stays trapped.
    assert_line(&log, "  bar2 mem32 addr=c0400000 size=00001000");
    assert_memory_bar_round_trip(&log);
}

#[test]
fn three_vfio_devices_share_one_guest_in_their_own_slots() {
    let run = real_kernel::run(
        r#"
insmod mtty && insmod mdpy && insmod mbochs
U=6c1d0000-0000-4000-8000-0000000000b
echo ${U}1 > /sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2/create
echo ${U}2 > /sys/class/mdev_bus/mdpy/mdev_supported_types/mdpy-vga/create
echo ${U}3 > /sys/class/mdev_bus/mbochs/mdev_supported_types/mbochs-small/create
timeout 120 "$VGPUD_VMM" --device vfio:/sys/bus/mdev/devices/${U}1 \
    --device vfio:/sys/bus/mdev/devices/${U}2 --device vfio:/sys/bus/mdev/devices/${U}3 \
    --payload pci-probe --serial-log "$SCRATCH/probe.log"
echo "VMM_STATUS=$?"
"#,
    );
    run.assert_ok();
    let log = run.file("probe.log");
    assert_eq!(run.value("VMM_STATUS"), "0", "{}\n{log}", run.output);
    assert_line(&log, "00:01.0 4348:3253 class 070002");
    assert_line(&log, "00:02.0 1b36:000f class 038000");
    assert_line(&log, "00:03.0 1234:1111 class 038000");
    // Placed one after the other, as firmware would.
    assert_line(&log, "  bar0 io addr=0000c000 size=00000008");
    assert_line(&log, "  bar0 mem32 prefetch addr=c0000000 size=00200000");
    assert_line(&log, "  bar0 mem32 prefetch addr=c0400000 size=00400000");
    assert_line(&log, "  bar2 mem32 addr=c0800000 size=00001000");
    // The first device (mtty) is the one exercised.
    assert_line(&log, "uart scratch bar0+7 wrote 5a read 5a ok");
    assert_line(&log, "irq count=1");
    assert_line(&log, "irq again count=1");
    assert_line(&log, "pci-probe: done");
}

#[test]
fn vgpud_launches_a_guest_on_a_real_mtty_device() {
    let run = real_kernel::run(&format!(
        r#"
insmod mtty
{prelude}start_vgpud
$C create mtty-2 --parent mtty --uuid {UUID}
echo "CREATE_STATUS=$?"
timeout 120 $C launch {UUID} --payload pci-probe >"$SCRATCH/launch.log" 2>&1
echo "LAUNCH_STATUS=$?"
cat /tmp/state/guests/*.vmm.log >"$SCRATCH/vmm.log"
$C remove {UUID}
echo "REMOVE_STATUS=$?"
"#,
        prelude = real_kernel::VGPUD_ON_PRIVATE_BUS
    ));
    run.assert_ok();
    let log = run.file("launch.log");
    let daemon = run.file("vgpud.log");
    let vmm = run.file("vmm.log");
    assert_eq!(run.value("CREATE_STATUS"), "0", "{}\n{daemon}", run.output);
    assert_eq!(run.value("LAUNCH_STATUS"), "0", "{log}\n{vmm}\n{daemon}");
    // The VMM's own report: the device went through VFIO (by the directory the daemon knows
    // it by), not the emulated path.
    assert!(
        vmm.contains(&format!(
            "device: 00:01.0 VFIO /sys/devices/virtual/mtty/mtty/{UUID}"
        )),
        "{vmm}"
    );
    assert_line(&log, "00:01.0 4348:3253 class 070002");
    assert_line(&log, "kind: 16550 UART (class 0700, io bar0)");
    assert_line(&log, "bar0 moved to 0000d000");
    assert_line(&log, "uart scratch bar0+7 wrote 5a read 5a ok");
    assert_line(&log, "irq count=1");
    assert_line(&log, "irq again count=1");
    assert_line(&log, "msi: not applicable (no MSI capability)");
    assert_line(&log, "msix: not applicable (no MSI-X capability)");
    assert_line(&log, "ram bar: not applicable (no prefetchable memory BAR)");
    assert_line(&log, "pci-probe: done");
    assert_line(&log, "vgpuctl: guest exited with status 0");
    assert!(!log.contains("emulated"), "{log}");
    assert!(!log.contains("MISMATCH"), "{log}");
    assert_eq!(run.value("REMOVE_STATUS"), "0", "{}\n{daemon}", run.output);
}

/// vgpud SIGKILLed while its guest runs on a real mtty device through VFIO: the restarted
/// daemon adopts the VMM (same Guest object, pid and UUID), the device stays InUse and cannot
/// be removed, and stopping the adopted guest frees it.
#[test]
fn a_restarted_vgpud_adopts_a_running_guest_and_its_device_stays_in_use() {
    let dev = format!("/org/vgpud/devices/{}", UUID.replace('-', "_"));
    let run = real_kernel::run(&format!(
        r#"
insmod mtty
{prelude}start_vgpud
$C create mtty-2 --parent mtty --uuid {UUID}
$C launch {UUID} --payload loop >/dev/null 2>&1 &
for i in $(seq 100); do [ -f /tmp/state/guests/1.guest.json ] && break; sleep 0.1; done
echo "PID_BEFORE=$($B get-property org.vgpud /org/vgpud/guests/1 org.vgpud1.Guest Pid)"
VMM=$($B get-property org.vgpud /org/vgpud/guests/1 org.vgpud1.Guest Pid | cut -d' ' -f2)
for i in $(seq 100); do grep -q '^Seccomp:.2' /proc/$VMM/status && break; sleep 0.1; done
echo "VMM_VFIO_FDS=$(for f in /proc/$VMM/fd/*; do echo "${{f##*/}}>$(readlink $f)"; done | grep '>/dev/vfio/' | sort -n | tr '\n' ' ')"
echo "VMM_ARGV=$(tr '\0' ' ' </proc/$VMM/cmdline)"
echo "UUID_BEFORE=$($B get-property org.vgpud /org/vgpud/guests/1 org.vgpud1.Guest Uuid)"
kill -9 $VGPUD_PID; wait $VGPUD_PID 2>/dev/null
start_vgpud
echo "STATE=$($B get-property org.vgpud /org/vgpud/guests/1 org.vgpud1.Guest State)"
echo "PID_AFTER=$($B get-property org.vgpud /org/vgpud/guests/1 org.vgpud1.Guest Pid)"
echo "UUID_AFTER=$($B get-property org.vgpud /org/vgpud/guests/1 org.vgpud1.Guest Uuid)"
echo "INUSE=$($B get-property org.vgpud {dev} org.vgpud1.Device InUse)"
echo "API=$($B get-property org.vgpud /org/vgpud/guests/1 org.vgpud1.Guest VfioApi)"
$C remove {UUID} >"$SCRATCH/busy.log" 2>&1
echo "BUSY_STATUS=$?"
$B call org.vgpud /org/vgpud/guests/1 org.vgpud1.Guest Stop
echo "STOP_STATUS=$?"
echo "STATE_STOPPED=$($B get-property org.vgpud /org/vgpud/guests/1 org.vgpud1.Guest State)"
for i in $(seq 50); do [ "$($B get-property org.vgpud {dev} org.vgpud1.Device InUse)" = "b false" ] && break; sleep 0.1; done
$C remove {UUID}
echo "REMOVE_STATUS=$?"
"#,
        prelude = real_kernel::VGPUD_ON_PRIVATE_BUS
    ));
    run.assert_ok();
    let daemon = run.file("vgpud.log");
    let pid = run.value("PID_BEFORE");
    assert!(pid.starts_with("u "), "{}\n{daemon}", run.output);
    assert_eq!(run.value("PID_AFTER"), pid, "{}\n{daemon}", run.output);
    assert_eq!(run.value("UUID_AFTER"), run.value("UUID_BEFORE"));
    // The running, jailed VMM holds the container and the group vgpud opened, at the numbers
    // its command line gives, and no other /dev/vfio node; it was given no /dev path at all.
    let argv = run.value("VMM_ARGV");
    let fds: Vec<(String, String)> = run
        .value("VMM_VFIO_FDS")
        .split_whitespace()
        .filter_map(|e| e.split_once('>'))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect();
    let fd_of = |want: &dyn Fn(&str) -> bool| {
        let hits: Vec<&String> = fds
            .iter()
            .filter(|(_, t)| want(t))
            .map(|(n, _)| n)
            .collect();
        match hits.as_slice() {
            [n] => n.to_string(),
            _ => panic!("not one such /dev/vfio node held: {fds:?}\n{argv}"),
        }
    };
    let container = fd_of(&|t| t == "/dev/vfio/vfio");
    let group = fd_of(&|t| t[10..].bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(fds.len(), 2, "{fds:?}");
    assert!(
        argv.contains(&format!("--vfio-container fd:{container} ")),
        "{argv}\n{fds:?}"
    );
    assert!(
        argv.contains(&format!(
            "--device vfio-group:fd:{group}:/sys/devices/virtual/mtty/mtty/{UUID} "
        )),
        "{argv}\n{fds:?}"
    );
    assert!(!argv.contains("/dev/"), "{argv}");
    assert_eq!(
        run.value("STATE"),
        "s \"running\"",
        "{}\n{daemon}",
        run.output
    );
    assert_eq!(run.value("INUSE"), "b true", "{}\n{daemon}", run.output);
    // Debian's 6.1 has no iommufd: the group API.
    assert_eq!(run.value("API"), "s \"group\"");
    assert_eq!(run.value("BUSY_STATUS"), "7", "{}", run.file("busy.log"));
    assert_eq!(run.value("STOP_STATUS"), "0", "{}\n{daemon}", run.output);
    assert_eq!(run.value("STATE_STOPPED"), "s \"exited\"");
    assert_eq!(run.value("REMOVE_STATUS"), "0", "{}\n{daemon}", run.output);
}
