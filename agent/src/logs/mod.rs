//! A container's output on this node. The shim writes every line, with
//! its sequence number, to the bundle's log file (rotated by size and
//! count); that file is the full record while the node lives. `reader.rs`
//! reads it back by sequence number across rotations, `shipper.rs` ships
//! it to the cluster under closed acknowledgement, and `serve.rs` answers
//! the cluster's reads of it (`berth logs`, and `berth run`'s output).

pub mod reader;
pub mod serve;
pub mod shipper;
