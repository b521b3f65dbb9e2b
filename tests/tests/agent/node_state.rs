//! The node's key and certificate on disk (finding 5.5): kept in one file,
//! and a data directory written by an older agent in two files is taken
//! over on restart, without a join token.

use crate::{Node, me};

#[tokio::test]
async fn an_older_two_file_node_identity_is_taken_over_on_restart() {
    let mut node = Node::start(&[]).await;
    node.entry("/web", &me(), &[]).await;
    node.wait_for_svid("/web").await;
    node.agent.kill9();

    let dir = node.agent.data_dir().join("node");
    let identity = dir.join("identity.pem");
    let text = std::fs::read_to_string(&identity).unwrap();
    let blocks = pem::parse_many(&text).unwrap();
    let (keys, certs): (Vec<_>, Vec<_>) = blocks.iter().partition(|b| b.tag() == "PRIVATE KEY");
    assert_eq!(keys.len(), 1, "one key in {}", identity.display());
    assert!(!certs.is_empty());
    // What the older agent left: key and chain in two files.
    std::fs::write(
        dir.join("svid_key.pem"),
        pem::encode_many(&keys.into_iter().cloned().collect::<Vec<_>>()),
    )
    .unwrap();
    std::fs::write(
        dir.join("svid.pem"),
        pem::encode_many(&certs.into_iter().cloned().collect::<Vec<_>>()),
    )
    .unwrap();
    std::fs::remove_file(&identity).unwrap();
    // And a temporary file of an interrupted write.
    std::fs::write(dir.join(".identity.pem.tmp-deadbeef"), "half").unwrap();

    node.agent.start_again().await.unwrap();
    node.wait_for_svid("/web").await;
    assert!(identity.exists());
    assert!(!dir.join("svid_key.pem").exists());
    assert!(!dir.join(".identity.pem.tmp-deadbeef").exists());
}
