//! Two signet-ca processes federated both ways over https_spiffe: each
//! serves its bundle endpoint with its own SVID and fetches the other's,
//! authenticated first by the bundle handed over out of band, then by the
//! last one fetched. A root rotation on one side reaches the other within
//! its (short) refresh hint; deleting the relationship takes the bundle
//! out of what agents receive. A client of another stack (Python's ssl and
//! urllib) reads the endpoint too. The https_web profile is run with a
//! private PKI: the endpoint's configured certificate, the relationship's
//! given roots, and the hostname check.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use signet_identity::{TrustBundle, TrustDomain};
use signet_proto::ca::v1 as pb;
use signet_tests::{CaOptions, CaProcess, attest_node};

/// Longest wait for something the pollers do (they run every second here).
const PROPAGATION: Duration = Duration::from_secs(30);

fn free_port_on_localhost() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn start(td: &str, endpoint: SocketAddr, config_dir: &Path) -> CaProcess {
    let config = config_dir.join(format!("{td}.toml"));
    std::fs::write(
        &config,
        format!(
            "[bundle_endpoint]\nlisten = \"{endpoint}\"\nprofile = \"https_spiffe\"\nrefresh_hint = \"1s\"\n"
        ),
    )
    .unwrap();
    CaProcess::start(
        CaOptions::new(td)
            .flag("config", config.display().to_string())
            .flag("federation-min-refresh", "1s"),
    )
    .await
    .unwrap()
}

/// `signet ca federation create` on `ca` for `remote`, whose endpoint is
/// `endpoint`, with `remote`'s bundle.pem as the out-of-band bundle.
async fn federate(ca: &CaProcess, remote: &CaProcess, endpoint: SocketAddr) {
    let out = ca
        .signet_ca([
            "federation".to_owned(),
            "create".to_owned(),
            remote.trust_domain().to_string(),
            "--url".to_owned(),
            format!("https://{endpoint}/"),
            "--profile".to_owned(),
            "https-spiffe".to_owned(),
            "--endpoint-spiffe-id".to_owned(),
            remote.id("/signet/ca"),
            "--bundle-file".to_owned(),
            remote.bundle_path().display().to_string(),
        ])
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

async fn federation(ca: &CaProcess, td: &TrustDomain) -> pb::Federation {
    ca.admin()
        .await
        .unwrap()
        .get_federation(pb::GetFederationRequest {
            trust_domain: td.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn sequence_of(ca: &CaProcess) -> u64 {
    ca.admin()
        .await
        .unwrap()
        .get_bundle(pb::GetBundleRequest {})
        .await
        .unwrap()
        .into_inner()
        .sequence
}

/// Waits until `ca` holds `remote`'s bundle at `sequence` or later.
async fn wait_for_sequence(ca: &CaProcess, remote: &TrustDomain, sequence: u64) -> pb::Federation {
    let deadline = tokio::time::Instant::now() + PROPAGATION;
    loop {
        let f = federation(ca, remote).await;
        if f.bundle.as_ref().is_some_and(|b| b.sequence >= sequence) {
            return f;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never fetched sequence {sequence} of {remote}: {f:?}",
            ca.trust_domain()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads the next bundle message of a WatchBundle stream.
async fn next_bundle(stream: &mut tonic::Streaming<pb::Bundle>) -> pb::Bundle {
    tokio::time::timeout(PROPAGATION, stream.message())
        .await
        .expect("no bundle update in time")
        .expect("stream failed")
        .expect("stream ended")
}

/// Fetches the endpoint with Python's urllib over TLS `version` ("1.2" or
/// "1.3"), checking the chain against `cafile` and the hostname
/// `localhost`; returns the JSON document.
async fn python_fetch(endpoint: SocketAddr, cafile: &Path, version: &str) -> serde_json::Value {
    let python = std::env::var_os("SIGNET_PYTHON").unwrap_or_else(|| "python3".into());
    let script = [
        "import json, ssl, sys, urllib.request",
        "ctx = ssl.create_default_context(cafile=sys.argv[2])",
        "v = {'1.2': ssl.TLSVersion.TLSv1_2, '1.3': ssl.TLSVersion.TLSv1_3}[sys.argv[3]]",
        "ctx.minimum_version = v",
        "ctx.maximum_version = v",
        "with urllib.request.urlopen(sys.argv[1], context=ctx, timeout=10) as r:",
        "    assert r.headers['Content-Type'] == 'application/json', r.headers['Content-Type']",
        "    print(json.dumps(json.load(r)))",
    ]
    .join("\n");
    let out = tokio::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(format!("https://localhost:{}/", endpoint.port()))
        .arg(cafile)
        .arg(version)
        .kill_on_drop(true)
        .output()
        .await
        .expect("running python (set SIGNET_PYTHON)");
    assert!(
        out.status.success(),
        "python fetch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn two_trust_domains_federate_both_ways_over_https_spiffe() {
    let config_dir = tempfile::tempdir().unwrap();
    // On 127.0.0.1, where "localhost" (the CA's DNS SAN) leads.
    let (ep_a, ep_b) = (free_port_on_localhost(), free_port_on_localhost());
    let a = start("a.test", ep_a, config_dir.path()).await;
    let b = start("b.test", ep_b, config_dir.path()).await;

    // Another stack reads B's endpoint: B's SVID chains to bundle.pem.
    let doc = python_fetch(ep_b, &b.bundle_path(), "1.3").await;
    assert_eq!(python_fetch(ep_b, &b.bundle_path(), "1.2").await, doc);
    assert_eq!(doc["spiffe_refresh_hint"], 1);
    assert_eq!(doc["spiffe_sequence"], sequence_of(&b).await);
    let served =
        TrustBundle::from_jwks(b.trust_domain().clone(), doc.to_string().as_bytes()).unwrap();
    assert_eq!(
        served.x509_authorities(),
        b.bundle().unwrap().x509_authorities()
    );

    federate(&a, &b, ep_b).await;
    federate(&b, &a, ep_a).await;
    let seq_b = sequence_of(&b).await;
    let seq_a = sequence_of(&a).await;
    let at_a = wait_for_sequence(&a, b.trust_domain(), seq_b).await;
    let at_b = wait_for_sequence(&b, a.trust_domain(), seq_a).await;
    assert_eq!(at_a.last_error, "");
    assert_eq!(at_b.last_error, "");
    assert_eq!(
        at_a.bundle.as_ref().unwrap().x509_authorities,
        b.bundle()
            .unwrap()
            .x509_authorities()
            .iter()
            .map(|c| c.to_vec())
            .collect::<Vec<_>>()
    );

    // A's agents receive B's bundle beside A's own, never merged.
    let node = attest_node(&a, "node-1").await.unwrap();
    let mut client = a.node_client(Some(node.tls_identity())).await.unwrap();
    let mut stream = client
        .watch_bundle(pb::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = next_bundle(&mut stream).await;
    assert_eq!(first.trust_domain, "a.test");
    assert_eq!(first.federated.len(), 1);
    assert_eq!(first.federated[0].trust_domain, "b.test");
    assert!(first.federated[0].sequence >= seq_b);
    for root in &first.federated[0].x509_authorities {
        assert!(!first.x509_authorities.contains(root));
    }

    // An entry opts in; its node sees which trust domains it federates with.
    let entry_id = a
        .entry_cli(&[
            "--spiffe-id",
            &a.id("/web"),
            "--parent-node",
            "node-1",
            "--selector",
            "unix:uid:1000",
            "--federates-with",
            "b.test",
        ])
        .await
        .unwrap();
    let shown = a.signet_ca(["entry", "show", &entry_id]).await.unwrap();
    assert!(
        shown.stdout.contains("Federated:    b.test"),
        "{}",
        shown.stdout
    );
    let authorized = client
        .list_authorized_entries(pb::ListAuthorizedEntriesRequest {})
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(authorized.len(), 1);
    assert_eq!(authorized[0].federates_with, ["b.test"]);

    // A root prepared on B reaches A within B's refresh hint, and A's
    // agents see it; the fetch is now authenticated by the fetched bundle.
    let rotated = b
        .admin()
        .await
        .unwrap()
        .prepare_authority(pb::PrepareAuthorityRequest {
            kind: pb::AuthorityKind::Root.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .bundle_sequence;
    assert!(rotated > seq_b);
    let after = wait_for_sequence(&a, b.trust_domain(), rotated).await;
    assert_eq!(after.bundle.as_ref().unwrap().x509_authorities.len(), 2);
    loop {
        let update = next_bundle(&mut stream).await;
        if update
            .federated
            .iter()
            .any(|f| f.trust_domain == "b.test" && f.sequence >= rotated)
        {
            break;
        }
    }

    // The CLI's other verbs, and a refusal that changes nothing.
    let list = a.signet_ca(["federation", "list"]).await.unwrap();
    assert!(
        list.status.success() && list.stdout.contains("b.test"),
        "{list:?}"
    );
    let refresh = a
        .signet_ca(["federation", "refresh", "b.test"])
        .await
        .unwrap();
    assert!(refresh.status.success(), "{refresh:?}");
    let own = a
        .signet_ca([
            "federation",
            "create",
            "a.test",
            "--url",
            "https://127.0.0.1:1/",
            "--profile",
            "https-web",
        ])
        .await
        .unwrap();
    assert!(!own.status.success());
    assert!(own.stderr.contains("own trust domain"), "{own:?}");
    assert_eq!(
        a.admin()
            .await
            .unwrap()
            .list_federations(pb::ListFederationsRequest {})
            .await
            .unwrap()
            .into_inner()
            .federations
            .len(),
        1
    );

    // `show` prints the fetched bundle as `inspect` does.
    let show = a.signet_ca(["federation", "show", "b.test"]).await.unwrap();
    assert!(show.status.success(), "{show:?}");
    assert!(
        show.stdout.contains(&format!("Sequence:     {rotated}")),
        "{}",
        show.stdout
    );

    // Deleting the relationship takes B's bundle out of the agents' view.
    let deleted = a
        .signet_ca(["federation", "delete", "b.test"])
        .await
        .unwrap();
    assert!(deleted.status.success(), "{deleted:?}");
    loop {
        let update = next_bundle(&mut stream).await;
        if update.federated.is_empty() {
            break;
        }
    }
    let gone = a
        .admin()
        .await
        .unwrap()
        .get_federation(pb::GetFederationRequest {
            trust_domain: "b.test".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    // B still follows A.
    assert_eq!(federation(&b, a.trust_domain()).await.last_error, "");
}

#[tokio::test]
async fn https_web_endpoint_and_relationship_with_private_roots() {
    use signet_identity::testing::TestCa;
    let dir = tempfile::tempdir().unwrap();
    // A private "Web PKI" for B's endpoint: localhost, with its roots given
    // to A instead of the built-in ones.
    let web = TestCa::new(TrustDomain::new("web.example").unwrap()).unwrap();
    let key = signet_identity::PrivateKey::generate(signet_identity::KeyType::EcdsaP256).unwrap();
    let issued = web
        .issue_for(
            &key,
            &signet_identity::SpiffeId::parse("spiffe://web.example/endpoint").unwrap(),
            &["localhost"],
            std::time::SystemTime::now() - Duration::from_secs(60),
            Duration::from_secs(3600),
        )
        .unwrap();
    let (cert, key_file, roots) = (
        dir.path().join("web.pem"),
        dir.path().join("web.key"),
        dir.path().join("roots.pem"),
    );
    let chain: String = issued
        .chain
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
        .collect();
    std::fs::write(&cert, chain).unwrap();
    std::fs::write(&key_file, key.to_pem().as_bytes()).unwrap();
    std::fs::write(&roots, web.bundle().to_pem()).unwrap();

    let ep_b = free_port_on_localhost();
    let config = dir.path().join("b.toml");
    std::fs::write(
        &config,
        format!(
            "[bundle_endpoint]\nlisten = \"{ep_b}\"\nprofile = \"https_web\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nrefresh_hint = \"1s\"\n",
            cert.display(),
            key_file.display()
        ),
    )
    .unwrap();
    let b = CaProcess::start(CaOptions::new("b.test").flag("config", config.display().to_string()))
        .await
        .unwrap();
    let a = CaProcess::start(CaOptions::new("a.test").flag("federation-min-refresh", "1s"))
        .await
        .unwrap();

    // The hostname is checked: by name it passes, by address it does not.
    for (host, ok) in [("localhost", true), ("127.0.0.1", false)] {
        let td = if ok { "b.test" } else { "b2.test" };
        let out = a
            .signet_ca([
                "federation".to_owned(),
                "create".to_owned(),
                td.to_owned(),
                "--url".to_owned(),
                format!("https://{host}:{}/", ep_b.port()),
                "--profile".to_owned(),
                "https-web".to_owned(),
                "--web-roots-file".to_owned(),
                roots.display().to_string(),
            ])
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let good = wait_for_sequence(&a, b.trust_domain(), sequence_of(&b).await).await;
    assert_eq!(good.profile, i32::from(pb::FederationProfile::HttpsWeb));
    let bad = a
        .admin()
        .await
        .unwrap()
        .refresh_federation(pb::RefreshFederationRequest {
            trust_domain: "b2.test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(bad.bundle.is_none());
    assert!(bad.last_error.contains("TLS"), "{bad:?}");
    assert!(bad.consecutive_failures >= 1, "{bad:?}");
}

/// The second replica of `first`'s trust domain on the same database,
/// with a data directory (and keys) of its own.
async fn second_replica(first: &CaProcess, opts: CaOptions) -> CaProcess {
    first.start_replica(0, opts).await.unwrap()
}

/// Whether the scrape is of the replica that fetches.
fn is_poller(s: &signet_tests::Scrape) -> bool {
    s.value("signet_ca_federation_poller", &[]) == Some(1.0)
}

fn fetches(s: &signet_tests::Scrape) -> f64 {
    s.value("signet_ca_federation_fetches_total", &[])
        .unwrap_or(-1.0)
}

#[tokio::test]
async fn replicas_on_one_database_share_relationships_and_one_of_them_fetches() {
    use signet_tests::postgres::Database;
    use signet_tests::{free_loopback_addr, scrape, scrape_until};

    let db = Database::create();
    let config_dir = tempfile::tempdir().unwrap();
    let ep_remote = free_port_on_localhost();
    let remote = start("remote.test", ep_remote, config_dir.path()).await;
    let (metrics_a, metrics_b) = (free_loopback_addr().unwrap(), free_loopback_addr().unwrap());
    let opts = |metrics: SocketAddr| {
        CaOptions::new("local.test")
            .flag("store", db.url())
            .flag("federation-min-refresh", "1s")
            .flag("metrics-listen", metrics.to_string())
    };
    let mut a = CaProcess::start(opts(metrics_a)).await.unwrap();
    let mut b = second_replica(&a, opts(metrics_b)).await;

    // An agent stream on B, before the relationship exists.
    let node = attest_node(&b, "node-b").await.unwrap();
    let mut client = b.node_client(Some(node.tls_identity())).await.unwrap();
    let mut stream = client
        .watch_bundle(pb::WatchBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(next_bundle(&mut stream).await.federated.is_empty());

    // Created through A: B lists it with the fetched bundle, and B's agent
    // receives it.
    federate(&a, &remote, ep_remote).await;
    let seq = sequence_of(&remote).await;
    // B learns of it by notification, not at once.
    let deadline = tokio::time::Instant::now() + PROPAGATION;
    loop {
        let found = b
            .admin()
            .await
            .unwrap()
            .get_federation(pb::GetFederationRequest {
                trust_domain: "remote.test".into(),
            })
            .await;
        match found {
            Ok(_) => break,
            Err(e) if e.code() == tonic::Code::NotFound => {
                assert!(tokio::time::Instant::now() < deadline, "B never listed it");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    let at_b = wait_for_sequence(&b, remote.trust_domain(), seq).await;
    assert_eq!(at_b.last_error, "");
    loop {
        let update = next_bundle(&mut stream).await;
        if update
            .federated
            .iter()
            .any(|f| f.trust_domain == "remote.test" && f.sequence >= seq)
        {
            break;
        }
    }

    // Exactly one replica fetches; the other never did.
    let (scrape_a, scrape_b) = (
        scrape(metrics_a).await.unwrap(),
        scrape(metrics_b).await.unwrap(),
    );
    assert_ne!(
        is_poller(&scrape_a),
        is_poller(&scrape_b),
        "{scrape_a:?}\n{scrape_b:?}"
    );
    let (poller, follower, follower_metrics, poller_scrape, follower_scrape) =
        if is_poller(&scrape_a) {
            (&mut a, &b, metrics_b, scrape_a, scrape_b)
        } else {
            (&mut b, &a, metrics_a, scrape_b, scrape_a)
        };
    assert!(fetches(&poller_scrape) >= 1.0, "{poller_scrape:?}");
    assert_eq!(fetches(&follower_scrape), 0.0, "{follower_scrape:?}");

    // The poller dies without a word: its lock goes with its session and
    // the other replica takes the fetching over.
    poller.kill_hard();
    let taken = scrape_until(follower_metrics, PROPAGATION, |s| {
        is_poller(s) && fetches(s) >= 1.0
    })
    .await
    .unwrap();
    assert!(is_poller(&taken));

    // Deleted through the survivor: gone from its agents' view.
    let deleted = follower
        .signet_ca(["federation", "delete", "remote.test"])
        .await
        .unwrap();
    assert!(deleted.status.success(), "{deleted:?}");
    if follower_metrics == metrics_b {
        loop {
            if next_bundle(&mut stream).await.federated.is_empty() {
                break;
            }
        }
    }
}
