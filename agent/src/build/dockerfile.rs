//! The Dockerfile as Docker's parser reads it: parser directives (`#
//! escape=`), comments, line continuations, one instruction a logical
//! line with its leading `--flags`, and the variable substitution
//! (`$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR:+alt}`) of the
//! instructions that take it.

use std::collections::BTreeMap;

use super::BuildError;

/// The instructions a Dockerfile may hold.
pub const KEYWORDS: &[&str] = &[
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "MAINTAINER",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
];

/// One instruction: its keyword (upper case), its flags, its arguments
/// as written, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// The line the instruction starts on, counted from 1.
    pub line: usize,
    pub keyword: String,
    /// Leading `--name=value` flags (COPY, ADD, FROM, HEALTHCHECK).
    pub flags: Vec<(String, String)>,
    /// The arguments after the flags, continuations joined.
    pub rest: String,
    /// The instruction as Docker prints it in a step: the keyword as
    /// written and the joined line.
    pub original: String,
}

impl Instruction {
    /// The value of the flag `name`, if given.
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The arguments as a JSON array of strings (the exec form), if they
    /// are one.
    pub fn exec_form(&self) -> Option<Vec<String>> {
        let t = self.rest.trim();
        if !t.starts_with('[') {
            return None;
        }
        serde_json::from_str::<Vec<String>>(t).ok()
    }
}

/// Parses a Dockerfile into its instructions.
pub fn parse(text: &str) -> Result<Vec<Instruction>, BuildError> {
    let mut escape = '\\';
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    // Parser directives: `# name=value` lines at the very top.
    while i < lines.len() {
        let l = lines[i].trim();
        let Some(d) = l.strip_prefix('#') else { break };
        let Some((name, value)) = d.split_once('=') else {
            break;
        };
        let name = name.trim().to_ascii_lowercase();
        if name.contains(char::is_whitespace) || name.is_empty() {
            break;
        }
        match name.as_str() {
            "escape" => match value.trim() {
                "\\" => escape = '\\',
                "`" => escape = '`',
                other => {
                    return Err(BuildError::Parse {
                        line: i + 1,
                        why: format!("invalid escape token {other:?}: use \\ or `"),
                    })
                }
            },
            "syntax" | "check" => {}
            _ => break,
        }
        i += 1;
    }
    let mut out = Vec::new();
    while i < lines.len() {
        let start = i;
        let first = lines[i].trim_start();
        i += 1;
        if first.trim().is_empty() || first.starts_with('#') {
            continue;
        }
        let mut joined = String::new();
        let mut current = first.trim_end().to_string();
        loop {
            match current.strip_suffix(escape) {
                Some(head) => {
                    joined.push_str(head);
                    // The next line that is neither empty nor a comment
                    // goes on.
                    let mut next = None;
                    while i < lines.len() {
                        let l = lines[i];
                        i += 1;
                        let t = l.trim_start();
                        if t.starts_with('#') || t.trim().is_empty() {
                            continue;
                        }
                        // Its leading whitespace is kept, as Docker keeps it.
                        next = Some(l.trim_end().to_string());
                        break;
                    }
                    match next {
                        Some(n) => current = n,
                        None => break,
                    }
                }
                None => {
                    joined.push_str(&current);
                    break;
                }
            }
        }
        out.push(instruction(start + 1, &joined)?);
    }
    if out.is_empty() {
        return Err(BuildError::Parse {
            line: 1,
            why: "the Dockerfile holds no instruction".into(),
        });
    }
    if out[0].keyword != "FROM"
        && out
            .iter()
            .take_while(|i| i.keyword != "FROM")
            .any(|i| i.keyword != "ARG")
    {
        let bad = out
            .iter()
            .find(|i| i.keyword != "ARG")
            .expect("one is not ARG");
        return Err(BuildError::Parse {
            line: bad.line,
            why: format!(
                "{} before the first FROM: a Dockerfile starts with FROM (only ARG may come before it)",
                bad.keyword
            ),
        });
    }
    Ok(out)
}

/// One logical line as an instruction.
fn instruction(line: usize, text: &str) -> Result<Instruction, BuildError> {
    let text = text.trim();
    let (word, rest) = text
        .split_once(char::is_whitespace)
        .map(|(w, r)| (w, r.trim_start()))
        .unwrap_or((text, ""));
    let keyword = word.to_ascii_uppercase();
    if !KEYWORDS.contains(&keyword.as_str()) {
        return Err(BuildError::Parse {
            line,
            why: format!("unknown instruction: {word}"),
        });
    }
    let mut flags = Vec::new();
    let mut rest = rest;
    if matches!(
        keyword.as_str(),
        "COPY" | "ADD" | "FROM" | "HEALTHCHECK" | "RUN"
    ) {
        while let Some(f) = rest.strip_prefix("--") {
            let end = f.find(char::is_whitespace).unwrap_or(f.len());
            let (flag, after) = f.split_at(end);
            let (name, value) = flag.split_once('=').unwrap_or((flag, "true"));
            if name.is_empty() {
                return Err(BuildError::Parse {
                    line,
                    why: "a flag with no name (--)".into(),
                });
            }
            flags.push((name.to_string(), value.to_string()));
            rest = after.trim_start();
        }
    }
    if rest.is_empty() && !matches!(keyword.as_str(), "CMD" | "ENTRYPOINT") {
        return Err(BuildError::Parse {
            line,
            why: format!("{keyword} requires at least one argument"),
        });
    }
    Ok(Instruction {
        line,
        keyword,
        flags,
        rest: rest.to_string(),
        original: format!("{word} {}", text[word.len()..].trim_start())
            .trim_end()
            .to_string(),
    })
}

/// Expands `$VAR`, `${VAR}`, `${VAR:-default}` and `${VAR:+alt}` (and
/// their forms without the colon) with `vars`, as Docker's shell lexer
/// does: nothing inside single quotes, `\$` (or the escape token) keeps a
/// literal dollar, quotes themselves are kept for the instruction's own
/// reading.
pub fn substitute(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let mut single = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' => {
                single = !single;
                out.push(c);
                i += 1;
            }
            '\\' if !single && chars.get(i + 1) == Some(&'$') => {
                out.push('$');
                i += 2;
            }
            '$' if !single => {
                let (value, next) = variable(&chars, i + 1, vars)?;
                out.push_str(&value);
                i = next;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
        if out.len() > MAX_SUBSTITUTED {
            return Err(format!(
                "the text after variable substitution passes {MAX_SUBSTITUTED} bytes"
            ));
        }
    }
    Ok(out)
}

/// The longest text substitution may make (`ENV A=$A$A` repeated doubles
/// a value each time).
pub const MAX_SUBSTITUTED: usize = 1 << 20;

/// The value of the reference after a `$` at `i`, and where the text goes
/// on.
fn variable(
    chars: &[char],
    i: usize,
    vars: &BTreeMap<String, String>,
) -> Result<(String, usize), String> {
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if chars.get(i) == Some(&'{') {
        let close = chars[i..]
            .iter()
            .position(|c| *c == '}')
            .map(|p| p + i)
            .ok_or_else(|| "a ${ with no closing }".to_string())?;
        let inner: String = chars[i + 1..close].iter().collect();
        let end = inner.find(|c: char| !name_char(c)).unwrap_or(inner.len());
        let (name, op) = inner.split_at(end);
        if name.is_empty() {
            return Err(format!("a bad substitution: ${{{inner}}}"));
        }
        let value = vars.get(name);
        let word = |w: &str| substitute(w, vars);
        let result = match op {
            "" => value.cloned().unwrap_or_default(),
            _ if op.starts_with(":-") => match value {
                Some(v) if !v.is_empty() => v.clone(),
                _ => word(&op[2..])?,
            },
            _ if op.starts_with(":+") => match value {
                Some(v) if !v.is_empty() => word(&op[2..])?,
                _ => String::new(),
            },
            _ if op.starts_with('-') => match value {
                Some(v) => v.clone(),
                None => word(&op[1..])?,
            },
            _ if op.starts_with('+') => match value {
                Some(_) => word(&op[1..])?,
                None => String::new(),
            },
            _ => return Err(format!("unsupported modifier in ${{{inner}}}")),
        };
        return Ok((result, close + 1));
    }
    let end = chars[i..]
        .iter()
        .position(|c| !name_char(*c))
        .map(|p| p + i)
        .unwrap_or(chars.len());
    if end == i {
        return Ok(("$".into(), i));
    }
    let name: String = chars[i..end].iter().collect();
    Ok((vars.get(&name).cloned().unwrap_or_default(), end))
}

/// Splits words as Docker's lexer does for instructions that take a list
/// (EXPOSE, VOLUME, COPY, ADD, ARG): on white space outside quotes, quotes
/// removed.
pub fn words(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (q, '\\') if q != Some('\'') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (_, c) => cur.push(c),
        }
    }
    if quote.is_some() {
        return Err(format!("an unclosed quote in {text:?}"));
    }
    if any || !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_comments_and_directives() {
        let df = "# escape=`\nFROM busybox AS base\n# a comment\nRUN echo a `\n  # inside\n  && echo b\nCOPY --chown=1:2 --from=x a b /c/\ncmd [\"sh\"]\n";
        let i = parse(df).unwrap();
        assert_eq!(i.len(), 4);
        assert_eq!(i[1].keyword, "RUN");
        assert_eq!(i[1].rest, "echo a   && echo b");
        assert_eq!(i[1].line, 4);
        assert_eq!(i[2].flag("chown"), Some("1:2"));
        assert_eq!(i[2].flag("from"), Some("x"));
        assert_eq!(i[2].rest, "a b /c/");
        assert_eq!(i[3].exec_form(), Some(vec!["sh".to_string()]));
        assert_eq!(i[3].original, "cmd [\"sh\"]");
    }

    #[test]
    fn bad_lines_name_their_line() {
        for (df, line, what) in [
            ("FROM busybox\nFOO bar\n", 2, "unknown instruction: FOO"),
            (
                "FROM busybox\n\nRUN\n",
                3,
                "RUN requires at least one argument",
            ),
            ("RUN true\nFROM busybox\n", 1, "before the first FROM"),
            ("# escape=x\nFROM busybox\n", 1, "invalid escape token"),
        ] {
            let e = parse(df).unwrap_err();
            let BuildError::Parse { line: l, why } = &e else {
                panic!("{e}")
            };
            assert_eq!(*l, line, "{e}");
            assert!(why.contains(what), "{e}");
        }
    }

    #[test]
    fn substitution_as_docker_does_it() {
        let vars: BTreeMap<String, String> = [("A", "1"), ("E", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let s = |t: &str| substitute(t, &vars).unwrap();
        assert_eq!(s("$A ${A} x${A}y"), "1 1 x1y");
        assert_eq!(s("${B:-def} ${A:-def} ${E:-def} ${E-def}"), "def 1 def ");
        assert_eq!(s("${A:+alt} ${B:+alt} ${E:+alt} ${E+alt}"), "alt   alt");
        assert_eq!(s("'$A' \\$A $"), "'$A' $A $");
        assert!(substitute("${A", &vars).is_err());
        assert_eq!(
            words("a 'b c' \"d\\\" e\"").unwrap(),
            vec!["a", "b c", "d\" e"]
        );
    }
}
