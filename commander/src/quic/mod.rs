//! The commander's QUIC side: the listening endpoint ([`listener`]) and one
//! task per connection ([`session`]).

pub mod admission;
pub mod listener;
pub mod session;
