//! The `api` pod source's handling of what the API server sends: each input
//! line is a watch event (`{"type": ..., "object": <core/v1 Pod>}`) decoded
//! as kube decodes it, then applied to a small pod index. Whatever arrives,
//! the index stays within its bound, holds only this node's pods under their
//! own non-empty UIDs, and nothing panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use signet_k8s::PodEvent;
use signet_k8s::k8s_openapi::api::core::v1::Pod;
use signet_node_agent::attest::k8s::apiserver::{PodIndex, from_api};

const NODE: &str = "node-a";
const MAX: usize = 4;

#[derive(serde::Deserialize)]
struct Line {
    r#type: String,
    object: Pod,
}

fuzz_target!(|data: &[u8]| {
    let mut index = PodIndex::new(NODE, MAX);
    let mut uids = Vec::new();
    for line in data.split(|b| *b == b'\n') {
        let Ok(line) = serde_json::from_slice::<Line>(line) else {
            continue;
        };
        if let Some(p) = from_api(&line.object) {
            assert!(!p.metadata.uid.is_empty());
            uids.push(p.metadata.uid.clone());
        }
        let event = match line.r#type.as_str() {
            "DELETED" => PodEvent::Deleted(Box::new(line.object)),
            "BOOKMARK" => PodEvent::Bookmark(line.object.metadata.resource_version.unwrap_or_default()),
            "LIST" => {
                index.replace(&[line.object]);
                continue;
            }
            _ => PodEvent::Applied(Box::new(line.object)),
        };
        index.apply(&event);
        assert!(index.len() <= MAX);
    }
    for uid in &uids {
        if let Some(p) = index.get(uid) {
            assert_eq!(&p.metadata.uid, uid);
            assert_eq!(p.spec.node_name, NODE);
        }
    }
});
