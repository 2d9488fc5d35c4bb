//! Applying a committed command to the state-machine rows. This runs on
//! every member in log order and must be deterministic: it reads only the
//! rows and the command, never the clock or the network.

use berth_proto::records::{self, command::Op, CommandResult, Container, ContainerState};
use prost::Message;
use rocksdb::{ColumnFamily, WriteBatch, DB};

use super::keys;
use super::status::Status;

/// The most transitions a container record keeps.
const HISTORY_LIMIT: usize = 64;

/// Errors that stop a command from being applied at all (as opposed to a
/// command that is refused, which is a result).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt row: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Applies one command, writing its changes into `batch`.
pub fn apply(
    db: &DB,
    sm: &ColumnFamily,
    cmd: &records::Command,
    batch: &mut WriteBatch,
) -> Result<CommandResult, ApplyError> {
    let Some(op) = &cmd.op else {
        return Ok(refused("empty command"));
    };
    match op {
        Op::Create(c) => create(db, sm, c, batch),
        Op::Remove(r) => remove(db, sm, r, batch),
        Op::Place(p) => place(db, sm, p, batch),
        Op::Transition(t) => transition(db, sm, t, batch),
        Op::Logs(l) => append_logs(db, sm, l, batch),
        Op::Node(n) => {
            if let Some(node) = &n.node {
                batch.put_cf(sm, keys::node(&node.name), node.encode_to_vec());
            }
            Ok(CommandResult::default())
        }
        Op::NodeStatus(s) => {
            let Some(v) = db.get_cf(sm, keys::node(&s.name))? else {
                return Ok(refused(&format!("no such node: {}", s.name)));
            };
            let mut node = records::Node::decode(v.as_slice())?;
            node.status = s.status;
            node.updated_at_ms = s.at_ms;
            batch.put_cf(sm, keys::node(&s.name), node.encode_to_vec());
            Ok(CommandResult::default())
        }
    }
}

fn refused(why: &str) -> CommandResult {
    CommandResult {
        error: why.to_string(),
        container: None,
    }
}

fn ok(c: Container) -> CommandResult {
    CommandResult {
        error: String::new(),
        container: Some(c),
    }
}

fn load(db: &DB, sm: &ColumnFamily, id: &str) -> Result<Option<Container>, ApplyError> {
    match db.get_cf(sm, keys::container(id))? {
        Some(v) => Ok(Some(Container::decode(v.as_slice())?)),
        None => Ok(None),
    }
}

fn create(
    db: &DB,
    sm: &ColumnFamily,
    c: &records::CreateContainer,
    batch: &mut WriteBatch,
) -> Result<CommandResult, ApplyError> {
    let Some(container) = &c.container else {
        return Ok(refused("create without a container"));
    };
    if let Some(other) = db.get_cf(sm, keys::container_name(&container.name))? {
        return Ok(refused(&format!(
            "Conflict. The container name \"/{}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
            container.name,
            String::from_utf8_lossy(&other)
        )));
    }
    if load(db, sm, &container.id)?.is_some() {
        return Ok(refused(&format!(
            "container id {} already exists",
            container.id
        )));
    }
    batch.put_cf(
        sm,
        keys::container(&container.id),
        container.encode_to_vec(),
    );
    batch.put_cf(
        sm,
        keys::container_name(&container.name),
        container.id.as_bytes(),
    );
    Ok(ok(container.clone()))
}

fn remove(
    db: &DB,
    sm: &ColumnFamily,
    r: &records::RemoveContainer,
    batch: &mut WriteBatch,
) -> Result<CommandResult, ApplyError> {
    let Some(c) = load(db, sm, &r.id)? else {
        return Ok(refused(&format!("No such container: {}", r.id)));
    };
    batch.delete_cf(sm, keys::container(&c.id));
    batch.delete_cf(sm, keys::container_name(&c.name));
    let prefix = keys::log_prefix(&c.id);
    batch.delete_range_cf(sm, &prefix, &keys::prefix_end(&prefix));
    Ok(ok(c))
}

fn place(
    db: &DB,
    sm: &ColumnFamily,
    p: &records::PlaceContainer,
    batch: &mut WriteBatch,
) -> Result<CommandResult, ApplyError> {
    let Some(mut c) = load(db, sm, &p.id)? else {
        return Ok(refused(&format!("No such container: {}", p.id)));
    };
    if p.generation <= c.generation {
        return Ok(refused(&format!(
            "stale placement of {}: generation {} is not after {}",
            c.id, p.generation, c.generation
        )));
    }
    c.node = p.node.clone();
    c.generation = p.generation;
    batch.put_cf(sm, keys::container(&c.id), c.encode_to_vec());
    Ok(ok(c))
}

fn transition(
    db: &DB,
    sm: &ColumnFamily,
    t: &records::RecordTransition,
    batch: &mut WriteBatch,
) -> Result<CommandResult, ApplyError> {
    let Some(mut c) = load(db, sm, &t.id)? else {
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
    if c.history.len() > HISTORY_LIMIT {
        let excess = c.history.len() - HISTORY_LIMIT;
        c.history.drain(..excess);
    }
    batch.put_cf(sm, keys::container(&c.id), c.encode_to_vec());
    Ok(ok(c))
}

fn append_logs(
    db: &DB,
    sm: &ColumnFamily,
    l: &records::AppendLogs,
    batch: &mut WriteBatch,
) -> Result<CommandResult, ApplyError> {
    let Some(mut c) = load(db, sm, &l.id)? else {
        return Ok(refused(&format!("No such container: {}", l.id)));
    };
    if c.node != l.node || c.generation != l.generation {
        return Ok(refused(&format!(
            "stale log chunk for {} from {}",
            c.id, l.node
        )));
    }
    // Lines carry their sequence numbers; a line already stored is skipped,
    // so a resent chunk adds no duplicate, and a line that arrives after
    // later ones (a resend after a reconnect) fills its gap (invariant 7).
    for line in &l.lines {
        let key = keys::log_line(&c.id, line.seq);
        if line.seq == 0 || db.get_cf(sm, &key)?.is_some() {
            continue;
        }
        batch.put_cf(sm, key, line.encode_to_vec());
        c.log_next_seq = c.log_next_seq.max(line.seq + 1);
    }
    batch.put_cf(sm, keys::container(&c.id), c.encode_to_vec());
    Ok(ok(c))
}
