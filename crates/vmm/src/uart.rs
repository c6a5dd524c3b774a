//! A minimal 16550A UART at 0x3F8: transmit only (what a payload's printing needs), with the
//! registers a driver probes (LSR always "transmitter empty", DLAB divisor latch, scratch).

use std::io::Write;

pub const COM1_BASE: u16 = 0x3f8;

const LSR_THR_EMPTY: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
const LCR_DLAB: u8 = 0x80;

pub struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    sink: Box<dyn Write + Send>,
    bytes_out: u64,
}

impl Uart {
    pub fn new(sink: Box<dyn Write + Send>) -> Self {
        Self {
            ier: 0,
            lcr: 0x03,
            mcr: 0x08,
            scr: 0,
            dll: 0x0c,
            dlm: 0,
            sink,
            bytes_out: 0,
        }
    }

    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    /// Text the VMM itself writes to the serial stream (the banner).
    pub fn write_host_line(&mut self, line: &str) {
        self.transmit(line.as_bytes());
        self.transmit(b"\n");
    }

    fn transmit(&mut self, bytes: &[u8]) {
        // A failed log write must not stop the guest; the first failure is reported.
        if let Err(e) = self.sink.write_all(bytes).and_then(|()| self.sink.flush()) {
            if self.bytes_out == 0 {
                tracing::warn!("serial output cannot be written: {e}");
            }
        }
        self.bytes_out += bytes.len() as u64;
    }

    pub fn read(&mut self, offset: u16) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.dll,
            1 if dlab => self.dlm,
            0 => 0,
            1 => self.ier,
            2 => 0x01, // IIR: no interrupt pending
            3 => self.lcr,
            4 => self.mcr,
            5 => LSR_THR_EMPTY | LSR_TEMT,
            6 => 0xb0, // MSR: DCD, DSR, CTS
            7 => self.scr,
            _ => 0xff,
        }
    }

    pub fn write(&mut self, offset: u16, value: u8) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.dll = value,
            1 if dlab => self.dlm = value,
            0 => self.transmit(&[value]),
            1 => self.ier = value & 0x0f,
            3 => self.lcr = value,
            4 => self.mcr = value & 0x1f,
            7 => self.scr = value,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn thr_writes_reach_sink_and_lsr_is_ready() {
        let out = Shared::default();
        let mut u = Uart::new(Box::new(out.clone()));
        assert_eq!(u.read(5) & LSR_THR_EMPTY, LSR_THR_EMPTY);
        u.write(0, b'h');
        u.write(0, b'i');
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
        assert_eq!(u.bytes_out(), 2);
    }

    #[test]
    fn dlab_redirects_to_divisor_latch() {
        let out = Shared::default();
        let mut u = Uart::new(Box::new(out.clone()));
        u.write(3, 0x83);
        u.write(0, 0x01);
        u.write(1, 0x00);
        assert_eq!(u.read(0), 0x01);
        u.write(3, 0x03);
        assert!(out.0.lock().unwrap().is_empty());
        u.write(7, 0x5a);
        assert_eq!(u.read(7), 0x5a);
        assert_eq!(u.read(2), 0x01);
    }
}
