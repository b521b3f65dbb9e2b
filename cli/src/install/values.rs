//! The chart's values: a YAML subset parser (what values.yaml and `-f` files
//! use), `--set key=value`, layering overrides onto the defaults while
//! refusing keys the chart does not have, and `toYaml`.

use std::collections::BTreeMap;

/// A value of the chart: what YAML scalars, sequences and mappings become.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    List(Vec<Value>),
    Map(BTreeMap<String, Value>),
}

impl Value {
    /// Go template truth: false, 0, null and empty strings, lists and maps are false.
    pub fn truthy(&self) -> bool {
        match self {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            Value::Str(s) => !s.is_empty(),
            Value::List(l) => !l.is_empty(),
            Value::Map(m) => !m.is_empty(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Str(_) => "a string",
            Value::List(_) => "a list",
            Value::Map(_) => "a map",
        }
    }
}

/// Why values cannot be read or applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValuesError {
    #[error("{source_name} line {line}: {message}")]
    Syntax {
        source_name: String,
        line: usize,
        message: String,
    },
    #[error("unknown value {0:?}: the chart has no such key (see values.yaml)")]
    UnknownKey(String),
    #[error("value {path:?} is {expected} in the chart; cannot set it to {found}")]
    WrongShape {
        path: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("--set {0:?}: expected KEY=VALUE with a dotted KEY")]
    BadSet(String),
}

/// Most lines and nesting accepted in a values file (they come from outside).
const MAX_LINES: usize = 10_000;
const MAX_DEPTH: usize = 32;

struct Line {
    number: usize,
    indent: usize,
    text: String,
}

/// Parses the YAML subset values files use: block mappings and sequences,
/// plain, single- and double-quoted scalars, `[]`, `{}` and flow lists of
/// scalars, comments. Anything else is an error naming the line.
pub fn parse_yaml(source_name: &str, text: &str) -> Result<Value, ValuesError> {
    let err = |line: usize, message: &str| ValuesError::Syntax {
        source_name: source_name.to_owned(),
        line,
        message: message.to_owned(),
    };
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if i >= MAX_LINES {
            return Err(err(i + 1, "too many lines"));
        }
        if raw[..raw.len() - raw.trim_start().len()].contains('\t') {
            return Err(err(i + 1, "tabs cannot indent YAML"));
        }
        let content = strip_comment(raw);
        let trimmed = content.trim_end();
        if trimmed.trim().is_empty() || trimmed.trim() == "---" {
            continue;
        }
        let indent = trimmed.len() - trimmed.trim_start().len();
        lines.push(Line {
            number: i + 1,
            indent,
            text: trimmed.trim_start().to_owned(),
        });
    }
    if lines.is_empty() {
        return Ok(Value::Map(BTreeMap::new()));
    }
    let mut parser = Parser {
        lines,
        pos: 0,
        source_name,
    };
    let indent = parser.lines[0].indent;
    let value = parser.block(indent, 0)?;
    if let Some(line) = parser.lines.get(parser.pos) {
        return Err(err(line.number, "unexpected indentation"));
    }
    Ok(value)
}

struct Parser<'a> {
    lines: Vec<Line>,
    pos: usize,
    source_name: &'a str,
}

impl Parser<'_> {
    fn err(&self, line: usize, message: impl Into<String>) -> ValuesError {
        ValuesError::Syntax {
            source_name: self.source_name.to_owned(),
            line,
            message: message.into(),
        }
    }

    fn block(&mut self, indent: usize, depth: usize) -> Result<Value, ValuesError> {
        if depth > MAX_DEPTH {
            let n = self.lines[self.pos].number;
            return Err(self.err(n, "nested too deeply"));
        }
        if is_seq_item(&self.lines[self.pos].text) {
            self.sequence(indent, depth)
        } else {
            self.mapping(indent, depth)
        }
    }

    fn mapping(&mut self, indent: usize, depth: usize) -> Result<Value, ValuesError> {
        let mut map = BTreeMap::new();
        while let Some(line) = self.lines.get(self.pos) {
            if line.indent < indent {
                break;
            }
            let number = line.number;
            if line.indent > indent {
                return Err(self.err(number, "unexpected indentation"));
            }
            if is_seq_item(&line.text) {
                return Err(self.err(number, "a list item where a key was expected"));
            }
            let (key, rest) =
                split_key(&line.text).ok_or_else(|| self.err(number, "expected `key: value`"))?;
            let key = unquote_key(&key).map_err(|m| self.err(number, m))?;
            self.pos += 1;
            let value = if rest.is_empty() {
                match self.lines.get(self.pos) {
                    Some(next) if next.indent > indent => {
                        let i = next.indent;
                        self.block(i, depth + 1)?
                    }
                    // A sequence may sit at its key's indentation.
                    Some(next) if next.indent == indent && is_seq_item(&next.text) => {
                        self.sequence(indent, depth + 1)?
                    }
                    _ => Value::Null,
                }
            } else {
                scalar(&rest).map_err(|m| self.err(number, m))?
            };
            if map.insert(key.clone(), value).is_some() {
                return Err(self.err(number, format!("key {key:?} appears twice")));
            }
        }
        Ok(Value::Map(map))
    }

    fn sequence(&mut self, indent: usize, depth: usize) -> Result<Value, ValuesError> {
        let mut items = Vec::new();
        while let Some(line) = self.lines.get(self.pos) {
            if line.indent != indent || !is_seq_item(&line.text) {
                if line.indent > indent {
                    return Err(self.err(line.number, "unexpected indentation"));
                }
                break;
            }
            let number = line.number;
            let rest = line.text[1..].trim_start().to_owned();
            if rest.is_empty() {
                self.pos += 1;
                match self.lines.get(self.pos) {
                    Some(next) if next.indent > indent => {
                        let i = next.indent;
                        items.push(self.block(i, depth + 1)?);
                    }
                    _ => items.push(Value::Null),
                }
            } else if split_key(&rest).is_some() || is_seq_item(&rest) {
                // `- key: value` opens a mapping whose keys line up after "- ".
                let offset = line.text.len() - rest.len();
                self.lines[self.pos].indent = indent + offset;
                self.lines[self.pos].text = rest;
                items.push(self.block(indent + offset, depth + 1)?);
            } else {
                self.pos += 1;
                items.push(scalar(&rest).map_err(|m| self.err(number, m))?);
            }
        }
        Ok(Value::List(items))
    }
}

fn is_seq_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// Removes a comment: `#` at the start or after whitespace, outside quotes.
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev_space => return &line[..i],
            None => {}
        }
        prev_space = c == ' ' || c == '\t';
    }
    line
}

/// Splits `key: value` / `key:` at the first colon followed by a space or the
/// end of the line, outside quotes.
fn split_key(text: &str) -> Option<(String, String)> {
    let mut quote: Option<char> = None;
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if (c == '"' || c == '\'') && i == 0 => quote = Some(c),
            None if c == ':' && (i + 1 == bytes.len() || bytes[i + 1] == b' ') => {
                let key = text[..i].trim_end();
                if key.is_empty() {
                    return None;
                }
                return Some((key.to_owned(), text[i + 1..].trim().to_owned()));
            }
            None => {}
        }
    }
    None
}

fn unquote_key(key: &str) -> Result<String, String> {
    match scalar(key)? {
        Value::Str(s) => Ok(s),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Int(i) => Ok(i.to_string()),
        _ => Err(format!("key {key:?} is not a string")),
    }
}

/// One scalar (or `[]`, `{}`, `[a, b]`).
fn scalar(text: &str) -> Result<Value, String> {
    let t = text.trim();
    if let Some(inner) = t.strip_prefix('"') {
        let body = inner
            .strip_suffix('"')
            .ok_or("unterminated double-quoted string")?;
        return double_quoted(body).map(Value::Str);
    }
    if let Some(inner) = t.strip_prefix('\'') {
        let body = inner
            .strip_suffix('\'')
            .ok_or("unterminated single-quoted string")?;
        return Ok(Value::Str(body.replace("''", "'")));
    }
    if t == "{}" {
        return Ok(Value::Map(BTreeMap::new()));
    }
    if let Some(inner) = t.strip_prefix('[') {
        let body = inner.strip_suffix(']').ok_or("unterminated flow list")?;
        if body.trim().is_empty() {
            return Ok(Value::List(Vec::new()));
        }
        if body.contains(['[', '{', '"', '\'']) {
            return Err("flow lists may hold only plain scalars; use a block list".into());
        }
        return body
            .split(',')
            .map(|item| scalar(item.trim()))
            .collect::<Result<_, _>>()
            .map(Value::List);
    }
    if t.starts_with(['{', '&', '*', '!', '|', '>', '%', '@', '`']) {
        return Err(format!("{t:?}: this YAML form is not supported in values"));
    }
    Ok(plain(t))
}

fn plain(t: &str) -> Value {
    match t {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        _ => t
            .parse::<i64>()
            .map_or_else(|_| Value::Str(t.to_owned()), Value::Int),
    }
}

fn double_quoted(body: &str) -> Result<String, String> {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        if c == '"' {
            return Err("unescaped quote inside a double-quoted string".into());
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some('"') => out.push('"'),
            Some('/') => out.push('/'),
            other => return Err(format!("unsupported escape \\{}", other.unwrap_or(' '))),
        }
    }
    Ok(out)
}

/// Applies `KEY=VALUE` (KEY dotted) to `values`; VALUE is typed like a plain
/// YAML scalar (true, 42, null, else a string).
pub fn apply_set(values: &mut Value, assignment: &str) -> Result<(), ValuesError> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| ValuesError::BadSet(assignment.to_owned()))?;
    let path: Vec<&str> = key.split('.').collect();
    if path.iter().any(|p| p.is_empty()) {
        return Err(ValuesError::BadSet(assignment.to_owned()));
    }
    let new = plain(raw.trim());
    let mut node = values;
    for (i, part) in path.iter().enumerate() {
        let at = path[..=i].join(".");
        let Value::Map(map) = node else {
            return Err(ValuesError::UnknownKey(at));
        };
        let free_form = map.is_empty();
        let last = i + 1 == path.len();
        if !map.contains_key(*part) {
            if !free_form {
                return Err(ValuesError::UnknownKey(at));
            }
            let fresh = if last {
                Value::Null
            } else {
                Value::Map(BTreeMap::new())
            };
            map.insert((*part).to_owned(), fresh);
        }
        let Some(child) = map.get_mut(*part) else {
            return Err(ValuesError::UnknownKey(at));
        };
        if last {
            check_shape(&at, child, &new)?;
            *child = new;
            return Ok(());
        }
        node = child;
    }
    Ok(())
}

/// A scalar cannot replace a map or a list of the chart (and vice versa).
fn check_shape(path: &str, old: &Value, new: &Value) -> Result<(), ValuesError> {
    let container = |v: &Value| matches!(v, Value::List(_) | Value::Map(_));
    let mismatch = match (old, new) {
        (Value::Null, _) | (_, Value::Null) => false,
        (Value::Map(_), Value::Map(_)) | (Value::List(_), Value::List(_)) => false,
        (a, b) => container(a) || container(b),
    };
    if mismatch {
        return Err(ValuesError::WrongShape {
            path: path.to_owned(),
            expected: old.kind(),
            found: new.kind(),
        });
    }
    Ok(())
}

/// Layers `overlay` (a `-f` file) onto `base`: maps merge key by key, anything
/// else replaces. A key `base` lacks is refused unless `base`'s map is empty
/// (free-form, like nodeSelector).
pub fn merge(base: &mut Value, overlay: Value, path: &str) -> Result<(), ValuesError> {
    match (base, overlay) {
        (Value::Map(b), Value::Map(o)) => {
            let free_form = b.is_empty();
            for (k, v) in o {
                let at = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v, &at)?,
                    None if free_form => {
                        b.insert(k, v);
                    }
                    None => return Err(ValuesError::UnknownKey(at)),
                }
            }
            Ok(())
        }
        (b, o) => {
            check_shape(path, b, &o)?;
            *b = o;
            Ok(())
        }
    }
}

/// The YAML of `value`, keys sorted, without a trailing newline (as Helm's
/// `toYaml` gives it).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    write_yaml(value, 0, &mut out);
    while out.ends_with('\n') {
        out.pop();
    }
    out
}

fn write_yaml(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Map(m) if !m.is_empty() => {
            for (k, v) in m {
                out.push_str(&pad);
                out.push_str(&yaml_scalar(&Value::Str(k.clone())));
                out.push(':');
                write_child(v, indent, out);
            }
        }
        Value::List(l) if !l.is_empty() => {
            for item in l {
                out.push_str(&pad);
                out.push('-');
                match item {
                    Value::Map(m) if !m.is_empty() => {
                        // The first key goes on the dash's line.
                        let mut nested = String::new();
                        write_yaml(item, indent + 2, &mut nested);
                        out.push(' ');
                        out.push_str(&nested[indent + 2..]);
                    }
                    _ => write_child(item, indent, out),
                }
            }
        }
        scalar => {
            out.push_str(&pad);
            out.push_str(&yaml_scalar(scalar));
            out.push('\n');
        }
    }
}

fn write_child(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Map(m) if !m.is_empty() => {
            out.push('\n');
            write_yaml(value, indent + 2, out);
        }
        Value::List(l) if !l.is_empty() => {
            out.push('\n');
            write_yaml(value, indent + 2, out);
        }
        _ => {
            out.push(' ');
            out.push_str(&yaml_scalar(value));
            out.push('\n');
        }
    }
}

/// A scalar as YAML; strings that would read back as something else (or
/// carry YAML syntax) are double-quoted.
pub fn yaml_scalar(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Str(s) => {
            // Floats and YAML 1.1's yes/no/on/off would read back (in
            // Kubernetes' YAML) as something other than a string.
            let yaml11 = matches!(
                s.to_ascii_lowercase().as_str(),
                "y" | "n" | "yes" | "no" | "on" | "off" | ".inf" | "-.inf" | ".nan"
            );
            let reads_back = plain(s) == Value::Str(s.clone())
                && !yaml11
                && s.parse::<f64>().is_err()
                && !s.is_empty()
                && s.trim() == s
                && !s.contains(": ")
                && !s.contains(" #")
                && !s.ends_with(':')
                && !s.contains('\n')
                && scalar(s).is_ok_and(|v| v == Value::Str(s.clone()))
                && !s.starts_with(['-', '?', ',', '[', ']', '{', '}', '#', '"', '\'']);
            if reads_back { s.clone() } else { go_quote(s) }
        }
        Value::List(_) => "[]".into(),
        Value::Map(_) => "{}".into(),
    }
}

/// A double-quoted string with the escapes Go's `%q`, YAML and TOML share.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, Value)]) -> Value {
        Value::Map(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        )
    }
    fn s(v: &str) -> Value {
        Value::Str(v.to_owned())
    }

    #[test]
    fn parses_the_subset() {
        let text = "# top\na: 1\nb:\n  c: \"x: y\" # note\n  d: 'it''s'\n  e: []\n  f: {}\nlist:\n- one\n- k: v\n  w: 2\nflow: [a, 3]\nnone:\nurl: https://h:1/p#frag\n";
        let v = parse_yaml("t", text).unwrap();
        assert_eq!(
            v,
            map(&[
                ("a", Value::Int(1)),
                (
                    "b",
                    map(&[
                        ("c", s("x: y")),
                        ("d", s("it's")),
                        ("e", Value::List(vec![])),
                        ("f", Value::Map(BTreeMap::new())),
                    ])
                ),
                (
                    "list",
                    Value::List(vec![s("one"), map(&[("k", s("v")), ("w", Value::Int(2))])])
                ),
                ("flow", Value::List(vec![s("a"), Value::Int(3)])),
                ("none", Value::Null),
                ("url", s("https://h:1/p#frag")),
            ])
        );
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for (text, needle) in [
            ("a: 1\n   b: 2\n", "line 2"),
            ("a: &anchor 1\n", "not supported"),
            ("a: 1\na: 2\n", "twice"),
            ("a: \"open\n", "unterminated"),
            ("- a\nb: 1\n", "line 2"),
            ("just text\n", "expected `key: value`"),
        ] {
            let e = parse_yaml("t", text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?} gave {e}");
        }
    }

    #[test]
    fn set_types_values_and_refuses_unknown_keys() {
        let mut v = parse_yaml("t", "a:\n  b: x\n  free: {}\n  list: []\n").unwrap();
        apply_set(&mut v, "a.b=true").unwrap();
        apply_set(&mut v, "a.free.k=7").unwrap();
        assert_eq!(
            v,
            parse_yaml("t", "a:\n  b: true\n  free:\n    k: 7\n  list: []\n").unwrap()
        );
        assert!(
            matches!(apply_set(&mut v, "a.c=1"), Err(ValuesError::UnknownKey(k)) if k == "a.c")
        );
        assert!(matches!(
            apply_set(&mut v, "a=1"),
            Err(ValuesError::WrongShape { .. })
        ));
        assert!(matches!(
            apply_set(&mut v, "a.list=x"),
            Err(ValuesError::WrongShape { .. })
        ));
        assert!(matches!(
            apply_set(&mut v, "a..b=1"),
            Err(ValuesError::BadSet(_))
        ));
        assert!(matches!(
            apply_set(&mut v, "novalue"),
            Err(ValuesError::BadSet(_))
        ));
    }

    #[test]
    fn merge_layers_files() {
        let mut v = parse_yaml("t", "a:\n  b: x\n  c: 1\nsel: {}\n").unwrap();
        merge(
            &mut v,
            parse_yaml("f", "a:\n  c: 2\nsel:\n  zone: z\n").unwrap(),
            "",
        )
        .unwrap();
        assert_eq!(
            v,
            parse_yaml("t", "a:\n  b: x\n  c: 2\nsel:\n  zone: z\n").unwrap()
        );
        let e = merge(&mut v, parse_yaml("f", "a:\n  typo: 1\n").unwrap(), "").unwrap_err();
        assert!(matches!(e, ValuesError::UnknownKey(k) if k == "a.typo"));
    }

    #[test]
    fn to_yaml_reads_back() {
        let text = "a:\n  b: \"true\"\n  c: \"x: y\"\n  d: plain\n  e: \"\"\nl:\n  - k: v\n    w:\n      - 1\n  - two\nm: {}\n";
        let v = parse_yaml("t", text).unwrap();
        let out = to_yaml(&v);
        assert_eq!(parse_yaml("out", &out).unwrap(), v, "{out}");
        assert!(out.contains("b: \"true\""));
        for tricky in [
            "0440", "1.5", "1e3", "on", "No", "- x", "a: b", "x #y", "", " pad", "#c", "{}",
        ] {
            let quoted = to_yaml(&Value::Str(tricky.to_owned()));
            assert!(quoted.starts_with('"'), "{tricky:?} gave {quoted}");
        }
        assert_eq!(to_yaml(&Value::Str("500m".into())), "500m");
    }

    #[test]
    fn tabs_cannot_indent() {
        let e = parse_yaml("t", "a:\n \tb: 1\n").unwrap_err().to_string();
        assert!(e.contains("line 2: tabs"), "{e}");
    }
}
