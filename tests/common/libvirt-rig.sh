#!/usr/bin/env bash
# Runs Debian's real libvirtd beside vgpud over vgpud-sim, without systemd, in the private
# mount, network and PID namespaces `unshare -m -n -p -f --kill-child --mount-proc
# --propagation private` gives this script (KERNEL-ABI.md section 7 has the recipe). Nothing
# here touches the host: /run is a tmpfs, /etc/libvirt, /etc/mdevctl.d, /etc/passwd and
# /etc/group are bind-mounted copies, /var and /dev are overlays whose upper layers live in the
# scratch directory, and /sys is the simulator. The only fake is the /dev/vfio/vfio node that
# lets libvirt reach its mdev lookup. When this script (PID 1 of its namespace) ends, the
# kernel ends every process in it and the mounts go with the namespace.
#
#   libvirt-rig.sh SCRATCH     (env: VGPUD, VGPUCTL, VGPUD_SIM, QEMU_ROOT, SIM_PROFILES)
# Writes SCRATCH/ready once `virsh` answers, then waits; SCRATCH/rig.log has the steps.
set -euo pipefail

S=$1
exec >>"$S/rig.log" 2>&1
step() { printf '[%s] %s\n' "$(date +%T.%N)" "$*"; }
die() { step "FAILED: $*"; exit 1; }
wait_for() { # what, seconds, command...
    local what=$1 limit=$2 i
    shift 2
    for ((i = 0; i < limit * 20; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    die "$what did not come up within ${limit}s"
}

step "namespaces: pid $$"
mount --make-rprivate /

# /run: a private tmpfs with the system bus socket and libudev's sign that udevd runs.
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/dbus /run/udev /run/vgpud
: >/run/udev/control

# /var: an overlay, so libvirt's state, cache and logs land in the scratch directory.
mkdir -p "$S/var.upper" "$S/var.work"
mount -t overlay overlay -o "lowerdir=/var,upperdir=$S/var.upper,workdir=$S/var.work" /var
mkdir -p /var/lib/libvirt /var/cache/libvirt /var/log/libvirt

# /dev: an overlay too, for the one fake node; the submounts come back on top of it.
mkdir -p "$S/dev.lower" "$S/dev.upper" "$S/dev.work"
mount --rbind /dev "$S/dev.lower"
mount -t overlay overlay -o "lowerdir=$S/dev.lower,upperdir=$S/dev.upper,workdir=$S/dev.work" /dev
for sub in pts shm; do
    mount --rbind "$S/dev.lower/$sub" "/dev/$sub"
done
mkdir -p /dev/vfio
mknod -m 0666 /dev/vfio/vfio c 10 196

# The users libvirt insists on, in copies of passwd and group.
cp /etc/passwd "$S/passwd"
cp /etc/group "$S/group"
grep -q '^kvm:' "$S/group" || echo 'kvm:x:107:' >>"$S/group"
echo 'libvirt-qemu:x:64055:' >>"$S/group"
echo 'libvirt:x:64056:' >>"$S/group"
echo 'libvirt-qemu:x:64055:64055:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin' >>"$S/passwd"
mount --bind "$S/passwd" /etc/passwd
mount --bind "$S/group" /etc/group

mount --bind "$S/etc-libvirt" /etc/libvirt
mount --bind "$S/mdevctl.d" /etc/mdevctl.d

# The simulator, broadcasting its uevents in this network namespace, becomes /sys.
step "simulator: $SIM_PROFILES"
# shellcheck disable=SC2086 # one word per profile
"$VGPUD_SIM" "$S/sys" --run-dir "$S/sim" $SIM_PROFILES --netlink-uevents >"$S/sim.log" 2>&1 &
wait_for "the simulator" 30 test -e "$S/sys/bus/pci/devices"
mount --rbind "$S/sys" /sys
export SYSTEMD_DEVICE_VERIFY_SYSFS=0

step "system bus"
dbus-daemon --config-file="$S/bus.conf" --nofork --nopidfile >"$S/dbus.log" 2>&1 &
wait_for "the system bus" 30 test -S /run/dbus/system_bus_socket

step "vgpud"
"$VGPUD" --sysfs /sys --dev /dev --events udev --definitions-dir /etc/mdevctl.d \
    --state-dir "$S/vgpud-state" --config-dir "$S/vgpud-config" >"$S/vgpud.log" 2>&1 &
vgpud_owns_its_name() {
    dbus-send --system --print-reply --dest=org.freedesktop.DBus /org/freedesktop/DBus \
        org.freedesktop.DBus.NameHasOwner string:org.vgpud | grep -q 'boolean true'
}
wait_for "vgpud" 30 vgpud_owns_its_name

step "libvirtd"
# QEMU (a wrapper around Debian's, fetched by scripts/fetch-qemu) is found on libvirtd's PATH.
PATH="$S/bin:$PATH" libvirtd --verbose >"$S/libvirtd.log" 2>&1 &
wait_for "libvirtd" 60 virsh -c qemu:///system uri
step "ready"
: >"$S/ready"
wait
