//! Applying a committed command to the state-machine rows. This runs on
//! every member in log order and must be deterministic: it reads only the
//! rows and the command, never the clock or the network.

use berth_proto::records::{
    self, command::Op, CommandResult, Container, ContainerState, DesiredState, SCHEMA_VERSION,
};
use prost::Message;

use super::keys;
use super::status::Status;
use super::tx::Tx;

/// The most transitions a container record keeps.
const HISTORY_LIMIT: usize = 64;

/// How many Raft entries' worth of events the state keeps.
pub const EVENTS_KEPT: u64 = 10_000;

fn event(
    kind: &str,
    action: &str,
    actor: &str,
    time_ms: i64,
    attrs: &[(&str, String)],
) -> records::Event {
    records::Event {
        schema: records::SCHEMA_VERSION,
        seq: 0,
        time_ms,
        kind: kind.to_string(),
        action: action.to_string(),
        actor: actor.to_string(),
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    }
}

/// Errors that stop a command from being applied at all (as opposed to a
/// command that is refused, which is a result).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt row: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// True if a command only appends log lines (alone or in a batch): it
/// changes nothing the scheduler plans from.
pub fn only_logs(cmd: &records::Command) -> bool {
    match &cmd.op {
        Some(Op::Logs(_)) => true,
        Some(Op::Batch(b)) => b.commands.iter().all(only_logs),
        _ => false,
    }
}

/// Applies the command of one Raft entry, a single one or a batch of them
/// in order (each seeing what the ones before it wrote), into `tx`.
pub fn apply(tx: &mut Tx, cmd: &records::Command, index: u64) -> Result<CommandResult, ApplyError> {
    let mut events = Vec::new();
    let result = match &cmd.op {
        Some(Op::Batch(b)) => {
            let mut results = Vec::with_capacity(b.commands.len());
            for c in &b.commands {
                results.push(apply_op(tx, c, &mut events)?);
            }
            CommandResult {
                batch: results,
                ..Default::default()
            }
        }
        _ => apply_op(tx, cmd, &mut events)?,
    };
    for (n, mut e) in events.into_iter().enumerate() {
        e.seq = index;
        tx.put(keys::event(index, n as u16), e.encode_to_vec());
    }
    if index > EVENTS_KEPT && index.is_multiple_of(100) {
        // Older events go, a hundred entries at a time; the window reaches
        // back further in case an entry at a multiple of 100 was not a
        // command (a blank or membership entry is not applied here).
        let from = keys::event((index - EVENTS_KEPT).saturating_sub(1_000), 0);
        tx.delete_range(&from, &keys::event(index - EVENTS_KEPT, 0))?;
    }
    Ok(result)
}

fn apply_op(
    tx: &mut Tx,
    cmd: &records::Command,
    events: &mut Vec<records::Event>,
) -> Result<CommandResult, ApplyError> {
    let Some(op) = &cmd.op else {
        return Ok(refused("empty command"));
    };
    match op {
        Op::Batch(_) => Ok(refused("a batch inside a batch")),
        Op::Create(c) => {
            let r = create(tx, c)?;
            if let Some(ct) = r.container.as_ref().filter(|_| r.error.is_empty()) {
                let image = ct
                    .spec
                    .as_ref()
                    .map(|s| s.image.clone())
                    .unwrap_or_default();
                events.push(event(
                    "container",
                    "create",
                    &ct.id,
                    ct.created_at_ms,
                    &[("name", ct.name.clone()), ("image", image)],
                ));
            }
            Ok(r)
        }
        Op::Remove(rm) => {
            let r = remove(tx, rm)?;
            if let Some(ct) = r.container.as_ref().filter(|_| r.error.is_empty()) {
                events.push(event(
                    "container",
                    "destroy",
                    &ct.id,
                    rm.at_ms,
                    &[("name", ct.name.clone())],
                ));
            }
            Ok(r)
        }
        Op::Place(p) => place(tx, p),
        Op::Transition(t) => {
            let before = load(tx, &t.id)?.map(|c| c.state());
            let r = transition(tx, t)?;
            if let (Some(ct), Some(from)) =
                (r.container.as_ref().filter(|_| r.error.is_empty()), before)
            {
                let to = ct.state();
                let action = match (from, to) {
                    (f, t) if f == t => None,
                    (ContainerState::Paused, ContainerState::Running) => Some("unpause"),
                    (_, ContainerState::Running) => Some("start"),
                    (_, ContainerState::Paused) => Some("pause"),
                    (_, ContainerState::Exited | ContainerState::Dead) => Some("die"),
                    _ => None,
                };
                if action == Some("die") && ct.oom_killed {
                    events.push(event(
                        "container",
                        "oom",
                        &ct.id,
                        t.at_ms,
                        &[("name", ct.name.clone())],
                    ));
                }
                if let Some(action) = action {
                    let mut attrs = vec![("name", ct.name.clone()), ("node", ct.node.clone())];
                    if action == "die" {
                        attrs.push(("exitCode", ct.exit_code.to_string()));
                        if !ct.error.is_empty() {
                            attrs.push(("error", ct.error.clone()));
                        }
                    }
                    events.push(event("container", action, &ct.id, t.at_ms, &attrs));
                }
            }
            Ok(r)
        }
        Op::Logs(l) => append_logs(tx, l),
        Op::Desired(d) => set_desired(tx, d),
        Op::Service(p) => put_service(tx, p),
        Op::RemoveService(r) => {
            let key = keys::service(&r.name);
            let Some(v) = tx.get(&key)? else {
                return Ok(refused(&format!("No such service: {}", r.name)));
            };
            let svc = records::Service::decode(v.as_slice())?;
            tx.delete(key);
            Ok(CommandResult {
                service: Some(svc),
                ..Default::default()
            })
        }
        Op::NodeAvailability(a) => {
            let Some(v) = tx.get(&keys::node(&a.name))? else {
                return Ok(refused(&format!("No such node: {}", a.name)));
            };
            let mut node = records::Node::decode(v.as_slice())?;
            node.availability = a.availability;
            tx.put(keys::node(&a.name), node.encode_to_vec());
            Ok(CommandResult::default())
        }
        Op::RemoveNode(r) => {
            if tx.get(&keys::node(&r.name))?.is_none() {
                return Ok(refused(&format!("No such node: {}", r.name)));
            }
            tx.delete(keys::node(&r.name));
            let prefix = keys::node_label_prefix(&r.name);
            tx.delete_range(&prefix, &keys::prefix_end(&prefix))?;
            // A removed node cannot come back with its certificate.
            revoke(tx, "agent", &r.name)?;
            events.push(event("node", "remove", &r.name, 0, &[]));
            Ok(CommandResult::default())
        }
        Op::RecordCert(r) => {
            let Some(cert) = &r.cert else {
                return Ok(refused("RecordCert carries no certificate"));
            };
            let key = keys::member_cert(&r.role, &r.name);
            let found = match tx.get(&key)? {
                Some(v) => Some(records::MemberCert::decode(v.as_slice())?),
                None => None,
            };
            if !r.renewing_serial.is_empty() {
                // A renewal, decided here in log order: a removal committed
                // after the call was authorized still wins.
                let Some(mut rec) = found else {
                    return Ok(refused(&format!(
                        "{} {} was removed from the cluster",
                        r.role, r.name
                    )));
                };
                let presented = rec
                    .certs
                    .iter()
                    .find(|c| c.serial == r.renewing_serial)
                    .cloned();
                let Some(presented) = presented else {
                    return Ok(refused(
                        "the certificate presented is not this member's current one",
                    ));
                };
                if tx.get(&keys::revoked(&presented.serial))?.is_some() {
                    return Ok(refused("the certificate presented was revoked"));
                }
                for c in rec.certs.iter().filter(|c| c.serial != presented.serial) {
                    tx.put(keys::revoked(&c.serial), c.not_after_s.to_be_bytes());
                }
                rec.key_digest = r.key_digest.clone();
                rec.certs = vec![presented, cert.clone()];
                tx.put(key, rec.encode_to_vec());
                return Ok(CommandResult::default());
            }
            let mut rec = found.unwrap_or_else(|| records::MemberCert {
                schema: SCHEMA_VERSION,
                role: r.role.clone(),
                name: r.name.clone(),
                key_digest: r.key_digest.clone(),
                certs: Vec::new(),
            });
            if rec.key_digest != r.key_digest {
                return Ok(refused(&format!(
                    "the name {} is taken: another {} holds it (remove it first, \
                     `berth node rm {}`, or join under another name)",
                    r.name, r.role, r.name
                )));
            }
            // The same key asking again (an enrollment whose answer was
            // lost): every certificate stays recorded, so that a removal
            // revokes them all; a key asks only a few times.
            if rec.certs.len() >= CERTS_KEPT {
                return Ok(refused(&format!(
                    "{} {} asked for too many certificates with one key",
                    r.role, r.name
                )));
            }
            rec.certs.push(cert.clone());
            tx.put(key, rec.encode_to_vec());
            Ok(CommandResult::default())
        }
        Op::RevokeCert(r) => {
            revoke(tx, &r.role, &r.name)?;
            Ok(CommandResult::default())
        }
        Op::RotateCa(r) => {
            let Some(v) = tx.get(keys::PKI)? else {
                return Ok(refused("the cluster has no CA yet"));
            };
            let mut pki = records::Pki::decode(v.as_slice())?;
            if !pki.previous_ca_cert_pem.is_empty() {
                return Ok(refused(
                    "a CA rotation is already under way (`berth cluster ca` shows how far)",
                ));
            }
            pki.previous_ca_cert_pem = std::mem::take(&mut pki.ca_cert_pem);
            pki.nodes_moved = false;
            pki.ca_cert_pem = r.ca_cert_pem.clone();
            pki.ca_key_pem = r.ca_key_pem.clone();
            pki.agent_token_secret = r.agent_token_secret.clone();
            pki.server_token_secret = r.server_token_secret.clone();
            tx.put(keys::PKI, pki.encode_to_vec());
            events.push(event("cluster", "ca-rotate", "ca", 0, &[]));
            Ok(CommandResult::default())
        }
        Op::FinishCaRotation(r) => {
            let Some(v) = tx.get(keys::PKI)? else {
                return Ok(refused("the cluster has no CA yet"));
            };
            let mut pki = records::Pki::decode(v.as_slice())?;
            if pki.ca_cert_pem != r.ca_cert_pem || pki.previous_ca_cert_pem.is_empty() {
                return Ok(refused("no rotation to this CA is under way"));
            }
            pki.previous_ca_cert_pem.clear();
            tx.put(keys::PKI, pki.encode_to_vec());
            events.push(event("cluster", "ca-rotated", "ca", 0, &[]));
            Ok(CommandResult::default())
        }
        Op::CaNodesMoved(r) => {
            let Some(v) = tx.get(keys::PKI)? else {
                return Ok(refused("the cluster has no CA yet"));
            };
            let mut pki = records::Pki::decode(v.as_slice())?;
            if pki.ca_cert_pem != r.ca_cert_pem || pki.previous_ca_cert_pem.is_empty() {
                return Ok(refused("no rotation to this CA is under way"));
            }
            pki.nodes_moved = true;
            tx.put(keys::PKI, pki.encode_to_vec());
            Ok(CommandResult::default())
        }
        Op::RotateToken(r) => {
            let Some(v) = tx.get(keys::PKI)? else {
                return Ok(refused("the cluster has no CA yet"));
            };
            let mut pki = records::Pki::decode(v.as_slice())?;
            match r.role.as_str() {
                "agent" => pki.agent_token_secret = r.secret.clone(),
                "server" => pki.server_token_secret = r.secret.clone(),
                other => return Ok(refused(&format!("no join token for the role {other:?}"))),
            }
            tx.put(keys::PKI, pki.encode_to_vec());
            Ok(CommandResult::default())
        }
        Op::InitPki(p) => {
            let Some(pki) = &p.pki else {
                return Ok(refused("InitPki carries no Pki"));
            };
            if tx.get(keys::PKI)?.is_some() {
                return Ok(refused("the cluster has its CA already"));
            }
            tx.put(keys::PKI, pki.encode_to_vec());
            Ok(CommandResult::default())
        }
        Op::ReserveServerId(r) => {
            let stored = match tx.get(keys::NEXT_SERVER_ID)? {
                Some(v) if v.len() == 8 => {
                    u64::from_be_bytes(v[..8].try_into().unwrap_or_default())
                }
                _ => 0,
            };
            // A state from before the list was kept counts every id below
            // the high-water mark as given (the first 4096: a cluster never
            // had more members, and a forged floor must not make a list
            // of billions).
            let mut given: Vec<u64> = match tx.get(keys::GIVEN_SERVER_IDS)? {
                Some(v) => v
                    .chunks_exact(8)
                    .map(|c| u64::from_be_bytes(c.try_into().unwrap_or_default()))
                    .collect(),
                None => (1..stored.min(4096)).collect(),
            };
            let id = match r.exact {
                0 => {
                    let mut id = stored.max(r.floor).max(1);
                    while given.contains(&id) {
                        let Some(n) = id.checked_add(1) else {
                            return Ok(refused("no server id is left to give"));
                        };
                        id = n;
                    }
                    id
                }
                exact if given.contains(&exact) => {
                    return Ok(refused(&format!(
                        "the server id {exact} was given already: start the server without \
                         --id, and the cluster gives it one"
                    )))
                }
                exact => exact,
            };
            let Some(next) = id.checked_add(1) else {
                return Ok(refused("no server id is left to give"));
            };
            given.push(id);
            let packed: Vec<u8> = given.iter().flat_map(|g| g.to_be_bytes()).collect();
            tx.put(keys::GIVEN_SERVER_IDS, packed);
            tx.put(keys::NEXT_SERVER_ID, next.max(stored).to_be_bytes());
            Ok(CommandResult {
                server_id: id,
                ..Default::default()
            })
        }
        Op::PendingReason(p) => {
            for (id, why) in p.ids.iter().zip(p.reasons.iter()) {
                let Some(mut c) = load(tx, id)? else { continue };
                if c.state() != ContainerState::Pending || c.pending_reason == *why {
                    continue;
                }
                c.pending_reason = why.clone();
                tx.put(keys::container(&c.id), c.encode_to_vec());
            }
            Ok(CommandResult::default())
        }
        Op::Node(n) => {
            if let Some(node) = &n.node {
                let old = match tx.get(&keys::node(&node.name))? {
                    Some(v) => Some(records::Node::decode(v.as_slice())?),
                    None => None,
                };
                let was_ready = old
                    .as_ref()
                    .is_some_and(|o| o.status() == records::NodeStatus::Ready);
                if node.status() == records::NodeStatus::Ready && !was_ready {
                    events.push(event("node", "ready", &node.name, node.updated_at_ms, &[]));
                }
                let tags =
                    |n: Option<&records::Node>| -> std::collections::BTreeMap<String, String> {
                        n.map(|n| {
                            n.images
                                .iter()
                                .flat_map(|i| i.tags.iter().map(move |t| (t.clone(), i.id.clone())))
                                .collect()
                        })
                        .unwrap_or_default()
                    };
                let (before, after) = (tags(old.as_ref()), tags(Some(node)));
                for (t, id) in &after {
                    if before.get(t) != Some(id) {
                        events.push(event(
                            "image",
                            "tag",
                            t,
                            node.updated_at_ms,
                            &[("id", id.clone()), ("node", node.name.clone())],
                        ));
                    }
                }
                for (t, id) in &before {
                    if !after.contains_key(t) {
                        events.push(event(
                            "image",
                            "untag",
                            t,
                            node.updated_at_ms,
                            &[("id", id.clone()), ("node", node.name.clone())],
                        ));
                    }
                }
                // Labels and availability belong to the cluster, not to the
                // agent's report.
                let mut node = node.clone();
                if let Some(o) = &old {
                    node.labels = o.labels.clone();
                    node.availability = o.availability;
                }
                tx.put(keys::node(&node.name), node.encode_to_vec());
            }
            Ok(CommandResult::default())
        }
        Op::NodeLabels(l) => {
            let Some(v) = tx.get(&keys::node(&l.name))? else {
                return Ok(refused(&format!("No such node: {}", l.name)));
            };
            // Labels are rows of their own; those an earlier build kept in
            // the node record move to rows now.
            let mut node = records::Node::decode(v.as_slice())?;
            if !node.labels.is_empty() {
                for (k, v) in std::mem::take(&mut node.labels) {
                    tx.put(keys::node_label(&l.name, &k), label_row(v));
                }
                tx.put(keys::node(&l.name), node.encode_to_vec());
            }
            for k in &l.remove {
                tx.delete(keys::node_label(&l.name, k));
            }
            for (k, v) in &l.set {
                tx.put(keys::node_label(&l.name, k), label_row(v.clone()));
            }
            Ok(CommandResult::default())
        }
        Op::NodeStatus(s) => {
            let Some(v) = tx.get(&keys::node(&s.name))? else {
                return Ok(refused(&format!("no such node: {}", s.name)));
            };
            let mut node = records::Node::decode(v.as_slice())?;
            if node.status != s.status && s.status() == records::NodeStatus::Down {
                events.push(event("node", "down", &node.name, s.at_ms, &[]));
            }
            node.status = s.status;
            node.updated_at_ms = s.at_ms;
            tx.put(keys::node(&s.name), node.encode_to_vec());
            Ok(CommandResult::default())
        }
    }
}

/// The row of one node label.
fn label_row(value: String) -> Vec<u8> {
    records::NodeLabel {
        schema: records::SCHEMA_VERSION,
        value,
    }
    .encode_to_vec()
}

/// The most certificates of one member the state keeps (renewals).
const CERTS_KEPT: usize = 16;

/// Revokes every certificate recorded for role/name and frees the name.
fn revoke(tx: &mut Tx, role: &str, name: &str) -> Result<(), ApplyError> {
    if role == "server" {
        tx.put(keys::revoked_server(name), [1u8]);
    }
    let key = keys::member_cert(role, name);
    if let Some(v) = tx.get(&key)? {
        let rec = records::MemberCert::decode(v.as_slice())?;
        for c in &rec.certs {
            tx.put(keys::revoked(&c.serial), c.not_after_s.to_be_bytes());
        }
        tx.delete(key);
    }
    Ok(())
}

fn refused(why: &str) -> CommandResult {
    CommandResult {
        error: why.to_string(),
        ..Default::default()
    }
}

fn ok(c: Container) -> CommandResult {
    CommandResult {
        container: Some(c),
        ..Default::default()
    }
}

fn load(tx: &Tx, id: &str) -> Result<Option<Container>, ApplyError> {
    match tx.get(&keys::container(id))? {
        Some(v) => Ok(Some(Container::decode(v.as_slice())?)),
        None => Ok(None),
    }
}

fn create(tx: &mut Tx, c: &records::CreateContainer) -> Result<CommandResult, ApplyError> {
    let Some(container) = &c.container else {
        return Ok(refused("create without a container"));
    };
    if let Some(other) = tx.get(&keys::container_name(&container.name))? {
        return Ok(refused(&format!(
            "Conflict. The container name \"/{}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
            container.name,
            String::from_utf8_lossy(&other)
        )));
    }
    if load(tx, &container.id)?.is_some() {
        return Ok(refused(&format!(
            "container id {} already exists",
            container.id
        )));
    }
    tx.put(keys::container(&container.id), container.encode_to_vec());
    tx.put(
        keys::container_name(&container.name),
        container.id.as_bytes(),
    );
    Ok(ok(container.clone()))
}

fn remove(tx: &mut Tx, r: &records::RemoveContainer) -> Result<CommandResult, ApplyError> {
    let Some(c) = load(tx, &r.id)? else {
        return Ok(refused(&format!("No such container: {}", r.id)));
    };
    tx.delete(keys::container(&c.id));
    tx.delete(keys::container_name(&c.name));
    let prefix = keys::log_prefix(&c.id);
    tx.delete_range(&prefix, &keys::prefix_end(&prefix))?;
    Ok(ok(c))
}

fn place(tx: &mut Tx, p: &records::PlaceContainer) -> Result<CommandResult, ApplyError> {
    let Some(mut c) = load(tx, &p.id)? else {
        return Ok(refused(&format!("No such container: {}", p.id)));
    };
    if p.generation <= c.generation {
        return Ok(refused(&format!(
            "stale placement of {}: generation {} is not after {}",
            c.id, p.generation, c.generation
        )));
    }
    let from = c.state();
    c.node = p.node.clone();
    c.generation = p.generation;
    c.pending_reason.clear();
    if let Some(spec) = &p.spec {
        c.spec = Some(spec.clone());
        c.service_version = p.service_version;
    }
    // A placement starts the container's life on its node afresh: it is
    // Pending until that node reports.
    if from != ContainerState::Pending {
        c.set_state(ContainerState::Pending);
        c.history.push(records::Transition {
            from: from as i32,
            to: ContainerState::Pending as i32,
            at_ms: c.finished_at_ms.max(c.started_at_ms),
            exit_code: c.exit_code,
        });
        trim_history(&mut c);
    }
    tx.put(keys::container(&c.id), c.encode_to_vec());
    Ok(ok(c))
}

fn trim_history(c: &mut Container) {
    if c.history.len() > HISTORY_LIMIT {
        let excess = c.history.len() - HISTORY_LIMIT;
        c.history.drain(..excess);
    }
}

fn set_desired(tx: &mut Tx, d: &records::SetDesired) -> Result<CommandResult, ApplyError> {
    let Some(mut c) = load(tx, &d.id)? else {
        return Ok(refused(&format!("No such container: {}", d.id)));
    };
    c.desired = d.desired;
    if d.desired() == DesiredState::DesiredStopped {
        c.stop_signal = d.stop_signal;
        c.stop_timeout_s = d.stop_timeout_s;
    }
    tx.put(keys::container(&c.id), c.encode_to_vec());
    Ok(ok(c))
}

fn put_service(tx: &mut Tx, p: &records::PutService) -> Result<CommandResult, ApplyError> {
    let Some(svc) = &p.service else {
        return Ok(refused("a service write without a service"));
    };
    let key = keys::service(&svc.name);
    let old = match tx.get(&key)? {
        Some(v) => Some(records::Service::decode(v.as_slice())?),
        None => None,
    };
    match (&old, p.create) {
        (Some(_), true) => {
            return Ok(refused(&format!(
                "Conflict. The service name {} is already in use",
                svc.name
            )))
        }
        (None, false) => return Ok(refused(&format!("No such service: {}", svc.name))),
        (Some(o), false) if o.version != p.expect_version => {
            return Ok(refused(&format!(
                "update out of sequence: service {} is at version {}, not {}",
                svc.name, o.version, p.expect_version
            )))
        }
        _ => {}
    }
    tx.put(key, svc.encode_to_vec());
    Ok(CommandResult {
        service: Some(svc.clone()),
        ..Default::default()
    })
}

fn transition(tx: &mut Tx, t: &records::RecordTransition) -> Result<CommandResult, ApplyError> {
    let Some(mut c) = load(tx, &t.id)? else {
        return Ok(refused(&format!("No such container: {}", t.id)));
    };
    // Only the node that holds the container, at its current generation,
    // may report on it (invariants 3 and 5).
    if c.node != t.node || c.generation != t.generation {
        return Ok(refused(&format!(
            "stale report on {} from {} at generation {} (held by {} at {})",
            c.id, t.node, t.generation, c.node, c.generation
        )));
    }
    let from = c.state();
    let to = t.to();
    if from == to {
        return Ok(ok(c));
    }
    if !Status(from).can_move_to(to) {
        return Ok(refused(&format!(
            "container {} cannot move from {} to {}",
            c.id,
            Status(from).name(),
            Status(to).name()
        )));
    }
    c.set_state(to);
    match to {
        // Back from Dead (its node returned): the same process, still
        // running since it started.
        ContainerState::Running | ContainerState::Paused if from == ContainerState::Dead => {
            c.error.clear();
            c.finished_at_ms = 0;
        }
        ContainerState::Running if from != ContainerState::Paused => {
            c.started_at_ms = t.at_ms;
            c.error.clear();
            c.oom_killed = false;
        }
        ContainerState::Exited | ContainerState::Dead => {
            c.finished_at_ms = t.at_ms;
            c.exit_code = t.exit_code;
            c.oom_killed = t.oom_killed;
        }
        _ => {}
    }
    if !t.error.is_empty() {
        c.error = t.error.clone();
    }
    if !t.image_id.is_empty() {
        c.image_id = t.image_id.clone();
    }
    c.history.push(records::Transition {
        from: from as i32,
        to: to as i32,
        at_ms: t.at_ms,
        exit_code: t.exit_code,
    });
    trim_history(&mut c);
    tx.put(keys::container(&c.id), c.encode_to_vec());
    Ok(ok(c))
}

/// The most lines and bytes one stored log chunk holds.
pub const CHUNK_LINES: u32 = 1024;
pub const CHUNK_BYTES: u64 = 64 * 1024;
/// A batch goes on in the last chunk only while that chunk is small: an
/// append rewrites at most this much, and a trickle of one-line batches
/// still makes chunks of some size.
const MERGE_LINES: u32 = 64;
const MERGE_BYTES: u64 = 4096;

/// What a stored line counts for against a chunk's and the tail's bytes.
fn line_size(l: &records::LogLine) -> u64 {
    l.line.len() as u64 + 16
}

/// Appends a batch of a container's log lines to its replicated tail, in
/// order only (invariant 7): lines before `log_next_seq` are duplicates and
/// skipped; a batch that starts after it would leave a gap and changes
/// nothing (the agent is told where to go on from). Lines go into chunks
/// of up to [`CHUNK_LINES`] and [`CHUNK_BYTES`]; then the oldest chunks are
/// dropped while the rest still hold the tail asked to be kept.
fn append_logs(tx: &mut Tx, l: &records::AppendLogs) -> Result<CommandResult, ApplyError> {
    let Some(mut c) = load(tx, &l.id)? else {
        return Ok(refused(&format!("No such container: {}", l.id)));
    };
    if c.node != l.node || c.generation != l.generation {
        return Ok(refused(&format!(
            "stale log chunk for {} from {}",
            c.id, l.node
        )));
    }
    // A skip past lines never to be shipped: the older tail goes, and the
    // lines start over at the skip.
    if l.skip_to > c.log_next_seq.max(1) {
        for m in c.log_chunks.drain(..) {
            tx.delete(keys::log_chunk(&c.id, m.first_seq));
        }
        c.log_next_seq = l.skip_to;
    }
    let start = c.log_next_seq.max(1);
    let mut next = start;
    let mut new = l.lines.iter().filter(|x| x.seq >= start).peekable();
    if new.peek().is_none_or(|first| first.seq != next) {
        return Ok(ok(c));
    }
    // The last chunk takes lines while it has room.
    let mut open: Option<records::LogChunk> = match c.log_chunks.last() {
        Some(m) if m.lines < MERGE_LINES && m.bytes < MERGE_BYTES => tx
            .get(&keys::log_chunk(&c.id, m.first_seq))?
            .map(|v| records::LogChunk::decode(v.as_slice()))
            .transpose()?,
        _ => None,
    };
    let mut open_bytes = 0;
    if let Some(ch) = &open {
        c.log_chunks.pop();
        open_bytes = ch.lines.iter().map(line_size).sum();
    }
    let mut metas = Vec::new();
    for line in new {
        // Consecutive only: the rest of a batch with a hole waits for a
        // resend from the hole.
        if line.seq != next {
            break;
        }
        let size = line_size(line);
        let full = open.as_ref().is_some_and(|ch| {
            ch.lines.len() as u32 >= CHUNK_LINES || open_bytes + size > CHUNK_BYTES
        });
        if full {
            if let Some(ch) = open.take() {
                metas.push(store_chunk(tx, &c.id, &ch));
            }
            open_bytes = 0;
        }
        open_bytes += size;
        open.get_or_insert_with(|| records::LogChunk {
            schema: SCHEMA_VERSION,
            first_seq: line.seq,
            lines: Vec::new(),
        })
        .lines
        .push(line.clone());
        // Never reached by counting, but a forged number must not overflow.
        let Some(after) = line.seq.checked_add(1) else {
            break;
        };
        next = after;
    }
    if let Some(ch) = open.take() {
        metas.push(store_chunk(tx, &c.id, &ch));
    }
    c.log_chunks.extend(metas);
    c.log_next_seq = next;
    trim_logs(tx, &mut c, l.keep_lines, l.keep_bytes);
    tx.put(keys::container(&c.id), c.encode_to_vec());
    Ok(ok(c))
}

fn store_chunk(tx: &mut Tx, id: &str, ch: &records::LogChunk) -> records::LogChunkMeta {
    tx.put(keys::log_chunk(id, ch.first_seq), ch.encode_to_vec());
    records::LogChunkMeta {
        first_seq: ch.first_seq,
        lines: ch.lines.len() as u32,
        bytes: ch.lines.iter().map(line_size).sum(),
    }
}

/// Drops the oldest chunks while the others still hold `keep_lines` lines
/// or `keep_bytes` bytes (0 keeps everything): what is kept is at least
/// the tail asked for, and at most one chunk more.
fn trim_logs(tx: &mut Tx, c: &mut Container, keep_lines: u64, keep_bytes: u64) {
    if keep_lines == 0 && keep_bytes == 0 {
        return;
    }
    let (keep_lines, keep_bytes) = (
        if keep_lines == 0 {
            u64::MAX
        } else {
            keep_lines
        },
        if keep_bytes == 0 {
            u64::MAX
        } else {
            keep_bytes
        },
    );
    let mut lines: u64 = c.log_chunks.iter().map(|m| u64::from(m.lines)).sum();
    let mut bytes: u64 = c.log_chunks.iter().map(|m| m.bytes).sum();
    let mut drop = 0;
    for m in &c.log_chunks[..c.log_chunks.len().saturating_sub(1)] {
        let (rest_lines, rest_bytes) = (lines - u64::from(m.lines), bytes - m.bytes);
        if rest_lines < keep_lines && rest_bytes < keep_bytes {
            break;
        }
        tx.delete(keys::log_chunk(&c.id, m.first_seq));
        (lines, bytes) = (rest_lines, rest_bytes);
        drop += 1;
    }
    c.log_chunks.drain(..drop);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str, id: &str) -> records::Command {
        records::Command {
            schema: records::SCHEMA_VERSION,
            op: Some(Op::Create(records::CreateContainer {
                container: Some(Container {
                    id: id.into(),
                    name: name.into(),
                    ..Default::default()
                }),
            })),
        }
    }

    #[test]
    fn only_log_chunks_leave_the_scheduler_asleep() {
        let logs = records::Command {
            schema: records::SCHEMA_VERSION,
            op: Some(Op::Logs(records::AppendLogs::default())),
        };
        let batch = |cmds: Vec<records::Command>| records::Command {
            schema: records::SCHEMA_VERSION,
            op: Some(Op::Batch(records::Batch { commands: cmds })),
        };
        assert!(only_logs(&logs));
        assert!(only_logs(&batch(vec![logs.clone(), logs.clone()])));
        assert!(!only_logs(&batch(vec![logs.clone(), create("web", "a1")])));
        assert!(!only_logs(&create("web", "a1")));
    }

    #[test]
    fn a_batch_applies_in_order_and_each_command_sees_the_ones_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&opts, dir.path(), ["sm"]).unwrap();
        let cf = db.cf_handle("sm").unwrap();
        let batch = records::Command {
            schema: records::SCHEMA_VERSION,
            op: Some(Op::Batch(records::Batch {
                commands: vec![
                    create("web", "a1"),
                    create("web", "b2"),
                    records::Command {
                        schema: records::SCHEMA_VERSION,
                        op: Some(Op::Remove(records::RemoveContainer {
                            id: "a1".into(),
                            at_ms: 1,
                        })),
                    },
                    create("web", "c3"),
                ],
            })),
        };
        let mut tx = Tx::new(&db, cf);
        let r = apply(&mut tx, &batch, 7).unwrap();
        assert_eq!(r.batch.len(), 4);
        assert!(r.batch[0].error.is_empty());
        assert!(
            r.batch[1].error.contains("already in use"),
            "{:?}",
            r.batch[1]
        );
        assert!(r.batch[2].error.is_empty());
        assert!(r.batch[3].error.is_empty(), "{:?}", r.batch[3]);
        db.write(tx.into_batch()).unwrap();
        let name = db.get_cf(cf, keys::container_name("web")).unwrap().unwrap();
        assert_eq!(name, b"c3");
        assert!(db.get_cf(cf, keys::container("a1")).unwrap().is_none());
        assert!(db.get_cf(cf, keys::container("b2")).unwrap().is_none());
        // One entry's events are numbered across its commands.
        assert!(db.get_cf(cf, keys::event(7, 0)).unwrap().is_some());
        assert!(db.get_cf(cf, keys::event(7, 2)).unwrap().is_some());
    }

    #[test]
    fn server_ids_are_given_once_each_and_never_below_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::raft::store::open(dir.path()).unwrap();
        let cf = db.cf_handle(crate::raft::store::CF_SM).unwrap();
        let reserve = |floor: u64| records::Command {
            schema: records::SCHEMA_VERSION,
            op: Some(Op::ReserveServerId(records::ReserveServerId {
                floor,
                addr: "a".into(),
                exact: 0,
            })),
        };
        let mut given = Vec::new();
        for (i, floor) in [2, 2, 1, 9, 3].into_iter().enumerate() {
            let mut tx = Tx::new(&db, cf);
            given.push(
                apply(&mut tx, &reserve(floor), i as u64 + 1)
                    .unwrap()
                    .server_id,
            );
            db.write(tx.into_batch()).unwrap();
        }
        assert_eq!(given, vec![2, 3, 4, 9, 10]);
        // The last id there is: refused, not wrapped around.
        let mut tx = Tx::new(&db, cf);
        let r = apply(&mut tx, &reserve(u64::MAX), 9).unwrap();
        assert!(r.error.contains("no server id is left"), "{r:?}");
    }

    #[test]
    fn explicit_server_ids_may_arrive_out_of_order_but_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::raft::store::open(dir.path()).unwrap();
        let cf = db.cf_handle(crate::raft::store::CF_SM).unwrap();
        let reserve = |exact: u64| records::Command {
            schema: records::SCHEMA_VERSION,
            op: Some(Op::ReserveServerId(records::ReserveServerId {
                floor: 2,
                addr: "a".into(),
                exact,
            })),
        };
        let mut answers = Vec::new();
        // --id 3 joins before --id 2 (two servers started at once).
        for (i, exact) in [3, 2, 2, 0].into_iter().enumerate() {
            let mut tx = Tx::new(&db, cf);
            answers.push(apply(&mut tx, &reserve(exact), i as u64 + 1).unwrap());
            db.write(tx.into_batch()).unwrap();
        }
        assert_eq!(answers[0].server_id, 3);
        assert_eq!(answers[1].server_id, 2);
        assert!(
            answers[2]
                .error
                .contains("the server id 2 was given already"),
            "{:?}",
            answers[2]
        );
        assert_eq!(answers[3].server_id, 4);
    }

    #[test]
    fn labels_are_rows_and_labels_of_earlier_builds_move_to_rows() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::raft::store::open(dir.path()).unwrap();
        let cf = db.cf_handle(crate::raft::store::CF_SM).unwrap();
        // A node record as an earlier build wrote it, labels inside.
        let mut old = records::Node {
            schema: records::SCHEMA_VERSION,
            name: "n1".into(),
            ..Default::default()
        };
        old.labels.insert("zone".into(), "a".into());
        old.labels.insert("disk".into(), "hdd".into());
        db.put_cf(cf, keys::node("n1"), old.encode_to_vec())
            .unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(0);
        let reader = crate::state::StateReader::new(db.clone(), rx.clone(), rx);
        let labels = |r: &crate::state::StateReader| {
            let mut v: Vec<(String, String)> =
                r.node("n1").unwrap().unwrap().labels.into_iter().collect();
            v.sort();
            v
        };
        assert_eq!(
            labels(&reader),
            vec![("disk".into(), "hdd".into()), ("zone".into(), "a".into())]
        );
        let mut set = std::collections::HashMap::new();
        set.insert("disk".to_string(), "ssd".to_string());
        set.insert("rack".to_string(), "7".to_string());
        let cmd = records::Command {
            schema: records::SCHEMA_VERSION,
            op: Some(Op::NodeLabels(records::SetNodeLabels {
                name: "n1".into(),
                set,
                remove: vec!["zone".into()],
            })),
        };
        let mut tx = Tx::new(&db, cf);
        assert!(apply(&mut tx, &cmd, 1).unwrap().error.is_empty());
        db.write(tx.into_batch()).unwrap();
        assert_eq!(
            labels(&reader),
            vec![("disk".into(), "ssd".into()), ("rack".into(), "7".into())]
        );
        // The record no longer holds labels; each is a row.
        let rec =
            records::Node::decode(db.get_cf(cf, keys::node("n1")).unwrap().unwrap().as_slice())
                .unwrap();
        assert!(rec.labels.is_empty());
        assert!(db
            .get_cf(cf, keys::node_label("n1", "rack"))
            .unwrap()
            .is_some());
        assert!(db
            .get_cf(cf, keys::node_label("n1", "zone"))
            .unwrap()
            .is_none());
        // A label of another node whose name starts the same is not mixed in.
        db.put_cf(
            cf,
            keys::node("n10"),
            records::Node {
                name: "n10".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        )
        .unwrap();
        db.put_cf(cf, keys::node_label("n10", "x"), label_row("y".into()))
            .unwrap();
        assert_eq!(labels(&reader).len(), 2);
        // A node that does not exist is refused.
        let cmd = records::Command {
            schema: records::SCHEMA_VERSION,
            op: Some(Op::NodeLabels(records::SetNodeLabels {
                name: "ghost".into(),
                ..Default::default()
            })),
        };
        let mut tx = Tx::new(&db, cf);
        assert!(apply(&mut tx, &cmd, 2)
            .unwrap()
            .error
            .contains("No such node"));
    }

    #[test]
    fn log_lines_are_taken_in_order_into_chunks_and_the_tail_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&opts, dir.path(), ["sm"]).unwrap();
        let cf = db.cf_handle("sm").unwrap();
        let c = Container {
            id: "a1".into(),
            name: "flood".into(),
            node: "n1".into(),
            generation: 2,
            log_next_seq: 1,
            ..Default::default()
        };
        db.put_cf(cf, keys::container("a1"), c.encode_to_vec())
            .unwrap();
        let batch = |seqs: std::ops::RangeInclusive<u64>, generation| records::Command {
            schema: SCHEMA_VERSION,
            op: Some(Op::Logs(records::AppendLogs {
                id: "a1".into(),
                node: "n1".into(),
                generation,
                lines: seqs
                    .map(|seq| records::LogLine {
                        schema: SCHEMA_VERSION,
                        seq,
                        line: vec![b'x'; 100],
                        ..Default::default()
                    })
                    .collect(),
                keep_lines: 3000,
                keep_bytes: 0,
                skip_to: 0,
            })),
        };
        let append = |cmd: records::Command| {
            let mut tx = Tx::new(&db, cf);
            let r = apply(&mut tx, &cmd, 1).unwrap();
            db.write(tx.into_batch()).unwrap();
            r
        };
        let next = |r: &CommandResult| r.container.as_ref().map(|c| c.log_next_seq);
        assert_eq!(next(&append(batch(1..=500, 2))), Some(501));
        // A resend of lines held already adds nothing; one that would
        // leave a gap changes nothing; an overlap adds only what is new.
        assert_eq!(next(&append(batch(1..=500, 2))), Some(501));
        assert_eq!(next(&append(batch(600..=700, 2))), Some(501));
        assert_eq!(next(&append(batch(400..=1200, 2))), Some(1201));
        // Another copy's lines are refused.
        assert!(!append(batch(1201..=1300, 1)).error.is_empty());
        // Lines go into chunks of at most CHUNK_BYTES (116 bytes each line
        // here: 564 a chunk).
        let r = append(batch(1201..=5000, 2));
        let c = r.container.unwrap();
        assert_eq!(c.log_next_seq, 5001);
        let per_chunk = (CHUNK_BYTES / 116) as u32;
        assert!(c
            .log_chunks
            .iter()
            .all(|m| m.lines <= per_chunk && m.bytes <= CHUNK_BYTES));
        // The tail keeps at least 3000 lines, and at most one chunk more.
        let kept: u64 = c.log_chunks.iter().map(|m| u64::from(m.lines)).sum();
        assert!(
            (3000..3000 + u64::from(per_chunk)).contains(&kept),
            "{kept}"
        );
        let first = c.log_chunks[0].first_seq;
        assert_eq!(first, 5001 - kept);
        // Every kept line is there, once, in order; the trimmed chunks are gone.
        let mut seqs = Vec::new();
        for m in &c.log_chunks {
            let v = db
                .get_cf(cf, keys::log_chunk("a1", m.first_seq))
                .unwrap()
                .unwrap();
            seqs.extend(
                records::LogChunk::decode(v.as_slice())
                    .unwrap()
                    .lines
                    .iter()
                    .map(|l| l.seq),
            );
        }
        assert_eq!(seqs, (first..=5000).collect::<Vec<_>>());
        assert!(db.get_cf(cf, keys::log_chunk("a1", 1)).unwrap().is_none());
    }

    /// Apply never panics, whatever a command holds: thousands of commands
    /// of every kind with values at the ends of their ranges (sequences,
    /// generations, counts at u64::MAX, times at i64::MIN, unknown enum
    /// values, empty and repeated ids), each applied after the others to
    /// one state that holds containers, nodes and logs.
    #[test]
    fn apply_never_panics_on_absurd_values() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&opts, dir.path(), ["sm"]).unwrap();
        let cf = db.cf_handle("sm").unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let ids = ["a1", "b2", "", "c3"];
        let names = ["n1", "n2", "", "web"];
        let u = |rng: &mut rand::rngs::StdRng| {
            *[0, 1, 2, u64::MAX, u64::MAX - 1, u64::MAX / 2, rng.gen()]
                .get(rng.gen_range(0..7))
                .unwrap()
        };
        let i = |rng: &mut rand::rngs::StdRng| {
            *[0, -1, i64::MIN, i64::MAX, rng.gen()]
                .get(rng.gen_range(0..5))
                .unwrap()
        };
        for n in 0..4000u64 {
            let id = ids[rng.gen_range(0..ids.len())].to_string();
            let node = names[rng.gen_range(0..names.len())].to_string();
            let op = match rng.gen_range(0..12) {
                0 => create(&node, &id).op.unwrap(),
                1 => Op::Place(records::PlaceContainer {
                    id,
                    node,
                    generation: u(&mut rng),
                    spec: None,
                    service_version: u(&mut rng),
                }),
                2 => Op::Transition(records::RecordTransition {
                    id,
                    node,
                    generation: u(&mut rng),
                    to: rng.gen_range(-2..9),
                    exit_code: rng.gen(),
                    at_ms: i(&mut rng),
                    ..Default::default()
                }),
                3 => Op::Logs(records::AppendLogs {
                    id,
                    node,
                    generation: u(&mut rng),
                    lines: (0..rng.gen_range(0..5))
                        .map(|_| records::LogLine {
                            seq: u(&mut rng),
                            stream: rng.gen_range(-1..3),
                            time_ns: i(&mut rng),
                            line: vec![b'x'; rng.gen_range(0..3000)],
                            ..Default::default()
                        })
                        .collect(),
                    keep_lines: u(&mut rng),
                    keep_bytes: u(&mut rng),
                    skip_to: u(&mut rng),
                }),
                4 => Op::Desired(records::SetDesired {
                    id,
                    desired: rng.gen_range(-1..5),
                    stop_signal: rng.gen(),
                    stop_timeout_s: rng.gen(),
                }),
                5 => Op::Node(records::UpsertNode {
                    node: Some(records::Node {
                        name: node,
                        status: rng.gen_range(-1..4),
                        cpus: u(&mut rng),
                        memory_bytes: u(&mut rng),
                        updated_at_ms: i(&mut rng),
                        ..Default::default()
                    }),
                }),
                6 => Op::NodeStatus(records::SetNodeStatus {
                    name: node,
                    status: rng.gen_range(-1..4),
                    at_ms: i(&mut rng),
                }),
                7 => Op::ReserveServerId(records::ReserveServerId {
                    floor: u(&mut rng),
                    addr: String::new(),
                    exact: u(&mut rng),
                }),
                8 => Op::PendingReason(records::SetPendingReason {
                    ids: vec![id.clone(), id],
                    reasons: vec!["r".into()],
                }),
                9 => Op::Remove(records::RemoveContainer {
                    id,
                    at_ms: i(&mut rng),
                }),
                10 => Op::NodeLabels(records::SetNodeLabels {
                    name: node,
                    set: [("k".to_string(), "v".to_string())].into(),
                    remove: vec!["k".into(), String::new()],
                }),
                _ => Op::Batch(records::Batch {
                    commands: vec![
                        create(&node, &id),
                        records::Command {
                            schema: 0,
                            op: None,
                        },
                        records::Command {
                            schema: 0,
                            op: Some(Op::Batch(records::Batch::default())),
                        },
                    ],
                }),
            };
            let cmd = records::Command {
                schema: records::SCHEMA_VERSION,
                op: Some(op),
            };
            let mut tx = Tx::new(&db, cf);
            // Any index, the largest included.
            let index = if n % 97 == 0 { u64::MAX - n } else { n + 1 };
            apply(&mut tx, &cmd, index).unwrap();
            db.write(tx.into_batch()).unwrap();
        }
    }
}
