//! Checks a command before it is proposed. Every command is built by this
//! server from a wire message (a client's request, an agent's report, a
//! joiner's enrollment); a value no honest sender gives (an id that is no
//! id, a sequence number at the end of its range, a state no enum has, a
//! list of a million labels) is refused here, naming the field, before it
//! reaches the log. Apply then sees only commands that passed; it still
//! never panics on one that did not (a log written by another build).

use berth_proto::records::{
    self, command::Op, Availability, ContainerState, DesiredState, LogStream, NodeStatus,
};

/// A command refused before it was proposed, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {op}: {field} {why}")]
pub struct Invalid {
    /// The command's kind, as the log names it.
    pub op: &'static str,
    /// The field that holds the absurd value.
    pub field: &'static str,
    pub why: String,
}

/// The longest free text a command carries (an error, a pending reason).
pub const MAX_TEXT: usize = 64 * 1024;
/// The most labels a node may carry, and the most lines of one log write.
pub const MAX_LABELS: usize = 1000;
pub const MAX_LOG_LINES: usize = 100_000;
/// The longest log line the cluster stores (agents cut lines at 16 KiB).
pub const MAX_LOG_LINE: usize = 64 * 1024;
/// The most images one node may report, and tags one image may have.
pub const MAX_IMAGES: usize = 10_000;
pub const MAX_TAGS: usize = 1000;
/// The most replicas a service may ask for.
pub const MAX_REPLICAS: u64 = 100_000;
/// The most containers one pending-reason write names.
pub const MAX_PENDING: usize = 100_000;
/// The latest time a command may carry: the end of the year 9999, in ms.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;
/// The largest PEM text (a CA certificate or key).
pub const MAX_PEM: usize = 64 * 1024;

/// Checks one command (a batch, each of its commands).
pub fn check(op: &Op) -> Result<(), Invalid> {
    let c = Checker { op: name(op) };
    match op {
        Op::Batch(b) => {
            if b.commands.len() > 1024 {
                return Err(c.bad("commands", format!("has {} commands", b.commands.len())));
            }
            for cmd in &b.commands {
                match &cmd.op {
                    None => return Err(c.bad("commands", "holds an empty command".into())),
                    Some(Op::Batch(_)) => {
                        return Err(c.bad("commands", "holds a batch inside a batch".into()))
                    }
                    Some(inner) => check(inner)?,
                }
            }
            Ok(())
        }
        Op::Create(cr) => {
            let Some(ct) = &cr.container else {
                return Err(c.bad("container", "is missing".into()));
            };
            c.id("container.id", &ct.id)?;
            c.container_name("container.name", &ct.name)?;
            c.enum_value::<ContainerState>("container.state", ct.state)?;
            c.enum_value::<DesiredState>("container.desired", ct.desired)?;
            c.below_max("container.generation", ct.generation)?;
            c.below_max("container.log_next_seq", ct.log_next_seq)?;
            c.time("container.created_at_ms", ct.created_at_ms)?;
            c.text("container.error", &ct.error)?;
            let Some(spec) = &ct.spec else {
                return Err(c.bad("container.spec", "is missing".into()));
            };
            c.spec("container.spec", spec)?;
            if !ct.service.is_empty() {
                c.container_name("container.service", &ct.service)?;
            }
            Ok(())
        }
        Op::Remove(r) => {
            c.id("id", &r.id)?;
            c.time("at_ms", r.at_ms)
        }
        Op::Place(p) => {
            c.id("id", &p.id)?;
            // No node: back to Pending, to be placed again.
            if !p.node.is_empty() {
                c.node_name("node", &p.node)?;
            }
            c.generation("generation", p.generation)?;
            c.below_max("service_version", p.service_version)?;
            if let Some(spec) = &p.spec {
                c.spec("spec", spec)?;
            }
            Ok(())
        }
        Op::Transition(t) => {
            c.id("id", &t.id)?;
            c.node_name("node", &t.node)?;
            c.generation("generation", t.generation)?;
            c.enum_value::<ContainerState>("to", t.to)?;
            if !(-1..=255).contains(&t.exit_code) {
                return Err(c.bad(
                    "exit_code",
                    format!("{} is not an exit status (-1 to 255)", t.exit_code),
                ));
            }
            c.time("at_ms", t.at_ms)?;
            c.text("error", &t.error)?;
            if !t.image_id.is_empty() {
                c.digest("image_id", &t.image_id)?;
            }
            Ok(())
        }
        Op::Logs(l) => {
            c.id("id", &l.id)?;
            c.node_name("node", &l.node)?;
            c.generation("generation", l.generation)?;
            c.below_max("skip_to", l.skip_to)?;
            if l.lines.len() > MAX_LOG_LINES {
                return Err(c.bad("lines", format!("has {} lines", l.lines.len())));
            }
            let mut prev: Option<u64> = None;
            for line in &l.lines {
                if line.seq == 0 {
                    return Err(c.bad("lines.seq", "is 0; sequences start at 1".into()));
                }
                c.below_max("lines.seq", line.seq)?;
                if prev.is_some_and(|p| line.seq <= p) {
                    return Err(c.bad(
                        "lines.seq",
                        format!("{} does not follow {}", line.seq, prev.unwrap_or(0)),
                    ));
                }
                prev = Some(line.seq);
                c.enum_value::<LogStream>("lines.stream", line.stream)?;
                if line.time_ns < 0 {
                    return Err(c.bad("lines.time_ns", format!("{} is negative", line.time_ns)));
                }
                if line.line.len() > MAX_LOG_LINE {
                    return Err(c.bad(
                        "lines.line",
                        format!("is {} bytes, more than {MAX_LOG_LINE}", line.line.len()),
                    ));
                }
            }
            Ok(())
        }
        Op::Node(n) => {
            let Some(node) = &n.node else {
                return Err(c.bad("node", "is missing".into()));
            };
            c.node_name("node.name", &node.name)?;
            c.enum_value::<NodeStatus>("node.status", node.status)?;
            c.enum_value::<Availability>("node.availability", node.availability)?;
            c.short("node.kernel", &node.kernel, 256)?;
            c.short("node.cgroup_version", &node.cgroup_version, 16)?;
            if node.cpus > 1 << 20 {
                return Err(c.bad("node.cpus", format!("{} CPUs is absurd", node.cpus)));
            }
            if node.memory_bytes > 1 << 60 {
                return Err(c.bad(
                    "node.memory_bytes",
                    format!("{} bytes is absurd", node.memory_bytes),
                ));
            }
            c.time("node.updated_at_ms", node.updated_at_ms)?;
            if node.images.len() > MAX_IMAGES {
                return Err(c.bad("node.images", format!("has {} images", node.images.len())));
            }
            for i in &node.images {
                c.digest("node.images.id", &i.id)?;
                if i.tags.len() > MAX_TAGS {
                    return Err(c.bad("node.images.tags", format!("has {} tags", i.tags.len())));
                }
                for t in &i.tags {
                    c.short("node.images.tags", t, 512)?;
                }
            }
            c.labels("node.labels", node.labels.iter())?;
            c.labels("node.agent_labels", node.agent_labels.iter())
        }
        Op::NodeStatus(s) => {
            c.node_name("name", &s.name)?;
            c.enum_value::<NodeStatus>("status", s.status)?;
            c.time("at_ms", s.at_ms)
        }
        Op::NodeLabels(l) => {
            c.node_name("name", &l.name)?;
            c.labels("set", l.set.iter())?;
            if l.remove.len() > MAX_LABELS {
                return Err(c.bad("remove", format!("names {} labels", l.remove.len())));
            }
            for k in &l.remove {
                c.label_key("remove", k)?;
            }
            Ok(())
        }
        Op::Desired(d) => {
            c.id("id", &d.id)?;
            c.enum_value::<DesiredState>("desired", d.desired)?;
            if !(0..=64).contains(&d.stop_signal) {
                return Err(c.bad("stop_signal", format!("{} is no signal", d.stop_signal)));
            }
            Ok(())
        }
        Op::Service(p) => {
            let Some(svc) = &p.service else {
                return Err(c.bad("service", "is missing".into()));
            };
            c.id("service.id", &svc.id)?;
            c.container_name("service.name", &svc.name)?;
            if svc.replicas > MAX_REPLICAS {
                return Err(c.bad(
                    "service.replicas",
                    format!("{} is more than {MAX_REPLICAS}", svc.replicas),
                ));
            }
            c.below_max("service.version", svc.version)?;
            c.time("service.created_at_ms", svc.created_at_ms)?;
            c.time("service.updated_at_ms", svc.updated_at_ms)?;
            let Some(spec) = &svc.spec else {
                return Err(c.bad("service.spec", "is missing".into()));
            };
            c.spec("service.spec", spec)?;
            c.text("service.update_message", &svc.update_message)
        }
        Op::RemoveService(r) => c.container_name("name", &r.name),
        Op::NodeAvailability(a) => {
            c.node_name("name", &a.name)?;
            c.enum_value::<Availability>("availability", a.availability)
        }
        Op::RemoveNode(r) => c.node_name("name", &r.name),
        Op::PendingReason(p) => {
            if p.ids.len() != p.reasons.len() {
                return Err(c.bad(
                    "reasons",
                    format!("gives {} reasons for {} ids", p.reasons.len(), p.ids.len()),
                ));
            }
            if p.ids.len() > MAX_PENDING {
                return Err(c.bad("ids", format!("names {} containers", p.ids.len())));
            }
            for (id, why) in p.ids.iter().zip(&p.reasons) {
                c.id("ids", id)?;
                c.text("reasons", why)?;
            }
            Ok(())
        }
        Op::ReserveServerId(r) => {
            c.below_max("floor", r.floor)?;
            c.below_max("exact", r.exact)?;
            c.short("addr", &r.addr, 512)
        }
        Op::InitPki(p) => {
            let Some(pki) = &p.pki else {
                return Err(c.bad("pki", "is missing".into()));
            };
            c.pem("pki.ca_cert_pem", &pki.ca_cert_pem)?;
            c.pem("pki.ca_key_pem", &pki.ca_key_pem)?;
            c.secret("pki.agent_token_secret", &pki.agent_token_secret)?;
            c.secret("pki.server_token_secret", &pki.server_token_secret)
        }
        Op::RecordCert(r) => {
            c.role("role", &r.role)?;
            c.node_name("name", &r.name)?;
            c.hex("key_digest", &r.key_digest, 64, 64)?;
            let Some(cert) = &r.cert else {
                return Err(c.bad("cert", "is missing".into()));
            };
            c.hex("cert.serial", &cert.serial, 1, 64)?;
            if cert.not_after_s < 0 || cert.not_after_s > MAX_TIME_MS / 1000 {
                return Err(c.bad(
                    "cert.not_after_s",
                    format!("{} is no time", cert.not_after_s),
                ));
            }
            if !cert.ca_digest.is_empty() {
                c.hex("cert.ca_digest", &cert.ca_digest, 64, 64)?;
            }
            if !r.renewing_serial.is_empty() {
                c.hex("renewing_serial", &r.renewing_serial, 1, 64)?;
            }
            Ok(())
        }
        Op::RevokeCert(r) => {
            c.role("role", &r.role)?;
            c.node_name("name", &r.name)
        }
        Op::RotateToken(r) => {
            c.role("role", &r.role)?;
            c.secret("secret", &r.secret)
        }
        Op::RotateCa(r) => {
            c.pem("ca_cert_pem", &r.ca_cert_pem)?;
            c.pem("ca_key_pem", &r.ca_key_pem)?;
            c.secret("agent_token_secret", &r.agent_token_secret)?;
            c.secret("server_token_secret", &r.server_token_secret)
        }
        Op::FinishCaRotation(r) => c.pem("ca_cert_pem", &r.ca_cert_pem),
        Op::CaNodesMoved(r) => c.pem("ca_cert_pem", &r.ca_cert_pem),
    }
}

/// The name of a command's kind, for messages.
pub fn name(op: &Op) -> &'static str {
    match op {
        Op::Create(_) => "CreateContainer",
        Op::Remove(_) => "RemoveContainer",
        Op::Place(_) => "PlaceContainer",
        Op::Transition(_) => "RecordTransition",
        Op::Logs(_) => "AppendLogs",
        Op::Node(_) => "UpsertNode",
        Op::NodeStatus(_) => "SetNodeStatus",
        Op::NodeLabels(_) => "SetNodeLabels",
        Op::Batch(_) => "Batch",
        Op::Desired(_) => "SetDesired",
        Op::Service(_) => "PutService",
        Op::RemoveService(_) => "RemoveService",
        Op::NodeAvailability(_) => "SetNodeAvailability",
        Op::RemoveNode(_) => "RemoveNode",
        Op::PendingReason(_) => "SetPendingReason",
        Op::ReserveServerId(_) => "ReserveServerId",
        Op::InitPki(_) => "InitPki",
        Op::RecordCert(_) => "RecordCert",
        Op::RevokeCert(_) => "RevokeCert",
        Op::RotateToken(_) => "RotateToken",
        Op::RotateCa(_) => "RotateCa",
        Op::FinishCaRotation(_) => "FinishCaRotation",
        Op::CaNodesMoved(_) => "CaNodesMoved",
    }
}

struct Checker {
    op: &'static str,
}

impl Checker {
    fn bad(&self, field: &'static str, why: String) -> Invalid {
        Invalid {
            op: self.op,
            field,
            why,
        }
    }

    fn short(&self, field: &'static str, s: &str, max: usize) -> Result<(), Invalid> {
        if s.len() > max {
            return Err(self.bad(field, format!("is {} bytes, more than {max}", s.len())));
        }
        if s.contains('\0') {
            return Err(self.bad(field, "holds a NUL byte".into()));
        }
        Ok(())
    }

    fn text(&self, field: &'static str, s: &str) -> Result<(), Invalid> {
        self.short(field, s, MAX_TEXT)
    }

    fn hex(&self, field: &'static str, s: &str, min: usize, max: usize) -> Result<(), Invalid> {
        if s.len() < min || s.len() > max || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.bad(
                field,
                format!("{:?} is not {min} to {max} hex digits", clip(s)),
            ));
        }
        Ok(())
    }

    /// A container or service id: hex, as the cluster makes them.
    fn id(&self, field: &'static str, s: &str) -> Result<(), Invalid> {
        self.hex(field, s, 1, 64)
    }

    fn digest(&self, field: &'static str, s: &str) -> Result<(), Invalid> {
        match s.strip_prefix("sha256:") {
            Some(hex) => self.hex(field, hex, 64, 64),
            None => Err(self.bad(field, format!("{:?} is not a sha256 digest", clip(s)))),
        }
    }

    /// A container or service name, by Docker's rule.
    fn container_name(&self, field: &'static str, s: &str) -> Result<(), Invalid> {
        let mut chars = s.chars();
        let ok = s.len() <= 255
            && matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(self.bad(field, format!("{:?} is not a valid name", clip(s))));
        }
        Ok(())
    }

    /// A node or server name, as certificates name them.
    fn node_name(&self, field: &'static str, s: &str) -> Result<(), Invalid> {
        crate::pki::check_name(s)
            .map_err(|_| self.bad(field, format!("{:?} is not a valid node name", clip(s))))
    }

    fn role(&self, field: &'static str, s: &str) -> Result<(), Invalid> {
        if !matches!(s, "agent" | "server") {
            return Err(self.bad(field, format!("{:?} is neither agent nor server", clip(s))));
        }
        Ok(())
    }

    fn enum_value<E: TryFrom<i32>>(&self, field: &'static str, v: i32) -> Result<(), Invalid> {
        if E::try_from(v).is_err() {
            return Err(self.bad(field, format!("{v} is not one of its values")));
        }
        Ok(())
    }

    /// A counter the cluster adds one to: never at the end of its range.
    fn below_max(&self, field: &'static str, v: u64) -> Result<(), Invalid> {
        if v >= u64::MAX / 2 {
            return Err(self.bad(field, format!("{v} is beyond any count")));
        }
        Ok(())
    }

    fn generation(&self, field: &'static str, v: u64) -> Result<(), Invalid> {
        if v == 0 {
            return Err(self.bad(field, "is 0; placements count from 1".into()));
        }
        self.below_max(field, v)
    }

    fn time(&self, field: &'static str, ms: i64) -> Result<(), Invalid> {
        if !(0..=MAX_TIME_MS).contains(&ms) {
            return Err(self.bad(field, format!("{ms} ms is no time")));
        }
        Ok(())
    }

    fn pem(&self, field: &'static str, s: &str) -> Result<(), Invalid> {
        if s.is_empty() {
            return Err(self.bad(field, "is empty".into()));
        }
        self.short(field, s, MAX_PEM)
    }

    fn secret(&self, field: &'static str, s: &str) -> Result<(), Invalid> {
        if s.is_empty() {
            return Err(self.bad(field, "is empty".into()));
        }
        self.short(field, s, 1024)
    }

    fn label_key(&self, field: &'static str, k: &str) -> Result<(), Invalid> {
        if k.is_empty() {
            return Err(self.bad(field, "has an empty key".into()));
        }
        self.short(field, k, 255)
    }

    fn labels<'a>(
        &self,
        field: &'static str,
        labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
    ) -> Result<(), Invalid> {
        if labels.len() > MAX_LABELS {
            return Err(self.bad(field, format!("has {} labels", labels.len())));
        }
        for (k, v) in labels {
            self.label_key(field, k)?;
            self.text(field, v)?;
        }
        Ok(())
    }

    /// A container's spec, as far as the state machine relies on it (the
    /// API checked the rest when it took the request).
    fn spec(&self, field: &'static str, s: &records::ContainerSpec) -> Result<(), Invalid> {
        if s.image.is_empty() {
            return Err(self.bad(field, "names no image".into()));
        }
        self.labels(field, s.labels.iter())?;
        self.short(field, &s.image, 1024)
    }
}

/// A value shown in a message, cut short.
fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use records::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn spec() -> ContainerSpec {
        ContainerSpec {
            image: "busybox:latest".into(),
            ..Default::default()
        }
    }

    fn container() -> Container {
        Container {
            id: ID.into(),
            name: "web".into(),
            spec: Some(spec()),
            state: ContainerState::Pending as i32,
            desired: DesiredState::DesiredRunning as i32,
            created_at_ms: 1_764_000_000_000,
            ..Default::default()
        }
    }

    fn line(seq: u64) -> LogLine {
        LogLine {
            seq,
            line: b"hello".to_vec(),
            time_ns: 1,
            ..Default::default()
        }
    }

    fn service() -> Service {
        Service {
            id: ID.into(),
            name: "web".into(),
            spec: Some(spec()),
            replicas: 6,
            version: 1,
            ..Default::default()
        }
    }

    fn node() -> Node {
        Node {
            name: "n1".into(),
            status: NodeStatus::Ready as i32,
            cpus: 2,
            memory_bytes: 1 << 34,
            images: vec![Image {
                id: DIGEST.into(),
                tags: vec!["busybox:latest".into()],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn pki() -> Pki {
        Pki {
            ca_cert_pem: PEM.into(),
            ca_key_pem: PEM.into(),
            agent_token_secret: "s".into(),
            server_token_secret: "s".into(),
            ..Default::default()
        }
    }

    fn cert() -> RecordCert {
        RecordCert {
            role: "agent".into(),
            name: "n1".into(),
            key_digest: ID.into(),
            cert: Some(IssuedCert {
                serial: "1f".into(),
                not_after_s: 1_800_000_000,
                ca_digest: ID.into(),
            }),
            renewing_serial: String::new(),
        }
    }

    fn logs(lines: Vec<LogLine>) -> Op {
        Op::Logs(AppendLogs {
            id: ID.into(),
            node: "n1".into(),
            generation: 1,
            lines,
            ..Default::default()
        })
    }

    fn transition(f: impl FnOnce(&mut RecordTransition)) -> Op {
        let mut t = RecordTransition {
            id: ID.into(),
            node: "n1".into(),
            generation: 1,
            to: ContainerState::Running as i32,
            at_ms: 1,
            image_id: DIGEST.into(),
            ..Default::default()
        };
        f(&mut t);
        Op::Transition(t)
    }

    /// For each kind of command: one as the server makes it, which
    /// passes, and the same with one forged or absurd value, refused
    /// naming its field.
    #[test]
    fn each_kind_of_command_refuses_a_forged_value_by_field() {
        let cases: Vec<(Op, Op, &str)> = vec![
            (
                Op::Create(CreateContainer {
                    container: Some(container()),
                }),
                Op::Create(CreateContainer {
                    container: Some(Container {
                        log_next_seq: u64::MAX,
                        ..container()
                    }),
                }),
                "container.log_next_seq",
            ),
            (
                Op::Remove(RemoveContainer {
                    id: ID.into(),
                    at_ms: 5,
                }),
                Op::Remove(RemoveContainer {
                    id: "../../etc".into(),
                    at_ms: 5,
                }),
                "id",
            ),
            (
                Op::Place(PlaceContainer {
                    id: ID.into(),
                    node: "n1".into(),
                    generation: 2,
                    ..Default::default()
                }),
                Op::Place(PlaceContainer {
                    id: ID.into(),
                    node: "n1".into(),
                    generation: u64::MAX,
                    ..Default::default()
                }),
                "generation",
            ),
            (
                transition(|_| {}),
                transition(|t| t.exit_code = i32::MIN),
                "exit_code",
            ),
            (
                logs(vec![line(1), line(2)]),
                logs(vec![line(u64::MAX)]),
                "lines.seq",
            ),
            (
                Op::Node(UpsertNode { node: Some(node()) }),
                Op::Node(UpsertNode {
                    node: Some(Node {
                        images: vec![Image::default(); MAX_IMAGES + 1],
                        ..node()
                    }),
                }),
                "node.images",
            ),
            (
                Op::NodeStatus(SetNodeStatus {
                    name: "n1".into(),
                    status: NodeStatus::Down as i32,
                    at_ms: 1,
                }),
                Op::NodeStatus(SetNodeStatus {
                    name: "n1".into(),
                    status: 77,
                    at_ms: 1,
                }),
                "status",
            ),
            (
                Op::NodeLabels(SetNodeLabels {
                    name: "n1".into(),
                    set: [("zone".to_string(), "a".to_string())].into(),
                    remove: vec![],
                }),
                Op::NodeLabels(SetNodeLabels {
                    name: "n1".into(),
                    set: (0..=MAX_LABELS)
                        .map(|i| (format!("k{i}"), String::new()))
                        .collect(),
                    remove: vec![],
                }),
                "set",
            ),
            (
                Op::Batch(Batch {
                    commands: vec![Command {
                        schema: SCHEMA_VERSION,
                        op: Some(transition(|_| {})),
                    }],
                }),
                Op::Batch(Batch {
                    commands: vec![Command {
                        schema: SCHEMA_VERSION,
                        op: Some(Op::Batch(Batch::default())),
                    }],
                }),
                "commands",
            ),
            (
                Op::Desired(SetDesired {
                    id: ID.into(),
                    desired: DesiredState::DesiredStopped as i32,
                    stop_signal: 15,
                    stop_timeout_s: 10,
                }),
                Op::Desired(SetDesired {
                    id: ID.into(),
                    desired: -3,
                    stop_signal: 15,
                    stop_timeout_s: 10,
                }),
                "desired",
            ),
            (
                Op::Service(PutService {
                    service: Some(service()),
                    expect_version: 0,
                    create: true,
                }),
                Op::Service(PutService {
                    service: Some(Service {
                        replicas: u64::MAX,
                        ..service()
                    }),
                    expect_version: 0,
                    create: true,
                }),
                "service.replicas",
            ),
            (
                Op::RemoveService(RemoveService { name: "web".into() }),
                Op::RemoveService(RemoveService {
                    name: "web\0evil".into(),
                }),
                "name",
            ),
            (
                Op::NodeAvailability(SetNodeAvailability {
                    name: "n1".into(),
                    availability: Availability::Drain as i32,
                }),
                Op::NodeAvailability(SetNodeAvailability {
                    name: "n1".into(),
                    availability: 9,
                }),
                "availability",
            ),
            (
                Op::RemoveNode(RemoveNode { name: "n1".into() }),
                Op::RemoveNode(RemoveNode {
                    name: "n".repeat(64),
                }),
                "name",
            ),
            (
                Op::PendingReason(SetPendingReason {
                    ids: vec![ID.into()],
                    reasons: vec!["no node has the image".into()],
                }),
                Op::PendingReason(SetPendingReason {
                    ids: vec![ID.into(), ID.into()],
                    reasons: vec!["one reason for two".into()],
                }),
                "reasons",
            ),
            (
                Op::ReserveServerId(ReserveServerId {
                    floor: 2,
                    addr: "127.0.0.1:7502".into(),
                    exact: 0,
                }),
                Op::ReserveServerId(ReserveServerId {
                    floor: 2,
                    addr: "127.0.0.1:7502".into(),
                    exact: u64::MAX,
                }),
                "exact",
            ),
            (
                Op::InitPki(InitPki { pki: Some(pki()) }),
                Op::InitPki(InitPki {
                    pki: Some(Pki {
                        agent_token_secret: String::new(),
                        ..pki()
                    }),
                }),
                "pki.agent_token_secret",
            ),
            (
                Op::RecordCert(cert()),
                Op::RecordCert(RecordCert {
                    key_digest: "not hex".into(),
                    ..cert()
                }),
                "key_digest",
            ),
            (
                Op::RevokeCert(RevokeCert {
                    role: "agent".into(),
                    name: "n1".into(),
                }),
                Op::RevokeCert(RevokeCert {
                    role: "root".into(),
                    name: "n1".into(),
                }),
                "role",
            ),
            (
                Op::RotateToken(RotateToken {
                    role: "server".into(),
                    secret: "s".into(),
                }),
                Op::RotateToken(RotateToken {
                    role: "server".into(),
                    secret: "x".repeat(1 << 20),
                }),
                "secret",
            ),
            (
                Op::RotateCa(RotateCa {
                    ca_cert_pem: PEM.into(),
                    ca_key_pem: PEM.into(),
                    agent_token_secret: "s".into(),
                    server_token_secret: "s".into(),
                }),
                Op::RotateCa(RotateCa {
                    ca_cert_pem: PEM.into(),
                    ca_key_pem: "k".repeat(MAX_PEM + 1),
                    agent_token_secret: "s".into(),
                    server_token_secret: "s".into(),
                }),
                "ca_key_pem",
            ),
            (
                Op::FinishCaRotation(FinishCaRotation {
                    ca_cert_pem: PEM.into(),
                }),
                Op::FinishCaRotation(FinishCaRotation {
                    ca_cert_pem: String::new(),
                }),
                "ca_cert_pem",
            ),
            (
                Op::CaNodesMoved(CaNodesMoved {
                    ca_cert_pem: PEM.into(),
                }),
                Op::CaNodesMoved(CaNodesMoved {
                    ca_cert_pem: "\0".into(),
                }),
                "ca_cert_pem",
            ),
        ];
        let mut kinds: Vec<&str> = cases.iter().map(|(ok, _, _)| name(ok)).collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), 23, "one case per kind of command: {kinds:?}");
        for (ok, forged, field) in cases {
            let kind = name(&ok);
            assert_eq!(check(&ok), Ok(()), "{kind} as the server makes it");
            let err = check(&forged).expect_err(kind);
            assert_eq!((err.op, err.field), (kind, field), "{kind}: {err}");
            assert!(err
                .to_string()
                .starts_with(&format!("invalid {kind}: {field} ")));
        }
    }

    /// The values a forged report is most likely to try, each refused.
    #[test]
    fn absurd_report_values_are_refused() {
        let refused = [
            (transition(|t| t.generation = 0), "generation"),
            (transition(|t| t.to = 99), "to"),
            (transition(|t| t.at_ms = -1), "at_ms"),
            (transition(|t| t.at_ms = i64::MAX), "at_ms"),
            (transition(|t| t.image_id = "sha256:zz".into()), "image_id"),
            (transition(|t| t.node = "a/b".into()), "node"),
            (transition(|t| t.error = "e".repeat(MAX_TEXT + 1)), "error"),
            (logs(vec![line(0)]), "lines.seq"),
            (logs(vec![line(5), line(5)]), "lines.seq"),
            (logs(vec![line(7), line(6)]), "lines.seq"),
            (
                logs(vec![LogLine {
                    line: vec![b'x'; MAX_LOG_LINE + 1],
                    ..line(1)
                }]),
                "lines.line",
            ),
            (
                logs(vec![LogLine {
                    stream: 7,
                    ..line(1)
                }]),
                "lines.stream",
            ),
            (
                Op::Logs(AppendLogs {
                    id: ID.into(),
                    node: "n1".into(),
                    generation: 1,
                    skip_to: u64::MAX,
                    ..Default::default()
                }),
                "skip_to",
            ),
        ];
        for (op, field) in refused {
            let err = check(&op).expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
    }
}
