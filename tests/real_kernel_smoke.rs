//! The real-kernel tier boots: Debian's kernel under QEMU loads the sample mdev drivers and
//! shows their parents, and the host's binaries run in the guest's chroot.

#[path = "common/real_kernel.rs"]
mod real_kernel;

#[test]
fn the_sample_drivers_register_mdev_parents() {
    let run = real_kernel::run(
        r#"
insmod mtty && insmod mdpy && insmod mbochs
echo "PARENTS=$(ls /sys/class/mdev_bus | tr '\n' ' ')"
echo "KERNEL=$(uname -r)"
echo "VFIO=$(test -c /dev/vfio/vfio && echo yes)"
echo "KVM=$(test -c /dev/kvm && echo yes)"
"$VGPUCTL" --version
"#,
    );
    run.assert_ok();
    assert_eq!(run.value("PARENTS"), "mbochs mdpy mtty ");
    assert!(run.value("KERNEL").ends_with("-amd64"), "{}", run.output);
    assert_eq!(run.value("VFIO"), "yes");
    assert_eq!(
        run.value("KVM"),
        "yes",
        "kvm_amd under TCG's -cpu max gives a nested /dev/kvm"
    );
    assert!(run.output.contains("vgpuctl"), "{}", run.output);
}
