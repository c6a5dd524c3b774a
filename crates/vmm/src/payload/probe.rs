//! pci-probe: scans bus 0, lists every function and its BARs, then exercises the first
//! non-bridge function: BAR relocation, a register round trip, INTx, MSI, MSI-X and a
//! host-memory BAR (those steps live in `steps`), each as the device allows (`kind`): a step
//! the device cannot do is printed "not applicable", never as passed. Strings sit at
//! DATA_OFFSET after the code.

mod kind;
mod steps;

use std::collections::HashMap;

use iced_x86::code_asm::asm_traits::CodeAsmMov;
use iced_x86::code_asm::*;
use iced_x86::IcedError;

use super::{exit, pad, uart_puts, PayloadError, DATA_OFFSET, ENTRY_OFFSET, LOAD_ADDR, UART};
use crate::device::{REG_RAISE_IRQ, REG_SCRATCH};
use kind::{detect, VAR_KIND};
use steps::{msi, msix, raise_and_wait, ram_bar, report_count, skip_unless_raisable};

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
/// Where pci-probe moves BAR0: a memory BAR to 0xE000_0000, an IO BAR to port 0xD000.
pub const RELOCATED_MEM: u32 = 0xe000_0000;
pub const RELOCATED_IO: u32 = 0xd000;
pub const SCRATCH_PATTERN: u32 = 0x5aa5_c33c;
/// The command register and its decode-enable bits.
const PCI_COMMAND: u32 = 0x04;
const COMMAND_MEMORY: u32 = 0x02;
const COMMAND_IO_MEMORY_MASTER: u32 = 0x07;

/// Strings live after the code at fixed addresses known before the code is assembled; each
/// text is stored once.
#[derive(Default)]
struct Data {
    bytes: Vec<u8>,
    placed: HashMap<String, u32>,
}

impl Data {
    fn str(&mut self, s: &str) -> u32 {
        if let Some(&addr) = self.placed.get(s) {
            return addr;
        }
        let addr = (LOAD_ADDR + DATA_OFFSET) as u32 + self.bytes.len() as u32;
        self.bytes.extend_from_slice(s.as_bytes());
        self.bytes.push(0);
        self.placed.insert(s.to_owned(), addr);
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

/// Prints `label`, then the low `digits` hex digits of `value` (a register, memory or a
/// constant).
fn print_hex<T>(
    a: &mut CodeAssembler,
    s: &Subs,
    d: &mut Data,
    label: &str,
    (value, digits): (T, u32),
) -> Result<(), IcedError>
where
    CodeAssembler: CodeAsmMov<AsmRegister32, T>,
{
    print(a, s, d.str(label))?;
    a.mov(eax, value)?;
    hex(a, s, digits)
}

/// `print_hex`, then a newline.
fn print_line<T>(
    a: &mut CodeAssembler,
    s: &Subs,
    d: &mut Data,
    label: &str,
    value: (T, u32),
) -> Result<(), IcedError>
where
    CodeAssembler: CodeAsmMov<AsmRegister32, T>,
{
    print_hex(a, s, d, label, value)?;
    print(a, s, d.str("\n"))
}

/// Prints `label` and the device number of the function in EBX (two hex digits).
fn print_device(
    a: &mut CodeAssembler,
    s: &Subs,
    d: &mut Data,
    label: &str,
) -> Result<(), IcedError> {
    print(a, s, d.str(label))?;
    a.mov(eax, ebx)?;
    a.shr(eax, 11)?;
    hex(a, s, 2)
}

/// Prints "`step`: not applicable (`why`)" and jumps to `end`: the step is skipped, not
/// passed.
fn not_applicable(
    a: &mut CodeAssembler,
    s: &Subs,
    d: &mut Data,
    (step, why): (&str, &str),
    end: CodeLabel,
) -> Result<(), IcedError> {
    print(a, s, d.str(&format!("{step}: not applicable ({why})\n")))?;
    a.jmp(end)
}

/// Sets `bits` in the config register at `reg` of the function in EBX (ECX = `reg` after).
fn cfg_set<T>(a: &mut CodeAssembler, s: &Subs, reg: T, bits: u32) -> Result<(), IcedError>
where
    CodeAssembler: CodeAsmMov<AsmRegister32, T>,
{
    a.mov(ecx, reg)?;
    a.call(s.cfg_read)?;
    a.or(eax, bits as i32)?;
    a.call(s.cfg_write)
}

/// Clears `bits` in the config register at `reg` of the function in EBX (ECX = `reg` after).
fn cfg_clear<T>(a: &mut CodeAssembler, s: &Subs, reg: T, bits: u32) -> Result<(), IcedError>
where
    CodeAssembler: CodeAsmMov<AsmRegister32, T>,
{
    a.mov(ecx, reg)?;
    a.call(s.cfg_read)?;
    a.and(eax, !bits as i32)?;
    a.call(s.cfg_write)
}

/// Runs `body` for each BAR of the function in EBX with EDI = BAR index, ECX = its config
/// register and EAX = its value. `body` goes on to the next BAR by jumping to the label it is
/// given or by falling through; it steps over a 64-bit BAR's high half by incrementing EDI.
fn each_bar(
    a: &mut CodeAssembler,
    s: &Subs,
    body: impl FnOnce(&mut CodeAssembler, CodeLabel) -> Result<(), IcedError>,
) -> Result<(), IcedError> {
    let mut top = a.create_label();
    let mut next = a.create_label();
    let mut done = a.create_label();
    a.xor(edi, edi)?;
    a.set_label(&mut top)?;
    a.cmp(edi, 6)?;
    a.jae(done)?;
    a.lea(ecx, dword_ptr(edi * 4 + 0x10))?;
    a.call(s.cfg_read)?;
    body(a, next)?;
    a.set_label(&mut next)?;
    a.inc(edi)?;
    a.jmp(top)?;
    a.set_label(&mut done)?;
    a.nop() // the caller may put its own label next
}

/// Prints the low `digits` hex digits of EAX, then the `ok` string when EAX equals `want`;
/// otherwise the `bad` string and the guest exits with `code`.
fn expect_eax(
    a: &mut CodeAssembler,
    s: &Subs,
    (want, digits): (u32, u32),
    (ok, bad): (u32, u32),
    code: i32,
) -> Result<(), IcedError> {
    a.push(eax)?;
    hex(a, s, digits)?;
    a.pop(eax)?;
    let mut same = a.create_label();
    a.cmp(eax, want)?;
    a.je(same)?;
    print(a, s, bad)?;
    exit(a, code)?;
    a.set_label(&mut same)?;
    print(a, s, ok)
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
    pad(&mut code, ENTRY_OFFSET)?;
    Ok(code)
}

fn subroutines(a: &mut CodeAssembler, s: &mut Subs) -> Result<(), IcedError> {
    // puts: ESI = NUL-terminated string.
    a.set_label(&mut s.puts)?;
    a.push(edx)?;
    uart_puts(a)?;
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
    let (s_io, s_m32, s_m64, s_pf) = (
        d.str(" io"),
        d.str(" mem32"),
        d.str(" mem64"),
        d.str(" prefetch"),
    );
    let (s_size, s_nl) = (d.str(" size="), d.str("\n"));
    each_bar(a, s, |a, next| {
        let mut io = a.create_label();
        let mut mem32 = a.create_label();
        let mut no_pf = a.create_label();
        let mut after_pf = a.create_label();
        let mut sized = a.create_label();
        a.mov(dword_ptr(VAR_ORIG), eax)?;
        a.mov(eax, -1)?;
        a.call(s.cfg_write)?;
        a.call(s.cfg_read)?;
        a.mov(dword_ptr(VAR_MASK), eax)?;
        a.mov(eax, dword_ptr(VAR_ORIG))?;
        a.call(s.cfg_write)?;
        a.cmp(dword_ptr(VAR_MASK), 0)?;
        a.je(next)?;
        print_hex(a, s, d, "  bar", (edi, 1))?;
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
        print(a, s, d.str(" addr="))?;
        a.mov(eax, dword_ptr(esp))?;
        a.and(eax, dword_ptr(VAR_ORIG))?;
        hex(a, s, 8)?;
        print(a, s, s_size)?;
        a.pop(eax)?;
        a.and(eax, dword_ptr(VAR_MASK))?;
        a.not(eax)?;
        a.inc(eax)?;
        hex(a, s, 8)?;
        print(a, s, s_nl)
    })
}

/// Scans bus 0, prints every function, records the first non-bridge one in VAR_TARGET.
fn scan(a: &mut CodeAssembler, s: &Subs, d: &mut Data) -> Result<(), IcedError> {
    let (s_dot, s_sp, s_colon) = (d.str("."), d.str(" "), d.str(":"));
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
    print_device(a, s, d, "00:")?;
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

/// Moves BAR0 of the target, round-trips a scratch register, raises and counts an interrupt,
/// then runs the MSI, MSI-X and memory-BAR steps, each as the device's kind allows.
fn exercise(a: &mut CodeAssembler, s: &Subs, d: &mut Data) -> Result<(), IcedError> {
    let mut found = a.create_label();
    let mut io = a.create_label();
    let mut moved = a.create_label();
    a.cmp(dword_ptr(VAR_TARGET), -1)?;
    a.jne(found)?;
    print(a, s, d.str("pci-probe: no device found\n"))?;
    exit(a, 1)?;
    a.set_label(&mut found)?;
    a.mov(ebx, dword_ptr(VAR_TARGET))?;
    print_device(a, s, d, "target 00:")?;
    print(a, s, d.str("\n"))?;
    detect(a, s, d)?;
    cfg_set(a, s, PCI_COMMAND, COMMAND_IO_MEMORY_MASTER)?;
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
    print_line(a, s, d, "bar0 moved to ", (dword_ptr(VAR_BASE), 8))?;
    kind::scratch(a, s, d)?;
    intx(a, s, d)?;
    msi(a, s, d)?;
    msix(a, s, d)?;
    ram_bar(a, s, d)?;
    print(a, s, d.str("pci-probe: done\n"))?;
    exit(a, 0)
}

/// Unmasks the target's INTx line in the 8259 pair, has the device raise one interrupt and
/// expects exactly one, then a second one. Not applicable without an interrupt pin or a known
/// way to raise one.
fn intx(a: &mut CodeAssembler, s: &Subs, d: &mut Data) -> Result<(), IcedError> {
    let mut has_pin = a.create_label();
    let mut slave = a.create_label();
    let mut unmasked = a.create_label();
    let mut end = a.create_label();
    a.mov(ecx, 0x3c)?;
    a.call(s.cfg_read)?;
    a.test(eax, 0xff00)?;
    a.jnz(has_pin)?;
    not_applicable(a, s, d, ("irq", "interrupt pin 0"), end)?;
    a.set_label(&mut has_pin)?;
    skip_unless_raisable(a, s, d, "irq", end)?;
    print(a, s, d.str("irq line="))?;
    a.mov(ecx, 0x3c)?;
    a.call(s.cfg_read)?;
    a.and(eax, 0xf)?;
    a.push(eax)?;
    hex(a, s, 2)?;
    print(a, s, d.str("\n"))?;
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
    raise_and_wait(a, s)?;
    report_count(a, s, d, "irq count=", 3)?;
    // A second one: a level-triggered line must have been released by the acknowledgement
    // (KVM's resample eventfd unmasking VFIO's automasked INTx), or no new edge reaches the
    // 8259.
    raise_and_wait(a, s)?;
    report_count(a, s, d, "irq again count=", 3)?;
    a.set_label(&mut end)?;
    a.nop()
}

pub(super) fn pci_probe() -> Result<Vec<u8>, PayloadError> {
    let mut d = Data::default();
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
    // A 32-bit interrupt gate: selector 0x08 and the handler's address, present, DPL 0.
    let (gate_low, gate_high) = (
        (0x08 << 16) | (handler & 0xffff),
        (handler & 0xffff_0000) | 0x8e00,
    );
    a.mov(edi, IDT_BASE + 0x20 * 8)?;
    a.mov(ecx, 16)?;
    a.set_label(&mut fill)?;
    a.mov(dword_ptr(edi), gate_low)?;
    a.mov(dword_ptr(edi + 4), gate_high)?;
    a.add(edi, 8)?;
    a.loop_(fill)?;
    // ... and the MSI and MSI-X vectors.
    for vector in [MSI_VECTOR, MSIX_VECTOR] {
        let gate = u64::from(IDT_BASE) + u64::from(vector) * 8;
        a.mov(dword_ptr(gate), gate_low)?;
        a.mov(dword_ptr(gate + 4), gate_high)?;
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
    pad(&mut image, DATA_OFFSET)?;
    image.extend(d.bytes);
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::DEBUG_EXIT_PORT;
    use crate::payload::builtin;
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
}
