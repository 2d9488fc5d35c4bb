//! Row keys of the state machine. Each kind of row has its own prefix;
//! numbers are big-endian so that ranges sort (DESIGN.md, invariant 9).

/// `c/<id>`: a container record.
pub fn container(id: &str) -> Vec<u8> {
    [b"c/".as_slice(), id.as_bytes()].concat()
}

/// The prefix of every container row.
pub const CONTAINER_PREFIX: &[u8] = b"c/";

/// `cn/<name>`: the id of the container with that name.
pub fn container_name(name: &str) -> Vec<u8> {
    [b"cn/".as_slice(), name.as_bytes()].concat()
}

/// `n/<name>`: a node record.
pub fn node(name: &str) -> Vec<u8> {
    [b"n/".as_slice(), name.as_bytes()].concat()
}

/// The prefix of every node row.
pub const NODE_PREFIX: &[u8] = b"n/";

/// `s/<name>`: a service record.
pub fn service(name: &str) -> Vec<u8> {
    [b"s/".as_slice(), name.as_bytes()].concat()
}

/// The prefix of every service row.
pub const SERVICE_PREFIX: &[u8] = b"s/";

/// `nl/<node>\0<key>`: one label of a node (a NUL cannot be in a name).
pub fn node_label(node: &str, key: &str) -> Vec<u8> {
    let mut k = node_label_prefix(node);
    k.extend_from_slice(key.as_bytes());
    k
}

/// `nl/<node>\0`: the prefix of every label of a node.
pub fn node_label_prefix(node: &str) -> Vec<u8> {
    [b"nl/".as_slice(), node.as_bytes(), b"\0".as_slice()].concat()
}

/// `lc/<id>/<first_seq>`: a chunk of a container's replicated log tail,
/// by the sequence number of its first line.
pub fn log_chunk(id: &str, first_seq: u64) -> Vec<u8> {
    let mut k = log_prefix(id);
    k.extend_from_slice(&first_seq.to_be_bytes());
    k
}

/// `lc/<id>/`: the prefix of every log chunk of a container.
pub fn log_prefix(id: &str) -> Vec<u8> {
    [b"lc/".as_slice(), id.as_bytes(), b"/".as_slice()].concat()
}

/// `e/<index><n>`: the n-th event of the Raft entry at `index`.
pub fn event(index: u64, n: u16) -> Vec<u8> {
    let mut k = EVENT_PREFIX.to_vec();
    k.extend_from_slice(&index.to_be_bytes());
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// The prefix of every event row.
pub const EVENT_PREFIX: &[u8] = b"e/";

/// The next server id the cluster will give a joining server (u64, big
/// endian).
pub const NEXT_SERVER_ID: &[u8] = b"m/next_server_id";

/// Every server id given so far (u64s, big endian, one after another):
/// an explicit `--id` is refused only if it is among them, so that a
/// higher one given first does not shut out a lower one never given.
pub const GIVEN_SERVER_IDS: &[u8] = b"m/given_server_ids";

/// The cluster's CA and token secrets (records.proto `Pki`).
pub const PKI: &[u8] = b"m/pki";

/// The certificates of a member (records.proto `MemberCert`).
pub fn member_cert(role: &str, name: &str) -> Vec<u8> {
    format!("m/cert/{role}/{name}").into_bytes()
}

/// A revoked certificate, by serial (hex); the value is its expiry (i64,
/// big endian), after which the row could go.
pub fn revoked(serial: &str) -> Vec<u8> {
    format!("m/revoked/{serial}").into_bytes()
}

/// A server id that left the cluster: every certificate of it is refused
/// (ids are never given again, and servers sign their own certificates,
/// so the serials of all of them are not known).
pub fn revoked_server(id: &str) -> Vec<u8> {
    format!("m/revoked-server/{id}").into_bytes()
}

/// The first key after every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_sequence_number() {
        let mut keys: Vec<Vec<u8>> = [300u64, 2, 256, 1]
            .iter()
            .map(|s| log_chunk("abc", *s))
            .collect();
        keys.sort();
        let seqs: Vec<u64> = keys
            .iter()
            .map(|k| u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap()))
            .collect();
        assert_eq!(seqs, vec![1, 2, 256, 300]);
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        let p = log_prefix("abc");
        let end = prefix_end(&p);
        assert!(log_chunk("abc", u64::MAX) < end);
        assert!(log_chunk("abd", 0) >= end);
    }
}
