//! Federated bundles reach a caller only through the trust domains its
//! entries federate with, and leave every open stream at once when the
//! relationship goes away (spire#1816: a removed bundle must not linger).

use super::*;

const PARTNER: &str = "partner.org";
const STRANGER: &str = "stranger.org";

fn spiffe_key(td: &str) -> String {
    format!("spiffe://{td}")
}

/// A JWT-SVID for `subject`, signed by `pki`'s JWT key.
fn token(pki: &Pki, subject: &str) -> String {
    jwt::sign_es256(
        &pki.jwt_key,
        "jwt-1",
        &SpiffeId::parse(subject).unwrap(),
        &["api".to_owned()],
        Duration::from_secs(300),
        SystemTime::now(),
    )
    .unwrap()
}

fn with_federated(
    pki: &Pki,
    entries: Vec<Arc<Entry>>,
    svids: &[Arc<Svid>],
    federated: &[&Pki],
    version: u64,
) -> Arc<Snapshot> {
    let mut s = Arc::unwrap_or_clone(pki.snapshot(&[], svids, version));
    s.entries = entries;
    s.federated = federated
        .iter()
        .map(|p| (p.bundle.trust_domain().clone(), p.bundle.clone()))
        .collect();
    Arc::new(s)
}

fn sorted_keys<V>(map: &HashMap<String, V>) -> Vec<String> {
    let mut keys: Vec<String> = map.keys().cloned().collect();
    keys.sort();
    keys
}

async fn next<T>(stream: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("no message in time")
        .unwrap()
        .expect("the stream ended")
}

async fn validate(
    raw: &mut SpiffeWorkloadApiClient<Channel>,
    svid: &str,
) -> Result<String, tonic::Status> {
    raw.validate_jwtsvid(with_header(ValidateJwtsvidRequest {
        audience: "api".into(),
        svid: svid.into(),
    }))
    .await
    .map(|r| r.into_inner().spiffe_id)
}

#[tokio::test]
async fn a_caller_gets_only_the_federated_bundles_its_entries_federate_with_until_removed() {
    let pki = Pki::new(td());
    let partner = Pki::new(TrustDomain::new(PARTNER).unwrap());
    let stranger = Pki::new(TrustDomain::new(STRANGER).unwrap());
    let mine = entry("e-api", "/api", vec![me()]);
    // Someone else's entry federates with the stranger trust domain: the
    // agent holds its bundle, but this caller must not get it.
    let theirs = federating(
        &entry(
            "e-other",
            "/other",
            vec![Selector::new("unix", "uid:4000000000")],
        ),
        &[STRANGER],
    );
    let svid = pki.issue(&mine);
    let entries = vec![federating(&mine, &[PARTNER]), theirs.clone()];
    let h = Harness::start(
        &pki,
        with_federated(
            &pki,
            entries,
            std::slice::from_ref(&svid),
            &[&partner, &stranger],
            1,
        ),
    )
    .await;
    let mut raw = h.raw().await;
    let mut svids = raw
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut x509 = raw
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut jwks = raw
        .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();

    let m = next(&mut svids).await;
    assert_eq!(sorted_keys(&m.federated_bundles), [spiffe_key(PARTNER)]);
    assert_eq!(
        m.federated_bundles[&spiffe_key(PARTNER)],
        partner.root.to_vec()
    );
    let m = next(&mut x509).await;
    assert_eq!(
        sorted_keys(&m.bundles),
        [spiffe_key("example.org"), spiffe_key(PARTNER)]
    );
    let m = next(&mut jwks).await;
    assert_eq!(
        sorted_keys(&m.bundles),
        [spiffe_key("example.org"), spiffe_key(PARTNER)]
    );

    // Tokens: the own and the federated trust domain validate; the
    // stranger's does not, though the agent holds its bundle.
    let own = token(&pki, "spiffe://example.org/peer");
    let theirs_token = token(&partner, "spiffe://partner.org/peer");
    let stranger_token = token(&stranger, "spiffe://stranger.org/peer");
    assert_eq!(
        validate(&mut raw, &own).await.unwrap(),
        "spiffe://example.org/peer"
    );
    assert_eq!(
        validate(&mut raw, &theirs_token).await.unwrap(),
        "spiffe://partner.org/peer"
    );
    let err = validate(&mut raw, &stranger_token).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    // A token of the partner domain signed by a key its bundle lacks.
    let forged = jwt::sign_es256(
        &pki.jwt_key,
        "jwt-1",
        &SpiffeId::parse("spiffe://partner.org/peer").unwrap(),
        &["api".to_owned()],
        Duration::from_secs(300),
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(
        validate(&mut raw, &forged).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    // The relationship is deleted: the CA stops sending the partner's
    // bundle. Every open stream gets a message without it, at once.
    h.snapshots.send_replace(with_federated(
        &pki,
        vec![federating(&mine, &[PARTNER]), theirs],
        std::slice::from_ref(&svid),
        &[&stranger],
        2,
    ));
    let m = next(&mut svids).await;
    assert!(
        m.federated_bundles.is_empty(),
        "{:?}",
        m.federated_bundles.keys()
    );
    assert_eq!(
        sorted_keys(&next(&mut x509).await.bundles),
        [spiffe_key("example.org")]
    );
    assert_eq!(
        sorted_keys(&next(&mut jwks).await.bundles),
        [spiffe_key("example.org")]
    );
    let err = validate(&mut raw, &theirs_token).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    drop((svids, x509, jwks));
    h.stop().await;
}

#[tokio::test]
async fn an_entry_that_stops_federating_takes_the_bundle_away() {
    let pki = Pki::new(td());
    let partner = Pki::new(TrustDomain::new(PARTNER).unwrap());
    let mine = entry("e-api", "/api", vec![me()]);
    let svid = pki.issue(&mine);
    let h = Harness::start(
        &pki,
        with_federated(
            &pki,
            vec![federating(&mine, &[PARTNER])],
            std::slice::from_ref(&svid),
            &[&partner],
            1,
        ),
    )
    .await;
    let mut raw = h.raw().await;
    let mut x509 = raw
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut x509).await.bundles.len(), 2);
    h.snapshots.send_replace(with_federated(
        &pki,
        vec![mine.clone()],
        std::slice::from_ref(&svid),
        &[&partner],
        2,
    ));
    assert_eq!(
        sorted_keys(&next(&mut x509).await.bundles),
        [spiffe_key("example.org")]
    );
    drop(x509);
    h.stop().await;
}

#[tokio::test]
async fn x509_svids_and_bundles_carry_the_crls() {
    let pki = Pki::new(td());
    let crl = crate::test_pki::test_crl(9);
    let mine = entry("e-api", "/api", vec![me()]);
    let svid = pki.issue(&mine);
    let mut snapshot = Arc::unwrap_or_clone(pki.snapshot(&[mine], &[svid], 1));
    snapshot.crls = vec![crl.clone()].into();
    let h = Harness::start(&pki, Arc::new(snapshot)).await;
    let mut raw = h.raw().await;
    let mut x509 = raw
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut x509).await.crl, std::slice::from_ref(&crl));
    let mut svids = raw
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut svids).await.crl, [crl]);
    drop((x509, svids));
    h.stop().await;
}
