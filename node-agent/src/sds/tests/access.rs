//! Who may have which secret: the caller's attested selectors decide.

use super::*;

#[tokio::test]
async fn a_spiffe_id_is_served_only_to_a_caller_entitled_to_it() {
    let (logs, _guard) = Logs::capture();
    let ca = Ca::new(TD);
    let snap = snapshot(
        1,
        &ca,
        &[],
        vec![entry("e-db", DB, someone_else()), entry("e-web", WEB, me())],
        vec![ca.svid("e-db", DB), ca.svid("e-web", WEB)],
    );
    let h = Harness::start(snap).await;

    let mut own = h.open(&[WEB]).await;
    assert_is_svid(
        &only_secret(&own.next().await),
        WEB,
        &h.snapshots.borrow().svids["e-web"],
    );

    let mut other = h.open(&[DB]).await;
    other.quiet().await;
    let text = logs.text();
    assert!(text.contains("not entitled"), "{text}");
    h.stop().await;
}

#[tokio::test]
async fn a_caller_without_identity_is_denied() {
    let ca = Ca::new(TD);
    let snap = snapshot(
        1,
        &ca,
        &[],
        vec![entry("e-db", DB, someone_else())],
        vec![ca.svid("e-db", DB)],
    );
    let h = Harness::start(snap).await;
    let Err(status) = h.try_open(&["default"]).await else {
        panic!("a caller without identity got a stream");
    };
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = h
        .client()
        .fetch_secrets(request(&["ROOTCA"], "", "", None, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // The server is still up for others.
    h.snapshots
        .send_replace(web_snapshot(2, &ca, ca.svid("e-web", WEB)));
    let mut s = h.open(&["default"]).await;
    s.next().await;
    h.stop().await;
}
