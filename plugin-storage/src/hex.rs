//! Fixed-length hex fields of manifests, capabilities and shares.

/// Decodes exactly `N` bytes from `2 * N` hex digits (either case).
pub(crate) fn hex_array<const N: usize>(s: &str) -> Result<[u8; N], String> {
    let chars = s.chars().count();
    if chars != 2 * N {
        return Err(format!(
            "expected {} hex digits, got {chars} characters",
            2 * N
        ));
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| "not hex: expected only 0-9 and a-f".to_string())?;
    Ok(out)
}
