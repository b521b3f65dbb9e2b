//! Test support: a CA in a temporary directory with a clock the test moves.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::Ca;
use crate::config::{Config, Settings};

/// A clock that stands still until moved.
#[derive(Clone)]
pub struct TestClock(Arc<AtomicU64>);

impl TestClock {
    /// A clock at a fixed, recent time.
    pub fn new() -> Self {
        Self(Arc::new(AtomicU64::new(1_800_000_000)))
    }

    /// A clock standing at `at` (whole seconds).
    pub fn at(at: SystemTime) -> Self {
        let secs = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Self(Arc::new(AtomicU64::new(secs)))
    }

    pub fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(self.0.load(Ordering::SeqCst))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_secs(), Ordering::SeqCst);
    }

    pub fn clock(&self) -> super::Clock {
        let inner = self.clone();
        Arc::new(move || inner.now())
    }
}

/// A CA over `dir` with `settings` (trust domain `test.org` unless set; see
/// [`settings_for`]).
pub fn open(dir: &std::path::Path, clock: &TestClock, settings: Settings) -> Ca {
    let config = Config::load(None, settings_for(dir, settings)).unwrap();
    Ca::open_with_clock(Arc::new(config), clock.clock()).unwrap()
}

/// Another replica of the CA over `first`: its own data directory `dir`
/// (its own keys and replica id), the same store.
pub fn open_replica(
    first: &std::path::Path,
    dir: &std::path::Path,
    clock: &TestClock,
    mut settings: Settings,
) -> Ca {
    let shared = match std::fs::read_to_string(first.join("test-postgres-url")) {
        Ok(url) => url,
        Err(_) => format!("sqlite:{}", first.join("signet.db").display()),
    };
    settings.store = Some(
        shared
            .parse()
            .unwrap_or_else(|e: std::convert::Infallible| match e {}),
    );
    open(dir, clock, settings)
}

/// `settings` for a CA over `dir` (trust domain `test.org` unless set).
/// With `SIGNET_CA_TEST_STORE=postgres` (and `SIGNET_TEST_PG`, the shared
/// test server the test command starts), the store is a PostgreSQL
/// database of its own for `dir` instead of the SQLite file, so the whole
/// CA suite can run on either backend.
pub fn settings_for(dir: &std::path::Path, mut settings: Settings) -> Settings {
    settings.data_dir = Some(dir.to_path_buf());
    settings
        .trust_domain
        .get_or_insert_with(|| "test.org".into());
    if settings.store.is_none()
        && std::env::var("SIGNET_CA_TEST_STORE").as_deref() == Ok("postgres")
    {
        assert!(
            std::env::var_os("SIGNET_TEST_PG").is_some(),
            "SIGNET_CA_TEST_STORE=postgres needs SIGNET_TEST_PG (the shared test server)"
        );
        // A restart (the same directory opened again) finds the same database.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(dir)
            .unwrap();
        let marker = dir.join("test-postgres-url");
        let url = match std::fs::read_to_string(&marker) {
            Ok(url) => url,
            Err(_) => {
                let db = signet_test_postgres::Database::create();
                let url = db.url().to_owned();
                std::fs::write(&marker, &url).unwrap();
                // The database goes with the shared server at the end of the run.
                std::mem::forget(db);
                url
            }
        };
        settings.store = Some(
            url.parse()
                .unwrap_or_else(|e: std::convert::Infallible| match e {}),
        );
    }
    settings
}

/// A CSR for a fresh P-256 key.
pub fn csr() -> Vec<u8> {
    signet_identity::PrivateKey::generate(signet_identity::KeyType::EcdsaP256)
        .unwrap()
        .csr_der()
        .unwrap()
}

/// Attests the node `name` with a fresh join token.
pub fn attest(ca: &Ca, name: &str) -> signet_identity::SpiffeId {
    let token = ca.create_join_token(name, None, "test").unwrap();
    ca.attest_node(&token.token, &csr(), "127.0.0.1:1")
        .unwrap()
        .0
}

/// Registers `path` for the node `node` (selector unix:uid:1000).
pub fn entry(ca: &Ca, node: &signet_identity::SpiffeId, path: &str) -> crate::store::EntryRow {
    ca.create_entry(
        &super::NewEntry {
            spiffe_id: format!("spiffe://{}{path}", ca.config().trust_domain),
            parent_id: node.to_string(),
            selectors: vec![("unix".into(), "uid:1000".into())],
            ..super::NewEntry::default()
        },
        "test",
    )
    .unwrap()
}

/// Makes every later audit insert fail, as a full or broken disk would:
/// the real writer and the real database, refusing the write.
pub fn break_audit_log(ca: &Ca) {
    let sql = match ca.store().backend() {
        crate::store::Backend::Sqlite => {
            "CREATE TRIGGER audit_broken BEFORE INSERT ON audit
             BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;"
        }
        crate::store::Backend::Postgres => {
            "CREATE FUNCTION audit_broken() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'; END $$;
             CREATE TRIGGER audit_broken BEFORE INSERT ON audit
               FOR EACH ROW EXECUTE FUNCTION audit_broken();"
        }
    };
    ca.store().with_conn(|c| c.batch(sql)).unwrap();
}

/// Undoes [`break_audit_log`].
pub fn repair_audit_log(ca: &Ca) {
    let sql = match ca.store().backend() {
        crate::store::Backend::Sqlite => "DROP TRIGGER audit_broken;",
        crate::store::Backend::Postgres => {
            "DROP TRIGGER audit_broken ON audit; DROP FUNCTION audit_broken();"
        }
    };
    ca.store().with_conn(|c| c.batch(sql)).unwrap();
}

/// Every audit record, oldest first.
pub fn audit(ca: &Ca) -> Vec<crate::store::AuditRecord> {
    ca.store().audit_tail(1_000_000).unwrap()
}

/// Short lifetimes that still satisfy the rotation rules: a root lives 6
/// days, an intermediate and a JWT key 1 day, SVIDs at most 4 hours.
pub fn short() -> Settings {
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(86_400);
    Settings {
        root_ttl: Some(6 * DAY),
        intermediate_ttl: Some(DAY),
        jwt_key_ttl: Some(DAY),
        max_x509_svid_ttl: Some(4 * HOUR),
        node_svid_ttl: Some(HOUR),
        ..Settings::default()
    }
}
