//! The miner firmwares the sim speaks, one module each. A connection
//! reaches [`serve`] only after the net layer has checked reachability,
//! slowness and the malformed fault; a module formats
//! [`Miner::readings`](crate::model::Miner::readings) the way the real
//! firmware does and calls the miner's mutators for writes.

pub mod antminer;
pub mod avalon;
pub mod io;
pub mod whatsminer;

use std::sync::Arc;

use tokio::net::TcpStream;

use crate::model::{Family, Miner};

/// Serves one connection to `port` of `miner`.
pub async fn serve(port: u16, stream: TcpStream, miner: Arc<Miner>) {
    match (miner.model.family(), port) {
        (Family::Antminer, 4028) => antminer::rpc(stream, miner).await,
        (Family::Antminer, 80) => antminer::web(stream, miner).await,
        (Family::Whatsminer, 4028) => whatsminer::rpc(stream, miner).await,
        (Family::Whatsminer, 80) => whatsminer::web(stream, miner).await,
        (Family::Whatsminer, 4433) => whatsminer::rpc_v3(stream, miner).await,
        (Family::Avalon, 4028) => avalon::rpc(stream, miner).await,
        (Family::Avalon, 80) => avalon::web(stream, miner).await,
        // A port this model does not open: close, as a refused port would.
        _ => drop(stream),
    }
}
