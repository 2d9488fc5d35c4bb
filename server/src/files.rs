//! Small files a server keeps in its data dir (its id, its credentials),
//! written so that a crash leaves the old one or the new one, never half
//! (berth_proto::credential::write_private, shared with the clients).

pub use berth_proto::credential::write_private as write_synced;
