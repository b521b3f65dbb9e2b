//! The main path: a join token and an entry made with the CLI, a node that
//! attests over gRPC and gets a workload SVID signed, and independent
//! verifiers that accept the result.

use std::time::{Duration, SystemTime};

use signet_identity::x509::verify::verify_x509_svid;
use signet_proto::ca::v1 as pb;
use signet_tests::{
    CaOptions, CaProcess, Purpose, attest_with_token, chain_of, new_key_and_csr, openssl_verify,
    signet, webpki_verify_client, write_pem_chain,
};

use crate::{assert_leaf_profile, serial_hex, svid_of, unix_seconds, validity};

/// What the test asks for; the entry has no TTL of its own, so the server's
/// 1 h default maximum applies and this is honoured as asked.
const REQUESTED_TTL: Duration = Duration::from_secs(600);

#[tokio::test]
async fn join_token_entry_attestation_and_signing_end_to_end() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let web_id = ca.id("/web");

    let token = ca.token_cli("node-a", None).await.unwrap();
    let entry_id = ca
        .entry_cli(&[
            "--spiffe-id",
            &web_id,
            "--parent-node",
            "node-a",
            "--selector",
            "unix:uid:1000",
            "--dns-name",
            "web.example",
        ])
        .await
        .unwrap();

    // Attestation: the node SVID and the bundle.
    let node = attest_with_token(&ca, &token).await.unwrap();
    assert_eq!(node.spiffe_id, ca.node_id("node-a"));
    let bundle = ca.bundle().unwrap();
    assert_eq!(node.bundle.trust_domain, ca.trust_domain().to_string());
    let roots: Vec<Vec<u8>> = bundle
        .x509_authorities()
        .iter()
        .map(|c| c.to_vec())
        .collect();
    assert_eq!(
        node.bundle.x509_authorities, roots,
        "AttestNode's bundle differs from bundle.pem"
    );
    let verified = verify_x509_svid(&node.chain_der, &bundle, SystemTime::now())
        .expect("the node SVID is a valid X.509-SVID of the bundle");
    assert_eq!(verified.spiffe_id.to_string(), node.spiffe_id);

    // The node sees its entry.
    let mut client = ca.node_client(Some(node.tls_identity())).await.unwrap();
    let listed = client
        .list_authorized_entries(pb::ListAuthorizedEntriesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1, "{listed:?}");
    let entry = &listed.entries[0];
    assert_eq!(entry.id, entry_id);
    assert_eq!(entry.spiffe_id, web_id);
    assert_eq!(entry.parent_id, node.spiffe_id);
    assert_eq!(
        entry.selectors,
        [pb::Selector {
            r#type: "unix".into(),
            value: "uid:1000".into()
        }]
    );
    assert_eq!(entry.dns_names, ["web.example"]);

    // A workload SVID.
    let (_key, csr) = new_key_and_csr().unwrap();
    let mark = ca.audit_mark().unwrap();
    let before = SystemTime::now();
    let response = client
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest {
            items: vec![pb::SignRequestItem {
                entry_id: entry_id.clone(),
                csr,
                ttl_seconds: i64::try_from(REQUESTED_TTL.as_secs()).unwrap(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let after = SystemTime::now();
    assert_eq!(response.results.len(), 1);
    assert_eq!(response.results[0].entry_id, entry_id);
    let svid = svid_of(&response.results[0]);
    assert_eq!(svid.spiffe_id, web_id);
    let chain = chain_of(svid);
    assert_eq!(chain.len(), 2, "leaf and intermediate, no root");
    assert_eq!(svid.serial, serial_hex(&chain[0]));

    // Independent verifiers: openssl for both TLS roles, rustls/webpki as
    // client certificate, and the CLI.
    for purpose in [Purpose::SslClient, Purpose::SslServer] {
        let (ok, out) = openssl_verify(purpose, &ca.bundle_path(), &chain).unwrap();
        assert!(ok, "openssl verify {purpose:?} refused the SVID:\n{out}");
    }
    webpki_verify_client(bundle.x509_authorities(), &chain, SystemTime::now())
        .expect("rustls' WebPkiClientVerifier accepts the SVID");
    let chain_path = ca.scratch_dir().join("web.pem");
    write_pem_chain(&chain_path, &chain).unwrap();
    let bundle_path = ca.bundle_path().display().to_string();
    let chain_path = chain_path.display().to_string();
    let ok = signet([
        "verify",
        "--bundle",
        &bundle_path,
        "--spiffe-id",
        &web_id,
        &chain_path,
    ])
    .await
    .unwrap();
    assert!(ok.success(), "signet verify refused a good SVID: {ok}");
    let wrong_id = ca.id("/not-web");
    let wrong = signet([
        "verify",
        "--bundle",
        &bundle_path,
        "--spiffe-id",
        &wrong_id,
        &chain_path,
    ])
    .await
    .unwrap();
    assert_eq!(
        wrong.code(),
        Some(1),
        "signet verify with the wrong --spiffe-id must exit 1: {wrong}"
    );

    // The certificate itself.
    assert_leaf_profile(&chain[0], &web_id, &["web.example"]);
    let (not_before, not_after) = validity(&chain[0]);
    assert!(
        not_before >= unix_seconds(before) - 31 && not_before <= unix_seconds(after) - 29,
        "notBefore should be backdated ~30 s: notBefore {not_before}, issued between {} and {}",
        unix_seconds(before),
        unix_seconds(after)
    );
    let ttl = i64::try_from(REQUESTED_TTL.as_secs()).unwrap();
    assert!(
        not_after <= unix_seconds(after) + ttl,
        "notAfter {not_after} exceeds the requested TTL"
    );
    assert!(
        not_after >= unix_seconds(before) + ttl - 1,
        "notAfter {not_after} is shorter than the requested TTL"
    );
    assert_eq!(svid.expires_at, not_after);

    // Audited with its serial.
    let rows = ca.audit_since(mark).unwrap();
    assert!(
        rows.iter().any(|r| r.result == "issued"
            && r.action == "sign_x509_svid"
            && r.spiffe_id == web_id
            && r.serial == svid.serial
            && r.not_after == not_after),
        "no `issued` audit row for serial {}: {rows:#?}",
        svid.serial
    );
}

#[tokio::test]
async fn a_node_renews_its_svid_over_mtls() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let node = signet_tests::attest_node(&ca, "node-a").await.unwrap();
    let mut client = ca.node_client(Some(node.tls_identity())).await.unwrap();

    let (key, csr) = new_key_and_csr().unwrap();
    let mark = ca.audit_mark().unwrap();
    let renewed = client
        .renew_node_svid(pb::RenewNodeSvidRequest { csr })
        .await
        .unwrap()
        .into_inner()
        .svid
        .expect("an SVID");
    assert_eq!(renewed.spiffe_id, node.spiffe_id);
    let chain = chain_of(&renewed);
    assert_ne!(
        serial_hex(&chain[0]),
        serial_hex(&node.chain_der[0]),
        "a renewal is a new certificate"
    );
    assert_eq!(renewed.serial, serial_hex(&chain[0]));
    assert_leaf_profile(&chain[0], &node.spiffe_id, &[]);
    verify_x509_svid(&chain, &ca.bundle().unwrap(), SystemTime::now())
        .expect("the renewed node SVID verifies");
    let rows = ca.audit_since(mark).unwrap();
    assert!(
        rows.iter().any(|r| r.action == "renew_node"
            && r.result == "issued"
            && r.serial == renewed.serial),
        "{rows:#?}"
    );

    // The new credential works as the node's identity.
    let chain_pem = signet_tests::pem_chain(&chain);
    let key_pem = key.to_pem();
    let mut renewed_client = ca.node_client(Some((&chain_pem, &key_pem))).await.unwrap();
    renewed_client
        .list_authorized_entries(pb::ListAuthorizedEntriesRequest {})
        .await
        .expect("the renewed SVID authenticates the node");
}

#[tokio::test]
async fn lifetimes_follow_the_request_the_entry_and_the_server_limits() {
    let ca = CaProcess::start(
        CaOptions::default()
            .flag("default-x509-svid-ttl", "30m")
            .flag("max-x509-svid-ttl", "2h")
            .flag("node-svid-ttl", "10m"),
    )
    .await
    .unwrap();
    let before = SystemTime::now();
    let node = signet_tests::attest_node(&ca, "node-a").await.unwrap();
    let after = SystemTime::now();
    let (_, node_not_after) = validity(&node.chain_der[0]);
    assert!(
        (unix_seconds(before) + 599..=unix_seconds(after) + 600).contains(&node_not_after),
        "node SVID should live --node-svid-ttl (10m): notAfter {node_not_after}, attested at {}",
        unix_seconds(before)
    );

    let mut admin = ca.admin().await.unwrap();
    let entry = |ttl: i64| pb::CreateEntryRequest {
        spiffe_id: ca.id(&format!("/ttl-{ttl}")),
        parent_id: ca.node_id("node-a"),
        selectors: vec![pb::Selector {
            r#type: "unix".into(),
            value: format!("uid:{ttl}"),
        }],
        x509_svid_ttl_seconds: ttl,
        dns_names: vec![],
        federates_with: vec![],
    };
    let with_ttl = admin
        .create_entry(entry(3600))
        .await
        .unwrap()
        .into_inner()
        .id;
    let without = admin.create_entry(entry(0)).await.unwrap().into_inner().id;
    let too_long = admin.create_entry(entry(3 * 3600)).await.unwrap_err();
    assert_eq!(
        too_long.code(),
        tonic::Code::InvalidArgument,
        "an entry TTL above --max-x509-svid-ttl must be refused: {too_long:?}"
    );

    // (entry, requested seconds, expected lifetime seconds)
    let cases: [(&str, i64, i64); 5] = [
        (&with_ttl, 0, 3600),      // the entry's own
        (&with_ttl, 600, 600),     // shorter on request
        (&with_ttl, 7200, 3600),   // never above the entry's
        (&without, 0, 1800),       // the server default
        (&without, 100_000, 7200), // never above the server maximum
    ];
    let items = cases
        .iter()
        .map(|(entry_id, ttl, _)| pb::SignRequestItem {
            entry_id: (*entry_id).to_owned(),
            csr: new_key_and_csr().unwrap().1,
            ttl_seconds: *ttl,
        })
        .collect();
    let mut client = ca.node_client(Some(node.tls_identity())).await.unwrap();
    let before = SystemTime::now();
    let results = client
        .batch_sign_x509_svid(pb::BatchSignX509SvidRequest { items })
        .await
        .unwrap()
        .into_inner()
        .results;
    let after = SystemTime::now();
    for ((entry_id, requested, expected), result) in cases.iter().zip(&results) {
        let svid = svid_of(result);
        let (_, not_after) = validity(&chain_of(svid)[0]);
        assert!(
            (unix_seconds(before) + expected - 1..=unix_seconds(after) + expected)
                .contains(&not_after),
            "entry {entry_id}, requested {requested}s: expected a lifetime of {expected}s, \
             got notAfter {not_after} for a request at {}",
            unix_seconds(before)
        );
    }
}
