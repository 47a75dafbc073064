//! `POST /api/v1/backup`: a consistent copy of the whole store.
//!
//! The store writes the backup (see [`crate::store::backup`] for the
//! format) on a blocking thread into a private temporary file in the data
//! directory; the response streams that file, so the backup is never held
//! in memory. The file is unlinked as soon as it is open, so nothing is
//! left behind, however the request ends. Writers wait while the copy is
//! taken; heartbeats queue up in the ingest channel meanwhile.
//!
//! Only the store is in the body: `identity.json` and `admin.token` are
//! backed up separately.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use tokio::io::{AsyncRead, ReadBuf};
use tracing::info;

use super::error::ApiError;
use crate::app::App;
use crate::store::BackupStats;

/// Bytes per response chunk.
const CHUNK: usize = 64 * 1024;

pub async fn backup(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let store = app.store.clone();
    let dir = app.config.data_dir.clone();
    let (file, stats) = tokio::task::spawn_blocking(move || {
        let path = dir.join(format!(
            ".backup-{}.tmp",
            hex::encode(hashfleet_shared::random_bytes::<8>())
        ));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                ApiError::internal(format!(
                    "cannot create a temporary backup file {}: {e}; check that the data directory is writable and has free space",
                    path.display()
                ))
            })?;
        // Open file, no name: nothing to clean up if the request dies.
        let _ = std::fs::remove_file(&path);
        // `backup` buffers and flushes its own writes.
        let stats = store.backup(&mut file)?;
        file.seek(SeekFrom::Start(0)).map_err(|e| {
            ApiError::internal(format!("cannot read the temporary backup file: {e}"))
        })?;
        Ok::<(File, BackupStats), ApiError>((file, stats))
    })
    .await??;
    info!(
        trees = stats.trees,
        entries = stats.entries,
        bytes = stats.bytes,
        "backup taken"
    );
    let stream = FileStream {
        file: tokio::fs::File::from_std(file),
        buf: vec![0u8; CHUNK],
    };
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(stats.bytes));
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"hashfleet-store.hfbackup\""),
    );
    headers.insert("x-hashfleet-backup-trees", HeaderValue::from(stats.trees));
    headers.insert(
        "x-hashfleet-backup-entries",
        HeaderValue::from(stats.entries),
    );
    Ok(response)
}

/// The temporary file as a stream of chunks.
struct FileStream {
    file: tokio::fs::File,
    buf: Vec<u8>,
}

impl futures_core::Stream for FileStream {
    type Item = std::io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut buf = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.file).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(None),
            Poll::Ready(Ok(())) => Poll::Ready(Some(Ok(Bytes::copy_from_slice(buf.filled())))),
        }
    }
}
