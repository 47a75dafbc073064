//! Frames: a big-endian u32 length, then a bincode-2 payload.
//!
//! Decoding never trusts a length: a frame longer than the limit is refused
//! before anything is buffered, and bincode decodes with a byte limit equal
//! to the frame limit, so a claimed `Vec` length cannot allocate more than
//! the frame could hold. Trailing bytes after a message are an error.

use bincode::config::{self, Config};

/// The largest frame any Hashfleet peer accepts (1 MiB).
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

fn wire_config() -> impl Config {
    config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Why bytes could not be turned into a message, or back.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("message has {0} trailing bytes after its end")]
    TrailingBytes(usize),
    #[error("cannot encode message: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("message of {len} bytes would need more than the {max}-byte decode budget (too many small items): split it into several messages")]
    OverBudget { len: usize, max: usize },
}

/// Below this body size no message can claim more than the decode budget:
/// bincode budgets each list element at its in-memory size, at most ~24
/// times its smallest encoding (an empty `DeviceSnapshot`: 9 bytes on the
/// wire, 216 in memory).
const ALWAYS_DECODABLE: usize = MAX_FRAME_LEN / 32;

/// Encodes a message body (no length prefix). Never returns bytes that
/// [`decode`] would refuse: a large body is decoded once as a check.
pub fn encode<T: bincode::Encode + bincode::Decode<()>>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::encode_to_vec(msg, wire_config())?;
    if bytes.len() > MAX_FRAME_LEN {
        return Err(CodecError::FrameTooLarge {
            len: bytes.len(),
            max: MAX_FRAME_LEN,
        });
    }
    if bytes.len() > ALWAYS_DECODABLE && decode::<T>(&bytes).is_err() {
        return Err(CodecError::OverBudget {
            len: bytes.len(),
            max: MAX_FRAME_LEN,
        });
    }
    Ok(bytes)
}

/// Decodes a whole message body; every byte must be used.
pub fn decode<T: bincode::Decode<()>>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(CodecError::FrameTooLarge {
            len: bytes.len(),
            max: MAX_FRAME_LEN,
        });
    }
    let (msg, used) = bincode::decode_from_slice(bytes, wire_config())?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - used));
    }
    Ok(msg)
}

/// Encodes a message as a frame: length prefix then body. `max` is the
/// peer's frame limit (at most [`MAX_FRAME_LEN`]).
pub fn encode_frame<T: bincode::Encode + bincode::Decode<()>>(
    msg: &T,
    max: usize,
) -> Result<Vec<u8>, CodecError> {
    let body = encode(msg)?;
    if body.len() > max {
        return Err(CodecError::FrameTooLarge {
            len: body.len(),
            max,
        });
    }
    let mut frame = Vec::with_capacity(LEN_PREFIX + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Reads a length prefix, refusing lengths over `max`.
pub fn frame_len(prefix: [u8; LEN_PREFIX], max: usize) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max.min(MAX_FRAME_LEN) {
        return Err(CodecError::FrameTooLarge {
            len,
            max: max.min(MAX_FRAME_LEN),
        });
    }
    Ok(len)
}

/// Splits a byte stream into frame bodies. Push bytes as they arrive, then
/// take frames until it returns `Ok(None)`. Buffers at most one frame.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: usize,
}

impl FrameDecoder {
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            max: max.min(MAX_FRAME_LEN),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        if self.buf.len() < LEN_PREFIX {
            return Ok(None);
        }
        let prefix = [self.buf[0], self.buf[1], self.buf[2], self.buf[3]];
        let len = frame_len(prefix, self.max)?;
        if self.buf.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        let body = self.buf[LEN_PREFIX..LEN_PREFIX + len].to_vec();
        self.buf.drain(..LEN_PREFIX + len);
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Ack, CommanderMessage};

    #[test]
    fn decoder_reassembles_split_frames() {
        let a = encode_frame(&CommanderMessage::Ack(Ack { seq: 1 }), MAX_FRAME_LEN).unwrap();
        let b = encode_frame(&CommanderMessage::Ack(Ack { seq: 300 }), MAX_FRAME_LEN).unwrap();
        let mut all = a.clone();
        all.extend_from_slice(&b);
        let mut dec = FrameDecoder::new(MAX_FRAME_LEN);
        let mut got = Vec::new();
        for byte in all {
            dec.push(&[byte]);
            while let Some(frame) = dec.next_frame().unwrap() {
                got.push(decode::<CommanderMessage>(&frame).unwrap());
            }
        }
        assert_eq!(
            got,
            vec![
                CommanderMessage::Ack(Ack { seq: 1 }),
                CommanderMessage::Ack(Ack { seq: 300 })
            ]
        );
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut dec = FrameDecoder::new(1024);
        dec.push(&2000u32.to_be_bytes());
        assert!(matches!(
            dec.next_frame(),
            Err(CodecError::FrameTooLarge {
                len: 2000,
                max: 1024
            })
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut body = encode(&CommanderMessage::Ack(Ack { seq: 5 })).unwrap();
        body.push(0);
        assert!(matches!(
            decode::<CommanderMessage>(&body),
            Err(CodecError::TrailingBytes(1))
        ));
    }
}
