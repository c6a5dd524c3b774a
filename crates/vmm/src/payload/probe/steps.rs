//! The interrupt and memory steps of pci-probe: one interrupt raised and awaited, MSI and
//! MSI-X programmed and counted, and the host-memory BAR written, moved and read back.

use super::*;
use crate::bus::{HOST_PEEK_PORT, HOST_TRAPS_PORT};
use crate::device::RAM_PEEK_OFFSET;

/// Asks the device in EBX for one interrupt (`kind::raise`) and waits, bounded, for the
/// handler to count it; returns with interrupts off.
pub(super) fn raise_and_wait(a: &mut CodeAssembler, s: &Subs) -> Result<(), IcedError> {
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

/// The last prefetchable memory BAR of the device in EBX (host memory behind a KVM memory
/// slot: the emulated device's, or a VFIO region mmapped from the device fd): writes a pattern
/// through it, has the VMM report what it reads in that memory (`HOST_PEEK_PORT`), moves the
/// BAR with decoding off (sizing it on the way), reads the pattern back at the new address,
/// and expects no access to have trapped to the VMM (`HOST_TRAPS_PORT`).
pub(super) fn ram_bar(a: &mut CodeAssembler, s: &Subs, d: &mut Data) -> Result<(), IcedError> {
    let s_none = d.str("ram bar: not applicable (no prefetchable memory BAR)\n");
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
    let s_trapped = d.str(" TRAPPED (not a memory slot)\n");
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
    expect_eax(a, s, (RAM_PATTERN, 8), (s_ok, s_bad), 6)?;
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
    a.mov(edx, u32::from(HOST_TRAPS_PORT))?;
    a.in_(eax, dx)?;
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
    let s_none = d.str("msix: not applicable (no MSI-X capability)\n");
    let s_no_way = d.str("msix: not applicable (no known way to make this device interrupt)\n");
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
    let mut can = a.create_label();
    a.cmp(dword_ptr(VAR_KIND), kind::KIND_OTHER)?;
    a.jne(can)?;
    print(a, s, s_no_way)?;
    a.jmp(end)?;
    a.set_label(&mut can)?;
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
/// arrive through MSI: the vector is not an 8259 one. Not applicable without MSI or a known way
/// to raise an interrupt.
pub(super) fn msi(a: &mut CodeAssembler, s: &Subs, d: &mut Data) -> Result<(), IcedError> {
    let s_none = d.str("msi: not applicable (no MSI capability)\n");
    let s_no_way = d.str("msi: not applicable (no known way to make this device interrupt)\n");
    let s_cap = d.str("msi cap at ");
    let s_vector = d.str("msi enabled vector=");
    let s_count = d.str("msi count=");
    let s_nl = d.str("\n");
    let mut found = a.create_label();
    let mut end = a.create_label();
    find_cap(a, s, 0x05)?;
    a.cmp(dword_ptr(VAR_CAP), 0)?;
    a.jne(found)?;
    print(a, s, s_none)?;
    a.jmp(end)?;
    a.set_label(&mut found)?;
    let mut can = a.create_label();
    a.cmp(dword_ptr(VAR_KIND), kind::KIND_OTHER)?;
    a.jne(can)?;
    print(a, s, s_no_way)?;
    a.jmp(end)?;
    a.set_label(&mut can)?;
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
