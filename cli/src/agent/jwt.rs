//! JWT-SVIDs through the Workload API: fetching this process's own, and
//! having the agent validate someone else's.

use std::fmt::Write as _;
use std::time::SystemTime;

use anyhow::bail;
use serde::Serialize;
use serde_json::{Map, Value};
use signet_identity::SpiffeId;
use signet_identity::jwt::peek_claims;
use signet_proto::workload::{JwtsvidRequest, ValidateJwtsvidRequest};

use super::client::{self, Client, request};
use crate::output::{self, Format};
use signet_identity::unix_time::unix_seconds;

/// Claims holding Unix times, shown with their calendar form too.
const TIME_CLAIMS: [&str; 3] = ["exp", "iat", "nbf"];

#[derive(Debug, Serialize)]
struct JwtView {
    spiffe_id: String,
    token: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    hint: String,
    /// As the token's payload says, unverified (the agent just made it).
    claims: Value,
}

#[derive(Debug, Serialize)]
struct JwtList {
    svids: Vec<JwtView>,
}

/// `signet agent svid fetch --jwt --audience AUD... [--spiffe-id ID]`.
///
/// # Errors
/// A failed call, or an answer with no token.
pub async fn fetch(
    client: &mut Client,
    audience: Vec<String>,
    spiffe_id: Option<SpiffeId>,
    format: Format,
) -> anyhow::Result<()> {
    let message = JwtsvidRequest {
        audience,
        spiffe_id: spiffe_id.map(|id| id.to_string()).unwrap_or_default(),
    };
    let response = client::call("FetchJWTSVID", client.fetch_jwtsvid(request(message))).await?;
    if response.svids.is_empty() {
        bail!("FetchJWTSVID: the Workload API sent no JWT-SVID");
    }
    let list = JwtList {
        svids: response
            .svids
            .into_iter()
            .map(|s| JwtView {
                claims: peek_claims(&s.svid).map_or(Value::Null, |c| c.to_json()),
                spiffe_id: s.spiffe_id,
                token: s.svid,
                hint: s.hint,
            })
            .collect(),
    };
    match format {
        Format::Json => output::print_json(&list),
        Format::Text => output::print(&render_tokens(&list, unix_seconds(SystemTime::now()))),
    }
}

/// Each token alone on its line (so `| head -n1` is the default one), then
/// who it is for and until when.
fn render_tokens(list: &JwtList, now: i64) -> String {
    let mut out = String::new();
    for (i, svid) in list.svids.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "{}", output::printable(&svid.token));
        output::field(
            &mut out,
            "",
            "SPIFFE ID",
            &output::printable(&svid.spiffe_id),
        );
        if let Some(aud) = svid.claims.get("aud") {
            output::field(&mut out, "", "Audience", &output::printable(&plain(aud)));
        }
        if let Some(exp) = svid.claims.get("exp").and_then(Value::as_i64) {
            let expires = format!("{} ({})", output::rfc3339(exp), output::time_left(exp, now));
            output::field(&mut out, "", "Expires", &expires);
        }
        if !svid.hint.is_empty() {
            output::field(&mut out, "", "Hint", &output::printable(&svid.hint));
        }
    }
    out
}

#[derive(Debug, Serialize)]
struct Validated {
    spiffe_id: String,
    claims: Value,
}

/// `signet agent jwt validate --audience AUD TOKEN`.
///
/// # Errors
/// A failed call: an invalid token is `InvalidArgument` from the agent.
pub async fn validate(
    client: &mut Client,
    audience: String,
    token: String,
    format: Format,
) -> anyhow::Result<()> {
    let message = ValidateJwtsvidRequest {
        audience,
        svid: token,
    };
    let response =
        client::call("ValidateJWTSVID", client.validate_jwtsvid(request(message))).await?;
    let validated = Validated {
        spiffe_id: response.spiffe_id,
        claims: response
            .claims
            .map_or_else(|| Value::Object(Map::new()), struct_to_json),
    };
    match format {
        Format::Json => output::print_json(&validated),
        Format::Text => {
            let mut out = format!("OK: {}\n", output::printable(&validated.spiffe_id));
            out.push_str(&render_claims(&validated.claims));
            output::print(&out)
        }
    }
}

/// A protobuf `Struct` as the JSON object it stands for. Numbers that are
/// whole and fit an `i64` become integers, so `exp` reads as it was written.
fn struct_to_json(s: prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .into_iter()
            .map(|(k, v)| (k, value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(v: prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::NumberValue(n)) => number(n),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.into_iter().map(value_to_json).collect()),
    }
}

fn number(n: f64) -> Value {
    // 2^53: beyond it an f64 no longer holds every integer exactly.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if n.fract() == 0.0 && n.abs() <= EXACT {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// `Claims:` and one `  name: value` line per claim, in name order; times
/// get their calendar form.
fn render_claims(claims: &Value) -> String {
    let mut out = String::from("Claims:\n");
    let Some(map) = claims.as_object() else {
        return out;
    };
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    for name in names {
        let value = &map[name];
        let mut shown = plain(value);
        if let (true, Some(t)) = (TIME_CLAIMS.contains(&name.as_str()), value.as_i64()) {
            let _ = write!(shown, " ({})", output::rfc3339(t));
        }
        let _ = writeln!(
            out,
            "  {}: {}",
            output::printable(name),
            output::printable(&shown)
        );
    }
    out
}

/// A string as itself, a list of strings comma-separated, anything else as
/// compact JSON.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::value::Kind;
    use std::collections::BTreeMap;

    fn v(kind: Kind) -> prost_types::Value {
        prost_types::Value { kind: Some(kind) }
    }

    #[test]
    fn struct_claims_become_json() {
        let s = prost_types::Struct {
            fields: BTreeMap::from([
                (
                    "sub".into(),
                    v(Kind::StringValue("spiffe://e.org/a".into())),
                ),
                ("exp".into(), v(Kind::NumberValue(1_700_000_000.0))),
                ("ratio".into(), v(Kind::NumberValue(0.5))),
                ("nan".into(), v(Kind::NumberValue(f64::NAN))),
                ("flag".into(), v(Kind::BoolValue(true))),
                ("none".into(), v(Kind::NullValue(0))),
                (
                    "aud".into(),
                    v(Kind::ListValue(prost_types::ListValue {
                        values: vec![v(Kind::StringValue("x".into()))],
                    })),
                ),
                (
                    "nested".into(),
                    v(Kind::StructValue(prost_types::Struct {
                        fields: BTreeMap::from([("k".into(), v(Kind::NumberValue(-3.0)))]),
                    })),
                ),
            ]),
        };
        let json = struct_to_json(s);
        assert_eq!(
            json,
            serde_json::json!({
                "sub": "spiffe://e.org/a",
                "exp": 1_700_000_000_i64,
                "ratio": 0.5,
                "nan": null,
                "flag": true,
                "none": null,
                "aud": ["x"],
                "nested": {"k": -3},
            })
        );
        assert!(json["exp"].is_i64());
    }

    #[test]
    fn claims_render_in_name_order_with_calendar_times() {
        let claims = serde_json::json!({
            "sub": "spiffe://e.org/a",
            "exp": 1_700_000_000_i64,
            "aud": ["x", "y"],
            "extra": {"k": 1},
        });
        assert_eq!(
            render_claims(&claims),
            "Claims:\n  aud: x, y\n  exp: 1700000000 (2023-11-14T22:13:20Z)\n  extra: {\"k\":1}\n  sub: spiffe://e.org/a\n"
        );
    }

    #[test]
    fn tokens_come_first_on_their_line() {
        let list = JwtList {
            svids: vec![
                JwtView {
                    spiffe_id: "spiffe://e.org/a".into(),
                    token: "aaa.bbb.ccc".into(),
                    hint: String::new(),
                    claims: serde_json::json!({"aud": ["x"], "exp": 1_700_000_100_i64}),
                },
                JwtView {
                    spiffe_id: "spiffe://e.org/b".into(),
                    token: "ddd.eee.fff".into(),
                    hint: "backup".into(),
                    claims: Value::Null,
                },
            ],
        };
        let text = render_tokens(&list, 1_700_000_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "aaa.bbb.ccc");
        assert_eq!(lines[1], "SPIFFE ID:    spiffe://e.org/a");
        assert_eq!(lines[2], "Audience:     x");
        assert_eq!(
            lines[3],
            "Expires:      2023-11-14T22:15:00Z (expires in 1m 40s)"
        );
        assert_eq!(lines[4], "");
        assert_eq!(lines[5], "ddd.eee.fff");
        assert!(text.contains("Hint:         backup"), "{text}");
    }
}
