//! `.dockerignore`: which paths of a build context stay out of it, by
//! Docker's rules. The CLI leaves excluded paths out of the context it
//! sends; the agent uses the same rules to drop the Dockerfile and
//! `.dockerignore` themselves when they are excluded (they are sent
//! anyway, since the build needs them).
//!
//! The rules, as Docker's CLI applies them:
//! - one pattern per line; a line starting with `#` is a comment, and
//!   blank lines are skipped;
//! - a pattern is cleaned as a path (leading `/` dropped, `.` and `..`
//!   resolved), and matched with Go's `filepath.Match` syntax (`*`, `?`,
//!   `[...]`, `\` escapes), where `**` matches any number of directories;
//! - a pattern that matches a directory excludes everything in it;
//! - `!` makes a pattern an exception that puts paths back;
//! - the last pattern that matches a path decides.

/// A `.dockerignore` line that is not a valid pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: the pattern {pattern:?} is not valid: {why}")]
pub struct PatternError {
    pub line: usize,
    pub pattern: String,
    pub why: String,
}

/// The patterns of one `.dockerignore` file, in order.
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: glob::Pattern,
    /// An exception (`!pattern`): a match puts the path back.
    exception: bool,
}

impl Patterns {
    /// Parses a `.dockerignore` file's text.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (exception, rest) = match line.strip_prefix('!') {
                Some(r) => (true, r.trim()),
                None => (false, line),
            };
            let cleaned = clean(rest);
            if cleaned.is_empty() {
                // "." or "/": Docker matches nothing with it.
                continue;
            }
            let pattern = glob::Pattern::new(&cleaned).map_err(|e| PatternError {
                line: i + 1,
                pattern: rest.to_string(),
                why: e.msg.to_string(),
            })?;
            rules.push(Rule { pattern, exception });
        }
        Ok(Self { rules })
    }

    /// Whether there are no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any pattern is an exception: then an excluded directory
    /// may still hold paths that are put back, and must be walked.
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.exception)
    }

    /// Whether `path` (relative to the context, `/`-separated) is left
    /// out of the context.
    pub fn excluded(&self, path: &str) -> bool {
        let path = clean(path);
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        let mut excluded = false;
        for rule in &self.rules {
            if rule.exception != excluded {
                // This rule cannot change the verdict.
                continue;
            }
            // The path itself, or a directory above it.
            let hit = rule.pattern.matches_with(&path, opts)
                || path
                    .match_indices('/')
                    .any(|(i, _)| rule.pattern.matches_with(&path[..i], opts));
            if hit {
                excluded = !rule.exception;
            }
        }
        excluded
    }
}

/// Cleans a pattern or a path as Go's filepath.Clean does, relative to the
/// context's root: no leading `/`, no `.`, `..` resolved lexically (and
/// never above the root).
fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_rules_hold() {
        let p = Patterns::parse(
            "# a comment\n\n*.log\n/build\n**/*.tmp\nsecret*\n!secret-ok\ndocs/**\n!docs/keep.md\n",
        )
        .unwrap();
        assert!(p.excluded("a.log"));
        assert!(!p.excluded("sub/a.log"), "* does not cross /");
        assert!(p.excluded("build"));
        assert!(
            p.excluded("build/out/x"),
            "a matched directory excludes its content"
        );
        assert!(p.excluded("x.tmp"));
        assert!(p.excluded("a/b/c/x.tmp"));
        assert!(p.excluded("secret-key"));
        assert!(
            !p.excluded("secret-ok"),
            "a later exception puts a path back"
        );
        assert!(p.excluded("docs/a.md"));
        assert!(!p.excluded("docs/keep.md"));
        assert!(!p.excluded("src/main.rs"));
        assert!(!p.excluded("# a comment"));
        assert!(p.has_exceptions());
    }

    #[test]
    fn the_last_match_decides() {
        let p = Patterns::parse("!a.txt\n*.txt\n").unwrap();
        assert!(p.excluded("a.txt"));
        let p = Patterns::parse("*\n!keep\n").unwrap();
        assert!(p.excluded("Dockerfile"));
        assert!(!p.excluded("keep"));
        assert!(p.excluded("other/keep"));
    }

    #[test]
    fn a_bad_pattern_names_its_line() {
        let e = Patterns::parse("ok\n[z-a\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("[z-a"), "{e}");
    }
}
