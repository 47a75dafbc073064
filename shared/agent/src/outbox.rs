//! The heartbeat outbox: every signed heartbeat not yet acknowledged, on disk.
//!
//! One file per heartbeat (`outbox/<seq>.hb`, the encoded
//! `SignedHeartbeat`), written atomically before it is sent. An
//! acknowledgement deletes the files up to its seq. The outbox is bounded:
//! when full it drops the oldest entry and counts it.
//!
//! The seq belongs to the sentry and must rise strictly across restarts:
//! the highest seq ever assigned is `max(seq file, newest outbox file)`.
//! Before a file is deleted, the `seq` file is raised to cover it, so that
//! invariant holds however the process dies.

use std::collections::{BTreeSet, VecDeque};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use hashfleet_shared::secure_file;

/// Default bound: about 2.8 hours of heartbeats at a 1 s interval.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;
/// Entries kept in memory as well, so the usual send needs no disk read.
const CACHE_ENTRIES: usize = 64;
/// A heartbeat file larger than this is not ours.
const MAX_ENTRY_BYTES: u64 = hashfleet_shared::codec::MAX_FRAME_LEN as u64;

/// Why the outbox could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} holds `{text}`, not a seq number: fix or remove it (the sentry then continues after its newest outbox entry)")]
    BadSeqFile { path: PathBuf, text: String },
}

#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    seq_path: PathBuf,
    max_entries: usize,
    /// Seqs with a file on disk, ascending.
    entries: BTreeSet<u64>,
    /// The newest entries' bytes.
    cache: VecDeque<(u64, Vec<u8>)>,
    /// Highest seq ever assigned.
    last_assigned: u64,
    /// What the `seq` file says.
    seq_file_value: u64,
    /// Entries dropped because the outbox was full, since start.
    dropped: u64,
}

impl Outbox {
    /// Opens (or creates) the outbox under `home`.
    pub fn open(home: &Path, max_entries: usize) -> Result<Self, OutboxError> {
        let dir = home.join("outbox");
        let seq_path = home.join("seq");
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OutboxError::Io { path, source }
        };
        secure_file::ensure_private_dir(&dir).map_err(io_err(&dir))?;
        let seq_file_value = match fs::read_to_string(&seq_path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| OutboxError::BadSeqFile {
                    path: seq_path.clone(),
                    text: text.chars().take(40).collect(),
                })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&seq_path)(e)),
        };
        let mut entries = BTreeSet::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name.strip_suffix(".hb").and_then(|s| s.parse::<u64>().ok()) {
                entries.insert(seq);
            } else if name.starts_with('.') {
                // A temp file from an interrupted write: never acknowledged, never complete.
                let _ = fs::remove_file(entry.path());
            }
        }
        let last_assigned = seq_file_value.max(entries.last().copied().unwrap_or(0));
        let mut outbox = Outbox {
            dir,
            seq_path,
            max_entries: max_entries.max(1),
            entries,
            cache: VecDeque::new(),
            last_assigned,
            seq_file_value,
            dropped: 0,
        };
        outbox.enforce_bound()?;
        Ok(outbox)
    }

    fn entry_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.hb"))
    }

    /// The seq the next heartbeat gets.
    pub fn next_seq(&self) -> u64 {
        self.last_assigned + 1
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries dropped because the outbox was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Highest seq ever assigned (0 before the first heartbeat).
    pub fn last_assigned(&self) -> u64 {
        self.last_assigned
    }

    /// Persists the heartbeat `seq` (which must be `next_seq()`).
    pub fn push(&mut self, seq: u64, bytes: Vec<u8>) -> Result<(), OutboxError> {
        debug_assert_eq!(seq, self.next_seq());
        let path = self.entry_path(seq);
        secure_file::write_atomic(&path, &bytes, 0o600)
            .map_err(|source| OutboxError::Io { path, source })?;
        self.entries.insert(seq);
        self.last_assigned = self.last_assigned.max(seq);
        self.cache.push_back((seq, bytes));
        while self.cache.len() > CACHE_ENTRIES {
            self.cache.pop_front();
        }
        self.enforce_bound()
    }

    fn enforce_bound(&mut self) -> Result<(), OutboxError> {
        while self.entries.len() > self.max_entries {
            let oldest = *self.entries.first().expect("non-empty");
            self.remove_upto(oldest)?;
            self.dropped += 1;
        }
        Ok(())
    }

    /// Everything up to `seq` is stored by the commander: forget it.
    pub fn ack(&mut self, seq: u64) -> Result<(), OutboxError> {
        self.remove_upto(seq)
    }

    /// The commander already holds `seq` although this sentry never assigned
    /// it (its seq state was lost or restored from an old copy): continue
    /// above it, so new heartbeats are not refused as replays.
    pub fn raise_floor(&mut self, seq: u64) -> Result<(), OutboxError> {
        if seq <= self.last_assigned {
            return Ok(());
        }
        secure_file::write_atomic(&self.seq_path, format!("{seq}\n").as_bytes(), 0o600).map_err(
            |source| OutboxError::Io {
                path: self.seq_path.clone(),
                source,
            },
        )?;
        self.seq_file_value = seq;
        self.last_assigned = seq;
        Ok(())
    }

    /// Drops one entry the commander will never accept.
    pub fn discard(&mut self, seq: u64) -> Result<(), OutboxError> {
        if self.entries.contains(&seq) {
            self.remove(vec![seq])?;
        }
        Ok(())
    }

    fn remove_upto(&mut self, seq: u64) -> Result<(), OutboxError> {
        let doomed: Vec<u64> = self.entries.range(..=seq).copied().collect();
        self.remove(doomed)
    }

    fn remove(&mut self, doomed: Vec<u64>) -> Result<(), OutboxError> {
        if doomed.is_empty() {
            return Ok(());
        }
        // Keep the seq floor above everything we are about to delete.
        if self.seq_file_value < self.last_assigned {
            let value = self.last_assigned;
            secure_file::write_atomic(&self.seq_path, format!("{value}\n").as_bytes(), 0o600)
                .map_err(|source| OutboxError::Io {
                    path: self.seq_path.clone(),
                    source,
                })?;
            self.seq_file_value = value;
        }
        for s in doomed {
            let path = self.entry_path(s);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(OutboxError::Io { path, source }),
            }
            self.entries.remove(&s);
        }
        self.cache.retain(|(s, _)| self.entries.contains(s));
        Ok(())
    }

    /// Seqs waiting above `after`, ascending.
    pub fn pending_after(&self, after: u64) -> Vec<u64> {
        self.entries.range(after + 1..).copied().collect()
    }

    /// Replaces the bytes of entry `seq` (atomically), when it is there. A
    /// key rotation re-signs the entries not yet sent with the new key.
    pub fn rewrite(&mut self, seq: u64, bytes: Vec<u8>) -> Result<(), OutboxError> {
        if !self.entries.contains(&seq) {
            return Ok(());
        }
        let path = self.entry_path(seq);
        secure_file::write_atomic(&path, &bytes, 0o600)
            .map_err(|source| OutboxError::Io { path, source })?;
        if let Some(entry) = self.cache.iter_mut().find(|(s, _)| *s == seq) {
            entry.1 = bytes;
        }
        Ok(())
    }

    /// The stored bytes of entry `seq`, if it is still there.
    pub fn load(&self, seq: u64) -> Result<Option<Vec<u8>>, OutboxError> {
        if !self.entries.contains(&seq) {
            return Ok(None);
        }
        if let Some((_, bytes)) = self.cache.iter().find(|(s, _)| *s == seq) {
            return Ok(Some(bytes.clone()));
        }
        let path = self.entry_path(seq);
        match secure_file::read_private(&path, MAX_ENTRY_BYTES) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(secure_file::SecureFileError::Io { source, .. }) => {
                Err(OutboxError::Io { path, source })
            }
            Err(other) => Err(OutboxError::Io {
                path,
                source: io::Error::other(other.to_string()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_survives_reopen_after_acks_and_drops() {
        let home = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(home.path(), 3).unwrap();
        for _ in 0..5 {
            let seq = ob.next_seq();
            ob.push(seq, vec![seq as u8]).unwrap();
        }
        // Bound 3: seqs 1 and 2 were dropped.
        assert_eq!(ob.dropped(), 2);
        assert_eq!(ob.pending_after(0), vec![3, 4, 5]);
        ob.ack(4).unwrap();
        assert_eq!(ob.pending_after(0), vec![5]);
        assert_eq!(ob.load(5).unwrap(), Some(vec![5]));
        drop(ob);

        let ob = Outbox::open(home.path(), 3).unwrap();
        assert_eq!(ob.next_seq(), 6);
        assert_eq!(ob.pending_after(0), vec![5]);
        assert_eq!(ob.load(5).unwrap(), Some(vec![5]));

        let mut ob = ob;
        ob.ack(5).unwrap();
        drop(ob);
        // Empty outbox: the seq file alone carries the floor.
        let ob = Outbox::open(home.path(), 3).unwrap();
        assert_eq!(ob.next_seq(), 6);
        assert!(ob.is_empty());
    }

    #[test]
    fn raising_the_floor_skips_seqs_the_commander_holds() {
        let home = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(home.path(), 10).unwrap();
        ob.push(1, vec![1]).unwrap();
        ob.raise_floor(500).unwrap();
        assert_eq!(ob.next_seq(), 501);
        ob.raise_floor(7).unwrap();
        assert_eq!(ob.next_seq(), 501, "never lowers");
        drop(ob);
        assert_eq!(Outbox::open(home.path(), 10).unwrap().next_seq(), 501);
    }

    #[test]
    fn a_corrupt_seq_file_is_refused() {
        let home = tempfile::tempdir().unwrap();
        fs::write(home.path().join("seq"), "banana").unwrap();
        let err = Outbox::open(home.path(), 3).unwrap_err();
        assert!(err.to_string().contains("not a seq number"), "{err}");
    }
}
