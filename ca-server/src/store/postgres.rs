//! The PostgreSQL backend: a small bounded pool of tokio-postgres
//! connections driven by the store's own runtime thread.
//!
//! Store calls are synchronous (the CA calls them inside its transactions
//! as it does SQLite's). Each statement is spawned onto the store's runtime
//! and the caller waits on a channel, never on a runtime, so a call is safe
//! from any thread, including the CA's async workers. Every wait is
//! bounded: connecting, each statement (server- and client-side), and
//! waiting for a free connection. After a failed connection attempt the
//! pool refuses at once with [`StoreError::Unavailable`] until its backoff
//! has passed, then tries again: a database that went away is reconnected
//! to by the next call after it is back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Statement};

use super::StoreError;
use super::db::{Row, Value, numbered_to_dollar};
use super::location::{PgUrl, TlsMode};

pub(super) mod listen;
mod tls;

/// Bounds of the pool. Defaults suit a CA replica: a few connections,
/// short waits.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest wait for a TCP connection and the login.
    pub connect_timeout: Duration,
    /// Longest a statement may run (the server cancels it; the client
    /// gives up shortly after).
    pub statement_timeout: Duration,
    /// Longest wait for a free connection when all are busy.
    pub checkout_timeout: Duration,
    /// First wait after a failed connection attempt; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest wait between connection attempts.
    pub max_backoff: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            checkout_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Owns the runtime; shuts it down without blocking, so dropping the last
/// store handle is fine inside async code too.
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

struct PoolState {
    idle: Vec<PgConn>,
    open: usize,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

struct PoolInner {
    url: PgUrl,
    config: tokio_postgres::Config,
    tls: Option<tls::MakeRustls>,
    opts: PgOptions,
    state: Mutex<PoolState>,
    freed: Condvar,
    // Last: dropped after everything that may still use it.
    rt: Runtime,
}

/// A pool of connections to one database. Cheap to clone.
#[derive(Clone)]
pub struct PgPool(Arc<PoolInner>);

impl PgPool {
    /// Makes a pool; connects nothing yet.
    ///
    /// # Errors
    /// The URL or its TLS settings are unusable, or the runtime cannot start.
    pub fn new(url: &PgUrl, opts: PgOptions) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url
            .config
            .parse()
            .map_err(|e| StoreError::Config(format!("{url}: {e}")))?;
        config
            .connect_timeout(opts.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .options(format!(
                "-c statement_timeout={}",
                opts.statement_timeout.as_millis()
            ))
            .application_name("signet-ca");
        let tls = match url.tls {
            TlsMode::Disable => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
            mode => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(
                    tls::MakeRustls::new(mode, url.root_cert.as_deref())
                        .map_err(|e| StoreError::Config(format!("{url}: {e}")))?,
                )
            }
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("signet-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Config(format!("cannot start the database runtime: {e}")))?;
        Ok(Self(Arc::new(PoolInner {
            url: url.clone(),
            config,
            tls,
            opts,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
                failures: 0,
                retry_at: None,
                last_error: String::new(),
            }),
            freed: Condvar::new(),
            rt: Runtime(Some(rt)),
        })))
    }

    /// The URL, password redacted.
    pub fn url(&self) -> &PgUrl {
        &self.0.url
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.0
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn handle(&self) -> Result<tokio::runtime::Handle, StoreError> {
        self.0
            .rt
            .0
            .as_ref()
            .map(|rt| rt.handle().clone())
            .ok_or_else(|| StoreError::Unavailable("the database runtime has stopped".into()))
    }

    /// A connection for the caller's exclusive use until the lease drops.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached (or
    /// could not be moments ago), or every connection stayed busy.
    pub(super) fn get(&self) -> Result<Lease, StoreError> {
        let deadline = Instant::now() + self.0.opts.checkout_timeout;
        let mut st = self.lock();
        loop {
            if let Some(conn) = st.idle.pop() {
                if conn.usable() {
                    return Ok(Lease {
                        pool: self.clone(),
                        conn: Some(conn),
                    });
                }
                st.open -= 1;
                continue;
            }
            if st.open < self.0.opts.max_connections {
                if let Some(at) = st.retry_at
                    && Instant::now() < at
                {
                    return Err(StoreError::Unavailable(st.last_error.clone()));
                }
                st.open += 1;
                drop(st);
                let res = self.connect();
                let mut st = self.lock();
                return match res {
                    Ok(conn) => {
                        if st.failures > 0 {
                            tracing::info!(store = %self.0.url, "connected to the database again");
                        }
                        st.failures = 0;
                        st.retry_at = None;
                        Ok(Lease {
                            pool: self.clone(),
                            conn: Some(conn),
                        })
                    }
                    Err(e) => {
                        st.open -= 1;
                        st.failures = st.failures.saturating_add(1);
                        let backoff = self
                            .0
                            .opts
                            .min_backoff
                            .saturating_mul(1 << st.failures.min(16).saturating_sub(1))
                            .min(self.0.opts.max_backoff);
                        st.retry_at = Some(Instant::now() + backoff);
                        st.last_error = match &e {
                            StoreError::Unavailable(m) => m.clone(),
                            other => other.to_string(),
                        };
                        tracing::warn!(store = %self.0.url, error = %st.last_error, retry_in = ?backoff, "cannot connect to the database");
                        self.0.freed.notify_all();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "all {} database connections stayed busy for {:?}",
                    self.0.opts.max_connections, self.0.opts.checkout_timeout
                )));
            }
            st = self
                .0
                .freed
                .wait_timeout(st, deadline - now)
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
    }

    fn release(&self, conn: PgConn) {
        let mut st = self.lock();
        if conn.usable() {
            st.idle.push(conn);
        } else {
            st.open -= 1;
        }
        drop(st);
        self.0.freed.notify_one();
    }

    fn connect(&self) -> Result<PgConn, StoreError> {
        let handle = self.handle()?;
        let config = self.0.config.clone();
        let tls = self.0.tls.clone();
        let url = self.0.url.to_string();
        let inner = handle.clone();
        let wait = self.0.opts.connect_timeout + Duration::from_secs(1);
        let client = block_on_handle(&handle, wait, async move {
            let client = match tls {
                None => {
                    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
                    inner.spawn(drive(conn));
                    client
                }
                Some(tls) => {
                    let (client, conn) = config.connect(tls).await?;
                    inner.spawn(drive(conn));
                    client
                }
            };
            Ok(client)
        })
        .map_err(|e| match e {
            StoreError::Unavailable(m) | StoreError::Postgres(m) => {
                StoreError::Unavailable(format!("cannot connect to {url}: {m}"))
            }
            other => other,
        })?;
        Ok(PgConn {
            client: Arc::new(client),
            statements: Mutex::new(HashMap::new()),
            broken: AtomicBool::new(false),
            in_tx: AtomicBool::new(false),
            handle,
            timeout: self.0.opts.statement_timeout + Duration::from_secs(2),
        })
    }
}

async fn drive<F>(conn: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>>,
{
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "database connection closed");
    }
}

/// Runs `fut` on the store's runtime and waits for it on this thread.
fn block_on_handle<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(tokio::time::timeout(timeout, fut).await);
    });
    match rx.recv() {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(e))) => Err(classify(&e)),
        Ok(Err(_)) => Err(StoreError::Unavailable(format!(
            "the database did not answer within {timeout:?}"
        ))),
        Err(_) => Err(StoreError::Unavailable(
            "the database runtime has stopped".into(),
        )),
    }
}

fn classify(e: &tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let msg = db.message().to_owned();
        let code = db.code();
        if *code == SqlState::UNIQUE_VIOLATION {
            return StoreError::Duplicate(msg);
        }
        if *code == SqlState::QUERY_CANCELED {
            return StoreError::Unavailable(format!("the statement was cancelled: {msg}"));
        }
        if [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
        ]
        .contains(code)
        {
            return StoreError::Unavailable(msg);
        }
        return StoreError::Postgres(msg);
    }
    // No SQLSTATE: the connection or the network failed.
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    StoreError::Unavailable(super::location::redact(&msg))
}

/// A checked-out connection; goes back to the pool (or away, when broken)
/// on drop.
pub(super) struct Lease {
    pool: PgPool,
    conn: Option<PgConn>,
}

impl std::ops::Deref for Lease {
    type Target = PgConn;
    fn deref(&self) -> &PgConn {
        #[allow(clippy::unwrap_used)] // Some until drop
        self.conn.as_ref().unwrap()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.release(conn);
        }
    }
}

/// One connection.
pub struct PgConn {
    client: Arc<Client>,
    statements: Mutex<HashMap<String, Statement>>,
    /// Set when a call failed in a way that leaves the connection unusable.
    broken: AtomicBool,
    /// Set between BEGIN and COMMIT/ROLLBACK: a connection dropped there
    /// (a panic in the caller) must not be reused.
    in_tx: AtomicBool,
    handle: tokio::runtime::Handle,
    timeout: Duration,
}

impl PgConn {
    /// Closes this connection instead of returning it to the pool.
    pub(super) fn discard(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    fn usable(&self) -> bool {
        !self.broken.load(Ordering::Relaxed)
            && !self.in_tx.load(Ordering::Relaxed)
            && !self.client.is_closed()
    }

    fn run<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    ) -> Result<T, StoreError> {
        super::db::count_statements(super::Backend::Postgres, 1);
        let res = block_on_handle(&self.handle, self.timeout, fut);
        if let Err(StoreError::Unavailable(_)) = &res {
            self.broken.store(true, Ordering::Relaxed);
        }
        res
    }

    fn statement(&self, sql: &str) -> Result<Statement, StoreError> {
        let mut cache = self
            .statements
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = cache.get(sql) {
            return Ok(s.clone());
        }
        let client = self.client.clone();
        let text = numbered_to_dollar(sql);
        let stmt = self.run(async move { client.prepare(&text).await })?;
        cache.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }

    pub(super) fn execute(&self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        let stmt = self.statement(sql)?;
        let client = self.client.clone();
        let args = args.to_vec();
        self.run(async move {
            let refs: Vec<&(dyn ToSql + Sync)> =
                args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
            client.execute(&stmt, &refs).await
        })
    }

    pub(super) fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        let stmt = self.statement(sql)?;
        let client = self.client.clone();
        let args = args.to_vec();
        let rows = self.run(async move {
            let refs: Vec<&(dyn ToSql + Sync)> =
                args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
            client.query(&stmt, &refs).await
        })?;
        rows.iter().map(|r| row_values(r).map(Row)).collect()
    }

    pub(super) fn batch(&self, sql: &str) -> Result<(), StoreError> {
        let client = self.client.clone();
        let sql = sql.to_owned();
        self.run(async move { client.batch_execute(&sql).await })
    }

    pub(super) fn set_in_tx(&self, on: bool) {
        self.in_tx.store(on, Ordering::Relaxed);
    }
}

fn row_values(r: &tokio_postgres::Row) -> Result<Vec<Value>, StoreError> {
    let bad = |i: usize, e: tokio_postgres::Error| StoreError::Corrupt(format!("column {i}: {e}"));
    (0..r.len())
        .map(|i| {
            let ty = r.columns()[i].type_();
            Ok(if *ty == Type::INT8 {
                r.try_get::<_, Option<i64>>(i)
                    .map_err(|e| bad(i, e))?
                    .map_or(Value::Null, Value::Int)
            } else if *ty == Type::INT4 {
                r.try_get::<_, Option<i32>>(i)
                    .map_err(|e| bad(i, e))?
                    .map_or(Value::Null, |v| Value::Int(v.into()))
            } else if *ty == Type::INT2 {
                r.try_get::<_, Option<i16>>(i)
                    .map_err(|e| bad(i, e))?
                    .map_or(Value::Null, |v| Value::Int(v.into()))
            } else if *ty == Type::BOOL {
                r.try_get::<_, Option<bool>>(i)
                    .map_err(|e| bad(i, e))?
                    .map_or(Value::Null, |v| Value::Int(v.into()))
            } else if *ty == Type::BYTEA {
                r.try_get::<_, Option<Vec<u8>>>(i)
                    .map_err(|e| bad(i, e))?
                    .map_or(Value::Null, Value::Blob)
            } else {
                r.try_get::<_, Option<String>>(i)
                    .map_err(|e| bad(i, e))?
                    .map_or(Value::Null, Value::Text)
            })
        })
        .collect()
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Self::Null => Ok(IsNull::Yes),
            Self::Int(i) if *ty == Type::INT8 => i.to_sql(ty, out),
            Self::Int(i) if *ty == Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
            Self::Int(i) if *ty == Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
            Self::Int(i) if *ty == Type::BOOL => (*i != 0).to_sql(ty, out),
            Self::Text(s) if *ty != Type::BYTEA => s.as_str().to_sql(ty, out),
            Self::Blob(b) if *ty == Type::BYTEA => b.as_slice().to_sql(ty, out),
            other => Err(format!("{other:?} cannot be bound to a {ty} parameter").into()),
        }
    }

    fn accepts(ty: &Type) -> bool {
        [
            Type::INT8,
            Type::INT4,
            Type::INT2,
            Type::BOOL,
            Type::TEXT,
            Type::VARCHAR,
            Type::BPCHAR,
            Type::NAME,
            Type::UNKNOWN,
            Type::BYTEA,
        ]
        .contains(ty)
    }

    to_sql_checked!();
}
