//! Bad store settings at start: the CA exits with a clear message naming
//! the store (never its password) and changes nothing.

use signet_tests::postgres::{Database, signet_ca_once};
use signet_tests::{CaOptions, CaProcess};

/// Runs `signet-ca run` on `store` for `td` until it exits by itself.
fn run_on(store: &str, td: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let admin = dir.path().join("admin.sock");
    let out = signet_ca_once(&[
        "run",
        "--trust-domain",
        td,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--admin-socket",
        admin.to_str().unwrap(),
        "--store",
        store,
    ])
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn password_of(url: &str) -> &str {
    url.split(':').nth(2).unwrap().split('@').next().unwrap()
}

#[test]
fn an_unreachable_database_stops_the_ca_at_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://signet:s3cret-pw@127.0.0.1:{port}/signet");
    let (code, text) = run_on(&url, "example.org");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("the CA's database is unreachable"), "{text}");
    assert!(text.contains("signet:***@127.0.0.1"), "{text}");
    assert!(!text.contains("s3cret-pw"), "the password is shown: {text}");
}

#[test]
fn a_wrong_password_stops_the_ca_at_start_and_creates_nothing() {
    let db = Database::create();
    let password = password_of(db.url());
    let wrong = db.url().replace(password, "not-the-password");
    let (code, text) = run_on(&wrong, "example.org");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(
        !text.contains("not-the-password"),
        "the password is shown: {text}"
    );
    assert_eq!(
        db.psql("SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'")
            .unwrap(),
        "0"
    );
}

#[tokio::test]
async fn a_database_of_another_trust_domain_is_refused() {
    let db = Database::create();
    let mut ca = CaProcess::start(CaOptions::new("one.org").flag("store", db.url()))
        .await
        .unwrap();
    ca.stop().await.unwrap();
    let before = db.psql("SELECT COUNT(*) FROM audit").unwrap();
    let (code, text) = run_on(db.url(), "two.org");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("belongs to trust domain one.org, not two.org"),
        "{text}"
    );
    assert!(
        !text.contains(password_of(db.url())),
        "the password is shown: {text}"
    );
    assert_eq!(
        db.psql("SELECT value FROM meta WHERE key = 'trust_domain'")
            .unwrap(),
        "one.org"
    );
    assert_eq!(db.psql("SELECT COUNT(*) FROM audit").unwrap(), before);
}

#[tokio::test]
async fn a_second_replica_of_another_trust_domain_is_refused_while_the_first_runs() {
    let db = Database::create();
    let mut first = CaProcess::start(CaOptions::new("one.org").flag("store", db.url()))
        .await
        .unwrap();
    let rows = || {
        db.psql("SELECT string_agg(id, ',' ORDER BY id) FROM replicas")
            .unwrap()
    };
    let replicas_before = rows();
    let audit_before = db.psql("SELECT COUNT(*) FROM audit").unwrap();

    let (code, text) = run_on(db.url(), "two.org");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("belongs to trust domain one.org, not two.org"),
        "{text}"
    );
    assert!(
        !text.contains(password_of(db.url())),
        "the password is shown: {text}"
    );
    // The refused replica registered nothing and wrote nothing.
    assert_eq!(rows(), replicas_before);
    assert_eq!(db.psql("SELECT COUNT(*) FROM audit").unwrap(), audit_before);
    // The first replica still serves its trust domain.
    let token = first.token_cli("still-here", None).await.unwrap();
    assert!(!token.is_empty());
    first.stop().await.unwrap();
}

#[test]
fn a_schema_newer_than_the_binary_is_refused_on_postgres() {
    let db = Database::create();
    db.psql("CREATE TABLE signet_schema (version BIGINT NOT NULL); INSERT INTO signet_schema VALUES (999)")
        .unwrap();
    let (code, text) = run_on(db.url(), "example.org");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("store schema version 999 is newer than this build's"),
        "{text}"
    );
    assert_eq!(
        db.psql("SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'")
            .unwrap(),
        "1",
        "nothing was created beside the version table"
    );
}

#[test]
fn a_schema_newer_than_the_binary_is_refused_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signet.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 999).unwrap();
    drop(conn);
    let (code, text) = run_on(&format!("sqlite:{}", path.display()), "example.org");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("store schema version 999 is newer than this build's"),
        "{text}"
    );
}

#[test]
fn a_store_that_is_not_a_url_is_refused() {
    let (code, text) = run_on("mysql://u:s3cret@h/d", "example.org");
    assert_eq!(code, Some(2), "a configuration error: {text}");
    assert!(text.contains("neither sqlite"), "{text}");
    assert!(!text.contains("s3cret"), "the password is shown: {text}");
}
