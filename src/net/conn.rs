//! Framed messages over QUIC streams: the control stream carries a sequence of frames each
//! way; a request stream carries one `Request` and one `Response`.
//!
//! Reading goes through `proto::wire::FrameDecoder`, which refuses an oversized length
//! before buffering it, so a hostile peer cannot make us allocate past the frame limit.

use tandem_proto::wire::{FrameDecoder, FrameError, Message, encode_frame};

/// Why a framed stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The peer sent bytes that are not a valid frame: a protocol error.
    #[error("protocol error: {0}")]
    Frame(#[from] FrameError),
    /// Reading failed.
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    /// Writing failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream was closed.
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
}

/// Sends frames on a QUIC send stream.
pub struct FramedSend {
    stream: quinn::SendStream,
}

impl FramedSend {
    /// Wraps a send stream.
    pub fn new(stream: quinn::SendStream) -> Self {
        Self { stream }
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &Message) -> Result<(), StreamError> {
        let frame = encode_frame(message)?;
        self.stream.write_all(&frame).await.map_err(StreamError::Write)
    }

    /// Finishes the stream (no more messages).
    pub fn finish(&mut self) -> Result<(), StreamError> {
        self.stream.finish().map_err(StreamError::Closed)
    }
}

/// Receives frames from a QUIC receive stream.
pub struct FramedRecv {
    stream: quinn::RecvStream,
    decoder: FrameDecoder,
    received: u64,
}

impl FramedRecv {
    /// Wraps a receive stream.
    pub fn new(stream: quinn::RecvStream) -> Self {
        Self { stream, decoder: FrameDecoder::default(), received: 0 }
    }

    /// Bytes read from the stream so far (frames and their length prefixes).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The next message, or `None` at a clean end of stream.
    pub async fn recv(&mut self) -> Result<Option<Message>, StreamError> {
        loop {
            if let Some(message) = self.decoder.next_message()? {
                return Ok(Some(message));
            }
            let want = self.decoder.wanted().clamp(1, 1 << 20);
            match self.stream.read_chunk(want, true).await? {
                Some(chunk) => {
                    self.received += chunk.bytes.len() as u64;
                    self.decoder.push(&chunk.bytes)?;
                }
                None => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }
    }
}
