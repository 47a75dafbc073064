//! Backup and restore of the whole store: a versioned, self-checking file.
//!
//! Format (version 1); every length is a `u32` big-endian:
//!
//! ```text
//! header   "HFBACKUP" ‖ version u32 (= 1)
//! tree     'T' ‖ name_len ‖ name                   every sled tree, sorted by name
//! entry    'E' ‖ key_len ‖ key ‖ value_len ‖ value  of the last tree, keys ascending
//! end      'Z' ‖ trees u64 ‖ entries u64
//! trailer  SHA-256 of every byte before it (32 bytes)
//! ```
//!
//! The default tree (`__sled__default`) is written only when it holds
//! something. A reader refuses names over [`MAX_NAME`], keys over
//! [`MAX_KEY`] and values over [`MAX_VALUE`] bytes, and any length that runs
//! past the end of the file, so a damaged file cannot make it allocate
//! without bound.
//!
//! [`export`] streams (one entry in memory at a time). [`restore`] reads the
//! file twice: first it checks structure and checksum without writing, then
//! it imports into a new sled database in a temporary directory next to the
//! target and renames it into place only when everything was written and
//! flushed, so a failed restore leaves no half-written store behind.
//!
//! Only the store is in the file: `identity.json` and `admin.token`, which
//! live beside `store/` in the data directory, are backed up separately.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::StoreError;

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"HFBACKUP";
/// The format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Longest tree name a reader accepts.
pub const MAX_NAME: u32 = 256;
/// Longest key a reader accepts (64 KiB).
pub const MAX_KEY: u32 = 64 * 1024;
/// Longest value a reader accepts (64 MiB).
pub const MAX_VALUE: u32 = 64 * 1024 * 1024;

const TAG_TREE: u8 = b'T';
const TAG_ENTRY: u8 = b'E';
const TAG_END: u8 = b'Z';
const HEADER_LEN: u64 = 12;
const TRAILER_LEN: u64 = 32;
const DEFAULT_TREE: &[u8] = b"__sled__default";
/// Entries per sled batch during import.
const BATCH_ENTRIES: usize = 4096;
/// Bytes per sled batch during import.
const BATCH_BYTES: usize = 8 * 1024 * 1024;

/// What a backup or restore moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BackupStats {
    /// Trees in the file.
    pub trees: u64,
    /// Key/value pairs in the file.
    pub entries: u64,
    /// Size of the file.
    pub bytes: u64,
}

fn backup_err(message: impl Into<String>) -> StoreError {
    StoreError::Backup(message.into())
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    fn put_len(&mut self, len: usize, max: u32, what: &str) -> Result<(), StoreError> {
        let len = u32::try_from(len)
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| {
                backup_err(format!(
                    "the store holds a {what} of {len} bytes, more than the {max} a backup may carry"
                ))
            })?;
        self.put(&len.to_be_bytes()).map_err(write_err)
    }
}

fn write_err(e: io::Error) -> StoreError {
    backup_err(format!("cannot write the backup: {e}"))
}

/// Writes every tree of `db` to `out`. The caller keeps writers out while
/// it runs (see `SledStore::backup`), so the copy is one moment of the store.
pub fn export(db: &sled::Db, out: &mut dyn Write) -> Result<BackupStats, StoreError> {
    let mut w = Hashing {
        inner: BufWriter::with_capacity(256 * 1024, out),
        hasher: Sha256::new(),
        bytes: 0,
    };
    w.put(MAGIC).map_err(write_err)?;
    w.put(&FORMAT_VERSION.to_be_bytes()).map_err(write_err)?;
    let mut names = db.tree_names();
    names.sort();
    let mut stats = BackupStats::default();
    for name in names {
        // sled keeps the default tree twice (`Db` itself and a tenant entry);
        // writes go through `Db`, so read that one.
        let tree: sled::Tree = if name.as_ref() == DEFAULT_TREE {
            if db.is_empty() {
                continue;
            }
            (**db).clone()
        } else {
            db.open_tree(&name)?
        };
        w.put(&[TAG_TREE]).map_err(write_err)?;
        w.put_len(name.len(), MAX_NAME, "tree name")?;
        w.put(&name).map_err(write_err)?;
        stats.trees += 1;
        for kv in tree.iter() {
            let (key, value) = kv?;
            w.put(&[TAG_ENTRY]).map_err(write_err)?;
            w.put_len(key.len(), MAX_KEY, "key")?;
            w.put(&key).map_err(write_err)?;
            w.put_len(value.len(), MAX_VALUE, "value")?;
            w.put(&value).map_err(write_err)?;
            stats.entries += 1;
        }
    }
    w.put(&[TAG_END]).map_err(write_err)?;
    w.put(&stats.trees.to_be_bytes()).map_err(write_err)?;
    w.put(&stats.entries.to_be_bytes()).map_err(write_err)?;
    let digest = w.hasher.clone().finalize();
    w.put(&digest).map_err(write_err)?;
    w.inner.flush().map_err(write_err)?;
    stats.bytes = w.bytes;
    Ok(stats)
}

/// Where the parser sends what it reads.
trait Sink {
    fn tree(&mut self, name: &[u8]) -> Result<(), StoreError>;
    fn entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
}

/// Checks only.
struct Discard;

impl Sink for Discard {
    fn tree(&mut self, _: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
    fn entry(&mut self, _: &[u8], _: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Why a file could not be parsed.
enum ParseError {
    /// The file ends inside a record.
    Truncated {
        at: u64,
        inside: &'static str,
    },
    /// A record makes no sense at this offset.
    Malformed {
        at: u64,
        reason: String,
    },
    /// The structure is fine, the trailer is not the SHA-256 of the rest.
    Checksum,
    /// Not a backup file at all.
    NotBackup,
    Version(u32),
    Io(io::Error),
    /// The sink failed (restore: sled).
    Sink(StoreError),
}

/// A reader that hashes what it reads and knows how much file is left.
struct Input<R: Read> {
    inner: R,
    hasher: Sha256,
    pos: u64,
    len: u64,
}

impl<R: Read> Input<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Reads exactly `buf.len()` bytes, hashing them.
    fn take(&mut self, buf: &mut [u8], inside: &'static str) -> Result<(), ParseError> {
        if (buf.len() as u64) > self.remaining() {
            return Err(ParseError::Truncated {
                at: self.len,
                inside,
            });
        }
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                ParseError::Truncated {
                    at: self.pos,
                    inside,
                }
            } else {
                ParseError::Io(e)
            }
        })?;
        self.hasher.update(&buf[..]);
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn u8(&mut self, inside: &'static str) -> Result<u8, ParseError> {
        let mut b = [0u8; 1];
        self.take(&mut b, inside)?;
        Ok(b[0])
    }

    fn u64(&mut self, inside: &'static str) -> Result<u64, ParseError> {
        let mut b = [0u8; 8];
        self.take(&mut b, inside)?;
        Ok(u64::from_be_bytes(b))
    }

    /// Reads a length-prefixed field into `buf`, refusing lengths over `max`
    /// or past the end of the file before allocating anything.
    fn field(
        &mut self,
        buf: &mut Vec<u8>,
        max: u32,
        inside: &'static str,
    ) -> Result<(), ParseError> {
        let at = self.pos;
        let mut b = [0u8; 4];
        self.take(&mut b, inside)?;
        let len = u32::from_be_bytes(b);
        if len > max {
            return Err(ParseError::Malformed {
                at,
                reason: format!("a {inside} of {len} bytes, more than the {max} allowed"),
            });
        }
        if u64::from(len) > self.remaining() {
            return Err(ParseError::Truncated {
                at: self.len,
                inside,
            });
        }
        buf.clear();
        buf.resize(len as usize, 0);
        self.take(buf, inside)
    }
}

/// Reads a whole backup, handing trees and entries to `sink`; checks
/// structure, counts and checksum. Returns what the file held.
fn parse(file: &File, sink: &mut dyn Sink) -> Result<BackupStats, ParseError> {
    let len = file.metadata().map_err(ParseError::Io)?.len();
    let mut input = Input {
        inner: BufReader::with_capacity(256 * 1024, file),
        hasher: Sha256::new(),
        pos: 0,
        len,
    };
    let mut magic = [0u8; 8];
    let head = len.min(8) as usize;
    input.take(&mut magic[..head], "header")?;
    if magic[..head] != MAGIC[..head] {
        return Err(ParseError::NotBackup);
    }
    if head < 8 {
        return Err(ParseError::Truncated {
            at: len,
            inside: "header",
        });
    }
    let mut version = [0u8; 4];
    input.take(&mut version, "header")?;
    let version = u32::from_be_bytes(version);
    if version != FORMAT_VERSION {
        return Err(ParseError::Version(version));
    }

    let mut stats = BackupStats::default();
    let mut names: Vec<Vec<u8>> = Vec::new();
    let mut name = Vec::new();
    let mut key = Vec::new();
    let mut previous_key: Option<Vec<u8>> = None;
    let mut value = Vec::new();
    loop {
        let at = input.pos;
        match input.u8("record tag")? {
            TAG_TREE => {
                input.field(&mut name, MAX_NAME, "tree name")?;
                if names.contains(&name) {
                    return Err(ParseError::Malformed {
                        at,
                        reason: format!("tree `{}` appears twice", String::from_utf8_lossy(&name)),
                    });
                }
                names.push(name.clone());
                previous_key = None;
                stats.trees += 1;
                sink.tree(&name).map_err(ParseError::Sink)?;
            }
            TAG_ENTRY => {
                if names.is_empty() {
                    return Err(ParseError::Malformed {
                        at,
                        reason: "an entry before any tree".into(),
                    });
                }
                input.field(&mut key, MAX_KEY, "key")?;
                if previous_key.as_ref().is_some_and(|p| *p >= key) {
                    return Err(ParseError::Malformed {
                        at,
                        reason: "keys out of order".into(),
                    });
                }
                input.field(&mut value, MAX_VALUE, "value")?;
                stats.entries += 1;
                sink.entry(&key, &value).map_err(ParseError::Sink)?;
                match &mut previous_key {
                    Some(p) => {
                        p.clear();
                        p.extend_from_slice(&key);
                    }
                    None => previous_key = Some(key.clone()),
                }
            }
            TAG_END => {
                let trees = input.u64("end record")?;
                let entries = input.u64("end record")?;
                if (trees, entries) != (stats.trees, stats.entries) {
                    return Err(ParseError::Malformed {
                        at,
                        reason: format!(
                            "the end record counts {trees} trees and {entries} entries, the file holds {} and {}",
                            stats.trees, stats.entries
                        ),
                    });
                }
                break;
            }
            tag => {
                return Err(ParseError::Malformed {
                    at,
                    reason: format!("unknown record tag 0x{tag:02x}"),
                })
            }
        }
    }
    let computed = input.hasher.clone().finalize();
    let mut trailer = [0u8; TRAILER_LEN as usize];
    input.take(&mut trailer, "checksum trailer")?;
    if input.remaining() > 0 {
        return Err(ParseError::Malformed {
            at: input.pos,
            reason: format!("{} bytes after the checksum trailer", input.remaining()),
        });
    }
    if computed[..] != trailer[..] {
        return Err(ParseError::Checksum);
    }
    stats.bytes = len;
    Ok(stats)
}

/// Whether the last 32 bytes of the file are the SHA-256 of the rest.
fn trailer_matches(path: &Path) -> io::Result<bool> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len < HEADER_LEN + TRAILER_LEN {
        return Ok(false);
    }
    let mut hasher = Sha256::new();
    io::copy(&mut (&mut file).take(len - TRAILER_LEN), &mut hasher)?;
    let mut trailer = [0u8; TRAILER_LEN as usize];
    file.read_exact(&mut trailer)?;
    Ok(hasher.finalize()[..] == trailer[..])
}

/// Turns a parse failure into a message that says what is wrong and what to do.
fn explain(path: &Path, e: ParseError) -> StoreError {
    let file = path.display();
    match e {
        ParseError::NotBackup => backup_err(format!(
            "{file} is not a Hashfleet backup (it does not start with `HFBACKUP`): pass a file written by `hashfleet-commander backup`"
        )),
        ParseError::Version(v) => backup_err(format!(
            "{file} has backup format version {v}, this hashfleet-commander reads version {FORMAT_VERSION} only (unsupported version {v}): restore it with the release that wrote it, or a newer one"
        )),
        ParseError::Checksum => backup_err(format!(
            "{file} is damaged: its SHA-256 checksum does not match its contents (bad checksum); nothing was restored. Use another copy of the backup"
        )),
        ParseError::Io(e) => backup_err(format!("cannot read {file}: {e}")),
        ParseError::Sink(e) => e,
        ParseError::Truncated { at, inside } => {
            // A damaged length can look like a short file; the trailer tells.
            let whole = trailer_matches(path).unwrap_or(false);
            if whole {
                backup_err(format!(
                    "{file} is malformed (a {inside} runs past the end at byte {at}) although its checksum matches: it was not written by a compatible hashfleet-commander; nothing was restored"
                ))
            } else {
                backup_err(format!(
                    "{file} is truncated or damaged: it ends at byte {at} inside a {inside} and its checksum does not match; nothing was restored. The copy is incomplete: copy it again or take a new backup"
                ))
            }
        }
        ParseError::Malformed { at, reason } => {
            if trailer_matches(path).unwrap_or(false) {
                backup_err(format!(
                    "{file} is malformed at byte {at} ({reason}) although its checksum matches: it was not written by a compatible hashfleet-commander; nothing was restored"
                ))
            } else {
                backup_err(format!(
                    "{file} is damaged: at byte {at} {reason}, and its checksum does not match; nothing was restored. Use another copy of the backup"
                ))
            }
        }
    }
}

fn open_backup(path: &Path) -> Result<File, StoreError> {
    File::open(path).map_err(|e| backup_err(format!("cannot open {}: {e}", path.display())))
}

/// Reads a whole backup file and checks its structure and checksum without
/// writing anything.
pub fn verify(file: &Path) -> Result<BackupStats, StoreError> {
    let f = open_backup(file)?;
    parse(&f, &mut Discard).map_err(|e| explain(file, e))
}

/// Imports into a sled database, in batches.
struct Import<'a> {
    db: &'a sled::Db,
    tree: Option<sled::Tree>,
    batch: sled::Batch,
    batch_entries: usize,
    batch_bytes: usize,
}

impl Import<'_> {
    fn apply(&mut self) -> Result<(), StoreError> {
        if self.batch_entries > 0 {
            let tree = self.tree.as_ref().expect("entries follow a tree");
            tree.apply_batch(std::mem::take(&mut self.batch))?;
            self.batch_entries = 0;
            self.batch_bytes = 0;
        }
        Ok(())
    }
}

impl Sink for Import<'_> {
    fn tree(&mut self, name: &[u8]) -> Result<(), StoreError> {
        self.apply()?;
        self.tree = Some(if name == DEFAULT_TREE {
            (**self.db).clone()
        } else {
            self.db.open_tree(name)?
        });
        Ok(())
    }

    fn entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.batch.insert(key, value);
        self.batch_entries += 1;
        self.batch_bytes += key.len() + value.len();
        if self.batch_entries >= BATCH_ENTRIES || self.batch_bytes >= BATCH_BYTES {
            self.apply()?;
        }
        Ok(())
    }
}

/// `dir` holds something (it exists and is not an empty directory).
fn occupied(dir: &Path) -> Result<bool, StoreError> {
    match fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => Ok(true),
        Err(e) => Err(backup_err(format!("cannot read {}: {e}", dir.display()))),
    }
}

fn refuse_occupied(dir: &Path) -> StoreError {
    backup_err(format!(
        "{} already holds a store; restore only into an empty place: move it aside (e.g. `mv {0} {0}.old`) or pick another --data-dir",
        dir.display()
    ))
}

/// Reads a backup file into a new store in `dir`, which must not exist or
/// be an empty directory. The file is verified completely before anything
/// is written; the store is built in a temporary directory beside `dir`
/// and renamed to `dir` only when it is complete and flushed.
pub fn restore(file: &Path, dir: &Path) -> Result<BackupStats, StoreError> {
    if occupied(dir)? {
        return Err(refuse_occupied(dir));
    }
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(backup_err(format!(
            "{} does not exist: create it first",
            parent.display()
        )));
    }
    // Pass 1: the whole file, nothing written.
    let f = open_backup(file)?;
    let expected = parse(&f, &mut Discard).map_err(|e| explain(file, e))?;

    // Pass 2: import into a temporary directory next to `dir`.
    let name = dir
        .file_name()
        .ok_or_else(|| backup_err(format!("{} names no directory", dir.display())))?;
    let tmp: PathBuf = parent.join(format!(
        ".{}.restore-{}-{:08x}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        u32::from_le_bytes(hashfleet_shared::random_bytes::<4>())
    ));
    let result = import(file, &tmp, dir, parent, &expected);
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

fn import(
    file: &Path,
    tmp: &Path,
    dir: &Path,
    parent: &Path,
    expected: &BackupStats,
) -> Result<BackupStats, StoreError> {
    let stats = {
        let db = sled::Config::new()
            .path(tmp)
            .create_new(true)
            .flush_every_ms(None)
            .open()?;
        let mut sink = Import {
            db: &db,
            tree: None,
            batch: sled::Batch::default(),
            batch_entries: 0,
            batch_bytes: 0,
        };
        let f = open_backup(file)?;
        // Checked again: the file must not have changed since pass 1.
        let stats = parse(&f, &mut sink).map_err(|e| explain(file, e))?;
        sink.apply()?;
        if stats != *expected {
            return Err(backup_err(format!(
                "{} changed while it was being restored; nothing was restored. Try again with a file nothing writes to",
                file.display()
            )));
        }
        db.flush()?;
        stats
        // `db` closes here, before the directory moves.
    };
    wait_released(&tmp.join("db"))?;
    if occupied(dir)? {
        return Err(refuse_occupied(dir));
    }
    fs::rename(tmp, dir).map_err(|e| {
        backup_err(format!(
            "cannot move the restored store from {} to {}: {e}",
            tmp.display(),
            dir.display()
        ))
    })?;
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| backup_err(format!("cannot sync {}: {e}", parent.display())))?;
    Ok(stats)
}

/// sled's background threads can hold the lock on its `db` file for a
/// moment after the last handle is dropped; waits until it is free, so the
/// restored store can be opened as soon as [`restore`] returns.
fn wait_released(db_file: &Path) -> Result<(), StoreError> {
    use fs2::FileExt;
    let file = File::open(db_file)
        .map_err(|e| backup_err(format!("cannot open {}: {e}", db_file.display())))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match file.try_lock_exclusive() {
            Ok(()) => {
                let _ = FileExt::unlock(&file);
                return Ok(());
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                return Err(backup_err(format!(
                    "the restored store {} is still locked after 30 s ({e}); nothing was restored",
                    db_file.display()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with several trees, many entries, and the default tree used.
    fn filled(dir: &Path) -> sled::Db {
        let db = sled::Config::new().path(dir).open().unwrap();
        for (t, name) in ["alpha", "beta", "heartbeats"].iter().enumerate() {
            let tree = db.open_tree(name).unwrap();
            for i in 0..(500 * (t as u32 + 1)) {
                let key = [&i.to_be_bytes()[..], name.as_bytes()].concat();
                let value = vec![(i % 251) as u8; (i as usize * 7) % 300];
                tree.insert(key, value).unwrap();
            }
        }
        db.open_tree("empty").unwrap();
        db.insert(b"default-key", b"default-value").unwrap();
        db.open_tree("big")
            .unwrap()
            .insert(b"k", vec![7u8; 3 * 1024 * 1024])
            .unwrap();
        db.flush().unwrap();
        db
    }

    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

    fn dump(db: &sled::Db) -> Vec<(Vec<u8>, Pairs)> {
        let mut names = db.tree_names();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let tree = if name.as_ref() == DEFAULT_TREE {
                    (**db).clone()
                } else {
                    db.open_tree(&name).unwrap()
                };
                let kvs = tree
                    .iter()
                    .map(|kv| {
                        let (k, v) = kv.unwrap();
                        (k.to_vec(), v.to_vec())
                    })
                    .collect();
                (name.to_vec(), kvs)
            })
            .collect()
    }

    fn backup_file(dir: &Path) -> (PathBuf, BackupStats, sled::Db) {
        let db = filled(&dir.join("src"));
        let path = dir.join("store.hfbackup");
        let mut out = File::create(&path).unwrap();
        let stats = export(&db, &mut out).unwrap();
        (path, stats, db)
    }

    #[test]
    fn round_trip_restores_every_tree_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (path, stats, db) = backup_file(dir.path());
        assert_eq!(stats.bytes, fs::metadata(&path).unwrap().len());
        // alpha, beta, big, empty, heartbeats, and the default tree.
        assert_eq!(stats.trees, 6);
        assert_eq!(stats.entries, 500 + 1000 + 1500 + 1 + 1);
        assert_eq!(verify(&path).unwrap(), stats);

        let target = dir.path().join("restored");
        let restored = restore(&path, &target).unwrap();
        assert_eq!(restored, stats);
        let copy = sled::Config::new().path(&target).open().unwrap();
        assert_eq!(dump(&copy), dump(&db));
        assert_eq!(copy.get(b"default-key").unwrap().unwrap(), b"default-value");
        // No temporary directory is left behind.
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // A backup of the restored store is the same file.
        let mut again = Vec::new();
        export(&copy, &mut again).unwrap();
        assert_eq!(again, fs::read(&path).unwrap());
    }

    #[test]
    fn an_empty_directory_is_a_valid_target_and_an_empty_store_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("src"))
            .open()
            .unwrap();
        let path = dir.path().join("empty.hfbackup");
        let stats = export(&db, &mut File::create(&path).unwrap()).unwrap();
        assert_eq!((stats.trees, stats.entries), (0, 0));
        let target = dir.path().join("target");
        fs::create_dir(&target).unwrap();
        assert_eq!(restore(&path, &target).unwrap(), stats);
        assert!(target.join("db").exists() || target.join("conf").exists());
    }

    #[test]
    fn a_flipped_byte_is_a_checksum_error_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, _db) = backup_file(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        // Inside a value of the big entry (3 MiB of 7s), well before the end.
        let at = bytes.len() - 1024 * 1024;
        bytes[at] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let target = dir.path().join("restored");
        let err = restore(&path, &target).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        assert!(!target.exists());
        // Every position: never a panic, always an error that names the problem.
        let good = {
            bytes[at] ^= 0x01;
            bytes.clone()
        };
        for at in (0..good.len()).step_by(good.len() / 97) {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            fs::write(&path, &bad).unwrap();
            let err = verify(&path).unwrap_err().to_string();
            assert!(
                err.contains("checksum")
                    || err.contains("not a Hashfleet backup")
                    || err.contains("unsupported version"),
                "byte {at}: {err}"
            );
        }
    }

    #[test]
    fn a_truncated_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, _db) = backup_file(dir.path());
        let bytes = fs::read(&path).unwrap();
        for keep in [
            bytes.len() - 1,
            bytes.len() - 40,
            bytes.len() / 2,
            20,
            10,
            3,
        ] {
            fs::write(&path, &bytes[..keep]).unwrap();
            let err = restore(&path, &dir.path().join("restored"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("truncated"), "kept {keep}: {err}");
            assert!(!dir.path().join("restored").exists());
        }
        // Trailing bytes are refused too.
        let mut longer = bytes.clone();
        longer.push(0);
        fs::write(&path, &longer).unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("after the checksum"), "{err}");
    }

    #[test]
    fn a_non_empty_target_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _, _db) = backup_file(dir.path());
        let target = dir.path().join("occupied");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("something"), b"x").unwrap();
        let err = restore(&path, &target).unwrap_err().to_string();
        assert!(err.contains("already holds"), "{err}");
        assert!(err.contains("--data-dir"), "{err}");
        assert_eq!(fs::read(target.join("something")).unwrap(), b"x");
    }

    #[test]
    fn garbage_and_other_versions_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage");
        fs::write(&path, b"this is not a backup at all, just some text\n").unwrap();
        let err = restore(&path, &dir.path().join("t"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a Hashfleet backup"), "{err}");
        fs::write(&path, b"").unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");

        let mut v2 = MAGIC.to_vec();
        v2.extend_from_slice(&2u32.to_be_bytes());
        v2.extend_from_slice(&[0u8; 64]);
        fs::write(&path, &v2).unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("unsupported version 2"), "{err}");
        assert!(!dir.path().join("t").exists());
    }

    #[test]
    fn hostile_lengths_are_refused_without_allocating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hostile");
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        bytes.push(TAG_TREE);
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.push(b't');
        bytes.push(TAG_ENTRY);
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.push(b'k');
        bytes.extend_from_slice(&(MAX_VALUE - 1).to_be_bytes());
        fs::write(&path, &bytes).unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        let n = bytes.len();
        bytes[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
        fs::write(&path, &bytes).unwrap();
        let err = verify(&path).unwrap_err().to_string();
        assert!(err.contains("more than the"), "{err}");
    }
}
