//! Tables and human-readable times and sizes, as Docker prints them.

/// Prints rows as left-aligned columns separated by three spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len() - 1;
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i == last {
                s.push_str(&c);
            } else {
                s.push_str(&format!("{:<w$}   ", c, w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// "5 seconds", "About a minute", "3 hours", as Docker's units.HumanDuration.
pub fn human_duration(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    match secs {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".into(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".into(),
        s if s < 48 * 3600 => format!("{} hours", s / 3600),
        s if s < 14 * 86400 => format!("{} days", s / 86400),
        s if s < 60 * 86400 => format!("{} weeks", s / (7 * 86400)),
        s if s < 365 * 86400 => format!("{} months", s / (30 * 86400)),
        s => format!("{} years", s / (365 * 86400)),
    }
}

/// "12 seconds ago".
pub fn ago(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return "N/A".into();
    }
    format!("{} ago", human_duration(now_ms - then_ms))
}

/// Bytes in Docker's decimal units: "4.1MB".
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes}B")
    } else {
        format!("{:.3}", v)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + UNITS[i]
    }
}

/// Shortens to `max` characters with an ellipsis, as `docker ps` does.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// Seconds since the epoch as RFC 3339 UTC, with `fraction` after the
/// seconds ("123" for milliseconds, nine digits for nanoseconds).
pub fn utc_time(secs: i64, fraction: &str) -> String {
    let t = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
    format!("{}.{fraction}Z", t.format("%Y-%m-%dT%H:%M:%S"))
}

/// Parses an RFC 3339 time into milliseconds since the epoch.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A word with its first letter upper-case (`ready` to `Ready`), as
/// Docker's `node ls --format` prints states.
pub fn title_case(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// A time as Go prints a time.Time, which Docker's `CreatedAt` fields are
/// (`2026-12-02 14:16:51 +0000 UTC`).
pub fn go_time(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_docker() {
        assert_eq!(human_duration(500), "Less than a second");
        assert_eq!(human_duration(5_000), "5 seconds");
        assert_eq!(human_duration(90_000), "About a minute");
        assert_eq!(human_duration(3 * 3_600_000), "3 hours");
    }

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(4_100_000), "4.1MB");
        assert_eq!(human_size(1_000_000), "1MB");
    }

    #[test]
    fn times_round_trip() {
        let ms = 1_764_400_000_000;
        assert_eq!(parse_rfc3339_ms(&utc_time(ms / 1000, "000")), Some(ms));
        assert_eq!(utc_time(0, "000000000"), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn long_commands_are_cut() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
