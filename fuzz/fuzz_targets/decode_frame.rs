//! Bytes off the wire: split into frames, each frame decoded as both a
//! sentry and a commander message.
//!
//! The first input byte sets how the rest is pushed into the decoder
//! (chunks of 1 to 256 bytes), so that frames arriving in pieces are
//! covered. Whatever decodes must re-encode, and re-encode to bytes that
//! decode to the same encoding (bincode may accept a non-minimal varint,
//! so the original bytes themselves need not come back).
#![no_main]

use hashfleet_shared::codec::{self, FrameDecoder, MAX_FRAME_LEN};
use hashfleet_shared::wire::{CommanderMessage, SentryMessage};
use libfuzzer_sys::fuzz_target;

fn check_canonical<T>(msg: &T, frame: &[u8])
where
    T: bincode::Encode + bincode::Decode<()>,
{
    let again = codec::encode(msg).expect("a decoded message re-encodes");
    assert!(
        again.len() <= frame.len(),
        "canonical form is longer than the input"
    );
    let back: T = codec::decode(&again).expect("a re-encoded message decodes");
    assert_eq!(codec::encode(&back).expect("re-encodes"), again);
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let mut decoder = FrameDecoder::new(MAX_FRAME_LEN);
    for piece in stream.chunks(chunk as usize + 1) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if let Ok(msg) = codec::decode::<SentryMessage>(&frame) {
                        check_canonical(&msg, &frame);
                    }
                    if let Ok(msg) = codec::decode::<CommanderMessage>(&frame) {
                        check_canonical(&msg, &frame);
                    }
                }
                Ok(None) => break,
                // A session closes on a framing error; so do we.
                Err(_) => return,
            }
        }
        assert!(decoder.buffered() <= 4 + MAX_FRAME_LEN);
    }
});
