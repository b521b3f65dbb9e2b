//! Watch streams read with a bound on each event: kube's own reader splits lines with
//! no length limit, so one huge line from the API server would be buffered whole.
//! Here a line longer than [`MAX_WATCH_EVENT_BYTES`] ends the stream with an error.

use futures::Stream;
use http_body_util::BodyExt as _;
use kube::Client;
use kube::api::WatchEvent;
use kube::client::Body;
use kube::core::Status;
use serde::de::DeserializeOwned;

use crate::K8sError;

/// Largest watch event accepted (one JSON line): above the API server's own object
/// size limit (about 1.5 MiB in etcd), so only a misbehaving server reaches it.
pub const MAX_WATCH_EVENT_BYTES: usize = 4 * 1024 * 1024;

fn api_error(code: u16, body: &[u8]) -> K8sError {
    let status: Option<Status> = serde_json::from_slice(body).ok();
    let (reason, message) = status.map_or_else(
        || (String::new(), String::from_utf8_lossy(body).into_owned()),
        |s| (s.reason, s.message),
    );
    if code == 410 {
        K8sError::Expired(message)
    } else {
        K8sError::Api {
            code,
            reason,
            message,
        }
    }
}

fn parse<T: DeserializeOwned>(line: &[u8]) -> Result<WatchEvent<T>, K8sError> {
    serde_json::from_slice::<WatchEvent<T>>(line).map_err(|e| {
        match serde_json::from_slice::<Status>(line) {
            Ok(s) => api_error(s.code, line),
            Err(_) => K8sError::Malformed(format!("watch event: {e}")),
        }
    })
}

/// Sends a watch request and streams its events, each at most `max` bytes. The stream
/// ends when the server closes it or the connection breaks (resume from the last
/// resourceVersion).
///
/// # Errors
/// Transport errors and API error statuses (410 as [`K8sError::Expired`]).
pub(crate) async fn watch<T: DeserializeOwned + Send + 'static>(
    client: &Client,
    request: kube::core::Request,
    wp: &kube::api::WatchParams,
    resource_version: &str,
    max: usize,
) -> Result<impl Stream<Item = Result<WatchEvent<T>, K8sError>> + Send + use<T>, K8sError> {
    let req = request
        .watch(wp, resource_version)
        .map_err(|e| K8sError::Config(e.to_string()))?;
    let res = client.send(req.map(Body::from)).await?;
    let code = res.status().as_u16();
    let mut body = res.into_body();
    if !(200..300).contains(&code) {
        // Error answers are small; read at most `max` of one.
        let mut buf = Vec::new();
        while buf.len() <= max {
            match body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        buf.extend_from_slice(&d);
                    }
                }
                _ => break,
            }
        }
        return Err(api_error(code, &buf));
    }
    Ok(futures::stream::unfold(
        (body, Vec::<u8>::new(), false),
        move |(mut body, mut buf, mut done)| async move {
            loop {
                let newline = buf.iter().position(|b| *b == b'\n');
                if newline.unwrap_or(buf.len()) > max {
                    let err = K8sError::Malformed(format!("watch event longer than {max} bytes"));
                    return Some((Err(err), (body, Vec::new(), true)));
                }
                if let Some(i) = newline {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Some((parse(&line), (body, buf, done)));
                }
                if done {
                    // A partial line at the end is a cut connection: resume.
                    return None;
                }
                match body.frame().await {
                    Some(Ok(f)) => {
                        if let Ok(d) = f.into_data() {
                            buf.extend_from_slice(&d);
                        }
                    }
                    // Ended or broken: the caller resumes from its last version.
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "watch stream broke");
                        done = true;
                    }
                    None => done = true,
                }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod(name: &str, label_len: usize) -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                labels: Some([("big".to_owned(), "x".repeat(label_len))].into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[tokio::test]
    async fn an_event_over_the_bound_ends_the_watch_with_an_error() {
        let fake = crate::fake::FakeApiServer::start().await.unwrap();
        fake.apply_pod(pod("a-small", 10));
        fake.apply_pod(pod("b-large", 4096));
        fake.apply_pod(pod("c-small", 10));
        let api = fake.client().await.unwrap();
        let wp = kube::api::WatchParams::default().timeout(5);
        let stream = watch::<Pod>(
            &api.client,
            kube::core::Request::new("/api/v1/pods"),
            &wp,
            "0",
            2048,
        )
        .await
        .unwrap();
        let items: Vec<_> = stream.take(3).collect().await;
        assert_eq!(items.len(), 2, "{items:?}");
        assert!(
            matches!(&items[0], Ok(WatchEvent::Added(p)) if p.metadata.name.as_deref() == Some("a-small")),
            "{items:?}"
        );
        assert!(
            matches!(&items[1], Err(K8sError::Malformed(m)) if m.contains("2048")),
            "{items:?}"
        );
    }

    #[test]
    fn error_statuses_and_lines() {
        let gone = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old","reason":"Expired","code":410}"#;
        assert!(matches!(api_error(410, gone), K8sError::Expired(m) if m == "too old"));
        assert!(matches!(
            api_error(503, b"down"),
            K8sError::Api { code: 503, .. }
        ));
        let ev = parse::<serde_json::Value>(br#"{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"7"}}}"#);
        assert!(matches!(ev, Ok(WatchEvent::Bookmark(b)) if b.metadata.resource_version == "7"));
        assert!(matches!(
            parse::<serde_json::Value>(b"not json"),
            Err(K8sError::Malformed(_))
        ));
    }
}
