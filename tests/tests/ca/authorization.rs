//! Who may obtain what: every refusal has the right code, issues nothing,
//! and leaves a `rejected` row (and no `issued` row) in the audit log.

use std::time::Duration;

use signet_proto::ca::v1 as pb;
use signet_tests::{
    CaOptions, CaProcess, attest_node, attest_with_token, create_token, new_key_and_csr,
};
use tonic::Code;

use crate::{INVALID_ARGUMENT, PERMISSION_DENIED, assert_rejected_not_issued, item_error, svid_of};

/// Creates an entry for `spiffe://<td><path>` parented to node `node` through
/// the Admin API; returns its ID.
async fn entry_for(ca: &CaProcess, path: &str, node: &str) -> String {
    ca.admin()
        .await
        .unwrap()
        .create_entry(pb::CreateEntryRequest {
            spiffe_id: ca.id(path),
            parent_id: ca.node_id(node),
            selectors: vec![pb::Selector {
                r#type: "unix".into(),
                value: "uid:1000".into(),
            }],
            x509_svid_ttl_seconds: 0,
            dns_names: vec![],
            federates_with: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

/// A batch item with a fresh, valid CSR.
fn item(entry_id: &str) -> pb::SignRequestItem {
    pb::SignRequestItem {
        entry_id: entry_id.to_owned(),
        csr: new_key_and_csr().unwrap().1,
        ttl_seconds: 0,
    }
}

#[tokio::test]
async fn a_node_cannot_obtain_an_entry_parented_to_another_node() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let a = attest_node(&ca, "node-a").await.unwrap();
    attest_node(&ca, "node-b").await.unwrap();
    let entry_a = entry_for(&ca, "/a", "node-a").await;
    let entry_b = entry_for(&ca, "/b", "node-b").await;
    let mut client = ca.node_client(Some(a.tls_identity())).await.unwrap();

    // Only B's entry, and one that does not exist: both refused the same way.
    let mark = ca.audit_mark().unwrap();
    let results = client
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            items: vec![item(&entry_b), item("no-such-entry")],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 2);
    for result in &results {
        let error = item_error(result);
        assert_eq!(
            error.code, PERMISSION_DENIED,
            "entry {}: {error:?}",
            result.entry_id
        );
    }
    assert_rejected_not_issued(&ca, mark, "sign_x509_svid");

    // Items stand alone: in a mixed batch A's own entry is still signed.
    let results = client
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            items: vec![item(&entry_b), item(&entry_a)],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results[0].entry_id, entry_b);
    assert_eq!(item_error(&results[0]).code, PERMISSION_DENIED);
    assert_eq!(results[1].entry_id, entry_a);
    assert_eq!(svid_of(&results[1]).spiffe_id, ca.id("/a"));

    // A's listing does not show B's entry.
    let listed = client
        .list_authorized_entries(pb::ListAuthorizedEntriesRequest {})
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = listed.entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [entry_a.as_str()]);
}

#[tokio::test]
async fn a_join_token_is_single_use() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let token = create_token(&ca, "node-a", 0).await.unwrap();
    attest_with_token(&ca, &token).await.unwrap();

    let mark = ca.audit_mark().unwrap();
    let err = attest_with_token(&ca, &token).await.unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_rejected_not_issued(&ca, mark, "attest_node");

    // An unknown token is refused the same way.
    let mark = ca.audit_mark().unwrap();
    let err = attest_with_token(&ca, &"0".repeat(64)).await.unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_rejected_not_issued(&ca, mark, "attest_node");
}

#[tokio::test]
async fn an_expired_join_token_is_refused() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let token = ca.token_cli("node-a", Some("1s")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mark = ca.audit_mark().unwrap();
    let err = attest_with_token(&ca, &token).await.unwrap_err();
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_rejected_not_issued(&ca, mark, "attest_node");
}

#[tokio::test]
async fn malformed_csrs_are_item_errors_and_issue_nothing() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let node = attest_node(&ca, "node-a").await.unwrap();
    let entry = entry_for(&ca, "/web", "node-a").await;
    let mut client = ca.node_client(Some(node.tls_identity())).await.unwrap();

    // Garbage, and a real CSR whose signature no longer matches.
    let mut tampered = new_key_and_csr().unwrap().1;
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let mark = ca.audit_mark().unwrap();
    let results = client
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            items: vec![
                pb::SignRequestItem {
                    entry_id: entry.clone(),
                    csr: b"not a CSR".to_vec(),
                    ttl_seconds: 0,
                },
                pb::SignRequestItem {
                    entry_id: entry.clone(),
                    csr: tampered,
                    ttl_seconds: 0,
                },
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 2);
    for (i, result) in results.iter().enumerate() {
        let error = item_error(result);
        assert_eq!(error.code, INVALID_ARGUMENT, "item {i}: {error:?}");
    }
    assert_rejected_not_issued(&ca, mark, "sign_x509_svid");
}

#[tokio::test]
async fn a_malformed_csr_in_attestation_does_not_consume_the_token() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let token = create_token(&ca, "node-a", 0).await.unwrap();

    let mark = ca.audit_mark().unwrap();
    let err = ca
        .node_client(None)
        .await
        .unwrap()
        .attest_node(pb::AttestNodeRequest {
            join_token: token.clone(),
            csr: b"not a CSR".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_rejected_not_issued(&ca, mark, "attest_node");

    let node = attest_with_token(&ca, &token)
        .await
        .expect("the token survives a refused attempt");
    assert_eq!(node.spiffe_id, ca.node_id("node-a"));
}

#[tokio::test]
async fn node_calls_require_a_node_svid() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    attest_node(&ca, "node-a").await.unwrap();
    let entry = entry_for(&ca, "/web", "node-a").await;
    let mut anonymous = ca.node_client(None).await.unwrap();

    let mark = ca.audit_mark().unwrap();
    let err = anonymous
        .list_authorized_entries(pb::ListAuthorizedEntriesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_rejected_not_issued(&ca, mark, "list_entries");

    let mark = ca.audit_mark().unwrap();
    let err = anonymous
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            items: vec![item(&entry)],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_rejected_not_issued(&ca, mark, "sign_batch");

    let mark = ca.audit_mark().unwrap();
    let err = anonymous
        .renew_node_svid(pb::RenewNodeSvidRequest {
            csr: new_key_and_csr().unwrap().1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_rejected_not_issued(&ca, mark, "renew_node");

    let err = anonymous
        .watch_bundle(pb::WatchBundleRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = anonymous
        .watch_authorized_entries(pb::WatchAuthorizedEntriesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // A valid SVID of the trust domain that is not a node's is no pass either.
    let workload = ca.mint_cli(&ca.id("/web"), "web", &[]).await.unwrap();
    let chain_pem = std::fs::read_to_string(workload.chain_path()).unwrap();
    let key_pem = std::fs::read_to_string(workload.key_path()).unwrap();
    let mut impostor = ca.node_client(Some((&chain_pem, &key_pem))).await.unwrap();
    let mark = ca.audit_mark().unwrap();
    let results = impostor
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            items: vec![item(&entry)],
        })
        .await;
    match results {
        Err(status) => assert_eq!(status.code(), Code::PermissionDenied, "{status:?}"),
        Ok(response) => panic!("a workload SVID acted as a node: {response:?}"),
    }
    assert_rejected_not_issued(&ca, mark, "sign_batch");
}

#[tokio::test]
async fn a_batch_over_max_batch_is_refused_whole() {
    let ca = CaProcess::start(CaOptions::default().flag("max-batch", "2"))
        .await
        .unwrap();
    let node = attest_node(&ca, "node-a").await.unwrap();
    let entry = entry_for(&ca, "/web", "node-a").await;
    let mut client = ca.node_client(Some(node.tls_identity())).await.unwrap();

    let mark = ca.audit_mark().unwrap();
    let err = client
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            items: vec![item(&entry), item(&entry), item(&entry)],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_rejected_not_issued(&ca, mark, "sign_batch");

    // At the limit, everything is signed.
    let results = client
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            items: vec![item(&entry), item(&entry)],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 2);
    for result in &results {
        svid_of(result);
    }
}

#[tokio::test]
async fn a_node_svid_from_another_ca_is_refused() {
    // Same trust domain, same node name: only the signatures differ.
    let (ca, other) = tokio::join!(
        CaProcess::start(CaOptions::default()),
        CaProcess::start(CaOptions::default())
    );
    let (ca, other) = (ca.unwrap(), other.unwrap());
    attest_node(&ca, "node-a").await.unwrap();
    let entry = entry_for(&ca, "/web", "node-a").await;
    let forged = attest_node(&other, "node-a").await.unwrap();
    assert_eq!(forged.spiffe_id, ca.node_id("node-a"));

    let mark = ca.audit_mark().unwrap();
    let outcome = async {
        let mut client = ca.node_client(Some(forged.tls_identity())).await?;
        let response = client
            .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
                items: vec![item(&entry)],
            })
            .await?;
        anyhow::Ok(response.into_inner())
    }
    .await;
    assert!(
        outcome.is_err(),
        "a node SVID signed by another CA was accepted: {outcome:?}"
    );
    let issued: Vec<_> = ca
        .audit_since(mark)
        .unwrap()
        .into_iter()
        .filter(|r| r.result == "issued")
        .collect();
    assert!(issued.is_empty(), "{issued:#?}");
}

#[tokio::test]
async fn the_csr_contributes_only_its_public_key() {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
        KeyUsagePurpose, SanType,
    };
    use x509_parser::prelude::*;

    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let node = attest_node(&ca, "node-a").await.unwrap();
    let entry = entry_for(&ca, "/web", "node-a").await;
    let mut client = ca.node_client(Some(node.tls_identity())).await.unwrap();

    // A CSR that asks for everything a workload must not decide.
    let (key, _) = new_key_and_csr().unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "evil.example");
    params.subject_alt_names = vec![
        SanType::URI(ca.id("/admin").as_str().try_into().unwrap()),
        SanType::DnsName("evil.example".try_into().unwrap()),
    ];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
    let csr = params
        .serialize_request(key.key_pair())
        .unwrap()
        .der()
        .to_vec();

    let results = client
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            items: vec![pb::SignRequestItem {
                entry_id: entry.clone(),
                csr,
                ttl_seconds: 0,
            }],
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let svid = svid_of(&results[0]);
    let leaf = signet_tests::chain_of(svid).remove(0);
    // The entry's ID only, empty subject, not a CA, the leaf key usages.
    crate::assert_leaf_profile(&leaf, &ca.id("/web"), &[]);
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    assert_eq!(
        cert.public_key().raw,
        key.public_key_spki().as_slice(),
        "the leaf must certify the CSR's key"
    );
}

#[tokio::test]
async fn concurrent_attestations_with_one_token_yield_one_node_svid() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let token = create_token(&ca, "node-a", 0).await.unwrap();
    let mark = ca.audit_mark().unwrap();
    let attempts = futures::future::join_all((0..8).map(|_| attest_with_token(&ca, &token))).await;
    let won = attempts.iter().filter(|a| a.is_ok()).count();
    assert_eq!(
        won, 1,
        "one join token must attest exactly once, even under concurrent use: {attempts:?}"
    );
    for refused in attempts.iter().filter_map(|a| a.as_ref().err()) {
        let status = refused
            .downcast_ref::<tonic::Status>()
            .expect("a gRPC status");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    let issued = ca
        .audit_since(mark)
        .unwrap()
        .into_iter()
        .filter(|r| r.result == "issued")
        .count();
    assert_eq!(issued, 1, "audit log: one issuance");
}

/// Finding 9: refused callers, who need no credential to be refused, must
/// not grow the audit log without bound. Each attempt comes on a new
/// connection (a new source port), as a flood would; the first refusals of
/// the minute are recorded, the rest only counted.
#[tokio::test]
async fn a_flood_of_refused_attestations_writes_a_bounded_number_of_records() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let (_key, csr) = new_key_and_csr().unwrap();
    let mark = ca.audit_mark().unwrap();
    for i in 0..60 {
        let err = ca
            .node_client(None)
            .await
            .unwrap()
            .attest_node(pb::AttestNodeRequest {
                join_token: format!("bogus-{i}"),
                csr: csr.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    let rows = ca.audit_since(mark).unwrap();
    let refused = rows
        .iter()
        .filter(|r| r.action == "attest_node" && r.result == "rejected")
        .count();
    assert_eq!(
        refused, 10,
        "refusal records of one source in one minute: {rows:#?}"
    );
    assert!(rows.iter().all(|r| r.result != "issued"), "{rows:#?}");
}
