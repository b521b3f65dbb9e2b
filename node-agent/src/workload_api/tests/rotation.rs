//! Rotation as a workload sees it: every published JWT key validates
//! (prepared, active and retired ones alike), a key no longer published
//! does not, and a new root reaches every open stream from one snapshot.

use super::*;

fn with_jwt_keys(pki: &Pki, keys: &[(&str, &PrivateKey)], version: u64) -> Arc<Snapshot> {
    let mut bundle = TrustBundle::new(td())
        .with_x509_authorities(pki.bundle.x509_authorities().iter().cloned())
        .unwrap();
    for (kid, key) in keys {
        bundle
            .add_jwt_authority(JwtAuthority::new(*kid, &key.public_key_spki()).unwrap())
            .unwrap();
    }
    bundle.set_sequence(version);
    let mut s = Arc::unwrap_or_clone(pki.snapshot(&[], &[], version));
    s.bundle = Some(Arc::new(bundle));
    Arc::new(s)
}

fn signed_by(key: &PrivateKey, kid: &str) -> String {
    jwt::sign_es256(
        key,
        kid,
        &id("/peer"),
        &["api".to_owned()],
        Duration::from_secs(300),
        SystemTime::now(),
    )
    .unwrap()
}

#[tokio::test]
async fn every_published_jwt_key_validates_and_an_unpublished_one_does_not() {
    let pki = Pki::new(td());
    let retired = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let active = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let prepared = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let h = Harness::start(
        &pki,
        with_jwt_keys(
            &pki,
            &[
                ("retired", &retired),
                ("active", &active),
                ("prepared", &prepared),
            ],
            1,
        ),
    )
    .await;
    let mut raw = h.raw().await;
    let validate = |raw: &mut SpiffeWorkloadApiClient<Channel>, token: String| {
        let mut raw = raw.clone();
        async move {
            raw.validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                audience: "api".into(),
                svid: token,
            }))
            .await
        }
    };
    for (kid, key) in [
        ("retired", &retired),
        ("active", &active),
        ("prepared", &prepared),
    ] {
        let got = validate(&mut raw, signed_by(key, kid)).await;
        assert_eq!(
            got.unwrap().into_inner().spiffe_id,
            "spiffe://example.org/peer",
            "{kid}"
        );
    }
    // The retired key is pruned (or revoked): its tokens stop validating.
    h.snapshots.send_replace(with_jwt_keys(
        &pki,
        &[("active", &active), ("prepared", &prepared)],
        2,
    ));
    let err = validate(&mut raw, signed_by(&retired, "retired"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // A key that claims a published kid but is not that key.
    let err = validate(&mut raw, signed_by(&retired, "active"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    h.stop().await;
}

#[tokio::test]
async fn a_new_root_reaches_every_open_stream_from_one_snapshot() {
    let pki = Pki::new(td());
    let entries = [entry("e-api", "/api", vec![me()])];
    let svid = pki.issue(&entries[0]);
    let h = Harness::start(&pki, pki.snapshot(&entries, std::slice::from_ref(&svid), 1)).await;
    let mut raw = h.raw().await;
    let mut svid_streams = Vec::new();
    let mut bundle_streams = Vec::new();
    for _ in 0..3 {
        svid_streams.push(
            raw.fetch_x509svid(with_header(X509svidRequest {}))
                .await
                .unwrap()
                .into_inner(),
        );
        bundle_streams.push(
            raw.fetch_x509_bundles(with_header(X509BundlesRequest {}))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    for s in &mut svid_streams {
        let m = tokio::time::timeout(WAIT, s.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m.svids[0].bundle, pki.root.to_vec());
    }
    for s in &mut bundle_streams {
        let m = tokio::time::timeout(WAIT, s.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m.bundles["spiffe://example.org"], pki.root.to_vec());
    }

    // A prepared root joins the bundle: one snapshot, every stream.
    let next = TestCa::new(td()).unwrap();
    let mut rotated = Arc::unwrap_or_clone(pki.snapshot(&entries, std::slice::from_ref(&svid), 2));
    let both = TrustBundle::new(td())
        .with_x509_authorities([pki.root.clone(), next.root().clone()])
        .unwrap();
    rotated.bundle = Some(Arc::new(both));
    h.snapshots.send_replace(Arc::new(rotated));
    let expected: Vec<u8> = [pki.root.to_vec(), next.root().to_vec()].concat();
    for s in &mut svid_streams {
        let m = tokio::time::timeout(WAIT, s.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m.svids[0].bundle, expected);
    }
    for s in &mut bundle_streams {
        let m = tokio::time::timeout(WAIT, s.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m.bundles["spiffe://example.org"], expected);
    }
    drop((svid_streams, bundle_streams));
    h.stop().await;
}
