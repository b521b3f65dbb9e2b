//! Pod policies from IdentityPolicy objects: the real signet-ca with `[k8s] policy_crd =
//! true` lists and watches them on the fake API server and derives entries from its
//! pods; an invalid object is refused (logged, audited) while the others stay; a
//! template that renders a reserved ID gives the pod nothing (audited); a deleted
//! object takes its entries with it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use signet_k8s::fake::FakeApiServer;
use signet_k8s::k8s_openapi::api::core::v1::{Node, Pod, PodSpec};
use signet_k8s::k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use signet_tests::{CaOptions, CaProcess};

const WAIT: Duration = Duration::from_secs(20);

fn pod(ns: &str, name: &str, sa: &str, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            service_account_name: Some(sa.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn entries(ca: &CaProcess) -> Vec<Value> {
    let out = ca
        .signet_ca(["entry", "list", "--output", "json"])
        .await
        .unwrap()
        .ok()
        .unwrap();
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    v["entries"].as_array().unwrap().clone()
}

/// (SPIFFE ID, origin) of every entry, sorted.
async fn wait_for(ca: &CaProcess, want: &[(&str, &str)]) {
    let mut want: Vec<(String, String)> = want
        .iter()
        .map(|(id, o)| (ca.id(id), (*o).to_owned()))
        .collect();
    want.sort();
    let deadline = Instant::now() + WAIT;
    loop {
        let mut got: Vec<(String, String)> = entries(ca)
            .await
            .iter()
            .map(|e| {
                (
                    e["spiffe_id"].as_str().unwrap().to_owned(),
                    e["origin"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        got.sort();
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "entries {got:?}, want {want:?}\n--- CA log ---\n{}",
            ca.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn identity_policy_objects_derive_entries_and_a_bad_one_is_refused_alone() {
    let fake = FakeApiServer::start().await.unwrap();
    fake.apply_node(Node {
        metadata: ObjectMeta {
            name: Some("n1".into()),
            ..Default::default()
        },
        ..Default::default()
    });
    fake.apply_pod(pod("shop", "web-1", "web", "n1"));
    fake.apply_pod(pod("bank", "db-1", "db", "n1"));
    fake.apply_identity_policy("shop", json!({"namespaces": ["shop"]}));

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig).unwrap();
    let config = dir.path().join("ca.toml");
    std::fs::write(
        &config,
        format!(
            "[k8s]\nkubeconfig = {kubeconfig:?}\ncluster = \"c1\"\n\
             psat_allowed_service_accounts = [\"signet:agent\"]\npolicy_crd = true\n"
        ),
    )
    .unwrap();
    let ca = CaProcess::start(CaOptions::default().flag("config", config.display().to_string()))
        .await
        .unwrap();
    wait_for(&ca, &[("/ns/shop/sa/web", "crd:shop")]).await;

    // A bad object: refused, audited, logged; the good one stays.
    let mark = ca.audit_mark().unwrap();
    fake.apply_identity_policy("bad", json!({"idTemplate": "spiffe://{{td}}/{{nope}}"}));
    fake.apply_identity_policy(
        "bank",
        json!({"namespaces": ["bank"], "idTemplate": "spiffe://{{td}}/bank/{{sa}}"}),
    );
    wait_for(
        &ca,
        &[("/ns/shop/sa/web", "crd:shop"), ("/bank/db", "crd:bank")],
    )
    .await;
    let rows = ca.audit_since(mark).unwrap();
    assert!(
        rows.iter().any(|r| r.action == "identity_policy"
            && r.result == "rejected"
            && r.detail.contains("crd:bad")
            && r.detail.contains("nope")),
        "{rows:#?}"
    );
    assert!(ca.log().contains("IdentityPolicy refused"), "{}", ca.log());

    // A template that renders a reserved ID gives that pod nothing, audited.
    let mark = ca.audit_mark().unwrap();
    fake.apply_identity_policy(
        "bank",
        json!({"namespaces": ["bank"], "idTemplate": "spiffe://{{td}}/signet/{{sa}}"}),
    );
    wait_for(&ca, &[("/ns/shop/sa/web", "crd:shop")]).await;
    let rows = ca.audit_since(mark).unwrap();
    assert!(
        rows.iter().any(|r| r.action == "derive_entry"
            && r.result == "rejected"
            && r.detail.contains("bank/db-1")),
        "{rows:#?}"
    );

    // A deleted object's entries go; a new object brings entries back.
    fake.delete_identity_policy("shop");
    fake.delete_identity_policy("bank");
    wait_for(&ca, &[]).await;
    fake.apply_identity_policy("shop", json!({}));
    fake.bookmark();
    wait_for(
        &ca,
        &[
            ("/ns/shop/sa/web", "crd:shop"),
            ("/ns/bank/sa/db", "crd:shop"),
        ],
    )
    .await;

    // Every call the CA made is one its RBAC table allows.
    for r in fake.requests() {
        let (group, resource, verb) = r.rbac().unwrap();
        assert!(
            signet_k8s::rbac::allowed(signet_k8s::rbac::CA_RBAC, &group, &resource, &verb),
            "{r:?} needs {verb} on {group}/{resource}, not in CA_RBAC"
        );
    }
}
