//! Socket helpers every protocol module shares: a bounded request reader
//! for the one-shot RPC ports, and HTTP/1 over one accepted connection.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request the RPC ports accept.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its first byte.
const FIRST_BYTE: Duration = Duration::from_secs(5);
/// After this long without more bytes a request is taken as complete.
const IDLE: Duration = Duration::from_millis(40);

/// Reads one request from a one-shot RPC connection (CGMiner style: the
/// client writes and waits, with no delimiter). Ends at a complete JSON
/// value, at EOF, at a short pause, or at [`MAX_REQUEST`] bytes. `None` if
/// nothing arrived.
pub async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Vec<u8>> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 4096];
    let mut wait = FIRST_BYTE;
    loop {
        match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                let room = MAX_REQUEST - buf.len();
                buf.extend_from_slice(&chunk[..n.min(room)]);
                if buf.len() >= MAX_REQUEST {
                    break;
                }
                if buf.first() == Some(&b'{')
                    && serde_json::from_slice::<serde::de::IgnoredAny>(&buf).is_ok()
                {
                    break;
                }
                wait = IDLE;
            }
            Err(_) => break,
        }
    }
    (!buf.is_empty()).then_some(buf)
}

/// Reads one length-prefixed frame (4-byte little-endian length, then the
/// body), as WhatsMiner API v3 sends; `None` on EOF, timeout or a length
/// over [`MAX_REQUEST`].
pub async fn read_le_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    tokio::time::timeout(FIRST_BYTE, stream.read_exact(&mut len))
        .await
        .ok()?
        .ok()?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_REQUEST {
        return None;
    }
    let mut body = vec![0u8; len];
    tokio::time::timeout(FIRST_BYTE, stream.read_exact(&mut body))
        .await
        .ok()?
        .ok()?;
    Some(body)
}

/// Writes `reply` and closes the write side, as one-shot firmwares do.
pub async fn reply_and_close(mut stream: TcpStream, reply: &[u8]) {
    let _ = stream.write_all(reply).await;
    let _ = stream.shutdown().await;
}

/// Serves HTTP/1.1 on one accepted connection with an axum router.
pub async fn serve_http(stream: TcpStream, router: axum::Router) {
    let io = hyper_util::rt::TokioIo::new(stream);
    let service = hyper_util::service::TowerToHyperService::new(router);
    let _ = tokio::time::timeout(
        Duration::from_secs(60),
        hyper::server::conn::http1::Builder::new()
            .max_buf_size(64 * 1024)
            .serve_connection(io, service),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn json_ends_the_request_and_oversize_is_cut() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        a.write_all(br#"{"command":"summary"}"#).await.unwrap();
        assert_eq!(
            read_request(&mut b).await.unwrap(),
            br#"{"command":"summary"}"#
        );
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        a.write_all(&vec![b'x'; MAX_REQUEST + 10]).await.unwrap();
        assert_eq!(read_request(&mut b).await.unwrap().len(), MAX_REQUEST);
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&(MAX_REQUEST as u32 + 1).to_le_bytes())
            .await
            .unwrap();
        assert!(read_le_frame(&mut b).await.is_none());
    }
}
