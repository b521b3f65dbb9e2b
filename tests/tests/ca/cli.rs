//! The `signet` CLI's admin commands against a live CA, checked against
//! what the CA itself serves and writes.

use base64::Engine as _;
use serde_json::Value;
use signet_tests::{CaOptions, CaProcess, signet};

/// Parses the JSON stdout of a successful run.
fn json(out: &signet_tests::CliOutput) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{out}"))
}

#[tokio::test]
async fn cli_admin_commands_round_trip() {
    let ca = CaProcess::start(CaOptions::default()).await.unwrap();
    let roots: Vec<Vec<u8>> = ca
        .bundle()
        .unwrap()
        .x509_authorities()
        .iter()
        .map(|c| c.to_vec())
        .collect();

    // bundle show: PEM, and the SPIFFE bundle format.
    let pem_out = ca
        .signet_ca(["bundle", "show", "--format", "pem"])
        .await
        .unwrap()
        .ok()
        .unwrap();
    let shown: Vec<Vec<u8>> = pem::parse_many(&pem_out.stdout)
        .unwrap()
        .into_iter()
        .map(|p| p.into_contents())
        .collect();
    assert_eq!(
        shown, roots,
        "bundle show --format pem differs from bundle.pem"
    );
    let jwks_out = ca
        .signet_ca(["bundle", "show", "--format", "jwks"])
        .await
        .unwrap()
        .ok()
        .unwrap();
    let jwks = json(&jwks_out);
    let keys = jwks["keys"].as_array().expect("a JWK Set");
    let x5c: Vec<Vec<u8>> = keys
        .iter()
        .filter(|k| k["use"] == "x509-svid")
        .map(|k| {
            let chain = k["x5c"].as_array().expect("x5c");
            assert_eq!(chain.len(), 1, "one certificate per x509-svid key");
            base64::engine::general_purpose::STANDARD
                .decode(chain[0].as_str().unwrap())
                .unwrap()
        })
        .collect();
    assert_eq!(x5c, roots, "x509-svid keys differ from bundle.pem");
    assert!(
        keys.iter()
            .any(|k| k["use"] == "jwt-svid" && k["kid"].is_string()),
        "no jwt-svid key: {jwks}"
    );
    assert!(jwks["spiffe_sequence"].as_u64().is_some_and(|s| s >= 1));

    // authority list: an active root and an active intermediate.
    let authorities = json(
        &ca.signet(["--output", "json", "ca", "authority", "list"])
            .await
            .unwrap()
            .ok()
            .unwrap(),
    );
    let authorities = authorities["authorities"].as_array().unwrap();
    for kind in ["root", "intermediate"] {
        assert!(
            authorities
                .iter()
                .any(|a| a["kind"] == kind && a["state"] == "active"),
            "no active {kind}: {authorities:?}"
        );
    }

    // entry create (JSON), show, list, delete.
    let web_id = ca.id("/web");
    let created = json(
        &ca.signet_ca([
            "--output",
            "json",
            "entry",
            "create",
            "--spiffe-id",
            &web_id,
            "--parent-node",
            "node-a",
            "--selector",
            "unix:uid:1000",
            "--selector",
            "unix:gid:50",
            "--ttl",
            "2h",
            "--dns-name",
            "web.example",
        ])
        .await
        .unwrap()
        .ok()
        .unwrap(),
    );
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["spiffe_id"], web_id.as_str());
    assert_eq!(created["parent_id"], ca.node_id("node-a").as_str());
    assert_eq!(created["x509_svid_ttl_seconds"], 7200);
    assert_eq!(created["dns_names"], serde_json::json!(["web.example"]));
    assert_eq!(created["selectors"].as_array().map(Vec::len), Some(2));

    let shown = ca
        .signet_ca(["entry", "show", &id])
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert!(shown.stdout.contains(&web_id), "{shown}");
    assert!(shown.stdout.contains(&id), "{shown}");

    let listed = json(
        &ca.signet_ca(["-o", "json", "entry", "list"])
            .await
            .unwrap()
            .ok()
            .unwrap(),
    );
    let ids: Vec<&str> = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(ids, [id.as_str()]);

    ca.signet_ca(["entry", "delete", &id])
        .await
        .unwrap()
        .ok()
        .unwrap();
    let gone = ca.signet_ca(["entry", "show", &id]).await.unwrap();
    assert!(!gone.success(), "a deleted entry is still shown: {gone}");
    assert!(gone.stderr.contains("NotFound"), "{gone}");

    // A mistake is reported, not accepted: the reserved /signet/ namespace.
    let reserved = ca
        .signet_ca([
            "entry",
            "create",
            "--spiffe-id",
            &ca.id("/signet/node/node-b"),
            "--parent-node",
            "node-a",
            "--selector",
            "unix:uid:0",
        ])
        .await
        .unwrap();
    assert!(
        !reserved.success(),
        "an entry in the reserved namespace was accepted: {reserved}"
    );
    assert!(reserved.stderr.contains("InvalidArgument"), "{reserved}");

    // Nor the CA's own identity, nor a DNS name the CA serves under: a
    // workload holding either could pass for the CA. Minting is held to the
    // same rules.
    let out_dir = ca.scratch_dir().join("refused").display().to_string();
    for (what, args) in [
        (
            "an entry for the CA's ID",
            vec![
                "entry".to_owned(),
                "create".into(),
                "--spiffe-id".into(),
                ca.id("/signet/ca"),
                "--parent-node".into(),
                "node-a".into(),
                "--selector".into(),
                "unix:uid:0".into(),
            ],
        ),
        (
            "an entry with the CA's DNS name",
            vec![
                "entry".to_owned(),
                "create".into(),
                "--spiffe-id".into(),
                ca.id("/impostor"),
                "--parent-node".into(),
                "node-a".into(),
                "--selector".into(),
                "unix:uid:0".into(),
                "--dns-name".into(),
                "localhost".into(),
            ],
        ),
        (
            "a minted SVID with the CA's DNS name",
            vec![
                "mint".to_owned(),
                "--spiffe-id".into(),
                ca.id("/impostor"),
                "--out".into(),
                out_dir.clone(),
                "--dns-name".into(),
                "localhost".into(),
            ],
        ),
        (
            "a minted SVID for the CA's ID",
            vec![
                "mint".to_owned(),
                "--spiffe-id".into(),
                ca.id("/signet/ca"),
                "--out".into(),
                out_dir.clone(),
            ],
        ),
    ] {
        let refused = ca.signet_ca(args).await.unwrap();
        assert!(!refused.success(), "{what} was accepted: {refused}");
        assert!(
            refused.stderr.contains("InvalidArgument"),
            "{what}: {refused}"
        );
    }
    let entries = json(
        &ca.signet_ca(["-o", "json", "entry", "list"])
            .await
            .unwrap()
            .ok()
            .unwrap(),
    );
    assert!(
        !entries.to_string().contains("impostor"),
        "a refused entry was stored: {entries}"
    );

    // inspect on a minted SVID.
    let svid = ca.mint_cli(&web_id, "web", &[]).await.unwrap();
    let path = svid.chain_path().display().to_string();
    let inspected = signet(["inspect", &path]).await.unwrap().ok().unwrap();
    assert!(inspected.stdout.contains(&web_id), "{inspected}");
}
