//! Listening: one socket per device and port for small fleets, or one
//! wildcard socket per port for large ones, routing each connection by its
//! local address (`getsockname`). This machine's hard descriptor limit
//! (20,000) is why: 10,000 miners × 2 ports cannot each hold a socket.
//!
//! Sockets use `SO_REUSEPORT`, so a wildcard sim and per-address sims can
//! share a port (Linux hands a connection to the most specific bind). What
//! keeps two sims from serving the same address is a lock file per /24
//! block (and per wildcard port) under the temp dir, held with `flock` for
//! the life of the sim: a second sim on the same block fails at start,
//! naming the block.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::devices;
use crate::fleet::{Device, Fleet};
use crate::miners;
use crate::model::Reachability;

/// How the sim listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenMode {
    /// Per address up to [`PER_ADDRESS_MAX_SOCKETS`] sockets, else wildcard.
    Auto,
    PerAddress,
    Wildcard,
}

impl std::str::FromStr for ListenMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(ListenMode::Auto),
            "per-address" => Ok(ListenMode::PerAddress),
            "wildcard" => Ok(ListenMode::Wildcard),
            other => Err(format!(
                "unknown listen mode `{other}`: use auto, per-address or wildcard"
            )),
        }
    }
}

/// Above this many listening sockets, `auto` listens on the wildcard.
pub const PER_ADDRESS_MAX_SOCKETS: usize = 2_000;
/// Connections served at once; more are dropped at accept. Under the
/// 20,000 descriptors this machine allows a process.
const MAX_CONNECTIONS: usize = 15_000;
/// Longest any one connection is served.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(120);

/// Bound sockets, ready to serve, and the locks that reserve them.
pub struct Bound {
    listeners: Vec<(TcpListener, u16)>,
    pub mode: ListenMode,
    _locks: Vec<File>,
}

impl Bound {
    pub fn sockets(&self) -> usize {
        self.listeners.len()
    }
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("hashfleet-sim")
}

/// Takes an exclusive `flock` on `name` in the lock dir, or says who holds it.
fn take_lock(name: &str, what: &str) -> Result<File, String> {
    let dir = lock_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create the sim lock dir {}: {e}", dir.display()))?;
    let path = dir.join(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(format!(
            "another hashfleet-sim already serves {what} (lock {}): stop it, or give this one another --base-ip",
            path.display()
        ));
    }
    Ok(file)
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // Clamped to net.core.somaxconn; a wildcard socket takes every
    // device's connections, so its queue must be deep.
    socket.listen(65_535)?;
    TcpListener::from_std(socket.into())
}

fn bind_error(addr: SocketAddr, e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        format!(
            "cannot bind {addr}: {e}. Emulated firmware must serve its real ports (80, 502, 4028, 4433): run as root, or allow low ports with `sudo sysctl net.ipv4.ip_unprivileged_port_start=0`"
        )
    } else {
        format!("cannot bind {addr}: {e}")
    }
}

/// Reserves the fleet's address blocks and binds every socket it needs.
/// Must run inside a tokio runtime.
pub fn bind(fleet: &Fleet, mode: ListenMode) -> Result<Bound, String> {
    let addresses = fleet.addresses();
    let per_address_sockets: usize = fleet.devices().map(|(_, d)| d.ports().len()).sum();
    let mode = match mode {
        ListenMode::Auto if per_address_sockets > PER_ADDRESS_MAX_SOCKETS => ListenMode::Wildcard,
        ListenMode::Auto => ListenMode::PerAddress,
        m => m,
    };
    let mut locks = Vec::new();
    let blocks: BTreeSet<[u8; 3]> = addresses
        .iter()
        .map(|a| {
            let o = a.octets();
            [o[0], o[1], o[2]]
        })
        .collect();
    for b in &blocks {
        locks.push(take_lock(
            &format!("{}.{}.{}.lock", b[0], b[1], b[2]),
            &format!("{}.{}.{}.0/24", b[0], b[1], b[2]),
        )?);
    }
    let mut listeners = Vec::new();
    match mode {
        ListenMode::Wildcard => {
            for port in fleet.ports() {
                locks.push(take_lock(
                    &format!("wildcard-{port}.lock"),
                    &format!("the wildcard port {port}"),
                )?);
                let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
                listeners.push((bind_one(addr).map_err(|e| bind_error(addr, e))?, port));
            }
        }
        _ => {
            for addr in &addresses {
                let device = fleet.device(*addr).expect("listed");
                for &port in device.ports() {
                    let sa = SocketAddr::from((*addr, port));
                    listeners.push((bind_one(sa).map_err(|e| bind_error(sa, e))?, port));
                }
            }
        }
    }
    Ok(Bound {
        listeners,
        mode,
        _locks: locks,
    })
}

/// Serves every bound socket until the returned set is aborted or dropped.
pub fn serve(fleet: Arc<Fleet>, bound: Bound) -> (JoinSet<()>, Vec<File>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut set = JoinSet::new();
    for (listener, port) in bound.listeners {
        set.spawn(accept_loop(listener, port, fleet.clone(), permits.clone()));
    }
    (set, bound._locks)
}

async fn accept_loop(listener: TcpListener, port: u16, fleet: Arc<Fleet>, permits: Arc<Semaphore>) {
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            // Reap finished connection tasks so the set stays small.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, mostly: back off rather than spin.
                tracing::debug!("accept on port {port}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let local = match stream.local_addr() {
            Ok(SocketAddr::V4(l)) => *l.ip(),
            _ => continue,
        };
        if !local.is_loopback() || !matches!(peer.ip(), IpAddr::V4(p) if p.is_loopback()) {
            // Only loopback is ever served, whatever the bind.
            continue;
        }
        fleet.contacted(local);
        let Some(device) = fleet.device(local).cloned() else {
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        conns.spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, handle(stream, port, device)).await;
        });
    }
}

/// One miner served on its own address and real ports through the same
/// connection handling as a fleet (reachability, slow and malformed
/// faults), without a fleet or block locks: for tests that drive one
/// emulated miner directly. Stops serving when dropped.
pub struct ServedMiner {
    pub miner: Arc<crate::model::Miner>,
    pub ip: IpAddr,
    _tasks: JoinSet<()>,
}

/// Binds `miner`'s ports on its address and serves them.
pub fn serve_miner(miner: Arc<crate::model::Miner>) -> Result<ServedMiner, String> {
    let mut tasks = JoinSet::new();
    for &port in miner.model.ports() {
        let sa = SocketAddr::from((miner.addr, port));
        let listener = bind_one(sa).map_err(|e| bind_error(sa, e))?;
        let miner = miner.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                };
                if let Ok((stream, _)) = accepted {
                    conns.spawn(handle(stream, port, Device::Miner(miner.clone())));
                }
            }
        });
    }
    Ok(ServedMiner {
        ip: IpAddr::V4(miner.addr),
        miner,
        _tasks: tasks,
    })
}

async fn handle(stream: TcpStream, port: u16, device: Device) {
    let _ = stream.set_nodelay(true);
    match device {
        Device::Miner(m) => {
            if m.reachability(Instant::now()) == Reachability::Down {
                return;
            }
            let faults = m.faults();
            if let Some(delay) = faults.slow {
                tokio::time::sleep(delay).await;
            }
            if faults.malformed {
                return garble(stream, port).await;
            }
            miners::serve(port, stream, m).await
        }
        Device::Container(c) => devices::container::serve(stream, c).await,
        Device::Meter(m) => devices::modbus::serve_meter(stream, m).await,
        Device::Relay(r) => devices::modbus::serve_relay(stream, r).await,
    }
}

/// A reply that starts well and ends badly: what a firmware with a broken
/// API gives.
async fn garble(mut stream: TcpStream, port: u16) {
    let _ = miners::io::read_request(&mut stream).await;
    let body: &[u8] = b"{\"STATUS\":[{\"STATUS\":\"S\",\"When\":17,}{\"SUMMARY\":[{\"GHS 5s\":inf,\"Elapsed\":\x00\xff\xfe";
    if port == 80 {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len() + 40
        );
        let _ = stream.write_all(head.as_bytes()).await;
    }
    let _ = stream.write_all(body).await;
    let _ = stream.shutdown().await;
}
