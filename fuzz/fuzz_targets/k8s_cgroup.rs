//! The pod attestor's reading of `/proc/<pid>/cgroup`: any text either names
//! no pod, names one pod and container in their canonical forms (taken from
//! the text itself), or is refused with a short error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use signet_node_agent::attest::k8s::cgroup::{CONTAINER_ID_LEN, parse_cgroup_file};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_cgroup_file(text) {
        Ok(None) => {}
        Ok(Some(pc)) => {
            assert!(text.contains("kubepods"));
            assert_eq!(pc.container_id.len(), CONTAINER_ID_LEN);
            assert!(pc.container_id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert!(text.contains(&pc.container_id));
            assert_eq!(pc.pod_uid.len(), 36);
            assert!(
                text.contains(&pc.pod_uid) || text.contains(&pc.pod_uid.replace('-', "_")),
                "the pod UID comes from the text"
            );
        }
        Err(e) => {
            // Errors quote at most two bounded pieces of the input.
            assert!(e.to_string().len() < 2048, "{e}");
        }
    }
});
