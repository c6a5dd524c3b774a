//! The guest PCI description: the function a guest sees for one device (ids, class, BARs),
//! as `vgpud-sim ctl DIR guest-pci UUID` prints it and the VMM's emulated device is built
//! from. The types are the model's (the simulator's profiles use them); the VMM checks them.

use std::io;

use super::pci::Bars;

pub use vgpud_model::guest::{GuestBar, GuestPci};

#[derive(Debug, thiserror::Error)]
pub enum DescriptionError {
    #[error("cannot read device description {path}")]
    Read { path: String, source: io::Error },
    #[error("device description {path} is not valid JSON for a guest PCI function")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("device description has bad BARs")]
    Bars(#[from] super::pci::BarError),
    #[error("device description has class code {0:#x}, more than 24 bits")]
    Class(u32),
    #[error("host memory for BAR {0} cannot be mapped")]
    RamBar(usize),
}

/// Parses a description in the format `vgpud-sim ctl DIR guest-pci UUID` prints.
pub fn parse_description(path: &str, text: &str) -> Result<GuestPci, DescriptionError> {
    let desc: GuestPci = serde_json::from_str(text).map_err(|source| DescriptionError::Parse {
        path: path.to_owned(),
        source,
    })?;
    if desc.class_code > 0xff_ffff {
        return Err(DescriptionError::Class(desc.class_code));
    }
    Bars::new(&desc.bars)?;
    Ok(desc)
}

pub fn load_description(file: &super::FileArg) -> Result<GuestPci, DescriptionError> {
    let path = file.to_string();
    let read_error = |source| DescriptionError::Read {
        path: path.clone(),
        source,
    };
    let mut text = String::new();
    let mut f = file.open().map_err(read_error)?;
    // A descriptor may have been read before (it shares its offset with the sender's).
    std::io::Seek::rewind(&mut f).map_err(read_error)?;
    std::io::Read::read_to_string(&mut f, &mut text).map_err(read_error)?;
    parse_description(&path, &text)
}
