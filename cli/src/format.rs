//! `--format` and `inspect -f`: Go templates as Docker's CLI takes them,
//! through gtmpl (Go's text/template for Rust), with Docker's functions
//! (`json`, `join`, `lower`, `upper`, `split`, `title`, `truncate`) and its
//! `table` form (a header row, then the rows, in aligned columns).
//!
//! Not as in Go: a list or a map printed whole (`{{.Config.Cmd}}`) shows
//! gtmpl's own form, not Go's `[a b]`; `{{json .Config.Cmd}}` or `{{join
//! .Config.Cmd " "}}` print it as Docker does.

use std::collections::HashMap;

use gtmpl::{Context, FuncError, Template, Value};
use serde_json::Value as Json;

use crate::CliError;

/// How a listing prints: the default table, or a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    Default,
    /// `table TEMPLATE`: a header row (each field's column name), then a
    /// row a value, aligned.
    Table(String),
    /// A line a value.
    Lines(String),
}

impl Format {
    pub fn parse(s: Option<&str>) -> Self {
        match s.map(str::trim) {
            None | Some("") => Format::Default,
            Some("table") => Format::Default,
            Some(t) => match t.strip_prefix("table ") {
                Some(rest) => Format::Table(unescape(rest)),
                None => Format::Lines(unescape(t)),
            },
        }
    }
}

/// Docker reads `\t` and `\n` in a format as a tab and a newline.
pub fn unescape(t: &str) -> String {
    t.replace("\\t", "\t").replace("\\n", "\n")
}

/// Renders one template over one value.
pub fn render(template: &str, value: &Json) -> Result<String, CliError> {
    let mut t = Template::default();
    t.add_funcs(&[
        ("json", json as gtmpl::Func),
        ("join", join as gtmpl::Func),
        ("lower", lower as gtmpl::Func),
        ("upper", upper as gtmpl::Func),
        ("split", split as gtmpl::Func),
        ("title", title as gtmpl::Func),
        ("truncate", truncate as gtmpl::Func),
        ("index", index as gtmpl::Func),
    ]);
    t.parse(template)
        .map_err(|e| CliError::Usage(format!("template parsing error: {e}")))?;
    t.render(&Context::from(to_value(value)))
        .map_err(|e| CliError::Usage(format!("template: {e}")))
}

/// Prints values by a format: each its own line, or, for `table`, a header
/// from `headers` (field name to column name, as Docker's) above them.
/// Returns false for [`Format::Default`], which the caller prints itself.
pub fn print(format: &Format, values: &[Json], headers: &[(&str, &str)]) -> Result<bool, CliError> {
    match format {
        Format::Default => Ok(false),
        Format::Lines(t) => {
            for v in values {
                println!("{}", render(t, v)?);
            }
            Ok(true)
        }
        Format::Table(t) => {
            let head: serde_json::Map<String, Json> = headers
                .iter()
                .map(|(k, v)| (k.to_string(), Json::String(v.to_string())))
                .collect();
            let mut rows = vec![render(t, &Json::Object(head))?];
            for v in values {
                rows.push(render(t, v)?);
            }
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| r.split('\t').map(str::to_string).collect())
                .collect();
            let widths: Vec<usize> = (0..cells.iter().map(Vec::len).max().unwrap_or(0))
                .map(|i| {
                    cells
                        .iter()
                        .filter_map(|r| r.get(i))
                        .map(|c| c.chars().count())
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            for r in &cells {
                let mut line = String::new();
                for (i, c) in r.iter().enumerate() {
                    line.push_str(c);
                    if i + 1 < r.len() {
                        let pad = widths[i] + 3 - c.chars().count();
                        line.push_str(&" ".repeat(pad));
                    }
                }
                println!("{}", line.trim_end());
            }
            Ok(true)
        }
    }
}

fn to_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (_, Some(u)) => Value::from(u),
            _ => Value::from(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => Value::String(s.clone()),
        Json::Array(a) => Value::Array(a.iter().map(to_value).collect()),
        Json::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), to_value(v)))
                .collect::<HashMap<_, _>>(),
        ),
    }
}

fn to_json(v: &Value) -> Json {
    match v {
        Value::NoValue | Value::Nil | Value::Function(_) => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::String(s) => Json::String(s.clone()),
        Value::Number(n) => n
            .as_i64()
            .map(Json::from)
            .or_else(|| n.as_u64().map(Json::from))
            .or_else(|| n.as_f64().map(Json::from))
            .unwrap_or(Json::Null),
        Value::Array(a) => Json::Array(a.iter().map(to_json).collect()),
        // Sorted keys, as Go's encoding/json writes a map.
        Value::Object(o) | Value::Map(o) => {
            let sorted: std::collections::BTreeMap<_, _> =
                o.iter().map(|(k, v)| (k.clone(), to_json(v))).collect();
            Json::Object(sorted.into_iter().collect())
        }
    }
}

fn one<'a>(name: &str, args: &'a [Value]) -> Result<&'a Value, FuncError> {
    args.first()
        .ok_or_else(|| FuncError::AtLeastXArgs(name.into(), 1))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Go's `index`: a map's missing key gives its zero value (an empty
/// string for the string maps Docker's fields are), not an error.
fn index(args: &[Value]) -> Result<Value, FuncError> {
    if args.len() < 2 {
        return Err(FuncError::AtLeastXArgs("index".into(), 2));
    }
    let mut col = args[0].clone();
    for key in &args[1..] {
        col = match (&col, key) {
            (Value::Object(o) | Value::Map(o), k) => o
                .get(&text(k))
                .cloned()
                .unwrap_or(Value::String(String::new())),
            (Value::Array(a), Value::Number(n)) => n
                .as_u64()
                .and_then(|i| a.get(i as usize).cloned())
                .ok_or_else(|| FuncError::Generic(format!("index {n} out of range")))?,
            _ => {
                return Err(FuncError::Generic(
                    "index of a value that is not a map or a list".into(),
                ))
            }
        };
    }
    Ok(col)
}

fn json(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(
        serde_json::to_string(&to_json(one("json", args)?)).unwrap_or_default(),
    ))
}

fn join(args: &[Value]) -> Result<Value, FuncError> {
    let (Some(Value::Array(items)), Some(sep)) = (args.first(), args.get(1)) else {
        return Err(FuncError::ExactlyXArgs("join".into(), 2));
    };
    Ok(Value::String(
        items.iter().map(text).collect::<Vec<_>>().join(&text(sep)),
    ))
}

fn lower(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(text(one("lower", args)?).to_lowercase()))
}

fn upper(args: &[Value]) -> Result<Value, FuncError> {
    Ok(Value::String(text(one("upper", args)?).to_uppercase()))
}

fn title(args: &[Value]) -> Result<Value, FuncError> {
    let s = text(one("title", args)?);
    let mut out = String::new();
    let mut start = true;
    for c in s.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = c.is_whitespace();
    }
    Ok(Value::String(out))
}

fn split(args: &[Value]) -> Result<Value, FuncError> {
    let (Some(s), Some(sep)) = (args.first(), args.get(1)) else {
        return Err(FuncError::ExactlyXArgs("split".into(), 2));
    };
    Ok(Value::Array(
        text(s)
            .split(&text(sep))
            .map(|p| Value::String(p.to_string()))
            .collect(),
    ))
}

fn truncate(args: &[Value]) -> Result<Value, FuncError> {
    let (Some(s), Some(Value::Number(n))) = (args.first(), args.get(1)) else {
        return Err(FuncError::ExactlyXArgs("truncate".into(), 2));
    };
    let n = n.as_u64().unwrap_or(0) as usize;
    Ok(Value::String(text(s).chars().take(n).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_render_as_dockers() {
        let v = json!({"Names": "web", "State": {"Running": true, "ExitCode": 0},
                       "Config": {"Cmd": ["sh", "-c", "echo hi"], "Labels": {"b": "2", "a": "1"}}});
        assert_eq!(render("{{.Names}}", &v).unwrap(), "web");
        assert_eq!(render("{{.State.Running}}", &v).unwrap(), "true");
        assert_eq!(render("{{.State.ExitCode}}", &v).unwrap(), "0");
        assert_eq!(
            render("{{json .Config.Cmd}}", &v).unwrap(),
            r#"["sh","-c","echo hi"]"#
        );
        assert_eq!(
            render("{{json .Config.Labels}}", &v).unwrap(),
            r#"{"a":"1","b":"2"}"#
        );
        assert_eq!(
            render(r#"{{join .Config.Cmd " "}}"#, &v).unwrap(),
            "sh -c echo hi"
        );
        assert_eq!(render(r#"{{index .Config.Labels "a"}}"#, &v).unwrap(), "1");
        assert_eq!(
            render(r#"[{{index .Config.Labels "zz"}}]"#, &v).unwrap(),
            "[]"
        );
        assert_eq!(render(r#"{{index .Config.Cmd 1}}"#, &v).unwrap(), "-c");
        assert_eq!(render("{{upper .Names}}", &v).unwrap(), "WEB");
        assert_eq!(
            render("{{if .State.Running}}up{{else}}down{{end}}", &v).unwrap(),
            "up"
        );
        assert!(render("{{.Names", &v).is_err());
        assert_eq!(
            Format::parse(Some(r"table {{.Names}}\t{{.State}}")),
            Format::Table("{{.Names}}\t{{.State}}".into())
        );
        assert_eq!(Format::parse(Some("table")), Format::Default);
    }
}
