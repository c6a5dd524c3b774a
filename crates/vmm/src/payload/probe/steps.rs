//! The interrupt and memory steps of pci-probe: one interrupt raised and awaited, MSI and
//! MSI-X programmed and counted, and the host-memory BAR written, moved and read back.

use super::*;
use crate::bus::{HOST_PEEK_PORT, HOST_TRAPS_PORT};
use crate::device::RAM_PEEK_OFFSET;

/// Zeroes the count, enables interrupts, asks the device in EBX for one interrupt
/// (`kind::raise`) and waits, bounded, for the handler to count it; returns with interrupts
/// off.
pub(super) fn raise_and_wait(a: &mut CodeAssembler, s: &Subs) -> Result<(), IcedError> {
    a.mov(dword_ptr(VAR_COUNT), 0)?;
    a.sti()?;
    kind::raise(a, s)?;
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
    a.cli()?;
    kind::quiet(a)
}

/// Prints `label` and the interrupt count (one hex digit) on a line; a count other than one
/// ends the guest with `code`.
pub(super) fn report_count(
    a: &mut CodeAssembler,
    s: &Subs,
    d: &mut Data,
    label: &str,
    code: i32,
) -> Result<(), IcedError> {
    let nl = d.str("\n");
    print(a, s, d.str(label))?;
    a.mov(eax, dword_ptr(VAR_COUNT))?;
    expect_eax(a, s, (1, 1), (nl, nl), code)
}

/// Goes on when pci-probe knows how to make the device interrupt (`kind`); otherwise `step`
/// is not applicable and the code jumps to `end`.
pub(super) fn skip_unless_raisable(
    a: &mut CodeAssembler,
    s: &Subs,
    d: &mut Data,
    step: &str,
    end: CodeLabel,
) -> Result<(), IcedError> {
    let mut can = a.create_label();
    a.cmp(dword_ptr(VAR_KIND), kind::KIND_OTHER)?;
    a.jne(can)?;
    let why = "no known way to make this device interrupt";
    not_applicable(a, s, d, (step, why), end)?;
    a.set_label(&mut can)?;
    a.nop()
}

/// Goes on with the offset of capability `id` in VAR_CAP when the device in EBX has one;
/// otherwise `step` is not applicable ("no `name` capability") and the code jumps to `end`.
fn find_cap_or_skip(
    a: &mut CodeAssembler,
    s: &Subs,
    d: &mut Data,
    (step, id, name): (&str, u32, &str),
    end: CodeLabel,
) -> Result<(), IcedError> {
    let mut found = a.create_label();
    find_cap(a, s, id)?;
    a.cmp(dword_ptr(VAR_CAP), 0)?;
    a.jne(found)?;
    not_applicable(a, s, d, (step, &format!("no {name} capability")), end)?;
    a.set_label(&mut found)?;
    a.nop()
}

/// The last prefetchable memory BAR of the device in EBX (host memory behind a KVM memory
/// slot: the emulated device's, or a VFIO region mmapped from the device fd): writes a pattern
/// through it, has the VMM report what it reads in that memory (`HOST_PEEK_PORT`), moves the
/// BAR with decoding off (sizing it on the way), reads the pattern back at the new address,
/// and expects no access to have trapped to the VMM (`HOST_TRAPS_PORT`).
pub(super) fn ram_bar(a: &mut CodeAssembler, s: &Subs, d: &mut Data) -> Result<(), IcedError> {
    let s_ok = d.str(" ok\n");
    let s_bad = d.str(" MISMATCH\n");
    let mut have = a.create_label();
    let mut too_big = a.create_label();
    let mut traps = a.create_label();
    let mut end = a.create_label();
    a.mov(dword_ptr(VAR_RAM_INDEX), -1)?;
    each_bar(a, s, |a, next| {
        let mut not_pf = a.create_label();
        a.test(eax, 1)?;
        a.jnz(next)?; // IO BAR
        a.test(eax, 8)?;
        a.jz(not_pf)?;
        a.mov(dword_ptr(VAR_RAM_INDEX), edi)?;
        a.set_label(&mut not_pf)?;
        a.and(eax, 6)?;
        a.cmp(eax, 4)?;
        a.jne(next)?;
        a.inc(edi) // a 64-bit BAR's high half
    })?;
    a.cmp(dword_ptr(VAR_RAM_INDEX), -1)?;
    a.jne(have)?;
    not_applicable(a, s, d, ("ram bar", "no prefetchable memory BAR"), end)?;
    a.set_label(&mut have)?;
    a.mov(ecx, dword_ptr(VAR_RAM_INDEX))?;
    a.lea(ecx, dword_ptr(ecx * 4 + 0x10))?;
    a.mov(dword_ptr(VAR_RAM_REG), ecx)?;
    a.call(s.cfg_read)?;
    a.and(eax, !0xf)?;
    a.mov(dword_ptr(VAR_RAM_BASE), eax)?;
    print_hex(a, s, d, "ram bar", (dword_ptr(VAR_RAM_INDEX), 1))?;
    print_hex(a, s, d, " at ", (dword_ptr(VAR_RAM_BASE), 8))?;
    a.mov(edx, dword_ptr(VAR_RAM_BASE))?;
    a.mov(dword_ptr(edx + RAM_PEEK_OFFSET as i32), RAM_PATTERN)?;
    print_hex(a, s, d, " wrote ", (RAM_PATTERN, 8))?;
    print(a, s, d.str(" host saw "))?;
    // Selector: device index (slot - 1) << 28 | BAR << 24 | offset.
    a.mov(eax, ebx)?;
    a.shr(eax, 11)?;
    a.dec(eax)?;
    a.shl(eax, 28)?;
    a.mov(ecx, dword_ptr(VAR_RAM_INDEX))?;
    a.shl(ecx, 24)?;
    a.or(eax, ecx)?;
    a.or(eax, RAM_PEEK_OFFSET as i32)?;
    a.mov(edx, u32::from(HOST_PEEK_PORT))?;
    a.out(dx, eax)?;
    a.in_(eax, dx)?;
    expect_eax(a, s, (RAM_PATTERN, 8), (s_ok, s_bad), 6)?;
    // Memory decoding off while the BAR is sized and moved, as firmware does.
    cfg_clear(a, s, PCI_COMMAND, COMMAND_MEMORY)?;
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
    cfg_set(a, s, PCI_COMMAND, COMMAND_MEMORY)?;
    a.mov(ecx, dword_ptr(VAR_RAM_REG))?;
    a.call(s.cfg_read)?;
    a.and(eax, !0xf)?;
    a.mov(dword_ptr(VAR_RAM_BASE), eax)?;
    print_hex(a, s, d, "ram bar moved to ", (dword_ptr(VAR_RAM_BASE), 8))?;
    print(a, s, d.str(" read "))?;
    a.mov(edx, dword_ptr(VAR_RAM_BASE))?;
    a.mov(eax, dword_ptr(edx + RAM_PEEK_OFFSET as i32))?;
    expect_eax(a, s, (RAM_PATTERN, 8), (s_ok, s_bad), 6)?;
    a.jmp(traps)?;
    a.set_label(&mut too_big)?;
    // Back where it was, decoding again.
    a.mov(eax, dword_ptr(VAR_RAM_BASE))?;
    a.call(s.cfg_write)?;
    cfg_set(a, s, PCI_COMMAND, COMMAND_MEMORY)?;
    print(a, s, d.str("ram bar too large to move\n"))?;
    a.set_label(&mut traps)?;
    print(a, s, d.str("ram traps="))?;
    a.mov(edx, u32::from(HOST_TRAPS_PORT))?;
    a.in_(eax, dx)?;
    let (s_nl, s_trapped) = (d.str("\n"), d.str(" TRAPPED (not a memory slot)\n"));
    expect_eax(a, s, (0, 1), (s_nl, s_trapped), 8)?;
    a.set_label(&mut end)?;
    a.nop()
}

/// Walks the capability list of the device in EBX (bounded, so a looping list ends) and
/// leaves the offset of the capability with `id` in VAR_CAP, or 0.
pub(super) fn find_cap(a: &mut CodeAssembler, s: &Subs, id: u32) -> Result<(), IcedError> {
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
/// come as that vector. Not applicable without MSI-X or a known way to raise an interrupt.
pub(super) fn msix(a: &mut CodeAssembler, s: &Subs, d: &mut Data) -> Result<(), IcedError> {
    let mut end = a.create_label();
    find_cap_or_skip(a, s, d, ("msix", 0x11, "MSI-X"), end)?;
    skip_unless_raisable(a, s, d, "msix", end)?;
    print_hex(a, s, d, "msix cap at ", (dword_ptr(VAR_CAP), 2))?;
    a.mov(ecx, dword_ptr(VAR_CAP))?;
    a.add(ecx, 4)?;
    a.call(s.cfg_read)?; // table offset | BIR
    a.mov(dword_ptr(VAR_TABLE), eax)?;
    print(a, s, d.str(" table bar"))?;
    a.mov(eax, dword_ptr(VAR_TABLE))?;
    a.and(eax, 7)?;
    hex(a, s, 1)?;
    print(a, s, d.str("+"))?;
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
    cfg_set(a, s, dword_ptr(VAR_CAP), 0x8000_0000)?; // message control bit 15: MSI-X enable
    print_line(a, s, d, " vector=", (MSIX_VECTOR, 2))?;
    raise_and_wait(a, s)?;
    report_count(a, s, d, "msix count=", 7)?;
    a.set_label(&mut end)?;
    a.nop()
}

/// Finds the MSI capability of the device in EBX, programs it (local APIC address, data =
/// MSI_VECTOR), enables it with both 8259s masked, and counts one interrupt, which can only
/// arrive through MSI: the vector is not an 8259 one. Not applicable without MSI or a known way
/// to raise an interrupt.
pub(super) fn msi(a: &mut CodeAssembler, s: &Subs, d: &mut Data) -> Result<(), IcedError> {
    let mut end = a.create_label();
    find_cap_or_skip(a, s, d, ("msi", 0x05, "MSI"), end)?;
    skip_unless_raisable(a, s, d, "msi", end)?;
    print_line(a, s, d, "msi cap at ", (dword_ptr(VAR_CAP), 2))?;
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
    cfg_set(a, s, dword_ptr(VAR_CAP), 0x1_0000)?; // message control bit 0: MSI enable
    print_line(a, s, d, "msi enabled vector=", (MSI_VECTOR, 2))?;
    raise_and_wait(a, s)?;
    // MSI off again: MSI and MSI-X must not be enabled together.
    cfg_clear(a, s, dword_ptr(VAR_CAP), 0x1_0000)?;
    report_count(a, s, d, "msi count=", 5)?;
    a.set_label(&mut end)?;
    a.nop()
}
