//! StreamSecrets: serving, ACK and NACK, pushes on rotation, several
//! streams on one connection.

use super::*;

#[tokio::test]
async fn default_is_served_acked_and_pushed_again_only_on_rotation() {
    let ca = Ca::new(TD);
    let first = ca.svid("e-web", WEB);
    let h = Harness::start(web_snapshot(1, &ca, first)).await;
    let mut s = h.open(&["default"]).await;

    let r1 = s.next().await;
    assert_is_svid(
        &only_secret(&r1),
        "default",
        &h.snapshots.borrow().svids["e-web"],
    );
    s.ack(&r1).await;
    s.quiet().await;

    // A new snapshot that changes nothing this caller asked for: no push.
    let unrelated = {
        let current = h.snapshots.borrow().clone();
        let mut entries = current.entries.clone();
        entries.push(entry("e-other", DB, someone_else()));
        Arc::new(Snapshot {
            crls: Arc::default(),
            reissue_pending: 0,
            bundle: current.bundle.clone(),
            federated: current.federated.clone(),
            entries,
            svids: current.svids.clone(),
            version: 2,
        })
    };
    h.snapshots.send_replace(unrelated);
    s.quiet().await;

    // Rotation: pushed with a new version and nonce.
    let rotated = ca.svid("e-web", WEB);
    let rotated_chain = ders(&rotated.chain);
    h.snapshots.send_replace(web_snapshot(3, &ca, rotated));
    let r2 = s.next().await;
    assert_ne!(r2.nonce, r1.nonce);
    assert_ne!(r2.version_info, r1.version_info);
    let secret = only_secret(&r2);
    assert_is_svid(&secret, "default", &h.snapshots.borrow().svids["e-web"]);
    assert_eq!(
        pem_ders(inline_bytes(
            tls_certificate(&secret).certificate_chain.as_ref()
        )),
        rotated_chain
    );
    s.ack(&r2).await;
    s.quiet().await;
    h.stop().await;
}

#[tokio::test]
async fn a_nack_is_logged_and_not_answered_with_the_same_content() {
    let (logs, _guard) = Logs::capture();
    let ca = Ca::new(TD);
    let h = Harness::start(web_snapshot(1, &ca, ca.svid("e-web", WEB))).await;
    let mut s = h.open(&["default"]).await;
    let r1 = s.next().await;

    s.send(
        &["default"],
        "",
        &r1.nonce,
        Some("Failed to load private key from <inline>"),
    )
    .await;
    s.quiet().await;
    let text = logs.text();
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains("NACK"), "{text}");
    assert!(
        text.contains("Failed to load private key from <inline>"),
        "{text}"
    );

    // The same content in a new snapshot is still not resent.
    let same = {
        let current = h.snapshots.borrow().clone();
        Arc::new(Snapshot {
            crls: Arc::default(),
            reissue_pending: 0,
            bundle: current.bundle.clone(),
            federated: current.federated.clone(),
            entries: current.entries.clone(),
            svids: current.svids.clone(),
            version: 2,
        })
    };
    h.snapshots.send_replace(same);
    s.quiet().await;

    // A real change is.
    h.snapshots
        .send_replace(web_snapshot(3, &ca, ca.svid("e-web", WEB)));
    let r2 = s.next().await;
    assert_is_svid(
        &only_secret(&r2),
        "default",
        &h.snapshots.borrow().svids["e-web"],
    );
    h.stop().await;
}

#[tokio::test]
async fn two_names_on_two_streams_of_one_connection() {
    let ca = Ca::new(TD);
    let h = Harness::start(web_snapshot(1, &ca, ca.svid("e-web", WEB))).await;
    let mut certs = h.open(&["default"]).await;
    let mut roots = h.open(&["ROOTCA"]).await;
    let c = certs.next().await;
    let r = roots.next().await;
    assert_eq!(only_secret(&c).name, "default");
    assert_eq!(only_secret(&r).name, "ROOTCA");
    certs.ack(&c).await;
    roots.ack(&r).await;

    // Rotation touches only the certificate stream.
    h.snapshots
        .send_replace(web_snapshot(2, &ca, ca.svid("e-web", WEB)));
    let c2 = certs.next().await;
    assert_is_svid(
        &only_secret(&c2),
        "default",
        &h.snapshots.borrow().svids["e-web"],
    );
    roots.quiet().await;
    h.stop().await;
}

#[tokio::test]
async fn a_missing_svid_is_sent_as_soon_as_it_is_issued() {
    let ca = Ca::new(TD);
    let h = Harness::start(snapshot(
        1,
        &ca,
        &[],
        vec![entry("e-web", WEB, me())],
        vec![],
    ))
    .await;
    let mut s = h.open(&["default"]).await;
    s.quiet().await;
    h.snapshots
        .send_replace(web_snapshot(2, &ca, ca.svid("e-web", WEB)));
    let r = s.next().await;
    assert_is_svid(
        &only_secret(&r),
        "default",
        &h.snapshots.borrow().svids["e-web"],
    );
    h.stop().await;
}

#[tokio::test]
async fn an_expired_svid_is_never_served_and_default_moves_on() {
    let ca = Ca::new(TD);
    // Two identities; the first (the default) expires in a moment.
    let a = "spiffe://example.org/a";
    let b = "spiffe://example.org/b";
    let mut first = ca.svid("e-a", a);
    first.not_after = SystemTime::now() + Duration::from_secs(2);
    let second = ca.svid("e-b", b);
    let snap = snapshot(
        1,
        &ca,
        &[],
        vec![entry("e-a", a, me()), entry("e-b", b, me())],
        vec![first, second],
    );
    let h = Harness::start(snap).await;
    let mut s = h.open(&["default"]).await;
    let r1 = s.next().await;
    assert_is_svid(
        &only_secret(&r1),
        "default",
        &h.snapshots.borrow().svids["e-a"],
    );
    s.ack(&r1).await;
    // No new snapshot: the expiry alone moves the default to the next SVID.
    let r2 = s.next().await;
    assert_is_svid(
        &only_secret(&r2),
        "default",
        &h.snapshots.borrow().svids["e-b"],
    );

    // And a new stream asking for the expired one by name gets nothing.
    let mut gone = h.open(&[a]).await;
    gone.quiet().await;
    h.stop().await;
}

#[tokio::test]
async fn a_new_root_reaches_every_bundle_stream_from_one_snapshot() {
    let ca = Ca::new(TD);
    let svid = ca.svid("e-web", WEB);
    let h = Harness::start(web_snapshot(1, &ca, svid)).await;
    let names = ["ROOTCA", "ALL", "spiffe://example.org", "example.org"];
    let mut streams = Vec::new();
    for name in names {
        let mut s = h.open(&[name]).await;
        let r = s.next().await;
        s.ack(&r).await;
        streams.push(s);
    }
    // A prepared root joins the bundle.
    let next = Ca::new(TD);
    let both = TrustBundle::new(TrustDomain::new(TD).unwrap())
        .with_x509_authorities(
            ca.bundle
                .x509_authorities()
                .iter()
                .chain(next.bundle.x509_authorities())
                .cloned(),
        )
        .unwrap();
    let mut rotated = Arc::unwrap_or_clone(h.snapshots.borrow().clone());
    rotated.bundle = Some(Arc::new(both.clone()));
    rotated.version = 2;
    h.snapshots.send_replace(Arc::new(rotated));
    for (name, s) in names.iter().zip(&mut streams) {
        let secret = only_secret(&s.next().await);
        let roots = if *name == "ROOTCA" {
            pem_ders(inline_bytes(
                validation_context(&secret).trusted_ca.as_ref(),
            ))
        } else {
            let domains = spiffe_validator_domains(&secret);
            assert_eq!(domains.len(), 1, "{name}");
            domains[0].1.clone()
        };
        assert_eq!(roots, ders(both.x509_authorities()), "{name}");
    }
    drop(streams);
    h.stop().await;
}
