//! The `backup` and `restore` subcommands.
//!
//! `backup --data-dir D --out F` writes a consistent copy of the store in
//! `D/store` to `F` (format: [`crate::store::backup`]). While a commander
//! serves from `D` it holds the store's lock, so the copy is taken by that
//! commander: the command reads the HTTP address it left in `D/http.addr`
//! and the admin token in `D/admin.token`, and downloads
//! `POST /api/v1/backup`. When nothing serves from `D` (no `http.addr`, or
//! nothing listens there any more), it opens the store itself. Either way
//! the file is verified, then written to `F` atomically (0600).
//!
//! `restore --data-dir D --in F` builds `D/store` from a backup. It refuses
//! while a commander serves from `D` ("stop the commander first") and when
//! `D/store` already holds a store (move it aside or pick another
//! `--data-dir`). The file is checked completely before anything is written.
//!
//! **Not in the backup:** `D/identity.json` (the commander's key, which
//! sentries pin) and `D/admin.token` live beside `store/` and are not part
//! of it. Back those two files up separately (they are secrets: keep them
//! 0600); `restore` leaves them alone. Restore into a data dir that has
//! the old `identity.json`, or sentries will refuse the commander.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use hashfleet_shared::secure_file;

use crate::app::HTTP_ADDR_FILE;
use crate::keys::admin_token_path;
use crate::store::backup::verify;
use crate::store::{BackupStats, SledStore, Store, StoreError};

/// How a backup was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Downloaded from the commander serving the data dir (its HTTP address).
    Server(SocketAddr),
    /// Read from the store directly: nothing was serving.
    Store,
}

/// What `backup` wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupOutcome {
    pub stats: BackupStats,
    pub source: Source,
}

fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("store")
}

/// The address a serving commander left in `data_dir/http.addr`, if any.
/// An unspecified bind address (`0.0.0.0`, `::`) is reached on loopback.
/// Shared with the operator CLI ([`crate::cli`]).
pub(crate) fn recorded_addr(data_dir: &Path) -> anyhow::Result<Option<SocketAddr>> {
    let path = data_dir.join(HTTP_ADDR_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut addr: SocketAddr = text.trim().parse().map_err(|_| {
        anyhow::anyhow!(
            "{} does not hold an address ({:?}); if no commander serves from {}, delete it",
            path.display(),
            text.trim(),
            data_dir.display()
        )
    })?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(Some(addr))
}

/// The bootstrap admin token in `data_dir/admin.token` (must be private:
/// 0600). Shared with the operator CLI ([`crate::cli`]).
pub(crate) fn read_admin_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = admin_token_path(data_dir);
    let bytes = secure_file::read_private(&path, 4096)?;
    let token = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{} is not text", path.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(token)
}

/// A temporary file beside `out` that becomes `out` on `commit` and is
/// removed otherwise.
struct PendingFile {
    tmp: PathBuf,
    out: PathBuf,
    file: Option<File>,
}

impl PendingFile {
    fn create(out: &Path) -> anyhow::Result<Self> {
        let name = out
            .file_name()
            .with_context(|| format!("--out {} names no file", out.display()))?;
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            bail!(
                "{} does not exist: create the directory for --out first",
                dir.display()
            );
        }
        let tmp = dir.join(format!(
            ".{}.tmp-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            hex::encode(hashfleet_shared::random_bytes::<4>())
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        // The umask may have narrowed the mode; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        Ok(PendingFile {
            tmp,
            out: out.to_path_buf(),
            file: Some(file),
        })
    }

    fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until commit")
    }

    /// Syncs, checks the backup, renames it into place and syncs the directory.
    fn commit(mut self) -> anyhow::Result<BackupStats> {
        let file = self.file.take().expect("open until commit");
        file.sync_all()
            .with_context(|| format!("syncing {}", self.tmp.display()))?;
        drop(file);
        let stats = verify(&self.tmp).context("the backup just written does not check out")?;
        fs::rename(&self.tmp, &self.out).with_context(|| {
            format!("renaming {} to {}", self.tmp.display(), self.out.display())
        })?;
        let dir = self.out.parent().filter(|p| !p.as_os_str().is_empty());
        File::open(dir.unwrap_or(Path::new(".")))
            .and_then(|d| d.sync_all())
            .context("syncing the directory of --out")?;
        Ok(stats)
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        // Gone after a commit; otherwise the partial file goes.
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Writes a backup of `data_dir/store` to `out`: through the commander
/// serving from `data_dir` if there is one, else from the store directly.
pub async fn backup(data_dir: &Path, out: &Path) -> anyhow::Result<BackupOutcome> {
    if let Some(addr) = recorded_addr(data_dir)? {
        let token = read_admin_token(data_dir).with_context(|| {
            format!(
                "a commander serves from {}, and the backup goes through its API, which needs the admin token",
                data_dir.display()
            )
        })?;
        match download(addr, &token, out).await {
            Ok(Some(stats)) => {
                return Ok(BackupOutcome {
                    stats,
                    source: Source::Server(addr),
                })
            }
            Ok(None) => {
                tracing::info!(
                    %addr,
                    "no commander answers at the address in {HTTP_ADDR_FILE} (left by one that stopped); reading the store directly"
                );
            }
            Err(e) => return Err(e),
        }
    }
    let data_dir = data_dir.to_path_buf();
    let out = out.to_path_buf();
    let stats = tokio::task::spawn_blocking(move || backup_offline(&data_dir, &out))
        .await
        .context("the backup task failed")??;
    Ok(BackupOutcome {
        stats,
        source: Source::Store,
    })
}

/// Downloads `POST /api/v1/backup` into `out`. `Ok(None)` when nothing
/// listens at `addr`.
async fn download(
    addr: SocketAddr,
    token: &str,
    out: &Path,
) -> anyhow::Result<Option<BackupStats>> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("building the HTTP client")?;
    let url = format!("http://{addr}/api/v1/backup");
    let mut response = match client.post(&url).bearer_auth(token).send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("POST {url}")),
    };
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or(body);
        bail!("the commander at {addr} refused the backup ({status}): {message}");
    }
    let expected = response.content_length();
    let mut pending = PendingFile::create(out)?;
    let mut received: u64 = 0;
    while let Some(chunk) = response
        .chunk()
        .await
        .with_context(|| format!("downloading the backup from {url}"))?
    {
        pending
            .file()
            .write_all(&chunk)
            .with_context(|| format!("writing {}", pending.tmp.display()))?;
        received += chunk.len() as u64;
    }
    if let Some(expected) = expected {
        if received != expected {
            bail!("the download from {url} ended after {received} of {expected} bytes; try again");
        }
    }
    pending.commit().map(Some)
}

/// Opens the store (nothing serves it) and writes a backup to `out`.
fn backup_offline(data_dir: &Path, out: &Path) -> anyhow::Result<BackupStats> {
    let dir = store_dir(data_dir);
    if !dir.join("db").exists() {
        bail!(
            "there is no store in {}: is --data-dir right?",
            dir.display()
        );
    }
    let store = SledStore::open(&dir).map_err(|e| in_use(e.into(), &dir))?;
    let mut pending = PendingFile::create(out)?;
    store
        .backup(pending.file())
        .with_context(|| format!("backing up {}", dir.display()))?;
    drop(store);
    pending.commit()
}

/// Says "stop the commander first" when sled's lock is what failed.
fn in_use(e: anyhow::Error, dir: &Path) -> anyhow::Error {
    let held = matches!(e.downcast_ref::<StoreError>(), Some(StoreError::Locked(_)))
        || format!("{e:#}").contains("could not acquire lock");
    if held {
        anyhow::anyhow!(
            "the store in {} is in use by another process (a running commander?): stop the commander first, or, for a backup, make sure it wrote {HTTP_ADDR_FILE} beside the store",
            dir.display()
        )
    } else {
        e.context(format!("opening the store in {}", dir.display()))
    }
}

/// Restores `input` into `data_dir/store`, which must not hold a store.
/// `identity.json` and `admin.token` are left as they are.
pub fn restore(data_dir: &Path, input: &Path) -> anyhow::Result<BackupStats> {
    if let Some(addr) = recorded_addr(data_dir)? {
        if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok() {
            bail!(
                "a commander is serving from {} (HTTP on {addr}): stop the commander first",
                data_dir.display()
            );
        }
    }
    let dir = store_dir(data_dir);
    if dir.join("db").exists() {
        // Held by a running commander? Then say so rather than "not empty".
        let probe = sled::Config::new()
            .path(&dir)
            .cache_capacity(1024 * 1024)
            .open();
        if let Err(e) = probe {
            let e = in_use(e.into(), &dir);
            if format!("{e:#}").contains("stop the commander first") {
                return Err(e);
            }
        }
    }
    if !input.is_file() {
        bail!(
            "{} is not a file: pass the backup with --in",
            input.display()
        );
    }
    let created = !data_dir.exists();
    secure_file::ensure_private_dir(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let stats = SledStore::restore(input, &dir);
    if stats.is_err() && created {
        // Leave no empty data dir behind (remove_dir refuses a non-empty one).
        let _ = fs::remove_dir(data_dir);
    }
    let stats = stats?;
    if !hashfleet_shared::Identity::path_in(data_dir).exists() {
        tracing::warn!(
            "{} has no identity.json: `serve` would create a new commander identity, which sentries pinned to the old one refuse; copy the old identity.json and admin.token (mode 0600) into it before starting",
            data_dir.display()
        );
    }
    Ok(stats)
}
