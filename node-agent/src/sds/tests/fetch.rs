//! FetchSecrets: one answer per call.

use super::*;

#[tokio::test]
async fn fetch_secrets_answers_once() {
    let ca = Ca::new(TD);
    let h = Harness::start(web_snapshot(1, &ca, ca.svid("e-web", WEB))).await;
    let response = h
        .client()
        .fetch_secrets(request(&["default", "ROOTCA"], "", "", None, None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.type_url, SECRET_TYPE_URL);
    assert!(!response.version_info.is_empty());
    let mut got = secrets(&response.resources);
    got.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].name, "ROOTCA");
    assert_is_svid(&got[1], "default", &h.snapshots.borrow().svids["e-web"]);

    let status = h
        .client()
        .fetch_secrets(request(&[DB], "", "", None, None))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    h.stop().await;
}
