//! The replica's one dedicated `LISTEN` connection (never from the pool:
//! a pooled connection is handed to other callers, and a notification is
//! delivered only to the session that listens). Other replicas `NOTIFY`
//! inside the transaction that changes entries or the bundle, so the
//! notification arrives when, and only if, the change committed.
//!
//! Notifications only count: the CA re-reads the store when a count moves,
//! so a burst coalesces into one re-read and nothing here grows. After a
//! (re)connection the listener cannot know what it missed, so it bumps
//! `resyncs` and the CA re-reads everything.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, Client, Connection};

use super::PgPool;
use crate::store::StoreError;

/// The channel every replica listens on and notifies.
pub const CHANNEL: &str = "signet_changes";

/// How often the listening session is checked (a half-open TCP connection
/// would otherwise hide missed notifications until keepalive notices).
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// What kinds of change a notification announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Registration entries (payload `entries:<revision>`).
    Entries,
    /// The bundle (payload `bundle:<sequence>`).
    Bundle,
    /// Federation relationships or their fetched bundles (payload
    /// `federation:<unix seconds>`).
    Federation,
}

impl ChangeKind {
    /// The payload's prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Entries => "entries",
            Self::Bundle => "bundle",
            Self::Federation => "federation",
        }
    }
}

/// Notifications seen so far, by kind. Each count only grows; a reader
/// compares with the counts it last acted on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changes {
    pub entries: u64,
    pub bundle: u64,
    pub federation: u64,
    /// (Re)connections of the listener: anything may have changed.
    pub resyncs: u64,
}

impl PgPool {
    /// Starts the listener on the store's runtime. It runs until every
    /// receiver of the returned channel is gone.
    ///
    /// # Errors
    /// The store's runtime has stopped.
    pub(in crate::store) fn listen(&self) -> Result<watch::Receiver<Changes>, StoreError> {
        let handle = self.handle()?;
        let (tx, rx) = watch::channel(Changes::default());
        handle.spawn(run(self.clone(), Arc::new(tx)));
        Ok(rx)
    }
}

/// The listening session's `application_name`, so that operators (and
/// tests) can tell it from the pool's sessions.
pub const APPLICATION_NAME: &str = "signet-ca-listen";

async fn run(pool: PgPool, changes: Arc<watch::Sender<Changes>>) {
    let opts = pool.0.opts.clone();
    let mut config = pool.0.config.clone();
    config.application_name(APPLICATION_NAME);
    let mut backoff = opts.min_backoff;
    while !changes.is_closed() {
        let ended = match &pool.0.tls {
            None => match config.connect(tokio_postgres::NoTls).await {
                Ok((client, conn)) => Some(session(client, conn, &changes).await),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the LISTEN connection");
                    None
                }
            },
            Some(tls) => match config.connect(tls.clone()).await {
                Ok((client, conn)) => Some(session(client, conn, &changes).await),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the LISTEN connection");
                    None
                }
            },
        };
        match ended {
            // It listened: the next failure starts from the shortest wait.
            Some(Ok(reason)) => {
                tracing::warn!(reason, "the LISTEN connection ended; reconnecting");
                backoff = opts.min_backoff;
            }
            Some(Err(e)) => tracing::warn!(error = %e, "LISTEN failed"),
            None => {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(opts.max_backoff);
    }
}

/// One listening session: returns why it ended once it listened, or the
/// error that kept it from listening.
async fn session<S, T>(
    client: Client,
    mut conn: Connection<S, T>,
    changes: &Arc<watch::Sender<Changes>>,
) -> Result<String, tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let counts = changes.clone();
    let mut driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == CHANNEL => {
                    count(&counts, n.payload());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return e.to_string(),
                None => return "closed by the server".to_owned(),
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    // Listening from here on: whatever changed before is re-read now.
    changes.send_modify(|c| c.resyncs += 1);
    tracing::info!(channel = CHANNEL, "listening for other replicas' changes");
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    loop {
        tokio::select! {
            ended = &mut driver => {
                return Ok(ended.unwrap_or_else(|e| format!("listener task failed: {e}")));
            }
            _ = ping.tick() => {
                let alive = tokio::time::timeout(PING_INTERVAL, client.simple_query("")).await;
                if !matches!(alive, Ok(Ok(_))) {
                    driver.abort();
                    return Ok("the database stopped answering".to_owned());
                }
            }
            () = changes.closed() => {
                driver.abort();
                return Ok("nobody follows changes any more".to_owned());
            }
        }
    }
}

/// Counts one notification by the kind its payload names. Payloads come
/// from other replicas of this build; anything else counts as a resync.
fn count(changes: &watch::Sender<Changes>, payload: &str) {
    let kind = payload.split(':').next().unwrap_or("");
    changes.send_modify(|c| {
        if kind == ChangeKind::Entries.as_str() {
            c.entries += 1;
        } else if kind == ChangeKind::Bundle.as_str() {
            c.bundle += 1;
        } else if kind == ChangeKind::Federation.as_str() {
            c.federation += 1;
        } else {
            c.resyncs += 1;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::each_backend::Fresh;
    use crate::store::{ChangeKind, EntryRow, notify};

    fn entry(id: &str) -> EntryRow {
        EntryRow {
            id: id.into(),
            spiffe_id: format!("spiffe://td/w/{id}"),
            parent_id: "spiffe://td/signet/node/n".into(),
            selectors: vec![("unix".into(), "uid:1".into())],
            ttl_seconds: 0,
            dns_names: vec![],
            created_at: 1,
            revision: 0,
            federates_with: vec![],
        }
    }

    async fn until(rx: &mut watch::Receiver<Changes>, what: &str, f: impl FnMut(&Changes) -> bool) {
        let seen = tokio::time::timeout(Duration::from_secs(20), rx.wait_for(f))
            .await
            .map(|r| r.map(|c| *c));
        match seen {
            Ok(r) => {
                r.unwrap();
            }
            Err(_) => panic!("never saw {what}: {:?}", *rx.borrow()),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_stores_commits_are_counted_and_a_lost_session_comes_back_with_a_resync() {
        let f = Fresh::postgres();
        let db = f.pg().unwrap();
        let mut rx = f.store.listen().unwrap().unwrap();
        until(&mut rx, "the first session", |c| c.resyncs == 1).await;

        let other = f.reopen();
        tokio::task::spawn_blocking(move || {
            other.create_entry(entry("e1")).unwrap();
            // A rolled-back change announces nothing.
            let _ = other.transaction(|tx| {
                notify(tx, ChangeKind::Bundle, 99)?;
                Err::<(), _>(StoreError::Conflict("roll back".into()))
            });
            other
                .transaction(|tx| notify(tx, ChangeKind::Bundle, 2))
                .unwrap();
        })
        .await
        .unwrap();
        until(&mut rx, "the entry and the bundle", |c| {
            c.entries == 1 && c.bundle == 1
        })
        .await;
        assert_eq!(
            rx.borrow().bundle,
            1,
            "the rolled-back notification arrived"
        );

        // The server ends the listening session: the listener reconnects by
        // itself and says that anything may have changed meanwhile.
        let killed = db
            .psql(&format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE application_name = '{APPLICATION_NAME}' AND datname = current_database()"
            ))
            .unwrap();
        assert_eq!(killed, "1");
        until(&mut rx, "a resync", |c| c.resyncs == 2).await;
        let again = f.reopen();
        tokio::task::spawn_blocking(move || again.create_entry(entry("e2")).unwrap())
            .await
            .unwrap();
        until(&mut rx, "the entry after the reconnect", |c| c.entries == 2).await;
    }

    #[test]
    fn payloads_count_by_kind_and_unknown_ones_resync() {
        let (tx, rx) = watch::channel(Changes::default());
        for p in [
            "entries:4",
            "entries:5",
            "bundle:2",
            "federation:1700000000",
            "something-else",
            "",
        ] {
            count(&tx, p);
        }
        assert_eq!(
            *rx.borrow(),
            Changes {
                entries: 2,
                bundle: 1,
                federation: 1,
                resyncs: 2
            }
        );
    }
}
