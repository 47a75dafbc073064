//! Shared by the firmware tests: one emulated miner on its own address,
//! identified and read by the real asic-rs.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use asic_rs::core::data::hashrate::HashRateUnit;
use asic_rs::core::data::miner::MinerData;
use asic_rs::core::traits::miner::Miner as AsicMiner;
use asic_rs::MinerFactory;
use hashfleet_sim::model::{Miner, Model};
use hashfleet_sim::net::{serve_miner, ServedMiner};

/// `model` on `addr` with its real ports, served as the sim's net layer
/// serves it (a miner that is down drops connections); boots in 500 ms.
pub fn serve(addr: Ipv4Addr, model: Model) -> ServedMiner {
    let miner = Miner::new(0, addr, model, Duration::from_millis(500));
    serve_miner(Arc::new(miner)).expect("serving the miner (root?)")
}

/// asic-rs's handle for the miner, as its factory identifies it.
pub async fn identify(served: &ServedMiner) -> Box<dyn AsicMiner> {
    MinerFactory::new()
        .get_miner(served.ip)
        .await
        .expect("discovery runs")
        .expect("the emulated miner is identified")
}

/// The hashrate asic-rs read, TH/s.
pub fn ths(data: &MinerData) -> f64 {
    data.hashrate
        .clone()
        .expect("hashrate")
        .as_unit(HashRateUnit::TeraHash)
        .value
}
