//! The subset of Go's text/template (as Helm uses it) that the chart is
//! written in: `{{ .Values.a.b }}`, `{{ .Release.Name }}`, `{{- -}}` trim
//! markers, `if`/`else if`/`else`/`end`, `range $v := X` and
//! `range $k, $v := X` over lists and maps, pipelines, and the functions
//! `quote`, `toYaml`, `nindent`, `indent`, `default`, `not`, `and`, `or`, `eq`,
//! `int`, `lt` (integers) and `fail` (stops rendering with the chart's
//! message). Helm reads numbers from values files as floats and from `--set`
//! as integers, so a chart compares `X | int | lt 1`, never X itself.
//! A reference to a value the chart does not define is an error, not an
//! empty string, so a typo in a template or a values file cannot pass.

use std::collections::BTreeMap;

use super::values::{Value, go_quote, to_yaml};

/// Why a template cannot be parsed or rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    #[error("{template} line {line}: {message}")]
    At {
        template: String,
        line: usize,
        message: String,
    },
}

#[derive(Debug, Clone)]
enum Operand {
    /// `.A.B.C` from the root (`.` alone is the root).
    Field(Vec<String>),
    /// `$x.A.B`
    Var(String, Vec<String>),
    Literal(Value),
    Func(String),
}

type Command = Vec<Operand>;
type Pipeline = Vec<Command>;

#[derive(Debug)]
enum Node {
    Text(String),
    Output(Pipeline, usize),
    If {
        branches: Vec<(Pipeline, usize, Vec<Node>)>,
        otherwise: Vec<Node>,
    },
    Range {
        key: Option<String>,
        value: String,
        over: Pipeline,
        line: usize,
        body: Vec<Node>,
    },
}

/// A parsed template.
#[derive(Debug)]
pub struct Template {
    name: String,
    nodes: Vec<Node>,
}

enum Token {
    Text(String),
    Action(String, usize),
}

const FUNCS: &[&str] = &[
    "quote", "toYaml", "nindent", "indent", "default", "not", "and", "or", "eq", "int", "lt",
    "fail",
];

fn lex(name: &str, src: &str) -> Result<Vec<Token>, TemplateError> {
    let mut tokens = Vec::new();
    let mut rest = src;
    let mut line = 1;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut text = &rest[..start];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[start + 2..];
        let trim_before = after.starts_with("- ") || after.starts_with("-\n");
        if trim_before {
            text = text.trim_end();
        }
        tokens.push(Token::Text(text.to_owned()));
        line += rest[..start].matches('\n').count();
        let end = after.find("}}").ok_or_else(|| TemplateError::At {
            template: name.to_owned(),
            line,
            message: "`{{` without `}}`".into(),
        })?;
        let mut body = &after[..end];
        if trim_before {
            body = &body[1..];
        }
        trim_next = body.ends_with(" -") || body.ends_with("\n-");
        if trim_next {
            body = &body[..body.len() - 1];
        }
        let body = body.trim();
        if !(body.starts_with("/*") && body.ends_with("*/")) {
            tokens.push(Token::Action(body.to_owned(), line));
        }
        line += after[..end].matches('\n').count();
        rest = &after[end + 2..];
    }
    let text = if trim_next { rest.trim_start() } else { rest };
    tokens.push(Token::Text(text.to_owned()));
    Ok(tokens)
}

impl Template {
    /// Parses `src`; `name` appears in errors.
    pub fn parse(name: &str, src: &str) -> Result<Self, TemplateError> {
        let tokens = lex(name, src)?;
        let mut parser = TemplateParser {
            name,
            tokens: tokens.into_iter().peekable(),
        };
        let (nodes, stop) = parser.nodes()?;
        if let Some((word, line)) = stop {
            return Err(parser.err(line, format!("`{word}` without an opening if/range")));
        }
        Ok(Template {
            name: name.to_owned(),
            nodes,
        })
    }

    /// Renders with `root` as `.` (a map holding `Values` and `Release`).
    pub fn render(&self, root: &Value) -> Result<String, TemplateError> {
        let mut out = String::new();
        let mut scope = Scope {
            name: &self.name,
            root,
            vars: Vec::new(),
        };
        scope.nodes(&self.nodes, &mut out)?;
        Ok(out)
    }
}

struct TemplateParser<'a, I: Iterator<Item = Token>> {
    name: &'a str,
    tokens: std::iter::Peekable<I>,
}

/// What ended a list of nodes: `else ...`, `end` (with its line), or the end of input.
type Stop = Option<(String, usize)>;

impl<I: Iterator<Item = Token>> TemplateParser<'_, I> {
    fn err(&self, line: usize, message: impl Into<String>) -> TemplateError {
        TemplateError::At {
            template: self.name.to_owned(),
            line,
            message: message.into(),
        }
    }

    fn nodes(&mut self) -> Result<(Vec<Node>, Stop), TemplateError> {
        let mut nodes = Vec::new();
        while let Some(token) = self.tokens.next() {
            let (body, line) = match token {
                Token::Text(t) => {
                    if !t.is_empty() {
                        nodes.push(Node::Text(t));
                    }
                    continue;
                }
                Token::Action(body, line) => (body, line),
            };
            let (word, rest) = body.split_once(char::is_whitespace).unwrap_or((&body, ""));
            match word {
                "end" | "else" => return Ok((nodes, Some((body.clone(), line)))),
                "if" => nodes.push(self.if_node(rest, line)?),
                "range" => nodes.push(self.range_node(rest, line)?),
                "with" | "define" | "template" | "include" | "block" | "tpl" => {
                    return Err(
                        self.err(line, format!("`{word}` is not supported by this renderer"))
                    );
                }
                _ => nodes.push(Node::Output(self.pipeline(&body, line)?, line)),
            }
        }
        Ok((nodes, None))
    }

    fn if_node(&mut self, cond: &str, line: usize) -> Result<Node, TemplateError> {
        let mut branches = Vec::new();
        let mut cond = self.pipeline(cond, line)?;
        let mut cond_line = line;
        loop {
            let (body, stop) = self.nodes()?;
            branches.push((cond, cond_line, body));
            match stop {
                Some((word, _)) if word == "end" => {
                    return Ok(Node::If {
                        branches,
                        otherwise: Vec::new(),
                    });
                }
                Some((word, l)) if word == "else" => {
                    let (otherwise, stop) = self.nodes()?;
                    return match stop {
                        Some((w, _)) if w == "end" => Ok(Node::If {
                            branches,
                            otherwise,
                        }),
                        _ => Err(self.err(l, "`else` without `end`")),
                    };
                }
                Some((word, l)) if word.starts_with("else if ") => {
                    cond = self.pipeline(&word["else if ".len()..], l)?;
                    cond_line = l;
                }
                _ => return Err(self.err(line, "`if` without `end`")),
            }
        }
    }

    fn range_node(&mut self, header: &str, line: usize) -> Result<Node, TemplateError> {
        let (vars, over) = header
            .split_once(":=")
            .ok_or_else(|| self.err(line, "write `range $v := X` or `range $k, $v := X`"))?;
        let names: Vec<&str> = vars.split(',').map(str::trim).collect();
        let valid = |n: &str| {
            n.len() > 1
                && n.starts_with('$')
                && n[1..]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if names.is_empty() || names.len() > 2 || !names.iter().all(|n| valid(n)) {
            return Err(self.err(line, format!("bad range variables {vars:?}")));
        }
        let over = self.pipeline(over, line)?;
        let (body, stop) = self.nodes()?;
        match stop {
            Some((w, _)) if w == "end" => {}
            Some((w, l)) => return Err(self.err(l, format!("`{w}` inside range is not supported"))),
            None => return Err(self.err(line, "`range` without `end`")),
        }
        let (key, value) = match names.as_slice() {
            [v] => (None, v[1..].to_owned()),
            [k, v] => (Some(k[1..].to_owned()), v[1..].to_owned()),
            _ => return Err(self.err(line, "bad range variables")),
        };
        Ok(Node::Range {
            key,
            value,
            over,
            line,
            body,
        })
    }

    fn pipeline(&self, src: &str, line: usize) -> Result<Pipeline, TemplateError> {
        let words = split_words(src).map_err(|m| self.err(line, m))?;
        let mut pipeline = vec![Vec::new()];
        for word in words {
            if word == "|" {
                pipeline.push(Vec::new());
                continue;
            }
            let operand = self.operand(&word, line)?;
            if let Some(last) = pipeline.last_mut() {
                last.push(operand);
            }
        }
        if pipeline.iter().any(Vec::is_empty) {
            return Err(self.err(line, format!("empty command in {src:?}")));
        }
        for command in &pipeline[1..] {
            if !matches!(command.first(), Some(Operand::Func(_))) {
                return Err(self.err(line, "only a function can follow `|`"));
            }
        }
        Ok(pipeline)
    }

    fn operand(&self, word: &str, line: usize) -> Result<Operand, TemplateError> {
        let path = |s: &str| -> Vec<String> {
            s.split('.')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()
        };
        if let Some(rest) = word.strip_prefix('"') {
            let s = rest
                .strip_suffix('"')
                .ok_or_else(|| self.err(line, "unterminated string"))?;
            return Ok(Operand::Literal(Value::Str(
                s.replace("\\\"", "\"").replace("\\\\", "\\"),
            )));
        }
        if word.starts_with('.') {
            let p = path(word);
            if p.iter()
                .any(|s| !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            {
                return Err(self.err(line, format!("bad field {word:?}")));
            }
            return Ok(Operand::Field(p));
        }
        if let Some(rest) = word.strip_prefix('$') {
            let (name, fields) = rest.split_once('.').unwrap_or((rest, ""));
            return Ok(Operand::Var(name.to_owned(), path(fields)));
        }
        match word {
            "true" => return Ok(Operand::Literal(Value::Bool(true))),
            "false" => return Ok(Operand::Literal(Value::Bool(false))),
            _ => {}
        }
        if let Ok(i) = word.parse::<i64>() {
            return Ok(Operand::Literal(Value::Int(i)));
        }
        if FUNCS.contains(&word) {
            return Ok(Operand::Func(word.to_owned()));
        }
        Err(self.err(line, format!("unknown function or value {word:?}")))
    }
}

/// Splits an action into words: quoted strings stay whole, `|` is its own word.
fn split_words(src: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = src.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '|' {
            chars.next();
            words.push("|".to_owned());
        } else if c == '(' || c == ')' {
            return Err("parentheses are not supported; use a pipeline".into());
        } else if c == '"' {
            let mut w = String::from('"');
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                w.push(c);
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        w.push(n);
                    }
                } else if c == '"' {
                    closed = true;
                    break;
                }
            }
            if !closed {
                return Err("unterminated string".into());
            }
            words.push(w);
        } else {
            let mut w = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '|' {
                    break;
                }
                w.push(c);
                chars.next();
            }
            words.push(w);
        }
    }
    Ok(words)
}

struct Scope<'a> {
    name: &'a str,
    root: &'a Value,
    vars: Vec<(String, Value)>,
}

impl Scope<'_> {
    fn err(&self, line: usize, message: impl Into<String>) -> TemplateError {
        TemplateError::At {
            template: self.name.to_owned(),
            line,
            message: message.into(),
        }
    }

    fn nodes(&mut self, nodes: &[Node], out: &mut String) -> Result<(), TemplateError> {
        for node in nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Output(p, line) => {
                    let v = self.pipeline(p, *line)?;
                    out.push_str(&self.print(&v, *line)?);
                }
                Node::If {
                    branches,
                    otherwise,
                } => {
                    let mut taken = false;
                    for (cond, line, body) in branches {
                        if self.pipeline(cond, *line)?.truthy() {
                            self.nodes(body, out)?;
                            taken = true;
                            break;
                        }
                    }
                    if !taken {
                        self.nodes(otherwise, out)?;
                    }
                }
                Node::Range {
                    key,
                    value,
                    over,
                    line,
                    body,
                } => {
                    let items: Vec<(Value, Value)> = match self.pipeline(over, *line)? {
                        Value::Null => Vec::new(),
                        Value::List(l) => {
                            (0_i64..).zip(l).map(|(i, v)| (Value::Int(i), v)).collect()
                        }
                        Value::Map(m) => m.into_iter().map(|(k, v)| (Value::Str(k), v)).collect(),
                        other => {
                            return Err(
                                self.err(*line, format!("cannot range over {}", other.kind()))
                            );
                        }
                    };
                    for (k, v) in items {
                        let mark = self.vars.len();
                        if let Some(key) = key {
                            self.vars.push((key.clone(), k));
                        }
                        self.vars.push((value.clone(), v));
                        let result = self.nodes(body, out);
                        self.vars.truncate(mark);
                        result?;
                    }
                }
            }
        }
        Ok(())
    }

    fn print(&self, v: &Value, line: usize) -> Result<String, TemplateError> {
        match v {
            Value::Null => Ok(String::new()),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Int(i) => Ok(i.to_string()),
            Value::Str(s) => Ok(s.clone()),
            Value::List(_) | Value::Map(_) => Err(self.err(
                line,
                format!("cannot print {}; pipe it to toYaml", v.kind()),
            )),
        }
    }

    fn lookup(
        &self,
        start: &Value,
        origin: &str,
        fields: &[String],
        line: usize,
    ) -> Result<Value, TemplateError> {
        let mut v = start;
        let mut at = origin.to_owned();
        for f in fields {
            at.push('.');
            at.push_str(f);
            v = match v {
                Value::Map(m) => m
                    .get(f)
                    .ok_or_else(|| self.err(line, format!("unknown value {at}")))?,
                _ => {
                    return Err(self.err(
                        line,
                        format!("unknown value {at}: its parent is {}", v.kind()),
                    ));
                }
            };
        }
        Ok(v.clone())
    }

    fn operand(&self, o: &Operand, line: usize) -> Result<Value, TemplateError> {
        match o {
            Operand::Field(path) => self.lookup(self.root, "", path, line),
            Operand::Var(name, path) => {
                let (_, v) = self
                    .vars
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .ok_or_else(|| self.err(line, format!("undefined variable ${name}")))?;
                self.lookup(v, &format!("${name}"), path, line)
            }
            Operand::Literal(v) => Ok(v.clone()),
            Operand::Func(f) => Err(self.err(line, format!("{f} used as a value"))),
        }
    }

    fn pipeline(&self, p: &Pipeline, line: usize) -> Result<Value, TemplateError> {
        let mut piped: Option<Value> = None;
        for command in p {
            let (head, rest) = command
                .split_first()
                .ok_or_else(|| self.err(line, "empty command"))?;
            piped = Some(match head {
                Operand::Func(f) => {
                    let mut args = rest
                        .iter()
                        .map(|o| self.operand(o, line))
                        .collect::<Result<Vec<_>, _>>()?;
                    args.extend(piped.take());
                    self.call(f, args, line)?
                }
                value => {
                    if !rest.is_empty() {
                        return Err(self.err(line, "a value cannot take arguments"));
                    }
                    self.operand(value, line)?
                }
            });
        }
        piped.ok_or_else(|| self.err(line, "empty pipeline"))
    }

    fn call(&self, f: &str, args: Vec<Value>, line: usize) -> Result<Value, TemplateError> {
        let arity = |n: usize| -> Result<(), TemplateError> {
            if args.len() == n {
                Ok(())
            } else {
                Err(self.err(
                    line,
                    format!("{f} takes {n} argument(s), got {}", args.len()),
                ))
            }
        };
        let int = |v: &Value| -> Result<usize, TemplateError> {
            match v {
                Value::Int(i) if (0..=200).contains(i) => Ok(usize::try_from(*i).unwrap_or(0)),
                _ => Err(self.err(line, format!("{f}: the width must be an integer 0..=200"))),
            }
        };
        let indent_lines = |n: usize, s: &str| -> String {
            let pad = " ".repeat(n);
            s.split('\n')
                .map(|l| {
                    if l.is_empty() {
                        String::new()
                    } else {
                        format!("{pad}{l}")
                    }
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        match f {
            "quote" => {
                arity(1)?;
                Ok(Value::Str(go_quote(&self.print(&args[0], line)?)))
            }
            "toYaml" => {
                arity(1)?;
                Ok(Value::Str(to_yaml(&args[0])))
            }
            "nindent" | "indent" => {
                arity(2)?;
                let n = int(&args[0])?;
                let s = self.print(&args[1], line)?;
                let body = indent_lines(n, &s);
                Ok(Value::Str(if f == "nindent" {
                    format!("\n{body}")
                } else {
                    body
                }))
            }
            "default" => {
                arity(2)?;
                let mut args = args;
                let given = args.pop().unwrap_or(Value::Null);
                let fallback = args.pop().unwrap_or(Value::Null);
                Ok(if given.truthy() { given } else { fallback })
            }
            "not" => {
                arity(1)?;
                Ok(Value::Bool(!args[0].truthy()))
            }
            "and" | "or" => {
                if args.len() < 2 {
                    return Err(self.err(line, format!("{f} takes at least 2 arguments")));
                }
                let want = f == "or";
                let n = args.len();
                Ok(args
                    .into_iter()
                    .enumerate()
                    .find(|(i, v)| v.truthy() == want || i + 1 == n)
                    .map(|(_, v)| v)
                    .unwrap_or(Value::Null))
            }
            "eq" => {
                arity(2)?;
                Ok(Value::Bool(args[0] == args[1]))
            }
            "int" => {
                arity(1)?;
                match &args[0] {
                    Value::Int(i) => Ok(Value::Int(*i)),
                    Value::Str(s) => s
                        .trim()
                        .parse()
                        .map(Value::Int)
                        .map_err(|_| self.err(line, format!("int: {s:?} is not an integer"))),
                    v => Err(self.err(line, format!("int: cannot make {} an integer", v.kind()))),
                }
            }
            "lt" => {
                arity(2)?;
                match (&args[0], &args[1]) {
                    (Value::Int(a), Value::Int(b)) => Ok(Value::Bool(a < b)),
                    (a, b) => Err(self.err(
                        line,
                        format!(
                            "lt compares two integers, not {} and {}",
                            a.kind(),
                            b.kind()
                        ),
                    )),
                }
            }
            "fail" => {
                arity(1)?;
                Err(self.err(line, self.print(&args[0], line)?))
            }
            _ => Err(self.err(line, format!("unknown function {f}"))),
        }
    }
}

/// The root a chart's templates see: `.Values` and `.Release.{Name,Namespace}`.
pub fn root(values: Value, release: &str, namespace: &str) -> Value {
    let mut rel = BTreeMap::new();
    rel.insert("Name".to_owned(), Value::Str(release.to_owned()));
    rel.insert("Namespace".to_owned(), Value::Str(namespace.to_owned()));
    let mut root = BTreeMap::new();
    root.insert("Values".to_owned(), values);
    root.insert("Release".to_owned(), Value::Map(rel));
    Value::Map(root)
}

#[cfg(test)]
mod tests {
    use super::super::values::parse_yaml;
    use super::*;

    fn render(src: &str, values: &str) -> Result<String, TemplateError> {
        let values = parse_yaml("v", values).unwrap();
        Template::parse("t", src)?.render(&root(values, "rel", "ns"))
    }

    #[test]
    fn renders_each_construct() {
        let values = "name: web\non: true\noff: false\nempty: \"\"\nlist: [a, b]\nmap:\n  k: v\n  j: w\nres:\n  cpu: 1\n";
        for (src, want) in [
            (
                "{{ .Values.name }}/{{ .Release.Name }}.{{ .Release.Namespace }}",
                "web/rel.ns",
            ),
            ("{{ .Values.name | quote }}", "\"web\""),
            ("{{ quote .Values.name }}", "\"web\""),
            (
                "a\n  {{- if .Values.on }}\n  b\n  {{- end }}\nc",
                "a\n  b\nc",
            ),
            ("a\n  {{- if .Values.off }}\n  b\n  {{- end }}\nc", "a\nc"),
            (
                "{{ if .Values.off }}x{{ else if .Values.on }}y{{ else }}z{{ end }}",
                "y",
            ),
            ("{{ if .Values.off }}x{{ else }}z{{ end }}", "z"),
            (
                "{{ range $i, $e := .Values.list }}{{ if $i }},{{ end }}{{ $e }}{{ end }}",
                "a,b",
            ),
            (
                "{{ range $k, $v := .Values.map }}{{ $k }}={{ $v }};{{ end }}",
                "j=w;k=v;",
            ),
            ("{{ .Values.empty | default \"dflt\" }}", "dflt"),
            ("{{ default \"dflt\" .Values.name }}", "web"),
            (
                "{{ or .Values.off .Values.on }} {{ and .Values.on .Values.off }} {{ not .Values.off }}",
                "true false true",
            ),
            ("{{ eq .Values.name \"web\" }}", "true"),
            (
                "{{ lt 0 .Values.res.cpu }} {{ .Values.res.cpu | int | lt 1 }} {{ lt .Values.res.cpu 2 }}",
                "true false true",
            ),
            ("{{ \"7\" | int }}", "7"),
            (
                "{{ if .Values.res.cpu | int | lt 1 }}{{ fail \"never\" }}{{ end }}ok",
                "ok",
            ),
            (
                "r:\n  {{- .Values.res | toYaml | nindent 2 }}",
                "r:\n  cpu: 1",
            ),
            ("{{/* a comment */}}x  {{- /* trimmed */ -}}  y", "xy"),
        ] {
            assert_eq!(render(src, values).unwrap(), want, "{src}");
        }
    }

    #[test]
    fn errors_name_the_template_and_line() {
        let values = "a:\n  b: 1\nlist: [x]\n";
        for (src, needle) in [
            ("\n{{ .Values.a.c }}", "t line 2: unknown value .Values.a.c"),
            ("{{ .Values.a.b.c }}", "its parent is an integer"),
            ("{{ .Values.a }}", "pipe it to toYaml"),
            ("{{ if .Values.a.b }}x", "`if` without `end`"),
            ("{{ end }}", "without an opening"),
            ("{{ include \"x\" . }}", "not supported"),
            (
                "{{ .Values.a.b | upper }}",
                "unknown function or value \"upper\"",
            ),
            ("{{ $x }}", "undefined variable $x"),
            (
                "x\n{{ if .Values.a.b }}{{ fail \"a.b needs c\" }}{{ end }}",
                "t line 2: a.b needs c",
            ),
            ("{{ lt .Values.a.b \"1\" }}", "lt compares two integers"),
            ("{{ lt .Values.a.b }}", "lt takes 2 argument(s)"),
            ("{{ \"x\" | int }}", "int: \"x\" is not an integer"),
            ("{{ range .Values.list }}{{ end }}", "range $v := X"),
            ("{{ .Values.a.b", "without `}}`"),
            (
                "{{ nindent \"x\" .Values.a.b }}",
                "width must be an integer",
            ),
            (
                "{{ .Values.a.b | .Values.a.b }}",
                "only a function can follow",
            ),
        ] {
            let e = render(src, values).unwrap_err().to_string();
            assert!(e.contains(needle), "{src:?} gave {e}");
        }
    }
}
