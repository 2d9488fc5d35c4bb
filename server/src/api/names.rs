//! Container ids, generated names, and image references.

use rand::Rng;

const ADJECTIVES: &[&str] = &[
    "agile", "amber", "ample", "bold", "brave", "bright", "brisk", "calm", "clever", "cosy",
    "crisp", "daring", "eager", "fancy", "fleet", "gentle", "golden", "happy", "hardy", "jolly",
    "keen", "kind", "lively", "lucid", "merry", "mighty", "nimble", "noble", "patient", "proud",
    "quiet", "rapid", "salty", "sharp", "shiny", "steady", "stout", "sunny", "swift", "tender",
    "tidy", "vivid", "wise", "witty", "zesty",
];
const NOUNS: &[&str] = &[
    "anchor",
    "barge",
    "beacon",
    "berth",
    "bollard",
    "bosun",
    "bow",
    "buoy",
    "canal",
    "cargo",
    "channel",
    "cove",
    "crane",
    "cutter",
    "davit",
    "dinghy",
    "dock",
    "ferry",
    "galley",
    "gangway",
    "harbor",
    "hawser",
    "helm",
    "hull",
    "inlet",
    "jetty",
    "keel",
    "ketch",
    "lagoon",
    "lighthouse",
    "lock",
    "marina",
    "mast",
    "mooring",
    "oar",
    "pier",
    "pilot",
    "quay",
    "reef",
    "rudder",
    "sail",
    "schooner",
    "skiff",
    "sloop",
    "stern",
    "tide",
    "tug",
    "wharf",
    "yawl",
];

/// How many generated names to try before a create gives up on a name.
pub const NAME_ATTEMPTS: u32 = 10;

/// A new container id: 32 random bytes in hex, as Docker's.
pub fn new_id() -> String {
    let bytes: [u8; 32] = rand::thread_rng().gen();
    hex::encode(bytes)
}

/// A generated container name such as `swift_harbor`. After a few
/// attempts taken already (`attempt` counts from 0), a random number is
/// appended, as Docker does, so that a busy cluster still finds a free one.
pub fn new_name(attempt: u32) -> String {
    let mut rng = rand::thread_rng();
    let base = format!(
        "{}_{}",
        ADJECTIVES[rng.gen_range(0..ADJECTIVES.len())],
        NOUNS[rng.gen_range(0..NOUNS.len())]
    );
    if attempt < 3 {
        base
    } else {
        format!("{base}{}", rng.gen_range(0..10u32.pow(attempt.min(9))))
    }
}

/// Whether a refusal from the state machine is a name already in use.
pub fn is_name_conflict(why: &str) -> bool {
    why.starts_with("Conflict. The container name")
}

/// Checks a user-given container name the way Docker does.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

/// Normalizes an image reference: `busybox` becomes `busybox:latest`; a
/// digest or an explicit tag is kept. A registry port is not a tag.
pub fn normalize_image(reference: &str) -> String {
    if reference.starts_with("sha256:") || reference.contains('@') {
        return reference.to_string();
    }
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if last.contains(':') {
        reference.to_string()
    } else {
        format!("{reference}:latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_valid_and_grow_a_number_after_collisions() {
        for attempt in 0..NAME_ATTEMPTS {
            let n = new_name(attempt);
            assert!(valid_name(&n), "{n}");
            let (adjective, noun) = n.split_once('_').unwrap();
            assert!(ADJECTIVES.contains(&adjective), "{n}");
            if attempt < 3 {
                assert!(NOUNS.contains(&noun), "{n}");
            } else {
                assert!(noun.ends_with(|c: char| c.is_ascii_digit()), "{n}");
            }
        }
    }

    #[test]
    fn references_get_the_latest_tag() {
        assert_eq!(normalize_image("busybox"), "busybox:latest");
        assert_eq!(normalize_image("busybox:1.36"), "busybox:1.36");
        assert_eq!(
            normalize_image("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
        assert_eq!(normalize_image("sha256:abcd"), "sha256:abcd");
    }

    #[test]
    fn names_follow_docker_rules() {
        assert!(valid_name("web-1.prod_a"));
        assert!(!valid_name("-web"));
        assert!(!valid_name("we b"));
        assert!(!valid_name(""));
        assert!(valid_name(&new_name(0)));
        assert_eq!(new_id().len(), 64);
    }
}

/// Linux signal names in number order, from 1.
const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
    "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
];

/// Parses a signal as `docker kill -s` takes it: a name with or without
/// `SIG`, in any case, or a number from 1 to 64.
pub fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .position(|x| *x == name)
        .map(|i| i as i32 + 1)
}

#[cfg(test)]
mod signal_tests {
    use super::parse_signal;

    #[test]
    fn signals_parse_like_docker_kill() {
        assert_eq!(parse_signal("KILL"), Some(9));
        assert_eq!(parse_signal("sigusr1"), Some(10));
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("12"), Some(12));
        assert_eq!(parse_signal("NOPE"), None);
        assert_eq!(parse_signal("0"), None);
    }
}

/// Checks a restart policy as `docker run --restart` takes it.
pub fn check_restart(policy: &str) -> Result<(), String> {
    match policy.split_once(':') {
        None if matches!(policy, "" | "no" | "always" | "unless-stopped" | "on-failure") => Ok(()),
        Some(("on-failure", n)) if n.parse::<u32>().is_ok() => Ok(()),
        _ => Err(format!(
            "invalid restart policy {policy:?}: use no, always, unless-stopped, on-failure or on-failure:N"
        )),
    }
}

/// Checks a volume as `docker run -v` takes it: SOURCE:DEST[:ro|rw], where
/// SOURCE is an absolute host path or a volume name, and DEST absolute.
pub fn check_volume(v: &str) -> Result<(), String> {
    let parts: Vec<&str> = v.split(':').collect();
    let bad = |why: &str| Err(format!("invalid volume {v:?}: {why}"));
    let (src, dest) = match parts.as_slice() {
        [src, dest] | [src, dest, "ro" | "rw"] => (*src, *dest),
        [_, _, mode] => return bad(&format!("unknown mode {mode:?} (use ro or rw)")),
        _ => return bad("use SOURCE:DEST[:ro]"),
    };
    if !dest.starts_with('/') {
        return bad("the destination must be an absolute path");
    }
    if dest.split('/').any(|c| c == "..") || src.split('/').any(|c| c == "..") {
        return bad("paths may not contain ..");
    }
    if src.is_empty() {
        return bad("no source");
    }
    if !src.starts_with('/') && !valid_name(src) {
        return bad("a volume name takes only [a-zA-Z0-9][a-zA-Z0-9_.-]");
    }
    Ok(())
}

#[cfg(test)]
mod option_tests {
    use super::*;

    #[test]
    fn restart_policies_and_volumes_are_checked() {
        for ok in [
            "",
            "no",
            "always",
            "unless-stopped",
            "on-failure",
            "on-failure:3",
        ] {
            assert!(check_restart(ok).is_ok(), "{ok}");
        }
        assert!(check_restart("sometimes").is_err());
        assert!(check_restart("on-failure:x").is_err());
        assert!(check_volume("/srv/data:/data").is_ok());
        assert!(check_volume("cache:/var/cache:ro").is_ok());
        assert!(check_volume("/srv:data").is_err());
        assert!(check_volume("/srv:/data:rx").is_err());
        assert!(check_volume("../etc:/data").is_err());
        assert!(check_volume("bad name:/data").is_err());
    }
}

/// Checks an image name given to be tagged (`build -t`), as Docker's
/// reference grammar has it: a lowercase repository of path components
/// (an optional registry host with a port first) and an optional tag.
pub fn check_reference(reference: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid reference format {reference:?}: {why}"));
    if reference.is_empty() || reference.len() > 255 {
        return bad("a name has 1 to 255 characters");
    }
    let (repo, tag) = match reference.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t)),
        _ => (reference, None),
    };
    if let Some(t) = tag {
        let mut c = t.chars();
        let first_ok = matches!(c.next(), Some(ch) if ch.is_ascii_alphanumeric() || ch == '_');
        if !first_ok
            || t.len() > 128
            || !c.all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'))
        {
            return bad("a tag is up to 128 letters, digits, _ . and -, not starting with . or -");
        }
    }
    for (i, part) in repo.split('/').enumerate() {
        // The first component may be a registry host, with a port.
        if i == 0
            && repo.contains('/')
            && (part.contains('.') || part.contains(':') || part == "localhost")
        {
            // A registry host, with a numeric port if any.
            let (host, port) = part.split_once(':').unwrap_or((part, "0"));
            let host_ok = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
            if !host_ok || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return bad("a registry is HOST or HOST:PORT");
            }
            continue;
        }
        if part.chars().any(|c| c.is_ascii_uppercase()) {
            return bad("repository name must be lowercase");
        }
        let ok = !part.is_empty()
            && part.starts_with(|c: char| c.is_ascii_alphanumeric())
            && part.ends_with(|c: char| c.is_ascii_alphanumeric())
            && part.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            });
        if !ok {
            return bad(
                "a repository is lowercase letters, digits and separators (. _ -) between them",
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod reference_tests {
    use super::check_reference;

    #[test]
    fn references_follow_docker_grammar() {
        for ok in [
            "app",
            "app:1.0",
            "me/app:v_2",
            "localhost:5000/app",
            "reg.io/a/b:c",
        ] {
            assert!(check_reference(ok).is_ok(), "{ok}");
        }
        for bad in ["App", "app:", "app:-x", "a//b", "-a", "", "app:t/x", "a b"] {
            assert!(check_reference(bad).is_err(), "{bad}");
        }
        assert!(check_reference("Foo")
            .unwrap_err()
            .contains("must be lowercase"));
    }
}
