//! What the target device is, as far as pci-probe knows how to drive it: vgpud's emulated
//! register block (signed by its vendor capability), a 16550 UART (class 0700, like mtty), or
//! a device with no registers the probe knows (the display samples mdpy and mbochs).

use super::*;

/// Where `detect` leaves the kind.
pub(super) const VAR_KIND: u64 = 0x63c;
pub(super) const KIND_EMULATED: u32 = 0;
pub(super) const KIND_UART: u32 = 1;
pub(super) const KIND_OTHER: u32 = 2;
/// 16550 registers, as offsets in its I/O BAR.
pub(super) const UART_IER: i32 = 1;
const UART_SCR: i32 = 7;
/// IER bit 1: interrupt when the transmit holding register is empty.
pub(super) const UART_IER_THRI: u32 = 0x02;
const UART_SCRATCH_PATTERN: u32 = 0x5a;

/// Sets VAR_KIND for the device in EBX and prints it.
pub(super) fn detect(a: &mut CodeAssembler, s: &Subs, d: &mut Data) -> Result<(), IcedError> {
    use crate::device::EMULATED_SIGNATURE;
    let s_emulated = d.str("kind: vgpud emulated device (registers in bar0)\n");
    let s_uart = d.str("kind: 16550 UART (class 0700, io bar0)\n");
    let s_other = d.str("kind: no registers known to pci-probe (class ");
    let s_close = d.str(")\n");
    let mut not_emulated = a.create_label();
    let mut other = a.create_label();
    let mut done = a.create_label();
    steps::find_cap(a, s, 0x09)?;
    a.cmp(dword_ptr(VAR_CAP), 0)?;
    a.je(not_emulated)?;
    a.mov(ecx, dword_ptr(VAR_CAP))?;
    a.add(ecx, 4)?;
    a.call(s.cfg_read)?;
    a.cmp(eax, EMULATED_SIGNATURE as i32)?;
    a.jne(not_emulated)?;
    a.mov(dword_ptr(VAR_KIND), KIND_EMULATED)?;
    print(a, s, s_emulated)?;
    a.jmp(done)?;
    a.set_label(&mut not_emulated)?;
    a.mov(ecx, 8)?;
    a.call(s.cfg_read)?;
    a.shr(eax, 16)?;
    a.cmp(eax, 0x0700)?;
    a.jne(other)?;
    a.mov(ecx, 0x10)?;
    a.call(s.cfg_read)?;
    a.test(eax, 1)?;
    a.jz(other)?;
    a.mov(dword_ptr(VAR_KIND), KIND_UART)?;
    print(a, s, s_uart)?;
    a.jmp(done)?;
    a.set_label(&mut other)?;
    a.mov(dword_ptr(VAR_KIND), KIND_OTHER)?;
    print(a, s, s_other)?;
    a.mov(ecx, 8)?;
    a.call(s.cfg_read)?;
    a.shr(eax, 16)?;
    hex(a, s, 4)?;
    print(a, s, s_close)?;
    a.set_label(&mut done)?;
    a.nop()
}

/// The register round trip through BAR0 at VAR_BASE: the emulated device's 32-bit scratch
/// register, or the 16550's 8-bit scratch register (SCR, offset 7).
pub(super) fn scratch(a: &mut CodeAssembler, s: &Subs, d: &mut Data) -> Result<(), IcedError> {
    let s_read = d.str(" read ");
    let s_ok = d.str(" ok\n");
    let s_bad = d.str(" MISMATCH\n");
    let mut uart = a.create_label();
    let mut none = a.create_label();
    let mut pio = a.create_label();
    let mut checked = a.create_label();
    let mut end = a.create_label();
    a.cmp(dword_ptr(VAR_KIND), KIND_UART)?;
    a.je(uart)?;
    a.cmp(dword_ptr(VAR_KIND), KIND_EMULATED)?;
    a.jne(none)?;
    // The emulated device: MMIO or port I/O, whichever BAR0 is.
    print_hex(a, s, d, "scratch wrote ", (SCRATCH_PATTERN, 8))?;
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
    expect_eax(a, s, (SCRATCH_PATTERN, 8), (s_ok, s_bad), 2)?;
    a.jmp(end)?;
    a.set_label(&mut uart)?;
    print_hex(
        a,
        s,
        d,
        "uart scratch bar0+7 wrote ",
        (UART_SCRATCH_PATTERN, 2),
    )?;
    print(a, s, s_read)?;
    a.mov(edx, dword_ptr(VAR_BASE))?;
    a.add(edx, UART_SCR)?;
    a.mov(al, UART_SCRATCH_PATTERN as i32)?;
    a.out(dx, al)?;
    a.xor(eax, eax)?;
    a.in_(al, dx)?;
    expect_eax(a, s, (UART_SCRATCH_PATTERN, 2), (s_ok, s_bad), 2)?;
    a.jmp(end)?;
    a.set_label(&mut none)?;
    not_applicable(a, s, d, ("scratch", "no scratch register known"), end)?;
    a.set_label(&mut end)?;
    a.nop()
}

/// Has the device in EBX raise one interrupt: the emulated device's raise register, or the
/// 16550's THR-empty interrupt, which mtty signals when IER bit 1 is set with its FIFO empty.
pub(super) fn raise(a: &mut CodeAssembler, s: &Subs) -> Result<(), IcedError> {
    let mut uart = a.create_label();
    let mut raise_pio = a.create_label();
    let mut raised = a.create_label();
    a.mov(ecx, 0x10)?;
    a.call(s.cfg_read)?;
    a.mov(edx, dword_ptr(VAR_BASE))?;
    a.cmp(dword_ptr(VAR_KIND), KIND_UART)?;
    a.je(uart)?;
    a.test(eax, 1)?;
    a.mov(eax, 1)?;
    a.jnz(raise_pio)?;
    a.mov(dword_ptr(edx + REG_RAISE_IRQ as i32), eax)?;
    a.jmp(raised)?;
    a.set_label(&mut raise_pio)?;
    a.add(edx, REG_RAISE_IRQ as i32)?;
    a.out(dx, eax)?;
    a.jmp(raised)?;
    a.set_label(&mut uart)?;
    a.add(edx, UART_IER)?;
    a.xor(eax, eax)?;
    a.out(dx, al)?;
    a.mov(al, UART_IER_THRI as i32)?;
    a.out(dx, al)?;
    a.set_label(&mut raised)?;
    a.nop()
}

/// After the wait: a UART's interrupts off again (IER 0), so it stays quiet.
pub(super) fn quiet(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut end = a.create_label();
    a.cmp(dword_ptr(VAR_KIND), KIND_UART)?;
    a.jne(end)?;
    a.mov(edx, dword_ptr(VAR_BASE))?;
    a.add(edx, UART_IER)?;
    a.xor(eax, eax)?;
    a.out(dx, al)?;
    a.set_label(&mut end)?;
    a.nop()
}
