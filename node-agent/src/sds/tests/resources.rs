//! What each kind of secret holds: bundles as trusted CAs or as the
//! SPIFFE validator's config.

use super::*;

#[tokio::test]
async fn rootca_is_the_own_bundle_and_pushed_on_bundle_change() {
    let ca = Ca::new(TD);
    let fed = Ca::new(FED_TD);
    let svid = ca.svid("e-web", WEB);
    let h = Harness::start(snapshot(
        1,
        &ca,
        &[&fed],
        vec![entry("e-web", WEB, me())],
        vec![svid],
    ))
    .await;
    let mut s = h.open(&["ROOTCA"]).await;
    let r1 = s.next().await;
    let secret = only_secret(&r1);
    assert_eq!(secret.name, "ROOTCA");
    let context = validation_context(&secret);
    assert!(context.custom_validator_config.is_none());
    assert_eq!(
        pem_ders(inline_bytes(context.trusted_ca.as_ref())),
        ders(ca.bundle.x509_authorities())
    );
    s.ack(&r1).await;
    s.quiet().await;

    // A second root joins the bundle (CA rotation): pushed.
    let extra = Ca::new(TD);
    let both = TrustBundle::new(TrustDomain::new(TD).unwrap())
        .with_x509_authorities(
            ca.bundle
                .x509_authorities()
                .iter()
                .chain(extra.bundle.x509_authorities())
                .cloned(),
        )
        .unwrap();
    let current = h.snapshots.borrow().clone();
    h.snapshots.send_replace(Arc::new(Snapshot {
        crls: Arc::default(),
        reissue_pending: 0,
        bundle: Some(Arc::new(both.clone())),
        federated: current.federated.clone(),
        entries: current.entries.clone(),
        svids: current.svids.clone(),
        version: 2,
    }));
    let r2 = s.next().await;
    assert_ne!(r2.version_info, r1.version_info);
    let secret = only_secret(&r2);
    assert_eq!(
        pem_ders(inline_bytes(
            validation_context(&secret).trusted_ca.as_ref()
        )),
        ders(both.x509_authorities())
    );
    h.stop().await;
}

#[tokio::test]
async fn all_and_trust_domain_names_use_the_spiffe_validator() {
    let ca = Ca::new(TD);
    let fed = Ca::new(FED_TD);
    let svid = ca.svid("e-web", WEB);
    let h = Harness::start(snapshot(
        1,
        &ca,
        &[&fed],
        vec![federating_entry("e-web", WEB, me(), &[FED_TD])],
        vec![svid],
    ))
    .await;

    // ALL: every bundle, each under its own trust domain.
    let mut all = h.open(&["ALL"]).await;
    let secret = only_secret(&all.next().await);
    assert_eq!(secret.name, "ALL");
    assert_eq!(
        spiffe_validator_domains(&secret),
        vec![
            (TD.to_owned(), ders(ca.bundle.x509_authorities())),
            (FED_TD.to_owned(), ders(fed.bundle.x509_authorities())),
        ]
    );

    // A trust domain, in either spelling, and a federated one: that trust
    // domain only, under the name asked for. Several names in one stream.
    let names = [
        "example.org",
        "spiffe://example.org",
        "spiffe://partner.test",
    ];
    let mut s = h.open(&names).await;
    let got = secrets(&s.next().await.resources);
    let mut by_name: HashMap<String, Secret> =
        got.into_iter().map(|s| (s.name.clone(), s)).collect();
    assert_eq!(by_name.len(), 3);
    for name in &names[..2] {
        let secret = by_name.remove(*name).unwrap();
        assert_eq!(
            spiffe_validator_domains(&secret),
            vec![(TD.to_owned(), ders(ca.bundle.x509_authorities()))]
        );
    }
    let secret = by_name.remove("spiffe://partner.test").unwrap();
    assert_eq!(
        spiffe_validator_domains(&secret),
        vec![(FED_TD.to_owned(), ders(fed.bundle.x509_authorities()))]
    );
    h.stop().await;
}

#[tokio::test]
async fn spire_node_metadata_can_ask_for_a_plain_trusted_ca() {
    let ca = Ca::new(TD);
    let h = Harness::start(web_snapshot(1, &ca, ca.svid("e-web", WEB))).await;
    let (tx, rx) = mpsc::channel(2);
    let metadata = (
        "disable_spiffe_cert_validation",
        value::Kind::BoolValue(true),
    );
    tx.send(request(
        &["spiffe://example.org"],
        "",
        "",
        None,
        Some(metadata),
    ))
    .await
    .unwrap();
    let mut responses = h
        .client()
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let response = timeout(PATIENCE, responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let secret = only_secret(&response);
    let context = validation_context(&secret);
    assert!(context.custom_validator_config.is_none());
    assert_eq!(
        pem_ders(inline_bytes(context.trusted_ca.as_ref())),
        ders(ca.bundle.x509_authorities())
    );
    drop(tx);
    h.stop().await;
}
