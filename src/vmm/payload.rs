//! Built-in guest payloads, assembled from source here with iced-x86 (no system assembler).
//! Flat 32-bit protected-mode images: loaded at `LOAD_ADDR`, entered at `entry` with flat
//! segments (the VMM's GDT), paging off, interrupts off, ESP set by the payload itself.

use iced_x86::code_asm::*;
use iced_x86::IcedError;

use super::bus::DEBUG_EXIT_PORT;
use super::device::{RAM_PEEK_OFFSET, REG_RAISE_IRQ, REG_RAM_PEEK, REG_RAM_TRAPS, REG_SCRATCH};

pub const LOAD_ADDR: u64 = 0x1_0000;
const ENTRY_OFFSET: u64 = 0x40;
const DATA_OFFSET: u64 = 0x8000;
const STACK_TOP: u32 = 0xf000;
const IDT_BASE: u32 = 0x800;
const VAR_COUNT: u64 = 0x600;
const VAR_TARGET: u64 = 0x604;
const VAR_ORIG: u64 = 0x608;
const VAR_MASK: u64 = 0x60c;
const VAR_BASE: u64 = 0x610;
const VAR_IDTR: u64 = 0x620;
const VAR_RET: u64 = 0x614;
const VAR_CAP: u64 = 0x618;
const VAR_TABLE: u64 = 0x61c;
const VAR_RAM_INDEX: u64 = 0x630;
const VAR_RAM_REG: u64 = 0x634;
const VAR_RAM_BASE: u64 = 0x638;
/// Where pci-probe moves the host-memory BAR (aligned for BARs up to 32 MiB).
pub const RELOCATED_RAM: u32 = 0xe200_0000;
const RELOCATABLE_RAM_MAX: u32 = 0x200_0000;
pub const RAM_PATTERN: u32 = 0x1234_abcd;
/// The vector pci-probe programs into the device's MSI data register.
pub const MSI_VECTOR: u32 = 0x40;
/// The vector pci-probe programs into MSI-X table entry 0.
pub const MSIX_VECTOR: u32 = 0x41;
/// The MSI address: the local APIC window, destination APIC ID 0, physical mode.
const MSI_ADDRESS: u32 = 0xfee0_0000;
const LAPIC_SVR: u64 = 0xfee0_00f0;
const LAPIC_EOI: u64 = 0xfee0_00b0;
const UART: u32 = 0x3f8;
/// Where pci-probe moves BAR0: a memory BAR to 0xE000_0000, an IO BAR to port 0xD000.
pub const RELOCATED_MEM: u32 = 0xe000_0000;
pub const RELOCATED_IO: u32 = 0xd000;
pub const SCRATCH_PATTERN: u32 = 0x5aa5_c33c;

/// An assembled payload image.
#[derive(Debug, Clone)]
pub struct Payload {
    pub name: String,
    pub image: Vec<u8>,
    pub load_addr: u64,
    pub entry: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("assembler error")]
    Assemble(#[from] IcedError),
    #[error("payload code overflows into its data area")]
    TooLarge,
}

pub const BUILTIN: &[&str] = &["pci-probe", "hello", "loop", "halt"];
/// What `hello` prints; the benchmark waits for it under vgpud-vmm and under QEMU.
pub const HELLO: &str = "hello: vgpud payload\n";

/// Builds a built-in payload by name, or `None` for an unknown name.
pub fn builtin(name: &str) -> Option<Result<Payload, PayloadError>> {
    let image = match name {
        "pci-probe" => pci_probe(),
        "loop" => simple(|a| {
            let mut l = a.create_label();
            a.set_label(&mut l)?;
            a.jmp(l)
        }),
        "halt" => simple(|a| {
            a.cli()?;
            a.hlt()
        }),
        "hello" => hello(),
        _ => return None,
    };
    Some(image.map(|image| Payload {
        name: name.to_owned(),
        image,
        load_addr: LOAD_ADDR,
        entry: LOAD_ADDR + ENTRY_OFFSET,
    }))
}

/// A raw image from a file, loaded and entered at `LOAD_ADDR`.
pub fn from_file(name: &str, image: Vec<u8>) -> Payload {
    Payload {
        name: name.to_owned(),
        image,
        load_addr: LOAD_ADDR,
        entry: LOAD_ADDR,
    }
}

const MULTIBOOT_MAGIC: u32 = 0x1bad_b002;
/// Multiboot header flag: the load addresses are in the header (the "a.out kludge").
const MULTIBOOT_AOUT_KLUDGE: u32 = 1 << 16;
const MULTIBOOT_HEADER_LEN: u64 = 32;

/// The payload as a Multiboot image, so QEMU (`-kernel FILE`) runs the very same bytes: a
/// 32-byte Multiboot header followed by the unchanged image, whose load and entry addresses
/// it gives. A Multiboot loader enters in 32-bit protected mode with flat segments, paging and
/// interrupts off: the state `vgpud-vmm` starts a payload in.
pub fn multiboot_image(p: &Payload) -> Vec<u8> {
    let header_addr = (p.load_addr - MULTIBOOT_HEADER_LEN) as u32;
    let load_end = (p.load_addr + p.image.len() as u64) as u32;
    let fields = [
        MULTIBOOT_MAGIC,
        MULTIBOOT_AOUT_KLUDGE,
        0u32.wrapping_sub(MULTIBOOT_MAGIC.wrapping_add(MULTIBOOT_AOUT_KLUDGE)),
        header_addr, // header_addr
        header_addr, // load_addr: the file is loaded from its first byte
        load_end,    // load_end_addr
        0,           // bss_end_addr: none
        p.entry as u32,
    ];
    let mut out: Vec<u8> = fields.iter().flat_map(|f| f.to_le_bytes()).collect();
    out.extend_from_slice(&p.image);
    out
}

/// Where `long_mode_elf` is loaded and entered (above 1 MiB, as the boot protocol wants).
pub const ELF_LOAD: u64 = 0x20_0000;
const ELF_CODE_OFFSET: u64 = 0x1000;
const HDRS: u32 = 0x5372_6448;

/// A minimal 64-bit ELF "kernel" for the Linux boot path, so that path runs to the end on any
/// KVM: entered in long mode at `ELF_LOAD` with RSI = zero page, it checks that it runs 64-bit
/// code and that the zero page has the "HdrS" magic, prints `elf64: cmdline=<command line
/// read through cmd_line_ptr>` and exits through the debug port with 0 (4 on a bad zero page).
pub fn long_mode_elf() -> Result<Vec<u8>, PayloadError> {
    let mut a = CodeAssembler::new(64)?;
    let msg = ELF_LOAD + 0x800;
    let mut bad = a.create_label();
    let mut puts = a.create_label();
    a.mov(rbx, rsi)?;
    a.mov(edx, UART)?;
    // Only long mode decodes this as one instruction with a 64-bit immediate.
    a.mov(rax, 0x1122_3344_5566_7788u64)?;
    a.shr(rax, 32)?;
    a.cmp(eax, 0x1122_3344)?;
    a.jne(bad)?;
    a.cmp(dword_ptr(rbx + 0x202), HDRS as i32)?;
    a.jne(bad)?;
    a.mov(rsi, msg)?;
    a.call(puts)?;
    a.mov(esi, dword_ptr(rbx + 0x228))?; // cmd_line_ptr
    a.call(puts)?;
    a.mov(al, b'\n' as i32)?;
    a.out(dx, al)?;
    a.mov(al, 0)?;
    a.out(DEBUG_EXIT_PORT as i32, al)?;
    a.cli()?;
    a.hlt()?;
    a.set_label(&mut bad)?;
    a.mov(al, 4)?;
    a.out(DEBUG_EXIT_PORT as i32, al)?;
    a.cli()?;
    a.hlt()?;
    let mut done = a.create_label();
    a.set_label(&mut puts)?;
    a.lodsb()?;
    a.test(al, al)?;
    a.jz(done)?;
    a.out(dx, al)?;
    a.jmp(puts)?;
    a.set_label(&mut done)?;
    a.ret()?;
    let mut code = a.assemble(ELF_LOAD)?;
    if code.len() as u64 > msg - ELF_LOAD {
        return Err(PayloadError::TooLarge);
    }
    code.resize((msg - ELF_LOAD) as usize, 0x90);
    code.extend_from_slice(b"elf64: cmdline=\0");
    Ok(elf64_image(&code, ELF_LOAD, ELF_CODE_OFFSET))
}

/// An x86-64 ELF executable with one PT_LOAD segment holding `code` at `addr` (virtual =
/// physical), entered at `addr`.
pub fn elf64_image(code: &[u8], addr: u64, file_offset: u64) -> Vec<u8> {
    const EHDR_SIZE: u16 = 64;
    const PHDR_SIZE: u16 = 56;
    let mut f = Vec::new();
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]); // 64-bit, LE, version 1
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&addr.to_le_bytes()); // e_entry
    f.extend_from_slice(&u64::from(EHDR_SIZE).to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [EHDR_SIZE, PHDR_SIZE, 1, 64, 0, 0] {
        // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // R + X
    for v in [
        file_offset,
        addr,
        addr,
        code.len() as u64,
        code.len() as u64,
        0x1000,
    ] {
        // p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.resize(file_offset as usize, 0);
    f.extend_from_slice(code);
    f
}

/// Prints `HELLO` and exits with 0; the text sits in the first bytes, before the entry.
fn hello() -> Result<Vec<u8>, PayloadError> {
    let mut image = simple(|a| {
        let mut next = a.create_label();
        let mut done = a.create_label();
        a.cld()?;
        a.mov(esi, LOAD_ADDR as u32)?;
        a.mov(edx, UART)?;
        a.set_label(&mut next)?;
        a.lodsb()?;
        a.test(al, al)?;
        a.jz(done)?;
        a.out(dx, al)?;
        a.jmp(next)?;
        a.set_label(&mut done)?;
        exit(a, 0)
    })?;
    let text = [HELLO.as_bytes(), &[0]].concat();
    if text.len() as u64 > ENTRY_OFFSET {
        return Err(PayloadError::TooLarge);
    }
    image[..text.len()].copy_from_slice(&text);
    Ok(image)
}

fn simple(
    body: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<Vec<u8>, PayloadError> {
    let mut a = CodeAssembler::new(32)?;
    body(&mut a)?;
    let mut image = vec![0x90; ENTRY_OFFSET as usize];
    image.extend(a.assemble(LOAD_ADDR + ENTRY_OFFSET)?);
    Ok(image)
}

/// Strings live after the code at fixed addresses known before the code is assembled.
struct Data {
    bytes: Vec<u8>,
}

impl Data {
    fn str(&mut self, s: &str) -> u32 {
        let addr = (LOAD_ADDR + DATA_OFFSET) as u32 + self.bytes.len() as u32;
        self.bytes.extend_from_slice(s.as_bytes());
        self.bytes.push(0);
        addr
    }
}

/// Subroutine labels shared by the pieces of pci-probe.
struct Subs {
    puts: CodeLabel,
    puthex: CodeLabel,
    cfg_read: CodeLabel,
    cfg_write: CodeLabel,
}

fn print(a: &mut CodeAssembler, s: &Subs, addr: u32) -> Result<(), IcedError> {
    a.mov(esi, addr)?;
    a.call(s.puts)
}

/// Prints the low `digits` hex digits of EAX.
fn hex(a: &mut CodeAssembler, s: &Subs, digits: u32) -> Result<(), IcedError> {
    a.mov(ecx, digits)?;
    a.call(s.puthex)
}

/// The IRQ handler (8259 vectors and the MSI vector). It returns without IRET: KVM's instruction emulator (which runs all guest
/// code on the paravirtual KVM here) handles IRET only in real mode, so the frame is
/// unwound by hand: EFLAGS restored with IF clear, then STI (whose one-instruction shadow
/// keeps the next interrupt out) and an indirect jump to the saved EIP.
fn interrupt_handler() -> Result<Vec<u8>, PayloadError> {
    let mut a = CodeAssembler::new(32)?;
    a.push(eax)?;
    a.inc(dword_ptr(VAR_COUNT))?;
    a.mov(al, 0x20)?;
    a.out(0xa0, al)?;
    a.out(0x20, al)?;
    // Also end an MSI at the local APIC; harmless for an 8259 interrupt (no ISR bit set).
    a.mov(dword_ptr(LAPIC_EOI), 0)?;
    a.mov(eax, dword_ptr(esp + 4))?; // saved EIP
    a.mov(dword_ptr(VAR_RET), eax)?;
    a.pop(eax)?;
    a.and(dword_ptr(esp + 8), !0x200)?; // saved EFLAGS without IF
    a.add(esp, 8)?; // drop EIP and CS
    a.popfd()?;
    a.sti()?;
    a.jmp(dword_ptr(VAR_RET))?;
    let mut code = a.assemble(LOAD_ADDR)?;
    if code.len() as u64 > ENTRY_OFFSET {
        return Err(PayloadError::TooLarge);
    }
    code.resize(ENTRY_OFFSET as usize, 0x90);
    Ok(code)
}

fn subroutines(a: &mut CodeAssembler, s: &mut Subs) -> Result<(), IcedError> {
    // puts: ESI = NUL-terminated string. The UART here is always ready, so LSR is not polled.
    a.set_label(&mut s.puts)?;
    let mut next = a.create_label();
    let mut done = a.create_label();
    a.push(edx)?;
    a.mov(edx, UART)?;
    a.set_label(&mut next)?;
    a.lodsb()?;
    a.test(al, al)?;
    a.jz(done)?;
    a.out(dx, al)?;
    a.jmp(next)?;
    a.set_label(&mut done)?;
    a.pop(edx)?;
    a.ret()?;

    // puthex: EAX value, ECX digits (clobbers EAX, ECX).
    a.set_label(&mut s.puthex)?;
    let mut digit = a.create_label();
    let mut decimal = a.create_label();
    a.push(ebx)?;
    a.push(edx)?;
    a.mov(ebx, eax)?;
    a.mov(edx, UART)?;
    a.set_label(&mut digit)?;
    a.dec(ecx)?;
    a.mov(eax, ebx)?;
    a.shl(ecx, 2)?;
    a.shr(eax, cl)?;
    a.shr(ecx, 2)?;
    a.and(eax, 0xf)?;
    a.add(al, b'0' as i32)?;
    a.cmp(al, b'9' as i32)?;
    a.jbe(decimal)?;
    a.add(al, (b'a' - b'9' - 1) as i32)?;
    a.set_label(&mut decimal)?;
    a.out(dx, al)?;
    a.test(ecx, ecx)?;
    a.jnz(digit)?;
    a.pop(edx)?;
    a.pop(ebx)?;
    a.ret()?;

    // cfg_read: EBX = bus/device/function bits, ECX = register -> EAX. Keeps ECX.
    a.set_label(&mut s.cfg_read)?;
    a.push(edx)?;
    a.mov(eax, ebx)?;
    a.or(eax, ecx)?;
    a.or(eax, 0x8000_0000u32 as i32)?;
    a.mov(edx, 0xcf8)?;
    a.out(dx, eax)?;
    a.mov(edx, 0xcfc)?;
    a.in_(eax, dx)?;
    a.pop(edx)?;
    a.ret()?;

    // cfg_write: EBX = bus/device/function bits, ECX = register, EAX = value. Keeps ECX.
    a.set_label(&mut s.cfg_write)?;
    a.push(edx)?;
    a.push(eax)?;
    a.mov(eax, ebx)?;
    a.or(eax, ecx)?;
    a.or(eax, 0x8000_0000u32 as i32)?;
    a.mov(edx, 0xcf8)?;
    a.out(dx, eax)?;
    a.pop(eax)?;
    a.mov(edx, 0xcfc)?;
    a.out(dx, eax)?;
    a.pop(edx)?;
    a.ret()
}

/// Lists BARs of the function in EBX: sizing by writing all-ones, then restoring.
fn list_bars(a: &mut CodeAssembler, s: &Subs, d: &mut Data) -> Result<(), IcedError> {
    let (s_bar, s_io, s_m32, s_m64, s_pf) = (
        d.str("  bar"),
        d.str(" io"),
        d.str(" mem32"),
        d.str(" mem64"),
        d.str(" prefetch"),
    );
    let (s_addr, s_size, s_nl) = (d.str(" addr="), d.str(" size="), d.str("\n"));
    let mut top = a.create_label();
    let mut next = a.create_label();
    let mut done = a.create_label();
    let mut io = a.create_label();
    let mut mem32 = a.create_label();
    let mut no_pf = a.create_label();
    let mut sized = a.create_label();
    a.xor(edi, edi)?;
    a.set_label(&mut top)?;
    a.cmp(edi, 6)?;
    a.jae(done)?;
    a.lea(ecx, dword_ptr(edi * 4 + 0x10))?;
    a.call(s.cfg_read)?;
    a.mov(dword_ptr(VAR_ORIG), eax)?;
    a.mov(eax, -1)?;
    a.call(s.cfg_write)?;
    a.call(s.cfg_read)?;
    a.mov(dword_ptr(VAR_MASK), eax)?;
    a.mov(eax, dword_ptr(VAR_ORIG))?;
    a.call(s.cfg_write)?;
    a.cmp(dword_ptr(VAR_MASK), 0)?;
    a.je(next)?;
    print(a, s, s_bar)?;
    a.mov(eax, edi)?;
    hex(a, s, 1)?;
    a.test(dword_ptr(VAR_ORIG), 1)?;
    a.jnz(io)?;
    a.test(dword_ptr(VAR_ORIG), 4)?;
    a.jz(mem32)?;
    print(a, s, s_m64)?;
    a.inc(edi)?; // the high half is the next register
    a.jmp(no_pf)?;
    a.set_label(&mut mem32)?;
    print(a, s, s_m32)?;
    a.set_label(&mut no_pf)?;
    let mut after_pf = a.create_label();
    a.test(dword_ptr(VAR_ORIG), 8)?;
    a.jz(after_pf)?;
    print(a, s, s_pf)?;
    a.set_label(&mut after_pf)?;
    a.mov(eax, 0xffff_fff0u32 as i32)?;
    a.jmp(sized)?;
    a.set_label(&mut io)?;
    print(a, s, s_io)?;
    a.mov(eax, 0xffff_fffcu32 as i32)?;
    a.set_label(&mut sized)?;
    // EAX = type-bit mask: addr = orig & mask, size = ~(mask_read & mask) + 1
    a.push(eax)?;
    print(a, s, s_addr)?;
    a.mov(eax, dword_ptr(esp))?;
    a.and(eax, dword_ptr(VAR_ORIG))?;
    hex(a, s, 8)?;
    print(a, s, s_size)?;
    a.pop(eax)?;
    a.and(eax, dword_ptr(VAR_MASK))?;
    a.not(eax)?;
    a.inc(eax)?;
    hex(a, s, 8)?;
    print(a, s, s_nl)?;
    a.set_label(&mut next)?;
    a.inc(edi)?;
    a.jmp(top)?;
    a.set_label(&mut done)?;
    a.nop() // the caller may put its own label next
}

/// Scans bus 0, prints every function, records the first non-bridge one in VAR_TARGET.
fn scan(a: &mut CodeAssembler, s: &Subs, d: &mut Data) -> Result<(), IcedError> {
    let (s_fn, s_dot, s_sp, s_colon) = (d.str("00:"), d.str("."), d.str(" "), d.str(":"));
    let (s_class, s_nl) = (d.str(" class "), d.str("\n"));
    let mut top = a.create_label();
    let mut absent = a.create_label();
    let mut not_target = a.create_label();
    let mut skip_bars = a.create_label();
    let mut next_fn = a.create_label();
    let mut next_dev = a.create_label();
    let mut check_end = a.create_label();
    a.mov(dword_ptr(VAR_TARGET), -1)?;
    a.xor(ebx, ebx)?;
    a.set_label(&mut top)?;
    a.xor(ecx, ecx)?;
    a.call(s.cfg_read)?;
    a.cmp(eax, -1)?;
    a.je(absent)?;
    a.push(eax)?;
    print(a, s, s_fn)?;
    a.mov(eax, ebx)?;
    a.shr(eax, 11)?;
    hex(a, s, 2)?;
    print(a, s, s_dot)?;
    a.mov(eax, ebx)?;
    a.shr(eax, 8)?;
    a.and(eax, 7)?;
    hex(a, s, 1)?;
    print(a, s, s_sp)?;
    a.mov(eax, dword_ptr(esp))?;
    hex(a, s, 4)?;
    print(a, s, s_colon)?;
    a.pop(eax)?;
    a.shr(eax, 16)?;
    hex(a, s, 4)?;
    print(a, s, s_class)?;
    a.mov(ecx, 8)?;
    a.call(s.cfg_read)?;
    a.shr(eax, 8)?;
    a.push(eax)?;
    hex(a, s, 6)?;
    print(a, s, s_nl)?;
    a.pop(eax)?;
    a.shr(eax, 16)?;
    a.cmp(eax, 6)?; // base class 06: bridge
    a.je(not_target)?;
    a.cmp(dword_ptr(VAR_TARGET), -1)?;
    a.jne(not_target)?;
    a.mov(dword_ptr(VAR_TARGET), ebx)?;
    a.set_label(&mut not_target)?;
    a.mov(ecx, 0x0c)?;
    a.call(s.cfg_read)?;
    a.shr(eax, 16)?;
    a.and(eax, 0x7f)?;
    a.jnz(skip_bars)?;
    list_bars(a, s, d)?;
    a.set_label(&mut skip_bars)?;
    a.test(ebx, 0x700)?;
    a.jnz(next_fn)?;
    a.mov(ecx, 0x0c)?;
    a.call(s.cfg_read)?;
    a.test(eax, 0x80_0000)?; // multi-function bit of the header type
    a.jz(next_dev)?;
    a.jmp(next_fn)?;
    a.set_label(&mut absent)?;
    a.test(ebx, 0x700)?;
    a.jz(next_dev)?;
    a.set_label(&mut next_fn)?;
    a.add(ebx, 0x100)?;
    a.test(ebx, 0x700)?;
    a.jnz(top)?;
    a.jmp(check_end)?;
    a.set_label(&mut next_dev)?;
    a.and(ebx, 0xf800)?;
    a.add(ebx, 0x800)?;
    a.set_label(&mut check_end)?;
    a.cmp(ebx, 0x1_0000)?;
    a.jb(top)
}

/// Exits through the debug port with `code`.
fn exit(a: &mut CodeAssembler, code: i32) -> Result<(), IcedError> {
    a.mov(al, code)?;
    a.out(DEBUG_EXIT_PORT as i32, al)?;
    a.cli()?;
    a.hlt()
}

/// Moves BAR0 of the target, round-trips the scratch register, raises and counts an interrupt.
fn exercise(a: &mut CodeAssembler, s: &Subs, d: &mut Data) -> Result<(), IcedError> {
    let s_none = d.str("pci-probe: no device found\n");
    let s_target = d.str("target 00:");
    let s_moved = d.str("bar0 moved to ");
    let s_wrote = d.str("scratch wrote ");
    let s_read = d.str(" read ");
    let s_ok = d.str(" ok\n");
    let s_bad = d.str(" MISMATCH\n");
    let s_line = d.str("irq line=");
    let s_count = d.str("irq count=");
    let s_nl = d.str("\n");
    let s_done = d.str("pci-probe: done\n");
    let mut found = a.create_label();
    let mut io = a.create_label();
    let mut moved = a.create_label();
    a.cmp(dword_ptr(VAR_TARGET), -1)?;
    a.jne(found)?;
    print(a, s, s_none)?;
    exit(a, 1)?;
    a.set_label(&mut found)?;
    a.mov(ebx, dword_ptr(VAR_TARGET))?;
    print(a, s, s_target)?;
    a.mov(eax, ebx)?;
    a.shr(eax, 11)?;
    hex(a, s, 2)?;
    print(a, s, s_nl)?;
    // Enable IO, memory and bus mastering.
    a.mov(ecx, 4)?;
    a.call(s.cfg_read)?;
    a.or(eax, 7)?;
    a.call(s.cfg_write)?;
    // Relocate BAR0.
    a.mov(ecx, 0x10)?;
    a.call(s.cfg_read)?;
    a.test(eax, 1)?;
    a.jnz(io)?;
    a.mov(eax, RELOCATED_MEM)?;
    a.call(s.cfg_write)?;
    a.call(s.cfg_read)?;
    a.and(eax, 0xffff_fff0u32 as i32)?;
    a.jmp(moved)?;
    a.set_label(&mut io)?;
    a.mov(eax, RELOCATED_IO)?;
    a.call(s.cfg_write)?;
    a.call(s.cfg_read)?;
    a.and(eax, 0xffff_fffcu32 as i32)?;
    a.set_label(&mut moved)?;
    a.mov(dword_ptr(VAR_BASE), eax)?;
    print(a, s, s_moved)?;
    a.mov(eax, dword_ptr(VAR_BASE))?;
    hex(a, s, 8)?;
    print(a, s, s_nl)?;
    // Scratch round trip through the new address (MMIO or port I/O).
    let mut pio = a.create_label();
    let mut checked = a.create_label();
    print(a, s, s_wrote)?;
    a.mov(eax, SCRATCH_PATTERN)?;
    hex(a, s, 8)?;
    print(a, s, s_read)?;
    a.mov(edx, dword_ptr(VAR_BASE))?;
    a.mov(eax, SCRATCH_PATTERN)?;
    a.mov(ecx, 0x10)?;
    a.push(eax)?;
    a.call(s.cfg_read)?;
    a.test(eax, 1)?;
    a.pop(eax)?;
    a.jnz(pio)?;
    a.mov(dword_ptr(edx + REG_SCRATCH as i32), eax)?;
    a.mov(eax, dword_ptr(edx + REG_SCRATCH as i32))?;
    a.jmp(checked)?;
    a.set_label(&mut pio)?;
    a.out(dx, eax)?;
    a.in_(eax, dx)?;
    a.set_label(&mut checked)?;
    a.push(eax)?;
    hex(a, s, 8)?;
    a.pop(eax)?;
    let mut same = a.create_label();
    a.cmp(eax, SCRATCH_PATTERN)?;
    a.je(same)?;
    print(a, s, s_bad)?;
    exit(a, 2)?;
    a.set_label(&mut same)?;
    print(a, s, s_ok)?;
    // Unmask the device's line in the 8259 pair, then ask the device for one interrupt.
    let mut slave = a.create_label();
    let mut unmasked = a.create_label();
    print(a, s, s_line)?;
    a.mov(ecx, 0x3c)?;
    a.call(s.cfg_read)?;
    a.and(eax, 0xf)?;
    a.push(eax)?;
    hex(a, s, 2)?;
    print(a, s, s_nl)?;
    a.pop(ecx)?;
    a.mov(eax, 1)?;
    a.cmp(ecx, 8)?;
    a.jae(slave)?;
    a.shl(eax, cl)?;
    a.not(eax)?;
    a.out(0x21, al)?;
    a.jmp(unmasked)?;
    a.set_label(&mut slave)?;
    a.sub(ecx, 8)?;
    a.shl(eax, cl)?;
    a.not(eax)?;
    a.out(0xa1, al)?;
    a.mov(al, 0xfb)?; // cascade (IRQ2) only on the master
    a.out(0x21, al)?;
    a.set_label(&mut unmasked)?;
    a.sti()?;
    raise_and_wait(a, s)?;
    print(a, s, s_count)?;
    a.mov(eax, dword_ptr(VAR_COUNT))?;
    hex(a, s, 1)?;
    print(a, s, s_nl)?;
    let mut irq_ok = a.create_label();
    a.cmp(dword_ptr(VAR_COUNT), 1)?;
    a.je(irq_ok)?;
    exit(a, 3)?;
    a.set_label(&mut irq_ok)?;
    msi(a, s, d)?;
    msix(a, s, d)?;
    ram_bar(a, s, d)?;
    print(a, s, s_done)?;
    exit(a, 0)
}

/// Asks the device in EBX for one interrupt through BAR0 (MMIO or port I/O, at VAR_BASE) and
/// waits, bounded, for the handler to count it; returns with interrupts off.
fn raise_and_wait(a: &mut CodeAssembler, s: &Subs) -> Result<(), IcedError> {
    let mut raise_pio = a.create_label();
    let mut raised = a.create_label();
    a.mov(ecx, 0x10)?;
    a.call(s.cfg_read)?;
    a.mov(edx, dword_ptr(VAR_BASE))?;
    a.test(eax, 1)?;
    a.mov(eax, 1)?;
    a.jnz(raise_pio)?;
    a.mov(dword_ptr(edx + REG_RAISE_IRQ as i32), eax)?;
    a.jmp(raised)?;
    a.set_label(&mut raise_pio)?;
    a.add(edx, REG_RAISE_IRQ as i32)?;
    a.out(dx, eax)?;
    a.set_label(&mut raised)?;
    // Only the handler increments VAR_COUNT.
    let mut wait = a.create_label();
    let mut counted = a.create_label();
    a.mov(ecx, 1_000_000)?;
    a.set_label(&mut wait)?;
    a.cmp(dword_ptr(VAR_COUNT), 0)?;
    a.jne(counted)?;
    a.pause()?;
    a.loop_(wait)?;
    a.set_label(&mut counted)?;
    a.cli()
}

/// The last prefetchable memory BAR of the device in EBX (host memory behind a KVM memory
/// slot on the emulated device): writes a pattern through it, has the device report what the
/// host sees, moves the BAR with decoding off (sizing it on the way), reads the pattern back
/// at the new address, and prints how many accesses trapped to the VMM.
fn ram_bar(a: &mut CodeAssembler, s: &Subs, d: &mut Data) -> Result<(), IcedError> {
    let s_none = d.str("ram bar: none\n");
    let s_bar = d.str("ram bar");
    let s_at = d.str(" at ");
    let s_wrote = d.str(" wrote ");
    let s_host = d.str(" host saw ");
    let s_big = d.str("ram bar too large to move\n");
    let s_moved = d.str("ram bar moved to ");
    let s_read = d.str(" read ");
    let s_ok = d.str(" ok\n");
    let s_bad = d.str(" MISMATCH\n");
    let s_traps = d.str("ram traps=");
    let s_nl = d.str("\n");
    let mut top = a.create_label();
    let mut next = a.create_label();
    let mut not_pf = a.create_label();
    let mut scanned = a.create_label();
    let mut have = a.create_label();
    let mut too_big = a.create_label();
    let mut traps = a.create_label();
    let mut end = a.create_label();
    a.mov(dword_ptr(VAR_RAM_INDEX), -1)?;
    a.xor(edi, edi)?;
    a.set_label(&mut top)?;
    a.cmp(edi, 6)?;
    a.jae(scanned)?;
    a.lea(ecx, dword_ptr(edi * 4 + 0x10))?;
    a.call(s.cfg_read)?;
    a.test(eax, 1)?;
    a.jnz(next)?; // IO BAR
    a.test(eax, 8)?;
    a.jz(not_pf)?;
    a.mov(dword_ptr(VAR_RAM_INDEX), edi)?;
    a.set_label(&mut not_pf)?;
    a.and(eax, 6)?;
    a.cmp(eax, 4)?;
    a.jne(next)?;
    a.inc(edi)?; // a 64-bit BAR's high half
    a.set_label(&mut next)?;
    a.inc(edi)?;
    a.jmp(top)?;
    a.set_label(&mut scanned)?;
    a.cmp(dword_ptr(VAR_RAM_INDEX), -1)?;
    a.jne(have)?;
    print(a, s, s_none)?;
    a.jmp(end)?;
    a.set_label(&mut have)?;
    a.mov(ecx, dword_ptr(VAR_RAM_INDEX))?;
    a.lea(ecx, dword_ptr(ecx * 4 + 0x10))?;
    a.mov(dword_ptr(VAR_RAM_REG), ecx)?;
    a.call(s.cfg_read)?;
    a.and(eax, !0xf)?;
    a.mov(dword_ptr(VAR_RAM_BASE), eax)?;
    print(a, s, s_bar)?;
    a.mov(eax, dword_ptr(VAR_RAM_INDEX))?;
    hex(a, s, 1)?;
    print(a, s, s_at)?;
    a.mov(eax, dword_ptr(VAR_RAM_BASE))?;
    hex(a, s, 8)?;
    a.mov(edx, dword_ptr(VAR_RAM_BASE))?;
    a.mov(dword_ptr(edx + RAM_PEEK_OFFSET as i32), RAM_PATTERN)?;
    print(a, s, s_wrote)?;
    a.mov(eax, RAM_PATTERN)?;
    hex(a, s, 8)?;
    print(a, s, s_host)?;
    a.mov(edx, dword_ptr(VAR_BASE))?;
    a.mov(eax, dword_ptr(edx + REG_RAM_PEEK as i32))?;
    hex(a, s, 8)?;
    print(a, s, s_nl)?;
    // Memory decoding off while the BAR is sized and moved, as firmware does.
    a.mov(ecx, 4)?;
    a.call(s.cfg_read)?;
    a.and(eax, !2)?;
    a.call(s.cfg_write)?;
    a.mov(ecx, dword_ptr(VAR_RAM_REG))?;
    a.mov(eax, -1)?;
    a.call(s.cfg_write)?;
    a.call(s.cfg_read)?;
    a.and(eax, !0xf)?;
    a.not(eax)?;
    a.inc(eax)?;
    a.cmp(eax, RELOCATABLE_RAM_MAX)?;
    a.ja(too_big)?;
    a.mov(eax, RELOCATED_RAM)?;
    a.call(s.cfg_write)?;
    a.mov(ecx, 4)?;
    a.call(s.cfg_read)?;
    a.or(eax, 2)?;
    a.call(s.cfg_write)?;
    a.mov(ecx, dword_ptr(VAR_RAM_REG))?;
    a.call(s.cfg_read)?;
    a.and(eax, !0xf)?;
    a.mov(dword_ptr(VAR_RAM_BASE), eax)?;
    print(a, s, s_moved)?;
    a.mov(eax, dword_ptr(VAR_RAM_BASE))?;
    hex(a, s, 8)?;
    print(a, s, s_read)?;
    a.mov(edx, dword_ptr(VAR_RAM_BASE))?;
    a.mov(eax, dword_ptr(edx + RAM_PEEK_OFFSET as i32))?;
    a.push(eax)?;
    hex(a, s, 8)?;
    a.pop(eax)?;
    let mut same = a.create_label();
    a.cmp(eax, RAM_PATTERN)?;
    a.je(same)?;
    print(a, s, s_bad)?;
    exit(a, 6)?;
    a.set_label(&mut same)?;
    print(a, s, s_ok)?;
    a.jmp(traps)?;
    a.set_label(&mut too_big)?;
    a.mov(eax, dword_ptr(VAR_RAM_BASE))?;
    a.call(s.cfg_write)?;
    a.mov(ecx, 4)?;
    a.call(s.cfg_read)?;
    a.or(eax, 2)?;
    a.call(s.cfg_write)?;
    print(a, s, s_big)?;
    a.set_label(&mut traps)?;
    print(a, s, s_traps)?;
    a.mov(edx, dword_ptr(VAR_BASE))?;
    a.mov(eax, dword_ptr(edx + REG_RAM_TRAPS as i32))?;
    hex(a, s, 1)?;
    print(a, s, s_nl)?;
    a.set_label(&mut end)?;
    a.nop()
}

/// Walks the capability list of the device in EBX (bounded, so a looping list ends) and
/// leaves the offset of the capability with `id` in VAR_CAP, or 0.
fn find_cap(a: &mut CodeAssembler, s: &Subs, id: u32) -> Result<(), IcedError> {
    let mut walk = a.create_label();
    let mut found = a.create_label();
    let mut done = a.create_label();
    a.mov(dword_ptr(VAR_CAP), 0)?;
    a.mov(ecx, 4)?;
    a.call(s.cfg_read)?;
    a.test(eax, 0x10_0000)?; // status: capabilities list
    a.jz(done)?;
    a.mov(ecx, 0x34)?;
    a.call(s.cfg_read)?;
    a.and(eax, 0xfc)?;
    a.mov(ecx, eax)?;
    a.mov(edi, 48)?;
    a.set_label(&mut walk)?;
    a.cmp(ecx, 0x40)?;
    a.jb(done)?;
    a.dec(edi)?;
    a.jz(done)?;
    a.call(s.cfg_read)?;
    a.cmp(al, id as i32)?;
    a.je(found)?;
    a.shr(eax, 8)?;
    a.and(eax, 0xfc)?;
    a.mov(ecx, eax)?;
    a.jmp(walk)?;
    a.set_label(&mut found)?;
    a.mov(dword_ptr(VAR_CAP), ecx)?;
    a.set_label(&mut done)?;
    a.nop()
}

/// Programs MSI-X vector 0 of the device in EBX through its table (local APIC address,
/// data = MSIX_VECTOR, unmasked), enables MSI-X, and counts one interrupt, which can only
/// come as that vector. Skipped when the device has no MSI-X.
fn msix(a: &mut CodeAssembler, s: &Subs, d: &mut Data) -> Result<(), IcedError> {
    let s_none = d.str("msix: none\n");
    let s_cap = d.str("msix cap at ");
    let s_table = d.str(" table bar");
    let s_plus = d.str("+");
    let s_vector = d.str(" vector=");
    let s_count = d.str("msix count=");
    let s_nl = d.str("\n");
    let mut found = a.create_label();
    let mut end = a.create_label();
    find_cap(a, s, 0x11)?;
    a.cmp(dword_ptr(VAR_CAP), 0)?;
    a.jne(found)?;
    print(a, s, s_none)?;
    a.jmp(end)?;
    a.set_label(&mut found)?;
    print(a, s, s_cap)?;
    a.mov(eax, dword_ptr(VAR_CAP))?;
    hex(a, s, 2)?;
    a.mov(ecx, dword_ptr(VAR_CAP))?;
    a.add(ecx, 4)?;
    a.call(s.cfg_read)?; // table offset | BIR
    a.mov(dword_ptr(VAR_TABLE), eax)?;
    print(a, s, s_table)?;
    a.mov(eax, dword_ptr(VAR_TABLE))?;
    a.and(eax, 7)?;
    hex(a, s, 1)?;
    print(a, s, s_plus)?;
    a.mov(eax, dword_ptr(VAR_TABLE))?;
    a.and(eax, !7)?;
    hex(a, s, 3)?;
    // The table's address: the BIR's BAR base plus the offset.
    a.mov(ecx, dword_ptr(VAR_TABLE))?;
    a.and(ecx, 7)?;
    a.lea(ecx, dword_ptr(ecx * 4 + 0x10))?;
    a.call(s.cfg_read)?;
    a.and(eax, !0xf)?;
    a.mov(edx, dword_ptr(VAR_TABLE))?;
    a.and(edx, !7)?;
    a.add(eax, edx)?;
    a.mov(dword_ptr(VAR_TABLE), eax)?;
    a.mov(edx, eax)?;
    a.mov(dword_ptr(edx), MSI_ADDRESS)?;
    a.mov(dword_ptr(edx + 4), 0)?;
    a.mov(dword_ptr(edx + 8), MSIX_VECTOR)?;
    a.mov(dword_ptr(edx + 12), 0)?; // unmask
    a.mov(ecx, dword_ptr(VAR_CAP))?;
    a.call(s.cfg_read)?;
    a.or(eax, 0x8000_0000u32 as i32)?; // message control bit 15: MSI-X enable
    a.call(s.cfg_write)?;
    print(a, s, s_vector)?;
    a.mov(eax, MSIX_VECTOR)?;
    hex(a, s, 2)?;
    print(a, s, s_nl)?;
    a.mov(dword_ptr(VAR_COUNT), 0)?;
    a.sti()?;
    raise_and_wait(a, s)?;
    print(a, s, s_count)?;
    a.mov(eax, dword_ptr(VAR_COUNT))?;
    hex(a, s, 1)?;
    print(a, s, s_nl)?;
    a.cmp(dword_ptr(VAR_COUNT), 1)?;
    a.je(end)?;
    exit(a, 7)?;
    a.set_label(&mut end)?;
    a.nop()
}

/// Finds the MSI capability of the device in EBX, programs it (local APIC address, data =
/// MSI_VECTOR), enables it with both 8259s masked, and counts one interrupt, which can only
/// arrive through MSI: the vector is not an 8259 one. Skipped when the device has no MSI.
fn msi(a: &mut CodeAssembler, s: &Subs, d: &mut Data) -> Result<(), IcedError> {
    let s_none = d.str("msi: none\n");
    let s_cap = d.str("msi cap at ");
    let s_vector = d.str("msi enabled vector=");
    let s_count = d.str("msi count=");
    let s_nl = d.str("\n");
    let mut none = a.create_label();
    let mut found = a.create_label();
    let mut end = a.create_label();
    find_cap(a, s, 0x05)?;
    a.cmp(dword_ptr(VAR_CAP), 0)?;
    a.jne(found)?;
    a.set_label(&mut none)?;
    print(a, s, s_none)?;
    a.jmp(end)?;
    a.set_label(&mut found)?;
    print(a, s, s_cap)?;
    a.mov(eax, dword_ptr(VAR_CAP))?;
    hex(a, s, 2)?;
    print(a, s, s_nl)?;
    // Software-enable the local APIC (spurious vector 0xff) and mask both 8259s.
    a.mov(dword_ptr(LAPIC_SVR), 0x1ff)?;
    a.mov(al, 0xff)?;
    a.out(0x21, al)?;
    a.out(0xa1, al)?;
    // Address, then data at +8 or, for a 64-bit capable capability, upper address at +8 and
    // data at +0xc.
    let mut addr32 = a.create_label();
    let mut data = a.create_label();
    a.mov(ecx, dword_ptr(VAR_CAP))?;
    a.add(ecx, 4)?;
    a.mov(eax, MSI_ADDRESS)?;
    a.call(s.cfg_write)?;
    a.mov(ecx, dword_ptr(VAR_CAP))?;
    a.call(s.cfg_read)?;
    a.test(eax, 0x80_0000)?; // message control bit 7: 64-bit address
    a.jz(addr32)?;
    a.add(ecx, 8)?;
    a.xor(eax, eax)?;
    a.call(s.cfg_write)?;
    a.add(ecx, 4)?;
    a.jmp(data)?;
    a.set_label(&mut addr32)?;
    a.add(ecx, 8)?;
    a.set_label(&mut data)?;
    a.mov(eax, MSI_VECTOR)?;
    a.call(s.cfg_write)?;
    a.mov(ecx, dword_ptr(VAR_CAP))?;
    a.call(s.cfg_read)?;
    a.or(eax, 0x1_0000)?; // message control bit 0: MSI enable
    a.call(s.cfg_write)?;
    print(a, s, s_vector)?;
    a.mov(eax, MSI_VECTOR)?;
    hex(a, s, 2)?;
    print(a, s, s_nl)?;
    a.mov(dword_ptr(VAR_COUNT), 0)?;
    a.sti()?;
    raise_and_wait(a, s)?;
    // MSI off again: MSI and MSI-X must not be enabled together.
    a.mov(ecx, dword_ptr(VAR_CAP))?;
    a.call(s.cfg_read)?;
    a.and(eax, !0x1_0000)?;
    a.call(s.cfg_write)?;
    print(a, s, s_count)?;
    a.mov(eax, dword_ptr(VAR_COUNT))?;
    hex(a, s, 1)?;
    print(a, s, s_nl)?;
    a.cmp(dword_ptr(VAR_COUNT), 1)?;
    a.je(end)?;
    exit(a, 5)?;
    a.set_label(&mut end)?;
    a.nop()
}

fn pci_probe() -> Result<Vec<u8>, PayloadError> {
    let mut d = Data { bytes: Vec::new() };
    let mut a = CodeAssembler::new(32)?;
    let mut s = Subs {
        puts: a.create_label(),
        puthex: a.create_label(),
        cfg_read: a.create_label(),
        cfg_write: a.create_label(),
    };
    let mut main = a.create_label();
    let banner = d.str("pci-probe: scanning bus 0\n");
    a.jmp(main)?;
    subroutines(&mut a, &mut s)?;
    a.set_label(&mut main)?;
    a.mov(esp, STACK_TOP)?;
    // IDT: vectors 0x20..0x2f (both PICs after remapping) go to the handler at LOAD_ADDR.
    let mut fill = a.create_label();
    let handler = LOAD_ADDR as u32;
    a.mov(edi, IDT_BASE + 0x20 * 8)?;
    a.mov(ecx, 16)?;
    a.set_label(&mut fill)?;
    a.mov(dword_ptr(edi), (0x08 << 16) | (handler & 0xffff))?;
    a.mov(dword_ptr(edi + 4), (handler & 0xffff_0000) | 0x8e00)?;
    a.add(edi, 8)?;
    a.loop_(fill)?;
    // ... and the MSI and MSI-X vectors.
    for vector in [MSI_VECTOR, MSIX_VECTOR] {
        let gate = u64::from(IDT_BASE) + u64::from(vector) * 8;
        a.mov(dword_ptr(gate), (0x08 << 16) | (handler & 0xffff))?;
        a.mov(dword_ptr(gate + 4), (handler & 0xffff_0000) | 0x8e00)?;
    }
    a.mov(word_ptr(VAR_IDTR), (MSIX_VECTOR + 1) * 8 - 1)?;
    a.mov(dword_ptr(VAR_IDTR + 2), IDT_BASE)?;
    a.lidt(fword_ptr(VAR_IDTR))?;
    a.mov(dword_ptr(VAR_COUNT), 0)?;
    // 8259 pair: ICW1..ICW4, vectors 0x20/0x28, everything masked until the line is known.
    for (port, value) in [
        (0x20, 0x11),
        (0xa0, 0x11),
        (0x21, 0x20),
        (0xa1, 0x28),
        (0x21, 0x04),
        (0xa1, 0x02),
        (0x21, 0x01),
        (0xa1, 0x01),
        (0x21, 0xff),
        (0xa1, 0xff),
    ] {
        a.mov(al, value)?;
        a.out(port, al)?;
    }
    a.cld()?;
    print(&mut a, &s, banner)?;
    scan(&mut a, &s, &mut d)?;
    exercise(&mut a, &s, &mut d)?;
    let code = a.assemble(LOAD_ADDR + ENTRY_OFFSET)?;
    let mut image = interrupt_handler()?;
    image.extend(code);
    if image.len() as u64 > DATA_OFFSET {
        return Err(PayloadError::TooLarge);
    }
    image.resize(DATA_OFFSET as usize, 0x90);
    image.extend(d.bytes);
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    #[test]
    fn pci_probe_assembles_small() {
        let p = builtin("pci-probe").unwrap().unwrap();
        assert_eq!(p.entry, LOAD_ADDR + ENTRY_OFFSET);
        let code_len = p.image[..DATA_OFFSET as usize]
            .iter()
            .rposition(|&b| b != 0x90)
            .unwrap();
        assert!(code_len < 4096, "payload code is {code_len} bytes");
        let data = &p.image[DATA_OFFSET as usize..];
        assert!(data.windows(9).any(|w| w == b"irq count"));
    }

    #[test]
    fn handler_counts_acks_and_returns() {
        let p = builtin("pci-probe").unwrap().unwrap();
        let mut dec = Decoder::with_ip(
            32,
            &p.image[..ENTRY_OFFSET as usize],
            LOAD_ADDR,
            DecoderOptions::NONE,
        );
        let mnemonics: Vec<Mnemonic> = dec.iter().map(|i| i.mnemonic()).take(14).collect();
        assert_eq!(mnemonics[1], Mnemonic::Inc);
        assert_eq!(
            &mnemonics[11..],
            &[Mnemonic::Popfd, Mnemonic::Sti, Mnemonic::Jmp]
        );
    }

    #[test]
    fn entry_starts_with_a_jump_and_exits_through_debug_port() {
        let p = builtin("pci-probe").unwrap().unwrap();
        let start = ENTRY_OFFSET as usize;
        let mut dec = Decoder::with_ip(
            32,
            &p.image[start..DATA_OFFSET as usize],
            p.entry,
            DecoderOptions::NONE,
        );
        let first = dec.decode();
        assert_eq!(first.mnemonic(), Mnemonic::Jmp);
        let outs_to_exit = dec
            .iter()
            .filter(|i| i.mnemonic() == Mnemonic::Out && i.immediate8() == DEBUG_EXIT_PORT as u8)
            .count();
        assert!(outs_to_exit >= 3);
    }

    #[test]
    fn long_mode_elf_is_an_x86_64_executable_entered_at_its_load_address() {
        let f = long_mode_elf().unwrap();
        assert_eq!(&f[..4], b"\x7fELF");
        assert_eq!(f[4], 2, "ELFCLASS64");
        assert_eq!(u16::from_le_bytes([f[18], f[19]]), 62, "EM_X86_64");
        let entry = u64::from_le_bytes(f[24..32].try_into().unwrap());
        assert_eq!(entry, ELF_LOAD);
        let code = &f[ELF_CODE_OFFSET as usize..];
        let mut dec = Decoder::with_ip(64, code, ELF_LOAD, DecoderOptions::NONE);
        let first: Vec<Mnemonic> = dec.iter().take(3).map(|i| i.mnemonic()).collect();
        assert_eq!(first, [Mnemonic::Mov, Mnemonic::Mov, Mnemonic::Mov]);
        assert!(code.windows(15).any(|w| w == b"elf64: cmdline="));
    }

    #[test]
    fn hello_prints_and_exits_through_the_debug_port() {
        let p = builtin("hello").unwrap().unwrap();
        assert_eq!(&p.image[..HELLO.len()], HELLO.as_bytes());
        let code = &p.image[ENTRY_OFFSET as usize..];
        let dec = Decoder::with_ip(32, code, p.entry, DecoderOptions::NONE);
        let outs: Vec<_> = dec
            .into_iter()
            .take_while(|i| i.mnemonic() != Mnemonic::Hlt)
            .filter(|i| i.mnemonic() == Mnemonic::Out)
            .collect();
        assert_eq!(outs.len(), 2, "one to the UART, one to the exit port");
        assert_eq!(outs[1].immediate8(), DEBUG_EXIT_PORT as u8);
    }

    #[test]
    fn multiboot_header_is_valid_and_places_the_image_at_its_load_address() {
        let p = builtin("hello").unwrap().unwrap();
        let mb = multiboot_image(&p);
        let word = |i: usize| u32::from_le_bytes(mb[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(word(0), MULTIBOOT_MAGIC);
        assert_eq!(word(0).wrapping_add(word(1)).wrapping_add(word(2)), 0);
        assert_eq!(word(1) & MULTIBOOT_AOUT_KLUDGE, MULTIBOOT_AOUT_KLUDGE);
        // header_addr - load_addr = the header's file offset (0); the image follows it.
        assert_eq!(word(3), word(4));
        assert_eq!(u64::from(word(4)) + MULTIBOOT_HEADER_LEN, p.load_addr);
        assert_eq!(u64::from(word(5)), p.load_addr + p.image.len() as u64);
        assert_eq!(u64::from(word(7)), p.entry);
        assert_eq!(&mb[MULTIBOOT_HEADER_LEN as usize..], &p.image[..]);
    }

    #[test]
    fn tiny_payloads_and_unknown_names() {
        let l = builtin("loop").unwrap().unwrap();
        assert_eq!(&l.image[ENTRY_OFFSET as usize..], &[0xeb, 0xfe]);
        let h = builtin("halt").unwrap().unwrap();
        assert_eq!(&h.image[ENTRY_OFFSET as usize..], &[0xfa, 0xf4]);
        assert!(builtin("nope").is_none());
    }
}
