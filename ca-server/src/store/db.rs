//! The backend-neutral face of a database connection: [`Tx`] runs one
//! statement at a time on SQLite or PostgreSQL, binding [`Value`]s and
//! returning [`Row`]s, so the store's SQL is written once where the two
//! dialects agree. Statements use numbered placeholders (`?1`, `?2`); the
//! PostgreSQL backend rewrites them to `$1`, `$2`.

use std::sync::atomic::{AtomicU64, Ordering};

use super::StoreError;
use super::postgres::PgConn;

/// Statements this process has sent to each backend (indexed by
/// [`Backend::index`]): on PostgreSQL every round trip to the server
/// (prepare, execute, query, BEGIN, COMMIT, ROLLBACK); on SQLite every
/// statement run through a [`Tx`] plus the BEGIN and COMMIT (or ROLLBACK)
/// of each transaction. Read by the metrics endpoint and the benchmarks.
static STATEMENTS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Counts `n` statements sent to `backend`.
pub(super) fn count_statements(backend: Backend, n: u64) {
    STATEMENTS[backend.index()].fetch_add(n, Ordering::Relaxed);
}

/// How many statements this process has sent to `backend` so far (see
/// what counts as one at [`STATEMENTS`]).
pub fn statements_sent(backend: Backend) -> u64 {
    STATEMENTS[backend.index()].load(Ordering::Relaxed)
}

/// Which database a [`Tx`] talks to, for the few statements whose SQL
/// differs between the dialects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// Both backends, for label sets.
    pub const ALL: [Backend; 2] = [Backend::Sqlite, Backend::Postgres];

    /// The name used in metric labels and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Sqlite => 0,
            Self::Postgres => 1,
        }
    }
}

/// A value bound to a placeholder or read from a column. Integers are
/// 64-bit on both backends (PostgreSQL columns are `BIGINT`); booleans are
/// stored as 0/1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Self::Int(v.into())
    }
}
impl From<u32> for Value {
    fn from(v: u32) -> Self {
        Self::Int(v.into())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Self::Int(v.into())
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Self::Text(v.clone())
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Self::Blob(v)
    }
}
impl From<&Vec<u8>> for Value {
    fn from(v: &Vec<u8>) -> Self {
        Self::Blob(v.clone())
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Self::Blob(v.to_vec())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}
impl From<&Option<String>> for Value {
    fn from(v: &Option<String>) -> Self {
        v.as_ref().map_or(Self::Null, |s| Self::Text(s.clone()))
    }
}
impl From<&Option<Vec<u8>>> for Value {
    fn from(v: &Option<Vec<u8>>) -> Self {
        v.as_ref().map_or(Self::Null, |s| Self::Blob(s.clone()))
    }
}

/// Builds the argument slice of a statement: `args![a, b]`.
#[macro_export]
macro_rules! args {
    ($($e:expr),* $(,)?) => {
        &[$($crate::store::Value::from($e)),*][..]
    };
}

/// A column's value converted to a Rust type.
pub trait FromValue: Sized {
    /// Converts, or says why not.
    fn from_value(v: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}
impl FromValue for u64 {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).map(|i| i as u64)
    }
}
impl FromValue for u32 {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).and_then(|i| u32::try_from(i).ok())
    }
}
impl FromValue for bool {
    fn from_value(v: &Value) -> Option<Self> {
        i64::from_value(v).map(|i| i != 0)
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Blob(b) => Some(b.clone()),
            _ => None,
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Option<Self> {
        match v {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// One result row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(pub(super) Vec<Value>);

impl Row {
    /// Column `i` as a `T`.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the column is missing or of another type.
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T, StoreError> {
        let v = self
            .0
            .get(i)
            .ok_or_else(|| StoreError::Corrupt(format!("result has no column {i}")))?;
        T::from_value(v).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "column {i} holds {v:?}, not a {}",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// One connection inside a transaction (or, from [`super::Store::with_conn`],
/// outside one). Every store function takes a `&Tx`, so a caller composes
/// several into one atomic change whichever database is behind it.
pub struct Tx<'a>(pub(super) Inner<'a>);

pub(super) enum Inner<'a> {
    Sqlite(&'a rusqlite::Connection),
    Postgres(&'a PgConn),
}

impl<'a> Tx<'a> {
    /// A `Tx` over a raw SQLite connection (migration tests).
    #[cfg(test)]
    pub(super) fn sqlite(c: &'a rusqlite::Connection) -> Self {
        Self(Inner::Sqlite(c))
    }

    /// The database behind this transaction.
    pub fn backend(&self) -> Backend {
        match self.0 {
            Inner::Sqlite(_) => Backend::Sqlite,
            Inner::Postgres(_) => Backend::Postgres,
        }
    }

    /// Runs a statement; returns how many rows it changed.
    ///
    /// # Errors
    /// [`StoreError::Duplicate`] when a unique key would repeat; database
    /// errors; [`StoreError::Unavailable`] when the database is unreachable.
    pub fn execute(&self, sql: &str, args: &[Value]) -> Result<u64, StoreError> {
        match self.0 {
            Inner::Sqlite(c) => {
                count_statements(Backend::Sqlite, 1);
                super::sqlite::execute(c, sql, args)
            }
            Inner::Postgres(c) => c.execute(sql, args),
        }
    }

    /// Runs a query and returns every row.
    ///
    /// # Errors
    /// As [`Tx::execute`].
    pub fn query(&self, sql: &str, args: &[Value]) -> Result<Vec<Row>, StoreError> {
        match self.0 {
            Inner::Sqlite(c) => {
                count_statements(Backend::Sqlite, 1);
                super::sqlite::query(c, sql, args)
            }
            Inner::Postgres(c) => c.query(sql, args),
        }
    }

    /// Runs a query and returns its first row, if any.
    ///
    /// # Errors
    /// As [`Tx::execute`].
    pub fn query_opt(&self, sql: &str, args: &[Value]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, args)?.into_iter().next())
    }

    /// Runs several statements without arguments (schema changes).
    ///
    /// # Errors
    /// As [`Tx::execute`].
    pub fn batch(&self, sql: &str) -> Result<(), StoreError> {
        match self.0 {
            Inner::Sqlite(c) => {
                count_statements(Backend::Sqlite, 1);
                Ok(c.execute_batch(sql)?)
            }
            Inner::Postgres(c) => c.batch(sql),
        }
    }
}

/// Rewrites `?N` placeholders as PostgreSQL's `$N`, leaving quoted text alone.
pub(super) fn numbered_to_dollar(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted && chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        assert_eq!(
            numbered_to_dollar("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND d IN (?12, ?3)"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND d IN ($12, $3)"
        );
    }

    #[test]
    fn values_convert_back_only_to_their_own_type() {
        let row = Row(vec![
            Value::Int(7),
            Value::Null,
            Value::Text("x".into()),
            Value::Int(-1),
        ]);
        assert_eq!(row.get::<i64>(0).unwrap(), 7);
        assert_eq!(row.get::<Option<i64>>(1).unwrap(), None);
        assert_eq!(row.get::<Option<String>>(2).unwrap().as_deref(), Some("x"));
        assert!(matches!(row.get::<i64>(2), Err(StoreError::Corrupt(_))));
        assert!(matches!(row.get::<u32>(3), Err(StoreError::Corrupt(_))));
        assert!(matches!(row.get::<i64>(9), Err(StoreError::Corrupt(_))));
    }
}
