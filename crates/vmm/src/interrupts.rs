//! A function's MSI and MSI-X capabilities together, as both device kinds (emulated and VFIO)
//! hold them: which one owns a config access, and which message the function sends now.

use super::config::extract;
use super::msi::{Msi, MsiChange, MsiMessage};
use super::msix::Msix;

/// Which capability a guest's config write switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switched {
    Msi(MsiChange),
    Msix(MsiChange),
}

/// A function's MSI and MSI-X capabilities together, as both device kinds hold them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageInterrupts {
    pub msi: Option<Msi>,
    pub msix: Option<Msix>,
}

impl MessageInterrupts {
    pub fn any(&self) -> bool {
        self.msi.is_some() || self.msix.is_some()
    }

    /// The `size`-byte value at config `offset`, where one of the capabilities owns it.
    pub fn config_read(&self, offset: u16, size: u8) -> Option<u32> {
        let dword = offset & !3;
        if let Some(m) = &self.msix {
            if let Some(rel) = m.inside(dword) {
                return Some(extract(m.read(rel), offset, size));
            }
        }
        let m = self.msi.as_ref()?;
        let rel = m.inside(dword)?;
        Some(extract(m.dword(usize::from(rel / 4)), offset, size))
    }

    /// Applies a config write one of the capabilities owns (`None`: neither does).
    pub fn config_write(&mut self, offset: u16, size: u8, value: u32) -> Option<Switched> {
        let dword = offset & !3;
        if let Some(m) = self.msix.as_mut() {
            if let Some(rel) = m.inside(dword) {
                return Some(Switched::Msix(m.write(rel | (offset & 3), size, value)));
            }
        }
        let m = self.msi.as_mut()?;
        let rel = m.inside(dword)?;
        Some(Switched::Msi(m.write(rel | (offset & 3), size, value)))
    }

    /// The message the function sends now: MSI-X vector 0 while the guest has MSI-X on (it
    /// takes precedence, as on hardware), else MSI while that is on.
    pub fn message(&self) -> Option<MsiMessage> {
        match self.msix.as_ref().filter(|m| m.enabled()) {
            Some(m) => m.message(),
            None => self.msi.and_then(|m| m.message()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msi::CAP_ID_MSI;

    #[test]
    fn msix_takes_precedence_over_msi() {
        let mut caps = MessageInterrupts {
            msi: Some(Msi::emulated(0x60)),
            msix: Some(Msix::emulated(0)),
        };
        assert_eq!(
            caps.config_write(0x54, 4, 0xfee0_0000),
            Some(Switched::Msi(MsiChange::None))
        );
        assert_eq!(
            caps.config_write(0x5c, 2, 0x40),
            Some(Switched::Msi(MsiChange::None))
        );
        let on = caps.config_write(0x52, 2, 1);
        assert_eq!(on, Some(Switched::Msi(MsiChange::Enable)));
        assert_eq!(caps.message().map(|m| m.data), Some(0x40));
        let on = caps.config_write(0x62, 2, 0x8000);
        assert_eq!(on, Some(Switched::Msix(MsiChange::Enable)));
        assert_eq!(caps.message(), None, "MSI-X on, its vector masked");
        assert_eq!(caps.config_write(0x40, 4, 0), None);
        assert_eq!(caps.config_read(0x50, 1), Some(u32::from(CAP_ID_MSI)));
        assert_eq!(caps.config_read(0x61, 1), Some(0));
        assert_eq!(caps.config_read(0x6c, 4), None);
    }
}
