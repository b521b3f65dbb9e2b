//! `signet ca status`: the CA's health on one screen, over the admin socket.

use signet_proto::ca::v1 as pb;
use signet_tests::{CaOptions, CaProcess, attest_node};

#[tokio::test]
async fn status_shows_authorities_agents_and_the_last_audit_write() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    // Three nodes: one serves the current bundle, one an older one, and one
    // never reports.
    let current = attest_node(&ca, "current").await.unwrap();
    let behind = attest_node(&ca, "behind").await.unwrap();
    attest_node(&ca, "silent").await.unwrap();
    let mut admin = ca.admin().await.unwrap();
    let old = admin
        .get_bundle(pb::GetBundleRequest {})
        .await
        .unwrap()
        .into_inner()
        .sequence;
    let report = |sequence: u64| pb::ReportStatusRequest {
        bundle_sequence: sequence,
        svid_count: 3,
        chains_through: vec![],
    };
    ca.node_client(Some(behind.tls_identity()))
        .await
        .unwrap()
        .report_status(report(old))
        .await
        .unwrap();
    let new = admin
        .prepare_authority(pb::PrepareAuthorityRequest {
            kind: pb::AuthorityKind::Jwt.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .bundle_sequence;
    assert!(new > old);
    ca.node_client(Some(current.tls_identity()))
        .await
        .unwrap()
        .report_status(report(new))
        .await
        .unwrap();

    let out = ca
        .signet_ca(["--output", "json", "status"])
        .await
        .unwrap()
        .ok()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["trust_domain"], ca.trust_domain().as_str());
    assert_eq!(v["bundle_sequence"], new);
    let agents = &v["agents"];
    assert_eq!(
        (
            &agents["total"],
            &agents["current"],
            &agents["behind"],
            &agents["unreported"]
        ),
        (&3.into(), &1.into(), &1.into(), &1.into()),
        "{v:#}"
    );
    let root = v["authorities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "root")
        .unwrap_or_else(|| panic!("no root: {v:#}"));
    // A default root lives 365 days.
    let left = root["expires_in_seconds"].as_i64().unwrap();
    assert!(left > 364 * 86400 && left <= 365 * 86400, "{root:#}");
    let audit = &v["last_audit"];
    assert!(audit["at"].is_string(), "{v:#}");
    assert_eq!(audit["action"], "authority_publish", "{v:#}");
    assert_eq!(audit["result"], "ok", "{v:#}");

    let text = ca.signet_ca(["status"]).await.unwrap().ok().unwrap().stdout;
    assert!(
        text.contains("Agents: 3 total, 1 current, 1 behind, 1 unreported"),
        "{text}"
    );
    assert!(text.contains(&format!("Bundle sequence {new}")), "{text}");
    let row = |name: &str| {
        let id = ca.node_id(name);
        text.lines()
            .find(|l| l.starts_with(&id))
            .unwrap_or_else(|| panic!("no row for {id}:\n{text}"))
            .to_owned()
    };
    assert!(
        row("current").contains(&format!("{new} (current)")),
        "{text}"
    );
    assert!(row("behind").contains(&format!("{old} (behind)")), "{text}");
    assert!(row("silent").contains("never"), "{text}");
    // The last audited action was the publication of the new JWT key (status reports are
    // not audited).
    assert!(text.contains("): authority_publish ok by admin"), "{text}");
    let root_row = text
        .lines()
        .find(|l| l.contains(" root "))
        .unwrap_or_else(|| panic!("no root row:\n{text}"));
    assert!(root_row.contains("(expires in 11months"), "{root_row}");
}
