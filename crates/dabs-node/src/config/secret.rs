//! The farm secret's text form: hex digits, at least [`MIN_SECRET_BYTES`] bytes.

use super::defaults::MIN_SECRET_BYTES;
use super::error::SecretError;

/// Decodes a hex secret of at least [`MIN_SECRET_BYTES`] bytes; surrounding whitespace is ignored.
pub(crate) fn parse_secret(text: &str) -> Result<Vec<u8>, SecretError> {
    let text = text.trim();
    // Every character before the first non-hex one is ASCII, so its byte index is its position.
    if let Some((i, found)) = text.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(SecretError::NotHex { position: i + 1, found });
    }
    if !text.len().is_multiple_of(2) {
        return Err(SecretError::OddLength { digits: text.len() });
    }
    if text.len() < MIN_SECRET_BYTES * 2 {
        return Err(SecretError::TooShort { digits: text.len() });
    }
    let digit = |b: u8| (b as char).to_digit(16).expect("checked hex digit") as u8;
    Ok(text.as_bytes().chunks(2).map(|pair| (digit(pair[0]) << 4) | digit(pair[1])).collect())
}

/// Lower-case hex, as [`parse_secret`] reads it.
pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
