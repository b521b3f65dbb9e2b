//! HTTP handlers of the fake API server, answering as kube-apiserver does.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request as HttpRequest, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus, UserInfo};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::state::{Event, Request};
use super::{CALLER_TOKEN, Shared};
use crate::review::{EXTRA_NODE_NAME, EXTRA_NODE_UID, EXTRA_POD_NAME, EXTRA_POD_UID};

type S = State<Arc<Shared>>;
type Params = Query<HashMap<String, String>>;

/// The audience kube-apiserver uses when a TokenReview names none.
const APISERVER_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// Real servers time watches out after 30–60 min when the client names no timeout.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/apis/authentication.k8s.io/v1/tokenreviews",
            post(token_review),
        )
        .route("/api/v1/pods", get(pods_all))
        .route("/api/v1/namespaces/{ns}/pods", get(pods_in))
        .route("/api/v1/namespaces/{ns}/pods/{name}", get(pod_get))
        .route(
            "/apis/signet.dev/v1alpha1/identitypolicies",
            get(identity_policies),
        )
        .route("/api/v1/nodes", get(nodes_list))
        .route("/api/v1/nodes/{name}", get(node_get))
        .route("/api/v1/namespaces", get(namespaces_list))
        .route("/api/v1/namespaces/{name}", get(namespace_get))
        .route(
            "/api/v1/namespaces/{ns}/configmaps",
            post(config_map_create),
        )
        .route(
            "/api/v1/namespaces/{ns}/configmaps/{name}",
            get(config_map_get).put(config_map_update),
        )
        .fallback(|| async {
            status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            )
        })
        .layer(middleware::from_fn_with_state(shared.clone(), authenticate))
        .with_state(shared)
}

/// Logs the request and refuses callers without the caller token, as an API server
/// with anonymous auth off does.
async fn authenticate(State(shared): S, req: HttpRequest, next: Next) -> Response {
    let unavailable = {
        let mut st = shared.lock();
        st.requests.push(Request {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            query: req.uri().query().unwrap_or("").to_string(),
        });
        st.unavailable
    };
    if unavailable {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        );
    }
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        == Some(CALLER_TOKEN);
    if !ok {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    next.run(req).await
}

/// A refusal to turn into a Status response (small, unlike a `Response`).
struct Refusal(StatusCode, &'static str, String);

impl Refusal {
    fn into_response(self) -> Response {
        status(self.0, self.1, &self.2)
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (code, Json(status_body(code.as_u16(), reason, message))).into_response()
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn not_found(kind: &str, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{kind} \"{name}\" not found"),
    )
}

async fn token_review(State(shared): S, Json(review): Json<TokenReview>) -> Response {
    let token = review.spec.token.clone();
    if token.is_empty() {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "TokenReview.authentication.k8s.io \"\" is invalid: spec.token: Required value",
        );
    }
    let asked = review.spec.audiences.clone().filter(|a| !a.is_empty());
    let st = shared.lock();
    let refuse = |why: String| TokenReviewStatus {
        authenticated: Some(false),
        error: Some(format!("[invalid bearer token, {why}]")),
        ..TokenReviewStatus::default()
    };
    let answer = match st.tokens.get(&token) {
        None => refuse("square/go-jose: error in cryptographic primitive".into()),
        Some(t) if t.expired => refuse("service account token has expired".into()),
        Some(t) => {
            let targets = asked
                .clone()
                .unwrap_or_else(|| vec![APISERVER_AUDIENCE.to_string()]);
            let matched: Vec<String> = if st.ignore_requested_audiences {
                t.audiences.clone()
            } else {
                t.audiences
                    .iter()
                    .filter(|a| targets.contains(a))
                    .cloned()
                    .collect()
            };
            let pod_gone = t.pod.as_ref().and_then(|(name, uid)| {
                let pod = st.pods.get(&(t.namespace.clone(), name.clone()));
                match pod.and_then(|p| p.metadata.uid.clone()) {
                    _ if !st.check_bound_objects => None,
                    None => Some(format!("pods \"{name}\" not found")),
                    Some(u) if &u != uid => Some(format!(
                        "pod \"{name}\" uid mismatch: the token's pod uid is {uid}, the pod's is {u}"
                    )),
                    Some(_) => None,
                }
            });
            if matched.is_empty() {
                refuse(format!(
                    "token audiences {:?} is invalid for the target audiences {:?}",
                    t.audiences, targets
                ))
            } else if let Some(why) = pod_gone {
                refuse(why)
            } else {
                let mut extra = BTreeMap::new();
                if let Some((name, uid)) = &t.pod {
                    extra.insert(EXTRA_POD_NAME.to_string(), vec![name.clone()]);
                    extra.insert(EXTRA_POD_UID.to_string(), vec![uid.clone()]);
                }
                if let Some((name, uid)) = &t.node {
                    extra.insert(EXTRA_NODE_NAME.to_string(), vec![name.clone()]);
                    extra.insert(EXTRA_NODE_UID.to_string(), vec![uid.clone()]);
                }
                TokenReviewStatus {
                    authenticated: Some(true),
                    audiences: Some(matched),
                    error: None,
                    user: Some(UserInfo {
                        username: Some(format!(
                            "system:serviceaccount:{}:{}",
                            t.namespace, t.service_account
                        )),
                        uid: Some(format!("sa-uid-{}-{}", t.namespace, t.service_account)),
                        groups: Some(vec![
                            "system:serviceaccounts".into(),
                            format!("system:serviceaccounts:{}", t.namespace),
                            "system:authenticated".into(),
                        ]),
                        extra: Some(extra),
                    }),
                }
            }
        }
    };
    drop(st);
    let mut out = review;
    out.status = Some(answer);
    (StatusCode::CREATED, Json(out)).into_response()
}

/// A parsed field selector: the subset of pod fields the real server supports that
/// Signet uses.
#[derive(Default, Clone)]
struct Fields {
    node_name: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
}

impl Fields {
    fn parse(selector: &str) -> Result<Self, Refusal> {
        let mut f = Self::default();
        for term in selector.split(',').filter(|t| !t.is_empty()) {
            let (key, value) = term
                .split_once("==")
                .or_else(|| term.split_once('='))
                .ok_or_else(|| {
                    Refusal(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!("invalid field selector: {term}"),
                    )
                })?;
            let slot = match key {
                "spec.nodeName" => &mut f.node_name,
                "metadata.name" => &mut f.name,
                "metadata.namespace" => &mut f.namespace,
                other => {
                    return Err(Refusal(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        format!(
                            "\"{other}\" is not a known field selector: only \"metadata.name\", \"metadata.namespace\", \"spec.nodeName\""
                        ),
                    ));
                }
            };
            *slot = Some(value.to_string());
        }
        Ok(f)
    }

    fn matches(&self, pod: &Pod) -> bool {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        self.node_name.as_ref().is_none_or(|n| *n == node)
            && self
                .name
                .as_ref()
                .is_none_or(|n| Some(n) == pod.metadata.name.as_ref())
            && self
                .namespace
                .as_ref()
                .is_none_or(|n| Some(n) == pod.metadata.namespace.as_ref())
    }
}

async fn pods_all(State(shared): S, Query(q): Params) -> Response {
    pods(shared, None, q)
}

async fn pods_in(State(shared): S, Path(ns): Path<String>, Query(q): Params) -> Response {
    pods(shared, Some(ns), q)
}

fn pods(shared: Arc<Shared>, ns: Option<String>, q: HashMap<String, String>) -> Response {
    if shared.lock().pods_unavailable {
        // What kube-apiserver answers when etcd does not (kube's client
        // would retry a 503 by itself for a long while).
        return status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "etcdserver: request timed out",
        );
    }
    let mut fields = match Fields::parse(q.get("fieldSelector").map(String::as_str).unwrap_or("")) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    if let Some(ns) = ns {
        fields.namespace = Some(ns);
    }
    let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    if !watch {
        let st = shared.lock();
        let items: Vec<&Pod> = st.pods.values().filter(|p| fields.matches(p)).collect();
        return Json(json!({
            "kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": st.rv.to_string()},
            "items": items,
        }))
        .into_response();
    }
    let from = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_WATCH_TIMEOUT);
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    let selected = fields.clone();
    let select = move |e: &Event| match e {
        Event::Pod { kind, pod, .. } if selected.matches(pod) => {
            Some(json!({"type": kind, "object": pod}))
        }
        _ => None,
    };
    // Backlog and subscription are taken under one lock so no event falls between them.
    let (backlog, live) = {
        let st = shared.lock();
        let live = shared.events.subscribe();
        let current = st
            .pods
            .values()
            .filter(|p| fields.matches(p))
            .map(|p| json!({"type": "ADDED", "object": p}))
            .collect();
        let backlog = match watch_backlog(&st, from, current, &select) {
            Ok(backlog) => backlog,
            Err(response) => return *response,
        };
        (backlog, live)
    };
    tokio::spawn(stream_watch(
        tx,
        backlog,
        live,
        Box::new(select),
        bookmarks.then_some(("v1", "Pod")),
        timeout,
    ));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap_or_else(|_| {
            status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "response",
            )
        })
}

/// Which live events a watch sends, as watch lines.
type Select = Box<dyn Fn(&Event) -> Option<Value> + Send>;

/// Sends the backlog, then live events chosen by `select`, and BOOKMARKs (of
/// `(apiVersion, kind)`) when asked for, until the timeout or the caller leaves.
async fn stream_watch(
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    backlog: Result<Vec<Value>, Value>,
    mut live: broadcast::Receiver<Event>,
    select: Select,
    bookmarks: Option<(&'static str, &'static str)>,
    timeout: Duration,
) {
    let line = |v: &Value| Ok(Bytes::from(format!("{v}\n")));
    let events = match backlog {
        Ok(events) => events,
        Err(error) => {
            let _ = tx.send(line(&error)).await;
            return;
        }
    };
    for ev in &events {
        if tx.send(line(ev)).await.is_err() {
            return;
        }
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        let ev = tokio::select! {
            _ = &mut deadline => return,
            _ = tx.closed() => return,
            ev = live.recv() => ev,
        };
        let out = match ev {
            Ok(Event::Close) => return,
            Ok(Event::Bookmark(rv)) => match bookmarks {
                Some((api_version, kind)) => json!({
                    "type": "BOOKMARK",
                    "object": {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}},
                }),
                None => continue,
            },
            Ok(ev) => match select(&ev) {
                Some(line) => line,
                None => continue,
            },
            // A watcher that fell behind is closed; it resumes from its last version.
            Err(_) => return,
        };
        if tx.send(line(&out)).await.is_err() {
            return;
        }
    }
}

/// What a watch from resourceVersion `from` starts with: `current` (every
/// object as ADDED) from the start, else the recorded events after `from`
/// that `select` keeps, or one ERROR 410 event when `from` is older than the
/// events kept. A version that is not a number is answered 400.
fn watch_backlog(
    st: &super::state::State,
    from: &str,
    current: Vec<Value>,
    select: &dyn Fn(&Event) -> Option<Value>,
) -> Result<Result<Vec<Value>, Value>, Box<Response>> {
    if from.is_empty() || from == "0" {
        return Ok(Ok(current));
    }
    match from.parse::<u64>() {
        Err(_) => Err(Box::new(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("invalid resource version: {from}"),
        ))),
        Ok(v) if v < st.compacted_to => Ok(Err(json!({
            "type": "ERROR",
            "object": status_body(410, "Expired", &format!("too old resource version: {v} ({})", st.compacted_to)),
        }))),
        Ok(v) => Ok(Ok(st
            .pod_events
            .iter()
            .filter(|e| e.rv().is_some_and(|rv| rv > v))
            .filter_map(select)
            .collect())),
    }
}

/// IdentityPolicy objects (cluster-scoped): list, or watch from a resourceVersion.
async fn identity_policies(State(shared): S, Query(q): Params) -> Response {
    let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let st = shared.lock();
    if !watch {
        let items: Vec<&Value> = st.identity_policies.values().collect();
        return Json(json!({
            "kind": "IdentityPolicyList", "apiVersion": "signet.dev/v1alpha1",
            "metadata": {"resourceVersion": st.rv.to_string()},
            "items": items,
        }))
        .into_response();
    }
    let from = q.get("resourceVersion").map(String::as_str).unwrap_or("");
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_WATCH_TIMEOUT);
    let live = shared.events.subscribe();
    let select = |e: &Event| match e {
        Event::Policy { kind, obj, .. } => Some(json!({"type": kind, "object": obj})),
        _ => None,
    };
    let current = st
        .identity_policies
        .values()
        .map(|o| json!({"type": "ADDED", "object": o}))
        .collect();
    let backlog = match watch_backlog(&st, from, current, &select) {
        Ok(backlog) => backlog,
        Err(response) => return *response,
    };
    drop(st);
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(stream_watch(
        tx,
        backlog,
        live,
        Box::new(select),
        bookmarks.then_some(("signet.dev/v1alpha1", "IdentityPolicy")),
        timeout,
    ));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap_or_else(|_| {
            status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "response",
            )
        })
}

async fn pod_get(State(shared): S, Path((ns, name)): Path<(String, String)>) -> Response {
    match shared.lock().pods.get(&(ns, name.clone())) {
        Some(p) => Json(p).into_response(),
        None => not_found("pods", &name),
    }
}

async fn nodes_list(State(shared): S) -> Response {
    let st = shared.lock();
    let items: Vec<_> = st.nodes.values().collect();
    Json(json!({"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}))
        .into_response()
}

async fn node_get(State(shared): S, Path(name): Path<String>) -> Response {
    match shared.lock().nodes.get(&name) {
        Some(n) => Json(n).into_response(),
        None => not_found("nodes", &name),
    }
}

async fn namespaces_list(State(shared): S) -> Response {
    let st = shared.lock();
    let items: Vec<_> = st.namespaces.values().collect();
    Json(json!({"kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}))
        .into_response()
}

async fn namespace_get(State(shared): S, Path(name): Path<String>) -> Response {
    match shared.lock().namespaces.get(&name) {
        Some(n) => Json(n).into_response(),
        None => not_found("namespaces", &name),
    }
}

async fn config_map_get(State(shared): S, Path((ns, name)): Path<(String, String)>) -> Response {
    let mut st = shared.lock();
    let key = (ns, name.clone());
    let Some(cm) = st.config_maps.get(&key).cloned() else {
        return not_found("configmaps", &name);
    };
    // A scheduled interference: another writer updates the object right after this read.
    if let Some(n) = st.interfere.get_mut(&key).filter(|n| **n > 0) {
        *n -= 1;
        let rv = st.next_rv();
        if let Some(stored) = st.config_maps.get_mut(&key) {
            stored.metadata.resource_version = Some(rv.to_string());
            stored
                .data
                .get_or_insert_with(BTreeMap::new)
                .insert("interfering-writer".into(), rv.to_string());
        }
    }
    Json(cm).into_response()
}

fn check_body(ns: &str, name: Option<&str>, cm: &ConfigMap) -> Result<String, Refusal> {
    if cm.metadata.namespace.as_deref().is_some_and(|n| n != ns) {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request"
                .into(),
        ));
    }
    let body_name = cm.metadata.name.clone().unwrap_or_default();
    if body_name.is_empty() {
        return Err(Refusal(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value: name or generateName is required".into(),
        ));
    }
    if name.is_some_and(|n| n != body_name) {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the name of the object does not match the name on the URL".into(),
        ));
    }
    Ok(body_name)
}

async fn config_map_create(
    State(shared): S,
    Path(ns): Path<String>,
    Json(mut cm): Json<ConfigMap>,
) -> Response {
    let name = match check_body(&ns, None, &cm) {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    let mut st = shared.lock();
    if !st.namespaces.contains_key(&ns) {
        return not_found("namespaces", &ns);
    }
    let key = (ns.clone(), name.clone());
    if st.config_maps.contains_key(&key) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("configmaps \"{name}\" already exists"),
        );
    }
    if cm
        .metadata
        .resource_version
        .as_deref()
        .is_some_and(|v| !v.is_empty())
    {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "resourceVersion should not be set on objects to be created",
        );
    }
    cm.metadata.namespace = Some(ns);
    cm.metadata.uid = Some(st.new_uid());
    cm.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    let rv = st.next_rv();
    cm.metadata.resource_version = Some(rv.to_string());
    st.config_maps.insert(key, cm.clone());
    (StatusCode::CREATED, Json(cm)).into_response()
}

async fn config_map_update(
    State(shared): S,
    Path((ns, name)): Path<(String, String)>,
    Json(mut cm): Json<ConfigMap>,
) -> Response {
    if let Err(r) = check_body(&ns, Some(&name), &cm) {
        return r.into_response();
    }
    let mut st = shared.lock();
    let key = (ns.clone(), name.clone());
    let Some(current) = st.config_maps.get(&key).cloned() else {
        return not_found("configmaps", &name);
    };
    let sent = cm.metadata.resource_version.clone().unwrap_or_default();
    // ConfigMaps allow unconditional updates (no resourceVersion); a stale one conflicts.
    if !sent.is_empty() && Some(&sent) != current.metadata.resource_version.as_ref() {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on configmaps \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    cm.metadata.namespace = Some(ns);
    cm.metadata.uid = current.metadata.uid.clone();
    cm.metadata.creation_timestamp = current.metadata.creation_timestamp.clone();
    let rv = st.next_rv();
    cm.metadata.resource_version = Some(rv.to_string());
    st.config_maps.insert(key, cm.clone());
    Json(cm).into_response()
}
