//! The non-miner devices: cooling containers (HTTP JSON on port 80) and
//! Modbus TCP power meters and relay controllers (port 502).

pub mod container;
pub mod modbus;
