//! Built-in guest payloads, assembled from source here with iced-x86 (no system assembler).
//! Flat 32-bit protected-mode images: loaded at `LOAD_ADDR`, entered at `entry` with flat
//! segments (the VMM's GDT), paging off, interrupts off, ESP set by the payload itself.

mod probe;

use iced_x86::code_asm::*;
use iced_x86::IcedError;

use super::bus::DEBUG_EXIT_PORT;
pub use probe::{
    MSIX_VECTOR, MSI_VECTOR, RAM_PATTERN, RELOCATED_IO, RELOCATED_MEM, RELOCATED_RAM,
    SCRATCH_PATTERN,
};

pub const LOAD_ADDR: u64 = 0x1_0000;
const ENTRY_OFFSET: u64 = 0x40;
const DATA_OFFSET: u64 = 0x8000;
const UART: u32 = 0x3f8;

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

pub use vgpud_model::guest::BUILTIN_PAYLOADS as BUILTIN;
/// What `hello` prints; the benchmark waits for it under vgpud-vmm and under QEMU.
pub const HELLO: &str = "hello: vgpud payload\n";

/// Builds a built-in payload by name, or `None` for an unknown name.
pub fn builtin(name: &str) -> Option<Result<Payload, PayloadError>> {
    let image = match name {
        "pci-probe" => probe::pci_probe(),
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
    exit(&mut a, 0)?;
    a.set_label(&mut bad)?;
    exit(&mut a, 4)?;
    a.set_label(&mut puts)?;
    uart_puts(&mut a)?;
    a.ret()?;
    let mut code = a.assemble(ELF_LOAD)?;
    pad(&mut code, msg - ELF_LOAD)?;
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
        a.cld()?;
        a.mov(esi, LOAD_ADDR as u32)?;
        uart_puts(a)?;
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

/// Pads `code` with NOPs to `len` bytes; an error if it is longer already.
fn pad(code: &mut Vec<u8>, len: u64) -> Result<(), PayloadError> {
    if code.len() as u64 > len {
        return Err(PayloadError::TooLarge);
    }
    code.resize(len as usize, 0x90);
    Ok(())
}

/// Writes the NUL-terminated string at ESI (RSI in long mode) to the UART; leaves EDX = UART.
/// The UART here is always ready, so LSR is not polled.
fn uart_puts(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut next = a.create_label();
    let mut done = a.create_label();
    a.mov(edx, UART)?;
    a.set_label(&mut next)?;
    a.lodsb()?;
    a.test(al, al)?;
    a.jz(done)?;
    a.out(dx, al)?;
    a.jmp(next)?;
    a.set_label(&mut done)?;
    a.nop()
}

/// Exits through the debug port with `code`.
pub(super) fn exit(a: &mut CodeAssembler, code: i32) -> Result<(), IcedError> {
    a.mov(al, code)?;
    a.out(DEBUG_EXIT_PORT as i32, al)?;
    a.cli()?;
    a.hlt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

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
