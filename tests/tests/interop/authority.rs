//! The `:authority` a gRPC client sends over a unix socket differs between
//! implementations: grpc-core (Python, C++, Ruby, PHP) sends the
//! percent-encoded socket path, grpc-java the raw path, and HTTP/2 allows
//! none at all. Both of the agent's servers must answer all three: each
//! client below gets a real SVID and bundle, and the report says which
//! authority it really sent (an in-process relay decodes its headers).

use serde_json::Value;

use crate::{Node, my_uid, python, text};

/// One way of calling.
#[derive(Debug, Clone, Copy)]
enum Form {
    /// grpcio's own `:authority` for a `unix:` target.
    GrpcioDefault,
    /// grpcio with `grpc.default_authority` = the raw socket path.
    GrpcioRawPath,
    /// A bare HTTP/2 client that sends no `:authority`.
    None,
}

const FORMS: [Form; 3] = [Form::GrpcioDefault, Form::GrpcioRawPath, Form::None];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Workload,
    Sds,
}

impl Api {
    fn arg(self) -> &'static str {
        match self {
            Self::Workload => "workload",
            Self::Sds => "sds",
        }
    }
}

impl Form {
    fn script_and_args(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Self::GrpcioDefault => ("grpcio_client.py", &["--authority", "default"]),
            Self::GrpcioRawPath => ("grpcio_client.py", &["--authority", "path"]),
            Self::None => ("h2_client.py", &[]),
        }
    }

    /// Whether `authority` (as seen on the wire) is of this form, for a
    /// client that connected to `relay` and was pointed at `socket`.
    fn check_wire(self, authority: &Value, relay: &str, socket: &str) -> Result<(), String> {
        let ok = match self {
            // grpc-core percent-encodes the path of the socket it connects
            // to (here the relay's), without the leading slash.
            Self::GrpcioDefault => authority.as_str() == Some(percent_encode_path(relay).as_str()),
            Self::GrpcioRawPath => authority.as_str() == Some(socket),
            Self::None => authority.is_null(),
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "the request carried :authority {authority} (relay {relay}, socket {socket})"
            ))
        }
    }
}

/// grpc-core's authority for `unix:PATH`: the path without its leading `/`,
/// with every `/` as `%2F`. Only `/` needs escaping in our temporary paths.
fn percent_encode_path(path: &str) -> String {
    path.trim_start_matches('/').replace('/', "%2F")
}

/// Runs every form against `api` and checks each report; returns one line
/// per form that failed.
async fn every_form(node: &Node, api: Api, id: &str) -> Vec<String> {
    let socket = match api {
        Api::Workload => node.agent.workload_api_socket(),
        Api::Sds => node.agent.sds_socket(),
    }
    .to_str()
    .unwrap()
    .to_owned();
    let mut failures = Vec::new();
    for form in FORMS {
        let (script, form_args) = form.script_and_args();
        let mut args = vec!["--api", api.arg(), "--socket", &socket];
        args.extend_from_slice(form_args);
        let outcome = match node.run_python(script, &args, my_uid()).await {
            Ok(report) => check_report(node, api, form, &report, &socket, id),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => eprintln!("{api:?} with authority form {form:?}: served"),
            Err(e) => failures.push(format!("{api:?} with authority form {form:?}: {e}")),
        }
    }
    failures
}

fn check_report(
    node: &Node,
    api: Api,
    form: Form,
    report: &Value,
    socket: &str,
    id: &str,
) -> Result<(), String> {
    if api == Api::Workload && text(report, "spiffe_id") != id {
        return Err(format!("SVID for {}, not {id}", report["spiffe_id"]));
    }
    if report["key_fits"] != true {
        return Err("the private key is not the leaf's".to_owned());
    }
    node.check_chain(text(report, "chain_pem"), id)?;
    node.check_bundle(text(report, "bundle_pem"))?;
    let authorities = report["wire_authorities"]
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| format!("the relay saw no request: {report:#}"))?;
    for authority in authorities {
        form.check_wire(authority, text(report, "relay_socket"), socket)?;
    }
    if matches!(form, Form::None) {
        let pseudo = &report["wire_pseudo_headers"];
        let sent = pseudo
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|h| h.as_array().into_iter().flatten().filter_map(Value::as_str));
        if sent.clone().any(|h| h == ":authority") || sent.count() == 0 {
            return Err(format!("pseudo-headers on the wire: {pseudo}"));
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_workload_api_answers_every_authority_form() {
    let python = python("the_workload_api_answers_every_authority_form");
    let node = Node::start(python).await;
    let id = node.entry("/py/raw", my_uid(), &[]).await;
    node.wait_for_svid(&id).await;
    let failures = every_form(&node, Api::Workload, &id).await;
    assert!(
        failures.is_empty(),
        "{}\n--- agent log ---\n{}",
        failures.join("\n\n"),
        node.agent.log()
    );
}

#[tokio::test]
async fn sds_answers_every_authority_form() {
    let python = python("sds_answers_every_authority_form");
    let node = Node::start(python).await;
    let id = node.entry("/py/envoy-like", my_uid(), &[]).await;
    node.wait_for_svid(&id).await;
    let failures = every_form(&node, Api::Sds, &id).await;
    assert!(
        failures.is_empty(),
        "{}\n--- agent log ---\n{}",
        failures.join("\n\n"),
        node.agent.log()
    );
}

#[test]
fn the_wire_check_tells_the_forms_apart() {
    let relay = "/tmp/signet-relay-x/relay.sock";
    let socket = "/tmp/signet-agent-y/api.sock";
    let encoded = Value::from("tmp%2Fsignet-relay-x%2Frelay.sock");
    let raw = Value::from(socket);
    let localhost = Value::from("localhost");
    let cases = [
        (Form::GrpcioDefault, &encoded, true),
        (Form::GrpcioDefault, &raw, false),
        (Form::GrpcioDefault, &localhost, false),
        (Form::GrpcioDefault, &Value::Null, false),
        (Form::GrpcioRawPath, &raw, true),
        (Form::GrpcioRawPath, &encoded, false),
        (Form::GrpcioRawPath, &Value::Null, false),
        (Form::None, &Value::Null, true),
        (Form::None, &localhost, false),
        (Form::None, &Value::from(""), false),
    ];
    for (form, authority, ok) in cases {
        assert_eq!(
            form.check_wire(authority, relay, socket).is_ok(),
            ok,
            "{form:?} with {authority}"
        );
    }
}
