//! Config space as dwords: what a byte, word or dword access at any offset reads out of the
//! dword that holds it, and what a write leaves in it. Every capability model uses it.

/// Reads `size` bytes at `offset` out of a dword-addressed space.
pub fn extract(dword: u32, offset: u16, size: u8) -> u32 {
    let shift = u32::from(offset & 3) * 8;
    let value = dword >> shift;
    match size {
        1 => value & 0xff,
        2 => value & 0xffff,
        _ => value,
    }
}

/// Merges a `size`-byte write at `offset` into the dword that holds it.
pub fn merge(old: u32, offset: u16, size: u8, value: u32) -> u32 {
    let shift = u32::from(offset & 3) * 8;
    let mask: u32 = match size {
        1 => 0xff,
        2 => 0xffff,
        _ => 0xffff_ffff,
    };
    (old & !(mask << shift)) | ((value & mask) << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extract_and_merge_lanes() {
        assert_eq!(extract(0x1122_3344, 1, 1), 0x33);
        assert_eq!(extract(0x1122_3344, 2, 2), 0x1122);
        assert_eq!(merge(0x1122_3344, 2, 2, 0xaabb), 0xaabb_3344);
        assert_eq!(merge(0x1122_3344, 0, 4, 0xdead_beef), 0xdead_beef);
    }
}
