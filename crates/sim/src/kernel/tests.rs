//! The kernel's rules checked on a `Kernel` built in-process: no FUSE mount, no feed socket, so
//! a broken rule shows here as one failing case rather than as a hung integration test. The
//! errno of each case mirrors tests/sim_kernel_abi.rs, which tests/real_kernel_abi.rs ties to
//! the real kernel.

use std::sync::Arc;

use libc::{EBUSY, EEXIST, EINVAL, EIO, ENODEV, ENOENT, ENOSPC, EUSERS};

use super::{Injection, Kernel, WriteOutcome};
use crate::feed::Feed;
use crate::profile;

/// The first PCI unit plugged gets this address (the first allocated slot).
const GPU0: &str = "0000:20:00.0";
const GPU1: &str = "0000:21:00.0";
const UUID_A: &str = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
const UUID_B: &str = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1002";
const UUID_C: &str = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1003";

/// A kernel with the built-in profiles `specs` (`NAME[:COUNT]`) plugged, and the events of
/// plugging them already drained.
fn kernel_with(specs: &[&str]) -> Kernel {
    let mut k = Kernel::new(Arc::new(Feed::default()));
    for spec in specs {
        for t in profile::builtin(spec).expect("a built-in profile") {
            for _ in 0..t.count {
                k.plug_template(Arc::new(t.clone())).expect("plugs");
            }
        }
    }
    k.sent.clear();
    k
}

fn line(uuid: &str) -> Vec<u8> {
    format!("{uuid}\n").into_bytes()
}

/// Creates `uuid` and fails the test if the kernel refuses.
fn created(k: &mut Kernel, parent: &str, type_id: &str, uuid: &str) {
    let r = k.create(parent, type_id, &line(uuid));
    assert_eq!(r, Ok(()), "create {uuid} on {parent}/{type_id}");
}

/// `available_instances` of a type, as the tree renders it.
fn available(k: &Kernel, parent: &str, type_id: &str) -> u64 {
    let p = &k.parents[parent];
    let ty = p.types().iter().find(|t| t.id == type_id).expect("a type");
    k.available(p, ty)
}

/// The VFs of a PF, in virtfn order.
fn vfs_of(k: &Kernel, pf: &str) -> Vec<String> {
    k.parents[pf].pci.as_ref().expect("PCI").virtfns.clone()
}

/// Events sent since the last call, as `ACTION SUBSYSTEM [DRIVER=..] [MDEV_STATE=..]`.
fn drain(k: &mut Kernel) -> Vec<String> {
    std::mem::take(&mut k.sent)
        .iter()
        .map(|e| {
            let mut s = format!("{} {}", e.action, e.subsystem);
            for key in ["DRIVER", "MDEV_STATE"] {
                if let Some(v) = e.prop(key) {
                    s.push_str(&format!(" {key}={v}"));
                }
            }
            s
        })
        .collect()
}

fn is_done(outcome: WriteOutcome, want: Result<(), i32>) -> bool {
    matches!(outcome, WriteOutcome::Done(r) if r == want)
}

// ---- create ------------------------------------------------------------------------------------

#[test]
fn create_with_capacity_adds_the_device_then_its_vfio_node_then_binds() {
    let mut k = kernel_with(&["mtty"]);
    created(&mut k, "mtty", "mtty-1", UUID_A);
    let devpath = format!("/devices/virtual/mtty/mtty/{UUID_A}");
    let sent = k.sent.clone();
    assert_eq!(
        drain(&mut k),
        ["add mdev", "add vfio-dev", "bind mdev DRIVER=mtty"]
    );
    assert_eq!(sent[0].devpath, devpath);
    assert_eq!(sent[1].devpath, format!("{devpath}/vfio-dev/vfio0"));
    let d = &k.devices[UUID_A];
    assert!(
        d.linked,
        "the mdev_type link exists once the driver is bound"
    );
    assert_eq!((d.parent.as_str(), d.type_id.as_str()), ("mtty", "mtty-1"));
    assert_eq!(available(&k, "mtty", "mtty-1"), 23);
}

#[test]
fn create_accepts_36_bytes_without_a_newline() {
    let mut k = kernel_with(&["mtty"]);
    assert_eq!(k.create("mtty", "mtty-1", UUID_A.as_bytes()), Ok(()));
}

#[test]
fn create_of_a_duplicate_is_eexist_and_sends_nothing() {
    let mut k = kernel_with(&["mtty"]);
    created(&mut k, "mtty", "mtty-1", UUID_A);
    drain(&mut k);
    assert_eq!(k.create("mtty", "mtty-2", &line(UUID_A)), Err(EEXIST));
    assert!(drain(&mut k).is_empty(), "refused before device_add()");
}

#[test]
fn create_of_a_duplicate_in_upper_case_is_eexist() {
    let mut k = kernel_with(&["mtty"]);
    created(&mut k, "mtty", "mtty-1", UUID_A);
    let upper = UUID_A.to_ascii_uppercase();
    assert_eq!(k.create("mtty", "mtty-1", &line(&upper)), Err(EEXIST));
    assert_eq!(k.devices.len(), 1);
}

#[test]
fn create_stores_an_upper_case_uuid_in_lower_case() {
    let mut k = kernel_with(&["mtty"]);
    created(&mut k, "mtty", "mtty-1", &UUID_A.to_ascii_uppercase());
    assert!(k.devices.contains_key(UUID_A));
}

#[test]
fn create_of_a_duplicate_on_another_parent_is_eexist() {
    let mut k = kernel_with(&["mtty", "mdpy"]);
    created(&mut k, "mtty", "mtty-1", UUID_A);
    assert_eq!(
        k.create("mdpy", "mdpy-vga", &line(UUID_A)),
        Err(EEXIST),
        "one global list of UUIDs"
    );
}

#[test]
fn create_with_a_malformed_uuid_is_einval() {
    let mut k = kernel_with(&["mtty"]);
    let short = &UUID_A[..35];
    let long = format!("{UUID_A}\n\n");
    let not_hex = line(&UUID_A.replace('8', "g"));
    let no_dashes = line(&UUID_A.replace('-', "x"));
    let bufs: [&[u8]; 4] = [short.as_bytes(), long.as_bytes(), &not_hex, &no_dashes];
    for buf in bufs {
        assert_eq!(
            k.create("mtty", "mtty-1", buf),
            Err(EINVAL),
            "{:?}",
            String::from_utf8_lossy(buf)
        );
    }
    assert!(k.devices.is_empty());
    assert!(drain(&mut k).is_empty());
}

#[test]
fn create_on_an_unknown_type_is_enoent() {
    let mut k = kernel_with(&["mtty"]);
    assert_eq!(k.create("mtty", "mtty-3", &line(UUID_A)), Err(ENOENT));
}

#[test]
fn vfio_index_is_the_smallest_free_one() {
    let mut k = kernel_with(&["mtty"]);
    created(&mut k, "mtty", "mtty-1", UUID_A);
    created(&mut k, "mtty", "mtty-1", UUID_B);
    assert!(is_done(k.remove(UUID_A, b"1\n"), Ok(())));
    created(&mut k, "mtty", "mtty-1", UUID_C);
    assert_eq!(k.devices[UUID_C].vfio_index, 0);
    assert_eq!(k.devices[UUID_B].vfio_index, 1);
}

// ---- capacity ----------------------------------------------------------------------------------

#[test]
fn mtty_exhaustion_is_enospc_after_device_add_announced_it() {
    let mut k = kernel_with(&["mtty"]);
    for i in 0..24 {
        created(
            &mut k,
            "mtty",
            "mtty-1",
            &format!("{:08x}-0000-0000-0000-000000000000", i),
        );
    }
    drain(&mut k);
    assert_eq!(k.create("mtty", "mtty-1", &line(UUID_A)), Err(ENOSPC));
    assert_eq!(drain(&mut k), ["add mdev", "remove mdev"]);
    assert!(!k.devices.contains_key(UUID_A));
    assert_eq!(k.pools[k.parents["mtty"].pool].used, 24);
}

#[test]
fn mtty_types_share_one_pool() {
    let mut k = kernel_with(&["mtty"]);
    created(&mut k, "mtty", "mtty-2", UUID_A);
    assert_eq!(available(&k, "mtty", "mtty-1"), 22);
    assert_eq!(available(&k, "mtty", "mtty-2"), 11);
}

#[test]
fn mdpy_per_parent_counter_is_eusers_and_sends_nothing() {
    let mut k = kernel_with(&["mdpy"]);
    for (i, ty) in ["mdpy-vga", "mdpy-xga", "mdpy-hd", "mdpy-vga"]
        .iter()
        .enumerate()
    {
        created(
            &mut k,
            "mdpy",
            ty,
            &format!("{:08x}-0000-0000-0000-000000000000", i),
        );
    }
    drain(&mut k);
    assert_eq!(k.create("mdpy", "mdpy-hd", &line(UUID_A)), Err(EUSERS));
    assert!(
        drain(&mut k).is_empty(),
        "the core's counter refuses before device_add()"
    );
}

#[test]
fn t4_after_one_type_is_used_every_other_type_reads_0() {
    let mut k = kernel_with(&["nvidia-t4"]);
    created(&mut k, GPU0, "nvidia-231", UUID_A);
    assert_eq!(available(&k, GPU0, "nvidia-231"), 7, "16 GB less one 2Q");
    assert_eq!(available(&k, GPU0, "nvidia-230"), 0);
    assert_eq!(available(&k, GPU0, "nvidia-234"), 0);
    assert_eq!(k.create(GPU0, "nvidia-230", &line(UUID_B)), Err(EINVAL));
}

#[test]
fn t4_every_type_comes_back_when_the_last_device_goes() {
    let mut k = kernel_with(&["nvidia-t4"]);
    created(&mut k, GPU0, "nvidia-231", UUID_A);
    created(&mut k, GPU0, "nvidia-231", UUID_B);
    assert!(is_done(k.remove(UUID_A, b"1"), Ok(())));
    assert_eq!(
        available(&k, GPU0, "nvidia-234"),
        0,
        "one 2Q is still there"
    );
    assert!(is_done(k.remove(UUID_B, b"1"), Ok(())));
    assert_eq!(available(&k, GPU0, "nvidia-234"), 1);
    assert_eq!(available(&k, GPU0, "nvidia-230"), 16);
}

#[test]
fn t4_one_type_rule_is_per_gpu() {
    let mut k = kernel_with(&["nvidia-t4:2"]);
    created(&mut k, GPU0, "nvidia-231", UUID_A);
    assert_eq!(available(&k, GPU1, "nvidia-230"), 16);
}

#[test]
fn a100_vfs_share_the_pool_of_their_gpu() {
    let mut k = kernel_with(&["nvidia-a100"]);
    let vfs = vfs_of(&k, GPU0);
    assert_eq!(vfs.len(), 16);
    // 40 GB: two 20 GB vGPUs on two VFs leave nothing for a third.
    created(&mut k, &vfs[0], "nvidia-481", UUID_A);
    created(&mut k, &vfs[1], "nvidia-481", UUID_B);
    assert_eq!(available(&k, &vfs[2], "nvidia-481"), 0);
    assert_eq!(k.create(&vfs[2], "nvidia-481", &line(UUID_C)), Err(EINVAL));
}

#[test]
fn a100_one_type_rule_spans_the_vfs_of_one_gpu() {
    let mut k = kernel_with(&["nvidia-a100"]);
    let vfs = vfs_of(&k, GPU0);
    created(&mut k, &vfs[0], "nvidia-472", UUID_A);
    assert_eq!(available(&k, &vfs[1], "nvidia-472"), 1);
    assert_eq!(available(&k, &vfs[1], "nvidia-473"), 0);
}

#[test]
fn a100_vf_holds_one_device_then_eusers() {
    let mut k = kernel_with(&["nvidia-a100"]);
    let vf = vfs_of(&k, GPU0)[0].clone();
    created(&mut k, &vf, "nvidia-472", UUID_A);
    assert_eq!(available(&k, &vf, "nvidia-472"), 0);
    assert_eq!(k.create(&vf, "nvidia-472", &line(UUID_B)), Err(EUSERS));
}

#[test]
fn a100_pool_is_not_shared_across_gpus() {
    let mut k = kernel_with(&["nvidia-a100:2"]);
    let first = vfs_of(&k, GPU0);
    let second = vfs_of(&k, GPU1);
    created(&mut k, &first[0], "nvidia-476", UUID_A);
    assert_eq!(available(&k, &first[1], "nvidia-476"), 0);
    assert_eq!(available(&k, &second[0], "nvidia-476"), 1);
    assert_eq!(available(&k, &second[0], "nvidia-473"), 1);
}

// ---- NVIDIA vendor sysfs (L40S) ----------------------------------------------------------------

fn creatable_ids(k: &Kernel, vf: &str) -> Vec<String> {
    k.creatable(&k.parents[vf])
        .iter()
        .map(|t| t.id.clone())
        .collect()
}

#[test]
fn l40s_vfs_share_the_pool_and_the_last_vgpu_gives_it_back() {
    let mut k = kernel_with(&["nvidia-l40s"]);
    let vfs = vfs_of(&k, GPU0);
    assert_eq!(vfs.len(), 32);
    assert_eq!(creatable_ids(&k, &vfs[1]).len(), 12);
    assert_eq!(k.set_current_vgpu(&vfs[0], b"1156\n"), Ok(()));
    assert_eq!(k.parents[&vfs[0]].current_vgpu, 1156);
    assert!(
        creatable_ids(&k, &vfs[0]).is_empty(),
        "the VF holds one vGPU"
    );
    assert!(
        creatable_ids(&k, &vfs[1]).is_empty(),
        "48Q takes the whole GPU"
    );
    assert_eq!(k.set_current_vgpu(&vfs[0], b"0\n"), Ok(()));
    assert_eq!(creatable_ids(&k, &vfs[1]).len(), 12);
}

#[test]
fn l40s_one_type_rule_leaves_only_the_type_in_use() {
    let mut k = kernel_with(&["nvidia-l40s"]);
    let vfs = vfs_of(&k, GPU0);
    assert_eq!(k.set_current_vgpu(&vfs[0], b"1147"), Ok(()));
    assert_eq!(creatable_ids(&k, &vfs[1]), ["1147"]);
    assert_eq!(k.set_current_vgpu(&vfs[1], b"1148"), Err(EINVAL));
}

#[test]
fn l40s_a_type_written_to_a_vf_that_has_one_is_ebusy() {
    let mut k = kernel_with(&["nvidia-l40s"]);
    let vf = vfs_of(&k, GPU0)[0].clone();
    assert_eq!(k.set_current_vgpu(&vf, b"1147"), Ok(()));
    assert_eq!(k.set_current_vgpu(&vf, b"1147"), Err(EBUSY));
}

#[test]
fn l40s_deleting_a_held_vgpu_is_ebusy() {
    let mut k = kernel_with(&["nvidia-l40s"]);
    let vf = vfs_of(&k, GPU0)[0].clone();
    assert_eq!(k.set_current_vgpu(&vf, b"1147"), Ok(()));
    k.hold(&vf).expect("a VF with a vGPU can be held");
    assert_eq!(k.set_current_vgpu(&vf, b"0"), Err(EBUSY));
    k.release(&vf).expect("held");
    assert_eq!(k.set_current_vgpu(&vf, b"0"), Ok(()));
}

#[test]
fn l40s_an_unknown_or_malformed_type_is_einval() {
    let mut k = kernel_with(&["nvidia-l40s"]);
    let vf = vfs_of(&k, GPU0)[0].clone();
    assert_eq!(k.set_current_vgpu(&vf, b"9999"), Err(EINVAL));
    assert_eq!(k.set_current_vgpu(&vf, b"nvidia-1147"), Err(EINVAL));
    assert_eq!(
        k.set_current_vgpu(GPU0, b"1147"),
        Err(ENODEV),
        "the PF has no vGPU"
    );
}

#[test]
fn a_vendor_attribute_write_drops_the_newline() {
    let mut k = kernel_with(&["nvidia-t4"]);
    created(&mut k, GPU0, "nvidia-231", UUID_A);
    let attr = "nvidia/vgpu_params";
    assert_eq!(
        k.write_attribute(UUID_A, attr, b"frame_rate_limiter=0\n"),
        Ok(())
    );
    assert_eq!(k.devices[UUID_A].attributes[attr], "frame_rate_limiter=0");
    assert_eq!(k.write_attribute(UUID_A, "nvidia/other", b"1"), Err(ENOENT));
    assert_eq!(k.write_attribute(UUID_B, attr, b"1"), Err(ENODEV));
}

// ---- remove ------------------------------------------------------------------------------------

#[test]
fn remove_sends_unbind_then_remove_and_frees_capacity() {
    let mut k = kernel_with(&["nvidia-t4"]);
    created(&mut k, GPU0, "nvidia-234", UUID_A);
    drain(&mut k);
    assert!(is_done(k.remove(UUID_A, b"1\n"), Ok(())));
    assert_eq!(
        drain(&mut k),
        ["remove vfio-dev", "unbind mdev", "remove mdev"]
    );
    assert!(k.devices.is_empty());
    assert_eq!(available(&k, GPU0, "nvidia-234"), 1);
}

#[test]
fn remove_of_0_does_nothing_and_a_non_integer_is_einval() {
    let mut k = kernel_with(&["mtty"]);
    created(&mut k, "mtty", "mtty-1", UUID_A);
    assert!(is_done(k.remove(UUID_A, b"0\n"), Ok(())));
    assert!(is_done(k.remove(UUID_A, b"yes"), Err(EINVAL)));
    assert!(k.devices.contains_key(UUID_A));
    assert!(is_done(k.remove(UUID_B, b"1"), Err(ENODEV)));
}

#[test]
fn remove_of_a_held_device_waits_and_finish_remove_frees_capacity() {
    let mut k = kernel_with(&["mtty"]);
    created(&mut k, "mtty", "mtty-1", UUID_A);
    k.hold(UUID_A).expect("a live device can be held");
    drain(&mut k);
    match k.remove(UUID_A, b"1") {
        WriteOutcome::WaitRelease(uuid) => assert_eq!(uuid, UUID_A),
        WriteOutcome::Done(r) => panic!("remove of a held device finished at once: {r:?}"),
    }
    let d = &k.devices[UUID_A];
    assert!(d.removing && !d.linked);
    assert_eq!(
        available(&k, "mtty", "mtty-1"),
        23,
        "still taken while held"
    );
    assert!(
        drain(&mut k).is_empty(),
        "nothing goes before the holder lets go"
    );
    // device_remove_file_self(): a second writer finds the removal under way.
    assert!(is_done(k.remove(UUID_A, b"1"), Ok(())));
    assert!(
        k.hold(UUID_A).is_err(),
        "a device being removed cannot be held again"
    );

    k.finish_remove(UUID_A);
    assert!(k.devices.is_empty());
    assert!(!k.held.contains(UUID_A));
    assert_eq!(available(&k, "mtty", "mtty-1"), 24);
    assert_eq!(
        drain(&mut k),
        ["remove vfio-dev", "unbind mdev", "remove mdev"]
    );
}

// ---- drivers and plugging ----------------------------------------------------------------------

#[test]
fn unbind_with_devices_waits_for_the_held_ones_and_removes_them_all() {
    let mut k = kernel_with(&["nvidia-t4"]);
    created(&mut k, GPU0, "nvidia-231", UUID_A);
    created(&mut k, GPU0, "nvidia-231", UUID_B);
    k.hold(UUID_A).expect("held");
    drain(&mut k);
    assert_eq!(k.begin_unbind(GPU0), Ok(vec![UUID_A.to_owned()]));
    assert!(k.devices.values().all(|d| d.removing));
    assert_eq!(k.create(GPU0, "nvidia-231", &line(UUID_C)), Err(ENODEV));
    assert_eq!(
        available(&k, GPU0, "nvidia-231"),
        0,
        "an unregistering parent offers nothing"
    );

    k.release(UUID_A).expect("held");
    k.finish_unbind(GPU0);
    let mut want = ["remove vfio-dev", "unbind mdev", "remove mdev"].repeat(2);
    want.extend(["change pci MDEV_STATE=unregistered", "unbind pci"]);
    assert_eq!(drain(&mut k), want);
    assert!(k.devices.is_empty());
    assert!(k.parents[GPU0].driver.is_none());
    assert_eq!(k.pools[k.parents[GPU0].pool].used, 0);
}

#[test]
fn bind_after_unbind_registers_then_binds_and_gives_every_type_back() {
    let mut k = kernel_with(&["nvidia-t4"]);
    created(&mut k, GPU0, "nvidia-231", UUID_A);
    assert_eq!(k.begin_unbind(GPU0), Ok(Vec::new()));
    k.finish_unbind(GPU0);
    drain(&mut k);
    assert_eq!(k.bind_driver(GPU0), Ok(()));
    assert_eq!(
        drain(&mut k),
        ["change pci MDEV_STATE=registered", "bind pci DRIVER=nvidia"]
    );
    assert_eq!(available(&k, GPU0, "nvidia-234"), 1);
    assert!(k.bind_driver(GPU0).is_err(), "already bound");
}

#[test]
fn unplug_then_replug_gives_the_same_functions_at_the_same_addresses() {
    let mut k = kernel_with(&["nvidia-a100"]);
    let functions = k.unit_functions(GPU0).expect("plugged");
    assert_eq!(functions.len(), 17);
    assert_eq!(
        functions.last().map(String::as_str),
        Some(GPU0),
        "VFs go first"
    );
    for f in &functions {
        assert_eq!(k.begin_unbind(f), Ok(Vec::new()));
        k.finish_unbind(f);
        k.finish_unplug(f);
    }
    assert!(k.parents.is_empty());
    assert!(
        k.groups.is_empty(),
        "every IOMMU group went with its function"
    );
    let mut again = k.replug(GPU0).expect("was unplugged");
    again.sort();
    let mut want = functions.clone();
    want.sort();
    assert_eq!(again, want);
    assert!(k
        .parents
        .values()
        .all(|p| p.driver.as_deref() == Some("nvidia")));
    assert!(
        k.replug(GPU0).is_err(),
        "plugged again, no longer unplugged"
    );
}

// ---- faults ------------------------------------------------------------------------------------

const MTTY_1_CREATE: &str = "class/mdev_bus/mtty/mdev_supported_types/mtty-1/create";

fn inject(k: &mut Kernel, path: &str, errno: i32, remaining: u32) {
    k.injections.push(Injection {
        path: path.to_owned(),
        errno: Some(errno),
        delay: None,
        remaining,
    });
}

#[test]
fn an_injected_errno_on_create_is_taken_exactly_once() {
    let mut k = kernel_with(&["mtty"]);
    inject(&mut k, MTTY_1_CREATE, EIO, 1);
    let other = MTTY_1_CREATE.replace("mtty-1", "mtty-2");
    assert!(k.take_injection(&other).is_none(), "its path only");
    let taken = k.take_injection(MTTY_1_CREATE).expect("armed");
    assert_eq!(taken.errno, Some(EIO));
    assert!(k.take_injection(MTTY_1_CREATE).is_none());
    assert!(k.injections.is_empty());
}

#[test]
fn an_injection_with_a_count_lasts_that_many_writes() {
    let mut k = kernel_with(&["mtty"]);
    inject(&mut k, MTTY_1_CREATE, EIO, 3);
    for _ in 0..3 {
        assert!(k.take_injection(MTTY_1_CREATE).is_some());
    }
    assert!(k.take_injection(MTTY_1_CREATE).is_none());
}

#[test]
fn a_wildcard_injection_matches_any_path_of_its_pattern() {
    let mut k = kernel_with(&["mtty"]);
    inject(&mut k, "class/mdev_bus/*/create", EIO, 2);
    let mtty_2 = MTTY_1_CREATE.replace("mtty-1", "mtty-2");
    assert!(k.take_injection("class/mdev_bus/mtty/remove").is_none());
    assert!(k.take_injection(MTTY_1_CREATE).is_some());
    assert!(k.take_injection(&mtty_2).is_some());
    assert!(k.injections.is_empty());
}

#[test]
fn the_first_matching_injection_wins() {
    let mut k = kernel_with(&["mtty"]);
    inject(&mut k, "*/create", EIO, 1);
    inject(&mut k, MTTY_1_CREATE, EBUSY, 1);
    assert_eq!(
        k.take_injection(MTTY_1_CREATE).and_then(|i| i.errno),
        Some(EIO)
    );
    assert_eq!(
        k.take_injection(MTTY_1_CREATE).and_then(|i| i.errno),
        Some(EBUSY)
    );
}

#[test]
fn a_synthetic_event_needs_a_known_action() {
    let mut k = kernel_with(&["mtty"]);
    let devpath = "devices/virtual/mtty/mtty";
    assert_eq!(k.synthetic_event(devpath, "mtty", b"bogus\n"), Err(EINVAL));
    assert_eq!(k.synthetic_event(devpath, "mtty", b""), Err(EINVAL));
    assert!(k.sent.is_empty());
    assert_eq!(k.synthetic_event(devpath, "mtty", b"change\n"), Ok(()));
    assert_eq!(k.sent.len(), 1);
    assert_eq!(k.sent[0].devpath, format!("/{devpath}"));
    assert_eq!(k.sent[0].prop("SYNTH_UUID"), Some("0"));
}

#[test]
fn seqnums_strictly_increase() {
    let mut k = kernel_with(&["mtty"]);
    let before = k.seqnum();
    created(&mut k, "mtty", "mtty-1", UUID_A);
    assert!(is_done(k.remove(UUID_A, b"1"), Ok(())));
    let seqnums: Vec<u64> = k.sent.iter().map(|e| e.seqnum).collect();
    assert_eq!(seqnums.len(), 6);
    assert_eq!(seqnums[0], before + 1);
    assert!(seqnums.windows(2).all(|w| w[1] == w[0] + 1), "{seqnums:?}");
    assert_eq!(k.seqnum(), before + 6);
}
