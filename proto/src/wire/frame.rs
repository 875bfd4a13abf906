//! Framing: a frame is a 4-byte big-endian length `n` followed by `n` bytes, one
//! [`Message`] encoded by `crate::codec`. `n` is at most [`MAX_FRAME`].
//!
//! [`FrameDecoder`] is sans-IO: feed it whatever bytes arrived, take complete messages out.
//! A length over the limit is refused as soon as its 4 bytes are seen, before any buffer
//! grows; a body that does not decode is a [`FrameError`], never a panic.

use crate::codec::{self, CodecError};
use crate::wire::Message;

/// The largest frame body, in bytes: 16 MiB (a 4 MiB chunk fits with room to spare).
pub const MAX_FRAME: usize = 16 << 20;

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix exceeds [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(u64),
    /// An empty frame.
    #[error("empty frame")]
    Empty,
    /// The body is not a valid message (unknown type, bad lengths, hostile path, …).
    #[error("malformed message: {0}")]
    Malformed(#[from] CodecError),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({0} bytes pending)")]
    Truncated(usize),
}

/// Encodes one message as a frame.
pub fn encode_frame(message: &Message) -> Result<Vec<u8>, FrameError> {
    let body = codec::try_encode(message)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len() as u64));
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Decodes a single complete frame (length prefix and body, nothing more).
pub fn decode_frame(bytes: &[u8]) -> Result<Message, FrameError> {
    let mut decoder = FrameDecoder::default();
    decoder.push(bytes)?;
    match decoder.next_message()? {
        Some(message) if decoder.pending() == 0 => Ok(message),
        Some(_) => Err(FrameError::Malformed(CodecError::TrailingBytes(decoder.pending()))),
        None => Err(FrameError::Truncated(decoder.pending())),
    }
}

/// Incremental frame decoder.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// Appends received bytes. Fails at once if a pending length prefix is over the limit.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.buf.extend_from_slice(bytes);
        self.check_length().map(|_| ())
    }

    /// The next complete message, if one has fully arrived.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        let Some(len) = self.check_length()? else { return Ok(None) };
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let message = codec::decode_within::<Message, MAX_FRAME>(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        Ok(Some(message?))
    }

    /// Bytes received but not yet consumed.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Call at end of stream: leftover bytes mean a truncated frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(FrameError::Truncated(n)),
        }
    }

    /// How many more bytes the current frame needs (4 while the prefix is incomplete).
    pub fn wanted(&self) -> usize {
        match self.buf.get(..4) {
            Some(prefix) => {
                let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
                len.saturating_add(4).saturating_sub(self.buf.len())
            }
            None => 4 - self.buf.len(),
        }
    }

    fn check_length(&self) -> Result<Option<usize>, FrameError> {
        let Some(prefix) = self.buf.get(..4) else { return Ok(None) };
        let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        match len {
            0 => Err(FrameError::Empty),
            n if n > MAX_FRAME => Err(FrameError::TooLarge(n as u64)),
            n => Ok(Some(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Close, CloseCode, Hello};

    fn hello() -> Message {
        Message::Hello(Hello {
            protocol_version: 1,
            device_name: "a".into(),
            client_version: "t".into(),
        })
    }

    #[test]
    fn frames_round_trip_even_byte_by_byte() {
        let messages = [
            hello(),
            Message::Ping,
            Message::Close(Close { code: CloseCode::Shutdown, reason: "bye".into() }),
        ];
        let mut stream = Vec::new();
        for m in &messages {
            stream.extend(encode_frame(m).unwrap());
        }
        let mut decoder = FrameDecoder::default();
        let mut out = Vec::new();
        for byte in stream {
            decoder.push(&[byte]).unwrap();
            while let Some(m) = decoder.next_message().unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, messages);
        decoder.finish().unwrap();
    }

    #[test]
    fn an_oversized_length_is_refused_before_the_body_arrives() {
        let mut decoder = FrameDecoder::default();
        let err = decoder.push(&u32::MAX.to_be_bytes()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)));
    }

    #[test]
    fn unknown_types_truncation_and_garbage_are_errors() {
        let mut unknown = 1u32.to_be_bytes().to_vec();
        unknown.push(200);
        assert!(matches!(decode_frame(&unknown), Err(FrameError::Malformed(_))));
        let frame = encode_frame(&hello()).unwrap();
        assert!(matches!(decode_frame(&frame[..frame.len() - 1]), Err(FrameError::Truncated(_))));
        assert!(matches!(decode_frame(&[0, 0, 0, 0]), Err(FrameError::Empty)));
        assert!(decode_frame(&[0, 0, 0, 3, 0xFF, 0xFF, 0xFF]).is_err());
    }
}
