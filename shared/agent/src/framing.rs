//! Frames over a quinn stream, in both directions. Used by the sentry
//! session and by the commander, so frame handling is written once.

use std::marker::PhantomData;

use hashfleet_shared::codec::{self, CodecError, FrameDecoder, MAX_FRAME_LEN};

/// Why a framed stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("bad frame: {0}")]
    Codec(#[from] CodecError),
    /// The peer closed the connection; the reason it gave.
    #[error("closed by peer: {0}")]
    Closed(String),
    #[error("connection lost: {0}")]
    Lost(String),
}

impl FramingError {
    fn from_connection(e: quinn::ConnectionError) -> Self {
        match e {
            quinn::ConnectionError::ApplicationClosed(c) => {
                FramingError::Closed(String::from_utf8_lossy(&c.reason).into_owned())
            }
            other => FramingError::Lost(other.to_string()),
        }
    }
}

/// Writes length-prefixed frames.
pub struct FramedSend {
    send: quinn::SendStream,
}

impl FramedSend {
    pub fn new(send: quinn::SendStream) -> Self {
        FramedSend { send }
    }

    pub async fn send<T: bincode::Encode + bincode::Decode<()>>(
        &mut self,
        msg: &T,
    ) -> Result<(), FramingError> {
        let frame = codec::encode_frame(msg, MAX_FRAME_LEN)?;
        self.send_raw(&frame).await
    }

    /// Sends an already encoded message body.
    pub async fn send_body(&mut self, body: &[u8]) -> Result<(), FramingError> {
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(body);
        self.send_raw(&frame).await
    }

    /// Sends bytes exactly as given (tests use this for malformed frames).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), FramingError> {
        self.send.write_all(bytes).await.map_err(|e| match e {
            quinn::WriteError::ConnectionLost(c) => FramingError::from_connection(c),
            other => FramingError::Lost(other.to_string()),
        })
    }

    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// Finishes the stream and waits (at most `wait`) until the peer has
    /// acknowledged everything sent, so a last message (a `Reject`) is not
    /// overtaken by the connection close that follows it.
    pub async fn finish_and_wait(&mut self, wait: std::time::Duration) {
        if self.send.finish().is_ok() {
            let _ = tokio::time::timeout(wait, self.send.stopped()).await;
        }
    }
}

/// Reads length-prefixed frames of message type `T`. `recv` is cancel-safe:
/// its only await is quinn's cancel-safe `read_chunk`, and partial frames
/// stay in the decoder. Chunks come straight from quinn's buffers, so an
/// idle session holds no read buffer of its own (a commander holds
/// thousands of them).
pub struct FramedRecv<T> {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    _msg: PhantomData<fn() -> T>,
}

/// Most bytes taken from quinn per read.
const READ_CHUNK: usize = 16 * 1024;

impl<T: bincode::Decode<()>> FramedRecv<T> {
    pub fn new(recv: quinn::RecvStream) -> Self {
        FramedRecv {
            recv,
            decoder: FrameDecoder::new(MAX_FRAME_LEN),
            _msg: PhantomData,
        }
    }

    pub async fn recv(&mut self) -> Result<T, FramingError> {
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(codec::decode(&frame)?);
            }
            match self.recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => self.decoder.push(&chunk.bytes),
                Ok(None) => return Err(FramingError::Closed("stream finished".into())),
                Err(quinn::ReadError::ConnectionLost(e)) => {
                    return Err(FramingError::from_connection(e))
                }
                Err(e) => return Err(FramingError::Lost(e.to_string())),
            }
        }
    }
}
