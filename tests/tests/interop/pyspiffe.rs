//! py-spiffe, a Workload API client that shares no code with Signet, used
//! as an application uses it: every RPC of the Workload API, and the X.509
//! context stream across a renewal.

use base64::Engine as _;
use serde_json::Value;

use crate::{Node, UNPRIVILEGED_UID, my_uid, python, text};

#[tokio::test]
async fn py_spiffe_as_an_unprivileged_user_gets_svids_bundles_and_jwts() {
    let python = python("py_spiffe_as_an_unprivileged_user_gets_svids_bundles_and_jwts");
    let node = Node::start(python).await;
    // Root cannot see a permission mistake: run as nobody when we can.
    let uid = if my_uid() == 0 {
        UNPRIVILEGED_UID
    } else {
        my_uid()
    };
    let id = node.entry("/py/fetcher", uid, &[]).await;
    let socket = node
        .agent
        .workload_api_socket()
        .to_str()
        .unwrap()
        .to_owned();

    let report = node
        .run_python(
            "pyspiffe_client.py",
            &["fetch", "--socket", &socket, "--audience", "db"],
            uid,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", node.agent.log()));
    eprintln!("{} (uid {uid}) fetched everything", text(&report, "client"));
    let td = node.ca.trust_domain().as_str().to_owned();

    // X.509-SVIDs: FetchX509SVID three ways (default SVID, all, context).
    let svid = &report["x509_svid"];
    assert_eq!(text(svid, "spiffe_id"), id, "{report:#}");
    assert_eq!(
        svid["key_fits"], true,
        "the key is not the leaf's: {report:#}"
    );
    node.check_chain(text(svid, "chain_pem"), &id).unwrap();
    let all = report["x509_svids"].as_array().unwrap();
    assert_eq!(all.len(), 1, "one entry, one SVID: {report:#}");
    assert_eq!(text(&all[0], "spiffe_id"), id);
    assert_eq!(report["context_svids"], serde_json::json!([id]));
    node.check_bundle(text(&report, "context_bundle_pem"))
        .unwrap();

    // FetchX509Bundles.
    assert_eq!(report["x509_bundle_trust_domains"], serde_json::json!([td]));
    node.check_bundle(text(&report, "x509_bundle_pem")).unwrap();

    // FetchJWTSVID and FetchJWTBundles: the token names us, for `db`, and
    // is signed by a key of the bundle (py-spiffe checked the signature).
    let jwt = &report["jwt_svid"];
    assert_eq!(text(jwt, "spiffe_id"), id);
    assert_eq!(jwt["audience"], serde_json::json!(["db"]));
    assert_eq!(report["jwt_bundle_trust_domains"], serde_json::json!([td]));
    let kid = token_kid(text(jwt, "token"));
    let key_ids = report["jwt_bundle_key_ids"].as_array().unwrap();
    assert!(
        key_ids.contains(&Value::String(kid.clone())),
        "the token's kid {kid:?} is not in the JWT bundle {key_ids:?}"
    );
    assert_eq!(text(&report, "jwt_validated_locally"), id);

    // ValidateJWTSVID: accepted for its audience, refused for another.
    assert_eq!(text(&report, "jwt_validated_by_agent"), id);
    let other = text(&report, "jwt_other_audience");
    assert!(
        other.starts_with("refused") && other.contains("INVALID_ARGUMENT"),
        "a token for `db` validated for another audience: {other}"
    );
}

#[tokio::test]
async fn py_spiffe_watch_sees_the_renewed_svid() {
    let python = python("py_spiffe_watch_sees_the_renewed_svid");
    let node = Node::start(python).await;
    // A 6 s SVID: the agent renews it about 3 s after it arrives.
    let id = node.entry("/py/watcher", my_uid(), &["--ttl", "6s"]).await;
    node.wait_for_svid(&id).await;
    let socket = node
        .agent
        .workload_api_socket()
        .to_str()
        .unwrap()
        .to_owned();

    let report = node
        .run_python(
            "pyspiffe_client.py",
            &["watch", "--socket", &socket, "--timeout", "20"],
            my_uid(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", node.agent.log()));
    let errors = report["errors"].as_array().unwrap();
    assert!(errors.is_empty(), "the stream failed: {report:#}");
    let updates = report["updates"].as_array().unwrap();
    let serials: Vec<&str> = updates.iter().map(|u| text(u, "serial")).collect();
    let mut distinct = serials.clone();
    distinct.dedup();
    assert!(
        distinct.len() >= 2,
        "no renewed SVID on the stream within {}s (serials seen: {serials:?})\n--- agent log ---\n{}",
        report["seconds"],
        node.agent.log()
    );
    for update in updates {
        assert_eq!(text(update, "spiffe_id"), id);
        assert_eq!(update["key_fits"], true, "{report:#}");
    }
    // The renewed SVID is valid now (the first may have expired already).
    node.check_chain(text(updates.last().unwrap(), "chain_pem"), &id)
        .unwrap();
    eprintln!(
        "py-spiffe saw {} updates, {} SVIDs, in {}s",
        updates.len(),
        distinct.len(),
        report["seconds"]
    );
}

/// The `kid` of a JWT's header, decoded here rather than by any JWT library.
fn token_kid(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let header: Value = serde_json::from_slice(&json).unwrap();
    text(&header, "kid").to_owned()
}
