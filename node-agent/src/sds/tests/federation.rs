//! Federated bundles and CRLs over SDS: `ALL` and trust domain names hold
//! only what the caller's entries federate with; a removed federated bundle
//! leaves every stream at once (spire#1816); CRLs go where Envoy reads them.

use super::*;

const STRANGER_TD: &str = "stranger.test";

/// A SPIFFE validator's trust domains, each with its roots' DER.
type Domains = Vec<(String, Vec<Vec<u8>>)>;

/// PEM blocks as (tag, DER).
type Blocks = Vec<(String, Vec<u8>)>;

/// The PEM blocks of `bytes`.
fn pem_blocks(bytes: &[u8]) -> Blocks {
    pem::parse_many(bytes)
        .unwrap()
        .into_iter()
        .map(|p| (p.tag().to_owned(), p.into_contents()))
        .collect()
}

/// The trust domains of a SPIFFE validator secret with the raw PEM blocks
/// of each one's trust bundle.
fn spiffe_validator_blocks(secret: &Secret) -> Vec<(String, Blocks)> {
    let context = validation_context(secret);
    let any = context
        .custom_validator_config
        .as_ref()
        .unwrap()
        .typed_config
        .as_ref()
        .unwrap();
    SpiffeCertValidatorConfig::decode(any.value.as_slice())
        .unwrap()
        .trust_domains
        .iter()
        .map(|td| {
            (
                td.name.clone(),
                pem_blocks(inline_bytes(td.trust_bundle.as_ref())),
            )
        })
        .collect()
}

fn certs(ca: &Ca) -> Blocks {
    ca.bundle
        .x509_authorities()
        .iter()
        .map(|c| ("CERTIFICATE".to_owned(), c.to_vec()))
        .collect()
}

fn with_crls(s: Arc<Snapshot>, crls: Vec<Vec<u8>>) -> Arc<Snapshot> {
    let mut s = Arc::unwrap_or_clone(s);
    s.crls = crls.into();
    Arc::new(s)
}

#[tokio::test]
async fn all_holds_only_what_the_caller_federates_with_and_a_removed_bundle_leaves_every_stream() {
    let ca = Ca::new(TD);
    let fed = Ca::new(FED_TD);
    let stranger = Ca::new(STRANGER_TD);
    let svid = ca.svid("e-web", WEB);
    // Another workload's entry federates with the stranger trust domain.
    let entries = vec![
        federating_entry("e-web", WEB, me(), &[FED_TD]),
        federating_entry("e-db", DB, someone_else(), &[STRANGER_TD]),
    ];
    let first = snapshot(1, &ca, &[&fed, &stranger], entries.clone(), vec![svid]);
    let h = Harness::start(first.clone()).await;

    // Several streams at once, as Envoy opens one per secret name.
    let mut all_a = h.open(&["ALL"]).await;
    let mut all_b = h.open(&["ALL"]).await;
    let mut partner = h.open(&["spiffe://partner.test"]).await;
    let mut rootca = h.open(&["ROOTCA"]).await;
    let both = vec![
        (TD.to_owned(), ders(ca.bundle.x509_authorities())),
        (FED_TD.to_owned(), ders(fed.bundle.x509_authorities())),
    ];
    for s in [&mut all_a, &mut all_b] {
        let r = s.next().await;
        assert_eq!(spiffe_validator_domains(&only_secret(&r)), both);
        s.ack(&r).await;
    }
    let r = partner.next().await;
    assert_eq!(
        spiffe_validator_domains(&only_secret(&r)),
        vec![(FED_TD.to_owned(), ders(fed.bundle.x509_authorities()))]
    );
    partner.ack(&r).await;
    let r = rootca.next().await;
    rootca.ack(&r).await;

    // The stranger's bundle is the agent's, not this caller's: not served.
    let status = h
        .client()
        .fetch_secrets(request(&["spiffe://stranger.test"], "", "", None, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // The relationship with partner.test is deleted: one snapshot without
    // its bundle. Both ALL streams get the own trust domain alone, at once.
    h.snapshots.send_replace(snapshot(
        2,
        &ca,
        &[&stranger],
        entries,
        vec![ca.svid("e-web", WEB)],
    ));
    let own_only = vec![(TD.to_owned(), ders(ca.bundle.x509_authorities()))];
    for s in [&mut all_a, &mut all_b] {
        let r = s.next().await;
        assert_eq!(spiffe_validator_domains(&only_secret(&r)), own_only);
        s.ack(&r).await;
        s.quiet().await;
    }
    // The stream that asked for partner.test by name is not left holding
    // the old bundle: its secret is replaced by one no peer can satisfy.
    let r = partner.next().await;
    let domains = spiffe_validator_domains(&only_secret(&r));
    assert_eq!(domains.len(), 1);
    assert_eq!(domains[0].0, FED_TD);
    assert_ne!(domains[0].1, ders(fed.bundle.x509_authorities()));
    assert_ne!(domains[0].1, ders(ca.bundle.x509_authorities()));
    partner.ack(&r).await;
    partner.quiet().await;
    // ROOTCA did not change.
    rootca.quiet().await;

    // The relationship comes back: so does the bundle, on the same streams.
    let back = snapshot(
        3,
        &ca,
        &[&fed, &stranger],
        vec![federating_entry("e-web", WEB, me(), &[FED_TD])],
        vec![ca.svid("e-web", WEB)],
    );
    h.snapshots.send_replace(back);
    let r = partner.next().await;
    assert_eq!(
        spiffe_validator_domains(&only_secret(&r)),
        vec![(FED_TD.to_owned(), ders(fed.bundle.x509_authorities()))]
    );
    let r = all_a.next().await;
    assert_eq!(spiffe_validator_domains(&only_secret(&r)), both);
    drop((all_a, all_b, partner, rootca));
    h.stop().await;
}

#[tokio::test]
async fn crls_reach_rootca_and_the_own_trust_domain_of_the_spiffe_validator() {
    let ca = Ca::new(TD);
    let fed = Ca::new(FED_TD);
    let crl = crate::test_pki::test_crl(42);
    let entries = vec![federating_entry("e-web", WEB, me(), &[FED_TD])];
    let h = Harness::start(with_crls(
        snapshot(
            1,
            &ca,
            &[&fed],
            entries.clone(),
            vec![ca.svid("e-web", WEB)],
        ),
        vec![crl.clone()],
    ))
    .await;

    // ROOTCA (Envoy's default validator): the roots, and the CRL in `crl`.
    let mut rootca = h.open(&["ROOTCA"]).await;
    let r1 = rootca.next().await;
    let secret = only_secret(&r1);
    let context = validation_context(&secret);
    assert_eq!(
        pem_ders(inline_bytes(context.trusted_ca.as_ref())),
        ders(ca.bundle.x509_authorities())
    );
    assert_eq!(
        pem_blocks(inline_bytes(context.crl.as_ref())),
        vec![("X509 CRL".to_owned(), crl.clone())]
    );
    rootca.ack(&r1).await;

    // ALL and the own trust domain's name: CRL blocks after the roots of the
    // own trust domain only.
    let mut own_with_crl = certs(&ca);
    own_with_crl.push(("X509 CRL".to_owned(), crl.clone()));
    let mut all = h.open(&["ALL", "spiffe://example.org"]).await;
    let r = all.next().await;
    let mut got = secrets(&r.resources);
    got.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(
        spiffe_validator_blocks(&got[0]),
        vec![
            (TD.to_owned(), own_with_crl.clone()),
            (FED_TD.to_owned(), certs(&fed)),
        ]
    );
    assert_eq!(
        spiffe_validator_blocks(&got[1]),
        vec![(TD.to_owned(), own_with_crl)]
    );
    all.ack(&r).await;

    // The CRL goes away: pushed without it, and without a `crl` field.
    h.snapshots.send_replace(snapshot(
        2,
        &ca,
        &[&fed],
        entries,
        vec![ca.svid("e-web", WEB)],
    ));
    let r2 = rootca.next().await;
    assert_ne!(r2.version_info, r1.version_info);
    assert!(validation_context(&only_secret(&r2)).crl.is_none());
    let r = all.next().await;
    let mut got = secrets(&r.resources);
    got.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(
        spiffe_validator_blocks(&got[1]),
        vec![(TD.to_owned(), certs(&ca))]
    );
    drop((rootca, all));
    h.stop().await;
}

#[tokio::test]
async fn a_reconnecting_envoy_holding_a_removed_bundle_gets_it_replaced_but_never_the_own() {
    let ca = Ca::new(TD);
    // The agent holds no partner.test bundle (the relationship is gone).
    let h = Harness::start(snapshot(
        1,
        &ca,
        &[],
        vec![federating_entry("e-web", WEB, me(), &[FED_TD])],
        vec![ca.svid("e-web", WEB)],
    ))
    .await;
    let (tx, rx) = mpsc::channel(8);
    // Envoy says what it holds from before the restart: both trust domains.
    tx.send(DeltaDiscoveryRequest {
        node: Some(node(None)),
        type_url: SECRET_TYPE_URL.to_owned(),
        resource_names_subscribe: vec![
            "spiffe://partner.test".into(),
            "spiffe://example.org".into(),
        ],
        initial_resource_versions: [
            ("spiffe://partner.test".to_owned(), "old".to_owned()),
            ("spiffe://example.org".to_owned(), "old".to_owned()),
        ]
        .into(),
        ..DeltaDiscoveryRequest::default()
    })
    .await
    .unwrap();
    let mut responses = h
        .client()
        .delta_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r = timeout(PATIENCE, responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut got: Vec<(String, Domains)> = r
        .resources
        .iter()
        .map(|res| {
            let secret = Secret::decode(res.resource.as_ref().unwrap().value.as_slice()).unwrap();
            (res.name.clone(), spiffe_validator_domains(&secret))
        })
        .collect();
    got.sort();
    assert_eq!(got.len(), 2, "{got:?}");
    // The own trust domain: its real bundle.
    assert_eq!(got[0].0, "spiffe://example.org");
    assert_eq!(
        got[0].1,
        vec![(TD.to_owned(), ders(ca.bundle.x509_authorities()))]
    );
    // partner.test: replaced by a root nobody can sign for.
    assert_eq!(got[1].0, "spiffe://partner.test");
    assert_eq!(got[1].1.len(), 1);
    assert_eq!(got[1].1[0].0, FED_TD);
    assert_ne!(got[1].1[0].1, ders(ca.bundle.x509_authorities()));
    drop(tx);
    h.stop().await;
}
