//! Linux direct boot (x86 boot protocol 2.12+, 64-bit entry): a bzImage or an ELF vmlinux
//! loaded with linux-loader, the initrd high in RAM, the command line, and the zero page with
//! its e820 map. The CPU state for the entry (long mode, identity paging) is set in `kvm`.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::PathBuf;
pub use vgpud_launch::{image_kind, ImageKind, ELF_MAGIC, HDR_MAGIC};

use super::FileArg;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Where the zero page (struct boot_params) goes; RSI points here at entry.
pub const ZERO_PAGE: u64 = 0x7000;
/// The initial stack pointer (the kernel switches to its own stack at once).
pub const BOOT_STACK: u64 = 0x8ff0;
/// Identity page tables: PML4, one PDPT, then one page directory per GiB.
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
/// GiBs identity-mapped with 2 MiB pages: all RAM (at most 3 GiB) and the 32-bit PCI hole.
pub const MAPPED_GIB: u64 = 4;
pub const CMDLINE: u64 = 0x2_0000;
const CMDLINE_MAX: u64 = 0x1_0000;
/// Where protected-mode kernels are loaded (the boot protocol's "high memory").
pub const HIMEM: u64 = 0x10_0000;
/// End of low RAM: the EBDA starts here and the legacy hole runs to 1 MiB.
pub const EBDA: u64 = 0x9_fc00;
/// The 32-bit PCI hole (BARs, IOAPIC, LAPIC), reserved in the e820 map.
pub const PCI_HOLE: (u64, u64) = (0xc000_0000, 0x1_0000_0000);

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const BOOT_FLAG: u16 = 0xaa55;
const LOADER_UNDEFINED: u8 = 0xff;
const LOADFLAGS_CAN_USE_HEAP: u8 = 0x80;
/// xloadflags bit: the kernel has the 64-bit entry point at load address + 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
const STARTUP_64_OFFSET: u64 = 0x200;
/// The boot protocol's default when the header gives no initrd_addr_max (ELF vmlinux).
const DEFAULT_INITRD_MAX: u64 = 0x37ff_ffff;

#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    #[error("cannot read kernel {path}")]
    ReadKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a Linux kernel (neither a bzImage nor an ELF vmlinux)")]
    NotAKernel(PathBuf),
    #[error("{0} is an ELF file but not a 64-bit x86 one")]
    NotX86_64(PathBuf),
    #[error("bzImage {0} has no 64-bit entry point (boot protocol 2.12+ with XLF_KERNEL_64)")]
    No64BitEntry(PathBuf),
    #[error("kernel {path} cannot be loaded")]
    Load {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("kernel {path} needs {needed} MiB of guest memory to unpack; give --memory-mib {needed} or more")]
    KernelTooLarge { path: PathBuf, needed: u64 },
    #[error("kernel {path} does not fit in {mib} MiB of guest memory")]
    DoesNotFit { path: PathBuf, mib: u64 },
    #[error("cannot read initrd {path}")]
    ReadInitrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory above the kernel")]
    InitrdTooLarge { path: PathBuf, size: u64 },
    #[error("kernel command line is {len} bytes; this kernel takes at most {max}")]
    CmdlineTooLong { len: usize, max: u64 },
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("guest memory cannot be written")]
    Memory,
}

/// What the CPU needs to enter the loaded kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinuxEntry {
    /// 64-bit entry: the ELF entry, or startup_64 of a bzImage.
    pub entry: u64,
    pub zero_page: u64,
}

/// The kernel and initrd files, opened before the VM is built so a bad path fails early.
pub struct LinuxFiles {
    kernel: File,
    kernel_path: PathBuf,
    initrd: Option<(File, PathBuf)>,
    cmdline: String,
}

impl LinuxFiles {
    /// Opens (or takes the descriptors of) the kernel and initrd, each read from its start.
    pub fn open(
        kernel: &FileArg,
        initrd: Option<&FileArg>,
        cmdline: &str,
    ) -> Result<Self, LinuxError> {
        if cmdline.contains('\0') {
            return Err(LinuxError::CmdlineNul);
        }
        let read_kernel = |source| LinuxError::ReadKernel {
            path: kernel.name(),
            source,
        };
        let mut file = kernel.open().map_err(read_kernel)?;
        if file.metadata().map_err(read_kernel)?.is_dir() {
            return Err(read_kernel(std::io::Error::from_raw_os_error(libc::EISDIR)));
        }
        file.rewind().map_err(read_kernel)?;
        let initrd = match initrd {
            Some(path) => {
                let read_initrd = |source| LinuxError::ReadInitrd {
                    path: path.name(),
                    source,
                };
                let mut f = path.open().map_err(read_initrd)?;
                if f.metadata().map_err(read_initrd)?.is_dir() {
                    return Err(read_initrd(std::io::Error::from_raw_os_error(libc::EISDIR)));
                }
                f.rewind().map_err(read_initrd)?;
                Some((f, path.name()))
            }
            None => None,
        };
        Ok(Self {
            kernel: file,
            kernel_path: kernel.name(),
            initrd,
            cmdline: cmdline.to_owned(),
        })
    }
}

/// ELFCLASS64, little endian, EM_X86_64.
pub fn is_x86_64_elf(head: &[u8]) -> bool {
    head.get(4) == Some(&2) && head.get(5) == Some(&1) && head.get(18..20) == Some(&[62, 0][..])
}

/// The e820 map for `mem_end` bytes of RAM starting at 0: low RAM below the EBDA, the legacy
/// hole to 1 MiB, RAM from 1 MiB to the top, and the 32-bit PCI hole.
pub fn e820_map(mem_end: u64) -> Vec<boot_e820_entry> {
    let entry = |addr: u64, end: u64, kind: u32| boot_e820_entry {
        addr,
        size: end - addr,
        r#type: kind,
    };
    let mut map = vec![
        entry(0, EBDA.min(mem_end), E820_RAM),
        entry(EBDA, HIMEM, E820_RESERVED),
    ];
    if mem_end > HIMEM {
        map.push(entry(HIMEM, mem_end.min(PCI_HOLE.0), E820_RAM));
    }
    map.push(entry(PCI_HOLE.0, PCI_HOLE.1, E820_RESERVED));
    map
}

/// Where the initrd goes: as high as possible below both the RAM top and the kernel's
/// `initrd_addr_max`, page aligned, and above `kernel_end`; `None` if it does not fit.
pub fn initrd_address(mem_end: u64, addr_max: u64, size: u64, kernel_end: u64) -> Option<u64> {
    let top = mem_end.min(addr_max.checked_add(1)?);
    let start = top.checked_sub(size)? & !0xfff;
    (start >= kernel_end).then_some(start)
}

/// Page-table entries identity-mapping `MAPPED_GIB` GiB with 2 MiB pages: the PML4 entry,
/// the PDPT entries and the page-directory entries, as (guest address, value) pairs.
pub fn identity_page_tables() -> Vec<(u64, u64)> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    let mut out = vec![(PML4, PDPT | PRESENT_RW)];
    for gib in 0..MAPPED_GIB {
        let pd = PD + gib * 0x1000;
        out.push((PDPT + gib * 8, pd | PRESENT_RW));
        for i in 0..512 {
            let phys = (gib << 30) | (i << 21);
            out.push((pd + i * 8, phys | PRESENT_RW | PAGE_SIZE_2M));
        }
    }
    out
}

/// The zero page for a kernel with this setup header (a bzImage's, or a minimal one for an
/// ELF vmlinux), command line and initrd.
pub fn zero_page(
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
    mem_end: u64,
) -> boot_params {
    let mut params = boot_params::default();
    let mut hdr = header.unwrap_or_else(|| setup_header {
        boot_flag: BOOT_FLAG,
        header: HDR_MAGIC,
        kernel_alignment: 0x100_0000,
        ..Default::default()
    });
    hdr.type_of_loader = LOADER_UNDEFINED;
    hdr.loadflags |= LOADFLAGS_CAN_USE_HEAP;
    hdr.heap_end_ptr = 0xfe00;
    hdr.cmd_line_ptr = CMDLINE as u32;
    hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = size as u32;
    }
    params.hdr = hdr;
    let map = e820_map(mem_end);
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = *entry;
    }
    params.e820_entries = map.len() as u8;
    params
}

/// Loads kernel, command line, initrd and zero page into `mem`; returns the entry.
pub fn load(mem: &GuestMemoryMmap, files: LinuxFiles) -> Result<LinuxEntry, LinuxError> {
    let LinuxFiles {
        mut kernel,
        kernel_path: path,
        initrd,
        cmdline,
    } = files;
    let mem_end = mem.last_addr().raw_value() + 1;
    let mut head = vec![0u8; 0x210];
    let n = read_up_to(&mut kernel, &mut head).map_err(|source| LinuxError::ReadKernel {
        path: path.clone(),
        source,
    })?;
    head.truncate(n);
    let kind = image_kind(&head).ok_or_else(|| LinuxError::NotAKernel(path.clone()))?;
    if kind == ImageKind::Elf && !is_x86_64_elf(&head) {
        return Err(LinuxError::NotX86_64(path));
    }
    let load_error = |source| LinuxError::Load {
        path: path.clone(),
        source,
    };
    let (entry, header, kernel_end) = match kind {
        ImageKind::Elf => {
            let r =
                Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM))).map_err(
                    |e| match e {
                        linux_loader::loader::Error::MemoryOverflow
                        | linux_loader::loader::Error::Elf(
                            linux_loader::loader::elf::Error::ReadKernelImage,
                        ) => LinuxError::DoesNotFit {
                            path: path.clone(),
                            mib: mem_end >> 20,
                        },
                        other => load_error(other),
                    },
                )?;
            if r.kernel_end > mem_end {
                return Err(LinuxError::DoesNotFit {
                    path,
                    mib: mem_end >> 20,
                });
            }
            (r.kernel_load.raw_value(), None, r.kernel_end)
        }
        ImageKind::BzImage => {
            let r =
                BzImage::load(mem, Some(GuestAddress(HIMEM)), &mut kernel, None).map_err(|e| {
                    match e {
                        linux_loader::loader::Error::Bzimage(
                            linux_loader::loader::bzimage::Error::ReadBzImageCompressedKernel,
                        ) => LinuxError::KernelTooLarge {
                            path: path.clone(),
                            needed: needed_mib(&head, mem_end),
                        },
                        other => load_error(other),
                    }
                })?;
            let Some(hdr) = r.setup_header else {
                return Err(LinuxError::NotAKernel(path));
            };
            if hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(LinuxError::No64BitEntry(path));
            }
            // The decompressor needs init_size bytes from the load address.
            let unpacked_end = HIMEM + u64::from(hdr.init_size);
            if unpacked_end > mem_end.min(PCI_HOLE.0) {
                return Err(LinuxError::KernelTooLarge {
                    path,
                    needed: unpacked_end.div_ceil(1 << 20) + 1,
                });
            }
            (
                r.kernel_load.raw_value() + STARTUP_64_OFFSET,
                Some(hdr),
                r.kernel_end.max(unpacked_end),
            )
        }
    };
    let cmdline_max = match header {
        Some(h) if h.version >= 0x206 => u64::from(h.cmdline_size),
        Some(_) => 255,
        None => CMDLINE_MAX - 1,
    }
    .min(CMDLINE_MAX - 1);
    if cmdline.len() as u64 > cmdline_max {
        return Err(LinuxError::CmdlineTooLong {
            len: cmdline.len(),
            max: cmdline_max,
        });
    }
    let mut bytes = cmdline.clone().into_bytes();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE))
        .map_err(|_| LinuxError::Memory)?;
    let initrd = match initrd {
        Some((mut file, ipath)) => {
            let read_initrd = |source| LinuxError::ReadInitrd {
                path: ipath.clone(),
                source,
            };
            let size = file.metadata().map_err(read_initrd)?.len();
            let addr_max = header
                .map(|h| u64::from(h.initrd_addr_max))
                .filter(|&m| m != 0)
                .unwrap_or(DEFAULT_INITRD_MAX);
            let top = mem_end.min(PCI_HOLE.0);
            let addr = initrd_address(top, addr_max, size, kernel_end).ok_or_else(|| {
                LinuxError::InitrdTooLarge {
                    path: ipath.clone(),
                    size,
                }
            })?;
            let mut image = Vec::with_capacity(size as usize);
            file.read_to_end(&mut image).map_err(read_initrd)?;
            if image.len() as u64 != size {
                return Err(read_initrd(std::io::Error::other(
                    "the file changed size while being read",
                )));
            }
            mem.write_slice(&image, GuestAddress(addr))
                .map_err(|_| LinuxError::Memory)?;
            Some((addr, size))
        }
        None => None,
    };
    let params = zero_page(header, cmdline.len(), initrd, mem_end);
    mem.write_obj(params, GuestAddress(ZERO_PAGE))
        .map_err(|_| LinuxError::Memory)?;
    for (addr, value) in identity_page_tables() {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(|_| LinuxError::Memory)?;
    }
    Ok(LinuxEntry {
        entry,
        zero_page: ZERO_PAGE,
    })
}

/// MiB a bzImage needs: 1 MiB below the load address plus its init_size (0x260 in the file).
fn needed_mib(head: &[u8], mem_end: u64) -> u64 {
    let init_size = head
        .get(0x260..0x264)
        .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .unwrap_or(mem_end);
    (HIMEM + init_size).div_ceil(1 << 20) + 1
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            m => n += m,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn image_kinds_by_magic() {
        assert_eq!(image_kind(b"\x7fELF\x02\x01"), Some(ImageKind::Elf));
        let mut bz = vec![0u8; 0x210];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(image_kind(&bz), Some(ImageKind::BzImage));
        assert_eq!(image_kind(b"#!/bin/sh\n"), None);
        assert_eq!(image_kind(&[0u8; 0x300]), None);
        assert_eq!(image_kind(&[]), None);
        let elf = crate::payload::long_mode_elf().unwrap();
        assert!(is_x86_64_elf(&elf));
        let mut elf32 = elf.clone();
        elf32[4] = 1;
        assert!(!is_x86_64_elf(&elf32));
        let mut arm = elf;
        arm[18] = 183;
        assert!(!is_x86_64_elf(&arm));
    }

    fn memory(mib: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mib << 20)]).unwrap()
    }

    fn files(dir: &Path, kernel: &[u8], initrd: Option<&[u8]>, cmdline: &str) -> LinuxFiles {
        let k = dir.join("kernel");
        std::fs::write(&k, kernel).unwrap();
        let i = initrd.map(|bytes| {
            let p = dir.join("initrd");
            std::fs::write(&p, bytes).unwrap();
            p
        });
        LinuxFiles::open(&k.into(), i.map(FileArg::from).as_ref(), cmdline).unwrap()
    }

    #[test]
    fn elf_kernel_loads_with_zero_page_cmdline_and_initrd() {
        let dir = tempfile::tempdir().unwrap();
        let elf = crate::payload::long_mode_elf().unwrap();
        let mem = memory(64);
        let f = files(dir.path(), &elf, Some(&[0xa5; 5000]), "console=ttyS0 quiet");
        let entry = load(&mem, f).unwrap();
        assert_eq!(entry.entry, crate::payload::ELF_LOAD);
        assert_eq!(entry.zero_page, ZERO_PAGE);
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE)).unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.header }, HDR_MAGIC);
        let mut cmd = [0u8; 20];
        mem.read_slice(&mut cmd, GuestAddress(u64::from(hdr.cmd_line_ptr)))
            .unwrap();
        assert_eq!(&cmd, b"console=ttyS0 quiet\0");
        let (at, size) = (u64::from(hdr.ramdisk_image), u64::from(hdr.ramdisk_size));
        assert_eq!((at, size), ((64 << 20) - 0x2000, 5000));
        let mut first = [0u8; 1];
        mem.read_slice(&mut first, GuestAddress(at)).unwrap();
        assert_eq!(first[0], 0xa5);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4)).unwrap();
        assert_eq!(pml4, PDPT | 3);
    }

    #[test]
    fn files_that_are_no_kernel_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(&memory(16), files(dir.path(), b"#!/bin/sh\n", None, ""))
            .err()
            .unwrap();
        assert!(matches!(e, LinuxError::NotAKernel(_)), "{e}");
        let mut elf32 = crate::payload::long_mode_elf().unwrap();
        elf32[4] = 1;
        let e = load(&memory(16), files(dir.path(), &elf32, None, ""))
            .err()
            .unwrap();
        assert!(matches!(e, LinuxError::NotX86_64(_)), "{e}");
        let mut bz = vec![0u8; 0x1000];
        bz[0x1f1] = 1;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        bz[0x211] = 1; // LOADED_HIGH
        let e = load(&memory(16), files(dir.path(), &bz, None, ""))
            .err()
            .unwrap();
        assert!(matches!(e, LinuxError::No64BitEntry(_)), "{e}");
    }

    #[test]
    fn elf_past_the_end_of_memory_and_long_cmdline_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let far = crate::payload::elf64_image(&[0xf4], 0x800_0000, 0x1000);
        let e = load(&memory(16), files(dir.path(), &far, None, ""))
            .err()
            .unwrap();
        assert!(matches!(e, LinuxError::DoesNotFit { mib: 16, .. }), "{e}");
        let elf = crate::payload::long_mode_elf().unwrap();
        let long = "x".repeat(CMDLINE_MAX as usize);
        let e = load(&memory(16), files(dir.path(), &elf, None, &long))
            .err()
            .unwrap();
        assert!(matches!(e, LinuxError::CmdlineTooLong { .. }), "{e}");
    }

    #[test]
    fn initrd_that_does_not_fit_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let elf = crate::payload::long_mode_elf().unwrap();
        let big = vec![0u8; 15 << 20];
        let e = load(&memory(16), files(dir.path(), &elf, Some(&big), ""))
            .err()
            .unwrap();
        assert!(matches!(e, LinuxError::InitrdTooLarge { .. }), "{e}");
    }

    #[test]
    fn e820_has_low_ram_hole_high_ram_and_pci_hole() {
        let map = e820_map(256 << 20);
        let got: Vec<(u64, u64, u32)> = map.iter().map(|e| (e.addr, e.size, e.r#type)).collect();
        assert_eq!(
            got,
            [
                (0, 0x9_fc00, E820_RAM),
                (0x9_fc00, 0x6_0400, E820_RESERVED),
                (0x10_0000, (256 << 20) - 0x10_0000, E820_RAM),
                (0xc000_0000, 0x4000_0000, E820_RESERVED),
            ]
        );
    }

    #[test]
    fn e820_entries_never_overlap_at_3_gib() {
        let map = e820_map(3 << 30);
        for w in map.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr, "{map:?}");
        }
    }

    #[test]
    fn initrd_goes_high_aligned_and_above_the_kernel() {
        let mem = 256 << 20;
        let at = initrd_address(mem, 0x7fff_ffff, 0x1_2345, 0x400_0000).unwrap();
        assert_eq!(at % 0x1000, 0);
        assert!(at + 0x1_2345 <= mem && at >= mem - 0x1_2345 - 0x1000);
        // initrd_addr_max below the RAM top wins.
        let at = initrd_address(1 << 30, 0x0fff_ffff, 0x1000, 0).unwrap();
        assert_eq!(at, 0x1000_0000 - 0x1000);
        assert_eq!(initrd_address(mem, 0x7fff_ffff, mem, 0x100_0000), None);
        assert_eq!(initrd_address(mem, 0x7fff_ffff, mem + 1, 0), None);
    }

    #[test]
    fn page_tables_identity_map_four_gib() {
        let t = identity_page_tables();
        assert_eq!(t[0], (PML4, PDPT | 3));
        assert_eq!(t.len(), 1 + 4 * 513);
        let pde = |phys: u64| {
            let gib = phys >> 30;
            let index = (phys >> 21) & 511;
            t.iter()
                .find(|(a, _)| *a == PD + gib * 0x1000 + index * 8)
                .map(|(_, v)| *v)
        };
        assert_eq!(pde(0), Some(0x83));
        assert_eq!(pde(0x100_0000), Some(0x100_0083));
        assert_eq!(pde(0xfee0_0000), Some(0xfee0_0083));
        // The tables stay below the command line and above the zero page.
        assert!(t.iter().all(|(a, _)| *a >= PML4 && *a < CMDLINE));
        const { assert!(ZERO_PAGE + 0x1000 <= BOOT_STACK && BOOT_STACK < PML4) };
    }

    #[test]
    fn zero_page_carries_cmdline_initrd_and_map() {
        let p = zero_page(None, 42, Some((0x7000_0000, 0x10_0000)), 2 << 30);
        let hdr = p.hdr;
        assert_eq!({ hdr.header }, HDR_MAGIC);
        assert_eq!({ hdr.boot_flag }, BOOT_FLAG);
        assert_eq!({ hdr.type_of_loader }, LOADER_UNDEFINED);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0x7000_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x10_0000);
        assert_eq!(p.e820_entries, 4);
        assert_eq!({ p.e820_table[2].size }, (2 << 30) - HIMEM);
    }

    #[test]
    fn missing_and_directory_files_are_clear_errors() {
        let e = LinuxFiles::open(&"/nonexistent/bzImage".into(), None, "")
            .err()
            .unwrap();
        assert!(matches!(e, LinuxError::ReadKernel { .. }), "{e}");
        let e = LinuxFiles::open(&"/".into(), None, "").err().unwrap();
        assert!(matches!(e, LinuxError::ReadKernel { .. }), "{e}");
        let e = LinuxFiles::open(&"/proc/self/exe".into(), Some(&"/nope".into()), "")
            .err()
            .unwrap();
        assert!(matches!(e, LinuxError::ReadInitrd { .. }), "{e}");
        let e = LinuxFiles::open(&"/proc/self/exe".into(), None, "a\0b")
            .err()
            .unwrap();
        assert!(matches!(e, LinuxError::CmdlineNul));
    }
}
