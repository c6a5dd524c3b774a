//! The simulator against KERNEL-ABI.md §1 and §2: the errno of every `create`/`remove` case,
//! capacity pools, NVIDIA's one-type rule, SR-IOV VF parents, the vendor-sysfs model, blocking
//! removes and unbinds. One case per test, each on its own simulator. (Uevents and fault
//! injection: sim_kernel_events.rs.)

#[path = "common/sim.rs"]
mod sim_fixture;

use std::time::Duration;

use libc::{EACCES, EBUSY, EEXIST, EINVAL, ENOENT, ENOSPC, EUSERS};
use sim_fixture::*;
use vgpud_sim::control::Request;

const GPU0: &str = "0000:20:00.0";
const GPU1: &str = "0000:21:00.0";
const BLOCKED: Duration = Duration::from_millis(300);

fn uuid_line(uuid: &str) -> Vec<u8> {
    format!("{uuid}\n").into_bytes()
}

/// The VFs of the GPU at `pf`, in virtfn order.
fn vfs_of(sim: &Sim, pf: &str) -> Vec<String> {
    let dir = sim.path(&format!("bus/pci/devices/{pf}"));
    let mut links: Vec<(u32, String)> = list(&dir)
        .into_iter()
        .filter_map(|n| Some((n.strip_prefix("virtfn")?.parse().ok()?, n)))
        .collect();
    links.sort();
    links
        .into_iter()
        .map(|(_, n)| {
            let target = link(&dir.join(n));
            target.rsplit('/').next().unwrap().to_owned()
        })
        .collect()
}

// ---- create: the UUID ------------------------------------------------------------------------

#[test]
fn create_with_35_bytes_is_einval() {
    let sim = Sim::start(&["mtty"]);
    let uuid = new_uuid();
    let r = sim.create_raw("mtty", "mtty-1", &uuid.as_bytes()[..35]);
    assert_eq!(r, Err(WriteErr::Write(EINVAL)));
    assert!(sim.devices().is_empty());
}

#[test]
fn create_with_38_bytes_is_einval() {
    let sim = Sim::start(&["mtty"]);
    let r = sim.create_raw("mtty", "mtty-1", format!("{}\n\n", new_uuid()).as_bytes());
    assert_eq!(r, Err(WriteErr::Write(EINVAL)));
    assert!(sim.devices().is_empty());
}

#[test]
fn create_accepts_36_bytes_without_a_newline() {
    let sim = Sim::start(&["mtty"]);
    let uuid = new_uuid();
    sim.create_raw("mtty", "mtty-1", uuid.as_bytes()).unwrap();
    assert_eq!(sim.devices(), [uuid]);
}

#[test]
fn create_with_a_non_hex_uuid_is_einval() {
    let sim = Sim::start(&["mtty"]);
    let r = sim.create_raw("mtty", "mtty-1", b"83b8f4f2-509f-382f-3c1e-e6bfe0fa100g\n");
    assert_eq!(r, Err(WriteErr::Write(EINVAL)));
}

#[test]
fn create_of_a_duplicate_on_the_same_parent_is_eexist() {
    let sim = Sim::start(&["mtty"]);
    let uuid = sim.created("mtty", "mtty-1");
    let r = sim.create_raw("mtty", "mtty-2", &uuid_line(&uuid));
    assert_eq!(r, Err(WriteErr::Write(EEXIST)));
    assert_eq!(sim.devices(), [uuid]);
}

#[test]
fn create_of_a_duplicate_on_another_parent_is_eexist() {
    let sim = Sim::start(&["nvidia-t4:2"]);
    let uuid = sim.created(GPU0, "nvidia-231");
    let r = sim.create_raw(GPU1, "nvidia-231", &uuid_line(&uuid));
    assert_eq!(r, Err(WriteErr::Write(EEXIST)), "one global list of UUIDs");
}

#[test]
fn create_of_a_duplicate_in_upper_case_is_eexist() {
    let sim = Sim::start(&["mtty", "mdpy"]);
    let uuid = sim.created("mtty", "mtty-1");
    let r = sim.create_raw("mdpy", "mdpy-vga", &uuid_line(&uuid.to_uppercase()));
    assert_eq!(r, Err(WriteErr::Write(EEXIST)));
}

#[test]
fn create_in_a_missing_type_directory_is_enoent_at_open() {
    let sim = Sim::start(&["mtty"]);
    let r = sim.create_raw("mtty", "mtty-9", &uuid_line(&new_uuid()));
    assert_eq!(r, Err(WriteErr::Open(ENOENT)));
}

#[test]
fn reading_create_is_eacces_like_kernfs() {
    let sim = Sim::start(&["mtty"]);
    let r = read_errno(&sim.type_dir("mtty", "mtty-1").join("create"));
    assert_eq!(r, Err(EACCES));
}

// ---- create: exhausted pools, each driver's errno ------------------------------------------------

#[test]
fn mtty_gives_24_single_ports_then_enospc() {
    let sim = Sim::start(&["mtty"]);
    assert_eq!(sim.available("mtty", "mtty-1"), 24);
    sim.fill("mtty", "mtty-1", 24);
    assert_eq!(sim.available("mtty", "mtty-1"), 0);
    assert_eq!(sim.create("mtty", "mtty-1"), Err(WriteErr::Write(ENOSPC)));
    assert_eq!(sim.devices().len(), 24);
}

#[test]
fn mtty_gives_12_dual_ports_then_enospc() {
    let sim = Sim::start(&["mtty"]);
    assert_eq!(sim.available("mtty", "mtty-2"), 12);
    sim.fill("mtty", "mtty-2", 12);
    assert_eq!(sim.create("mtty", "mtty-2"), Err(WriteErr::Write(ENOSPC)));
    assert_eq!(sim.create("mtty", "mtty-1"), Err(WriteErr::Write(ENOSPC)));
}

#[test]
fn mtty_types_share_one_pool_of_ports() {
    let sim = Sim::start(&["mtty"]);
    // mtty: available = free ports / ports per instance, over one pool of 24 ports.
    let mut seen = Vec::new();
    for _ in 0..4 {
        sim.created("mtty", "mtty-1");
        seen.push((
            sim.available("mtty", "mtty-1"),
            sim.available("mtty", "mtty-2"),
        ));
    }
    assert_eq!(seen, [(23, 11), (22, 11), (21, 10), (20, 10)]);
    sim.created("mtty", "mtty-2");
    assert_eq!(
        sim.availability("mtty"),
        [("mtty-1".into(), 18), ("mtty-2".into(), 9)]
    );
}

#[test]
fn mtty_with_one_port_left_refuses_a_dual_port() {
    let sim = Sim::start(&["mtty"]);
    sim.fill("mtty", "mtty-2", 11);
    sim.created("mtty", "mtty-1");
    assert_eq!(
        sim.availability("mtty"),
        [("mtty-1".into(), 1), ("mtty-2".into(), 0)]
    );
    assert_eq!(sim.create("mtty", "mtty-2"), Err(WriteErr::Write(ENOSPC)));
    sim.created("mtty", "mtty-1");
}

#[test]
fn mdpy_gives_4_devices_in_all_then_eusers() {
    let sim = Sim::start(&["mdpy"]);
    sim.created("mdpy", "mdpy-vga");
    sim.created("mdpy", "mdpy-xga");
    sim.created("mdpy", "mdpy-hd");
    assert_eq!(
        sim.availability("mdpy"),
        [
            ("mdpy-hd".into(), 1),
            ("mdpy-vga".into(), 1),
            ("mdpy-xga".into(), 1)
        ]
    );
    sim.created("mdpy", "mdpy-vga");
    // Seen on the real 6.1 kernel: the mdev core's instance counter, not mdpy's ENOMEM.
    assert_eq!(sim.create("mdpy", "mdpy-hd"), Err(WriteErr::Write(EUSERS)));
}

#[test]
fn mbochs_gives_256_mb_of_memory_then_enospc() {
    let sim = Sim::start(&["mbochs"]);
    sim.created("mbochs", "mbochs-large");
    assert_eq!(
        sim.availability("mbochs"),
        [
            ("mbochs-large".into(), 3),
            ("mbochs-medium".into(), 12),
            ("mbochs-small".into(), 48)
        ]
    );
    sim.fill("mbochs", "mbochs-large", 3);
    assert_eq!(
        sim.create("mbochs", "mbochs-small"),
        Err(WriteErr::Write(ENOSPC))
    );
}

#[test]
fn t4_gives_8_of_a_2q_then_einval() {
    let sim = Sim::start(&["nvidia-t4"]);
    assert_eq!(sim.available(GPU0, "nvidia-231"), 8);
    sim.fill(GPU0, "nvidia-231", 8);
    assert_eq!(sim.create(GPU0, "nvidia-231"), Err(WriteErr::Write(EINVAL)));
}

#[test]
fn a100_vf_refuses_a_second_device_with_eusers() {
    let sim = Sim::start(&["nvidia-a100"]);
    let vf = &vfs_of(&sim, GPU0)[0];
    sim.created(vf, "nvidia-472");
    assert_eq!(sim.available(vf, "nvidia-472"), 0);
    assert_eq!(sim.create(vf, "nvidia-472"), Err(WriteErr::Write(EUSERS)));
}

// ---- NVIDIA: one type per GPU ------------------------------------------------------------------

#[test]
fn t4_after_one_2q_every_other_type_reads_0() {
    let sim = Sim::start(&["nvidia-t4"]);
    sim.created(GPU0, "nvidia-231");
    for (t, n) in sim.availability(GPU0) {
        let want = if t == "nvidia-231" { 7 } else { 0 };
        assert_eq!(n, want, "{t}");
    }
}

#[test]
fn t4_after_one_2q_creating_another_type_is_einval() {
    let sim = Sim::start(&["nvidia-t4"]);
    sim.created(GPU0, "nvidia-231");
    assert_eq!(sim.create(GPU0, "nvidia-230"), Err(WriteErr::Write(EINVAL)));
    assert_eq!(sim.create(GPU0, "nvidia-222"), Err(WriteErr::Write(EINVAL)));
}

#[test]
fn t4_every_type_comes_back_when_the_last_device_goes() {
    let sim = Sim::start(&["nvidia-t4"]);
    let before = sim.availability(GPU0);
    let a = sim.created(GPU0, "nvidia-231");
    let b = sim.created(GPU0, "nvidia-231");
    sim.remove_raw(&a, b"1\n").unwrap();
    assert_eq!(
        sim.available(GPU0, "nvidia-230"),
        0,
        "one 2Q is still there"
    );
    sim.remove_raw(&b, b"1\n").unwrap();
    assert_eq!(sim.availability(GPU0), before);
    sim.created(GPU0, "nvidia-234");
}

#[test]
fn t4_one_type_rule_is_per_gpu() {
    let sim = Sim::start(&["nvidia-t4:2"]);
    let before = sim.availability(GPU1);
    sim.created(GPU0, "nvidia-231");
    assert_eq!(sim.availability(GPU1), before);
    sim.created(GPU1, "nvidia-234");
}

// ---- NVIDIA A100: SR-IOV VFs as parents ---------------------------------------------------------

#[test]
fn a100_has_16_vf_parents_with_physfn_and_virtfn_links() {
    let sim = Sim::start(&["nvidia-a100"]);
    let vfs = vfs_of(&sim, GPU0);
    assert_eq!(vfs.len(), 16);
    let mut parents = sim.parents();
    parents.sort();
    let mut want = vfs.clone();
    want.sort();
    assert_eq!(parents, want, "the VFs are the parents, the PF is not");
    let pf_dir = sim.path(&format!("bus/pci/devices/{GPU0}"));
    assert_eq!(read(&pf_dir.join("sriov_numvfs")), "16\n");
    assert_eq!(link(&pf_dir.join("virtfn0")), format!("../{}", vfs[0]));
    for vf in &vfs {
        let dir = sim.path(&format!("bus/pci/devices/{vf}"));
        assert_eq!(link(&dir.join("physfn")), format!("../{GPU0}"), "{vf}");
        assert!(dir.join("mdev_supported_types/nvidia-472").is_dir(), "{vf}");
    }
}

#[test]
fn a100_vf_holds_one_device_and_the_others_stay_open() {
    let sim = Sim::start(&["nvidia-a100"]);
    let vfs = vfs_of(&sim, GPU0);
    sim.created(&vfs[0], "nvidia-472");
    assert_eq!(sim.available(&vfs[0], "nvidia-472"), 0);
    assert_eq!(sim.available(&vfs[1], "nvidia-472"), 1);
    sim.created(&vfs[1], "nvidia-472");
}

#[test]
fn a100_pool_is_shared_by_the_vfs_of_one_gpu() {
    let sim = Sim::start(&["nvidia-a100"]);
    let vfs = vfs_of(&sim, GPU0);
    // 40 GB: eight 5 GB vGPUs on eight VFs, then the ninth VF is refused.
    for vf in &vfs[..8] {
        sim.created(vf, "nvidia-472");
    }
    assert_eq!(sim.available(&vfs[8], "nvidia-472"), 0);
    assert_eq!(
        sim.create(&vfs[8], "nvidia-472"),
        Err(WriteErr::Write(EINVAL))
    );
}

#[test]
fn a100_one_type_rule_spans_the_vfs_of_one_gpu() {
    let sim = Sim::start(&["nvidia-a100"]);
    let vfs = vfs_of(&sim, GPU0);
    sim.created(&vfs[0], "nvidia-472");
    assert_eq!(sim.available(&vfs[1], "nvidia-473"), 0);
    assert_eq!(
        sim.create(&vfs[1], "nvidia-473"),
        Err(WriteErr::Write(EINVAL))
    );
}

#[test]
fn a100_pool_is_not_shared_across_gpus() {
    let sim = Sim::start(&["nvidia-a100:2"]);
    let first = vfs_of(&sim, GPU0);
    let second = vfs_of(&sim, GPU1);
    assert_eq!(second.len(), 16);
    sim.created(&first[0], "nvidia-476");
    assert_eq!(sim.available(&first[1], "nvidia-476"), 0);
    assert_eq!(sim.available(&second[0], "nvidia-476"), 1);
    assert_eq!(sim.available(&second[0], "nvidia-473"), 1);
    sim.created(&second[0], "nvidia-476");
}

// ---- NVIDIA L40S: vendor sysfs, no mdev ---------------------------------------------------------

/// The VFs with NVIDIA's vendor files.
fn vendor_vfs(sim: &Sim) -> Vec<String> {
    sim.pci_devices()
        .into_iter()
        .filter(|d| sim.path(&format!("bus/pci/devices/{d}/nvidia")).is_dir())
        .collect()
}

fn nvidia_file(sim: &Sim, vf: &str, file: &str) -> std::path::PathBuf {
    sim.path(&format!("bus/pci/devices/{vf}/nvidia/{file}"))
}

/// The type ids of a `creatable_vgpu_types` list (`ID    : vGPU Name` header, `1147  : NAME`).
fn creatable(sim: &Sim, vf: &str) -> Vec<u32> {
    read(&nvidia_file(sim, vf, "creatable_vgpu_types"))
        .lines()
        .filter_map(|l| l.split(':').next()?.trim().parse().ok())
        .collect()
}

fn set_current(sim: &Sim, vf: &str, value: &str) -> Result<(), WriteErr> {
    write_attr(&nvidia_file(sim, vf, "current_vgpu_type"), value.as_bytes())
}

#[test]
fn l40s_has_no_mdev_and_32_vendor_vfs() {
    let sim = Sim::start(&["nvidia-l40s"]);
    assert!(sim.parents().is_empty());
    let vfs = vendor_vfs(&sim);
    assert_eq!(vfs.len(), 32);
    assert_eq!(
        read(&nvidia_file(&sim, &vfs[0], "current_vgpu_type")),
        "0\n"
    );
    assert_eq!(creatable(&sim, &vfs[0]).len(), 12);
}

#[test]
fn l40s_current_vgpu_type_reads_back_what_was_written() {
    let sim = Sim::start(&["nvidia-l40s"]);
    let vf = &vendor_vfs(&sim)[0];
    set_current(&sim, vf, "1147\n").unwrap();
    assert_eq!(read(&nvidia_file(&sim, vf, "current_vgpu_type")), "1147\n");
}

#[test]
fn l40s_creatable_list_shrinks_as_capacity_is_used() {
    let sim = Sim::start(&["nvidia-l40s"]);
    let vfs = vendor_vfs(&sim);
    set_current(&sim, &vfs[0], "1150").unwrap();
    assert!(
        creatable(&sim, &vfs[0]).is_empty(),
        "the VF holds its one vGPU"
    );
    assert_eq!(creatable(&sim, &vfs[1]), [1150], "one type per GPU");
    // 48 GB in 4 GB vGPUs: twelve in all.
    for vf in &vfs[1..12] {
        set_current(&sim, vf, "1150").unwrap();
    }
    assert!(creatable(&sim, &vfs[12]).is_empty());
}

#[test]
fn l40s_writing_0_deletes_the_vgpu() {
    let sim = Sim::start(&["nvidia-l40s"]);
    let vfs = vendor_vfs(&sim);
    set_current(&sim, &vfs[0], "1156").unwrap();
    assert!(
        creatable(&sim, &vfs[1]).is_empty(),
        "48Q takes the whole GPU"
    );
    set_current(&sim, &vfs[0], "0\n").unwrap();
    assert_eq!(
        read(&nvidia_file(&sim, &vfs[0], "current_vgpu_type")),
        "0\n"
    );
    assert_eq!(creatable(&sim, &vfs[1]).len(), 12);
}

#[test]
fn l40s_writing_a_type_that_is_not_creatable_is_einval() {
    let sim = Sim::start(&["nvidia-l40s"]);
    let vfs = vendor_vfs(&sim);
    set_current(&sim, &vfs[0], "1147").unwrap();
    assert_eq!(
        set_current(&sim, &vfs[1], "1148"),
        Err(WriteErr::Write(EINVAL))
    );
    assert_eq!(
        set_current(&sim, &vfs[1], "4242"),
        Err(WriteErr::Write(EINVAL)),
        "an id the GPU does not support"
    );
    assert_eq!(
        read(&nvidia_file(&sim, &vfs[1], "current_vgpu_type")),
        "0\n"
    );
}

#[test]
fn l40s_writing_0_while_a_vm_holds_the_vf_is_ebusy() {
    let sim = Sim::start(&["nvidia-l40s"]);
    let vf = &vendor_vfs(&sim)[0];
    set_current(&sim, vf, "1147").unwrap();
    sim.hold(vf);
    assert_eq!(set_current(&sim, vf, "0"), Err(WriteErr::Write(EBUSY)));
    sim.release(vf);
    set_current(&sim, vf, "0").unwrap();
}

// ---- remove ----------------------------------------------------------------------------------------

#[test]
fn remove_of_0_does_nothing_and_succeeds() {
    let sim = Sim::start(&["mtty"]);
    let uuid = sim.created("mtty", "mtty-1");
    sim.remove_raw(&uuid, b"0\n").unwrap();
    assert_eq!(sim.devices(), [uuid]);
}

#[test]
fn remove_of_a_non_integer_is_einval() {
    let sim = Sim::start(&["mtty"]);
    let uuid = sim.created("mtty", "mtty-1");
    assert_eq!(
        sim.remove_raw(&uuid, b"abc\n"),
        Err(WriteErr::Write(EINVAL))
    );
    assert_eq!(sim.devices(), [uuid]);
}

#[test]
fn remove_of_1_removes_the_device_and_frees_its_capacity() {
    let sim = Sim::start(&["mtty"]);
    let uuid = sim.created("mtty", "mtty-2");
    sim.remove_raw(&uuid, b"1\n").unwrap();
    assert!(sim.devices().is_empty());
    assert_eq!(sim.available("mtty", "mtty-1"), 24);
    assert!(!sim.device_dir(&uuid).exists());
}

#[test]
fn remove_of_a_held_device_blocks_until_release() {
    let sim = Sim::start(&["nvidia-t4"]);
    let uuid = sim.created(GPU0, "nvidia-231");
    sim.hold(&uuid);
    let pending = sim.remove_pending(&uuid);
    assert!(pending.still_pending_after(BLOCKED), "remove did not block");
    assert_eq!(sim.devices(), [uuid.as_str()], "still there while blocked");
    sim.release(&uuid);
    let (r, _) = pending.wait();
    assert_eq!(r, Ok(()));
    assert!(sim.devices().is_empty());
}

#[test]
fn a_second_remove_while_the_first_blocks_finds_no_remove_file() {
    let sim = Sim::start(&["nvidia-t4"]);
    let uuid = sim.created(GPU0, "nvidia-231");
    sim.hold(&uuid);
    let pending = sim.remove_pending(&uuid);
    assert!(pending.still_pending_after(BLOCKED));
    // device_remove_file_self() took the file away before the first writer blocked.
    assert_eq!(sim.remove_raw(&uuid, b"1\n"), Err(WriteErr::Open(ENOENT)));
    sim.release(&uuid);
    assert_eq!(pending.wait().0, Ok(()));
}

#[test]
fn driver_unbind_with_a_held_device_blocks_until_release() {
    let sim = Sim::start(&["nvidia-t4"]);
    let uuid = sim.created(GPU0, "nvidia-231");
    sim.hold(&uuid);
    let pending = PendingWrite::spawn(
        sim.path("bus/pci/drivers/nvidia/unbind"),
        GPU0.as_bytes().to_vec(),
    );
    assert!(pending.still_pending_after(BLOCKED), "unbind did not block");
    sim.release(&uuid);
    assert_eq!(pending.wait().0, Ok(()));
    assert!(sim.devices().is_empty());
    assert!(sim.parents().is_empty(), "the parent unregistered");
}

#[test]
fn ctl_unbind_with_a_held_device_blocks_until_release() {
    let sim = Sim::start(&["nvidia-t4"]);
    let uuid = sim.created(GPU0, "nvidia-231");
    sim.hold(&uuid);
    let pending = sim.ctl_pending(Request::Unbind {
        parent: GPU0.into(),
    });
    assert!(
        pending.recv_timeout(BLOCKED).is_err(),
        "unbind did not block"
    );
    sim.release(&uuid);
    let r = pending
        .recv_timeout(HANG_GUARD)
        .expect("unbind never finished");
    assert!(r.is_ok(), "{r:?}");
    assert!(sim.parents().is_empty());
}
