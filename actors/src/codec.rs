//! The one place where switchboard encodes what it stores.
//!
//! Every stored record is `[format version byte][bincode 2 (standard config) of the value]`.
//! A reader that meets a version it does not know refuses the record instead of guessing, so
//! an old binary never misreads a newer journal.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bump when the encoding of any stored type changes incompatibly.
pub const FORMAT_VERSION: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error("record has format version {found}, this binary reads version {FORMAT_VERSION}")]
    UnknownVersion { found: u8 },
    #[error("record does not decode: {0}")]
    Decode(String),
    #[error("record has {0} trailing bytes")]
    Trailing(usize),
    #[error("value does not encode: {0}")]
    Encode(String),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard()).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion { found: version });
    }
    let (value, read) =
        bincode::serde::decode_from_slice(body, bincode::config::standard()).map_err(|e| CodecError::Decode(e.to_string()))?;
    if read != body.len() {
        return Err(CodecError::Trailing(body.len() - read));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    #[test]
    fn round_trips_and_refuses_unknown_versions() {
        let event = Event::FlagSet { name: "premium_voices".into(), enabled: true };
        let bytes = encode(&event).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<Event>(&bytes).unwrap(), event);
        let mut newer = bytes.clone();
        newer[0] = FORMAT_VERSION + 1;
        assert!(matches!(decode::<Event>(&newer), Err(CodecError::UnknownVersion { .. })));
        let mut longer = bytes;
        longer.push(0);
        assert!(matches!(decode::<Event>(&longer), Err(CodecError::Trailing(1))));
        assert!(matches!(decode::<Event>(&[]), Err(CodecError::Empty)));
    }
}
