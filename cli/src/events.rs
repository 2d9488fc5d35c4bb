//! `berth events`: what happened to containers, images and nodes, from the
//! replicated state; it follows new events until interrupted, as Docker's.

use berth_proto::cluster::{cluster_client::ClusterClient, EventInfo, EventsRequest};
use clap::Args;
use tonic::transport::Channel;

use crate::output::now_ms;

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
fn format_time(ms: i64) -> String {
    crate::output::utc_time(ms.div_euclid(1000), &format!("{:03}", ms.rem_euclid(1000)))
}
use crate::CliError;

/// `berth events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Events since a time ago (30s, 10m, 2h, 1d) or a Unix time in seconds.
    #[arg(long)]
    pub since: Option<String>,
    /// Stop at a time ago or a Unix time in seconds, instead of following.
    #[arg(long)]
    pub until: Option<String>,
    /// Only events matching KEY=VALUE: type (container, image, node),
    /// event, container (name or id), image, node.
    #[arg(short = 'f', long = "filter")]
    pub filter: Vec<String>,
    /// Print each event through a Go template, as Docker's (fields: Type,
    /// Action, Actor.ID, Actor.Attributes, Time, TimeNano, Scope; and
    /// `{{json .}}`).
    #[arg(long)]
    pub format: Option<String>,
}

/// Parses "30s", "10m", "2h", "1d" (before now) or Unix seconds into ms.
pub fn parse_time(s: &str, now: i64) -> Result<i64, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "invalid time {s:?}: use 30s, 10m, 2h, 1d or Unix seconds"
        ))
    };
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs * 1000);
    }
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = num.parse().map_err(|_| bad())?;
    let ms = match unit {
        "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        "d" => n * 86_400_000,
        _ => return Err(bad()),
    };
    Ok(now - ms)
}

fn matches(e: &EventInfo, filters: &[(String, String)]) -> bool {
    let mut keys: Vec<&str> = filters.iter().map(|(k, _)| k.as_str()).collect();
    keys.dedup();
    keys.iter().all(|key| {
        filters
            .iter()
            .filter(|(k, _)| k == key)
            .any(|(_, v)| match *key {
                "type" => e.kind == *v,
                "event" => e.action == *v,
                "container" => {
                    e.kind == "container"
                        && (e.actor.starts_with(v.as_str()) || e.attributes.get("name") == Some(v))
                }
                "image" => {
                    (e.kind == "image" && e.actor == *v) || e.attributes.get("image") == Some(v)
                }
                "node" => {
                    (e.kind == "node" && e.actor == *v) || e.attributes.get("node") == Some(v)
                }
                _ => false,
            })
    })
}

pub async fn events(
    client: &mut ClusterClient<Channel>,
    args: EventsArgs,
) -> Result<i32, CliError> {
    let now = now_ms();
    let since_ms = args
        .since
        .as_deref()
        .map(|s| parse_time(s, now))
        .transpose()?
        .unwrap_or(now);
    let until_ms = args
        .until
        .as_deref()
        .map(|s| parse_time(s, now))
        .transpose()?;
    let mut filters = Vec::new();
    for f in &args.filter {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("bad filter {f:?}: use KEY=VALUE")))?;
        if !["type", "event", "container", "image", "node"].contains(&k) {
            return Err(CliError::Usage(format!(
                "unknown filter {k:?}: use type, event, container, image or node"
            )));
        }
        filters.push((k.to_string(), v.to_string()));
    }
    let format = args.format.as_deref().map(crate::format::unescape);
    let mut stream = client
        .events(EventsRequest {
            since_ms,
            follow: until_ms.is_none(),
        })
        .await
        .map_err(CliError::api)?
        .into_inner();
    while let Some(e) = stream.message().await.map_err(CliError::api)? {
        if until_ms.is_some_and(|u| e.time_ms > u) {
            break;
        }
        if !matches(&e, &filters) {
            continue;
        }
        if let Some(t) = &format {
            let v = serde_json::json!({
                "Type": e.kind,
                "Action": e.action,
                "Actor": {"ID": e.actor, "Attributes": e.attributes},
                "Scope": "swarm",
                "Time": e.time_ms.div_euclid(1000),
                "TimeNano": e.time_ms.saturating_mul(1_000_000),
            });
            println!("{}", crate::format::render(t, &v)?);
            continue;
        }
        let mut attrs: Vec<String> = e
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        attrs.sort();
        println!(
            "{} {} {} {} ({})",
            format_time(e.time_ms),
            e.kind,
            e.action,
            e.actor,
            attrs.join(", ")
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_like_docker_events() {
        assert_eq!(parse_time("30s", 100_000).unwrap(), 70_000);
        assert_eq!(parse_time("2m", 200_000).unwrap(), 80_000);
        assert_eq!(parse_time("1700000000", 0).unwrap(), 1_700_000_000_000);
        assert!(parse_time("soon", 0).is_err());
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
    }
}
