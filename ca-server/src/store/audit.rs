//! The audit log's writer: one thread with its own store handle that
//! commits records in groups, on either backend. A caller blocks until its records are durable, but
//! callers that arrive together share one transaction and one fsync, so
//! recording every issuance does not serialize issuance on the disk.

use std::sync::mpsc;

use super::{AuditRecord, Store, StoreError, insert_audit};

/// Most records committed in one transaction.
const GROUP: usize = 4096;

type Request = (Vec<AuditRecord>, mpsc::SyncSender<Result<(), String>>);

/// A handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Request>,
}

impl AuditLog {
    /// Starts the writer on `store`'s database (already migrated), with a
    /// handle of its own ([`Store::writer_handle`]).
    ///
    /// # Errors
    /// Database errors opening the handle.
    pub fn start(store: &Store) -> Result<Self, StoreError> {
        let store = store.writer_handle()?;
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer(&store, rx))
            .map_err(|e| StoreError::AuditWrite(format!("cannot start the audit writer: {e}")))?;
        Ok(Self { tx })
    }

    /// Appends `records` and returns once they are committed.
    ///
    /// # Errors
    /// The commit failed (nothing of this group was recorded).
    pub fn append(&self, records: Vec<AuditRecord>) -> Result<(), StoreError> {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        self.tx
            .send((records, done_tx))
            .map_err(|_| StoreError::AuditWriterStopped)?;
        match done_rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::AuditWrite(e)),
            Err(_) => Err(StoreError::AuditWriterStopped),
        }
    }
}

fn writer(store: &Store, rx: mpsc::Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        let mut count = group[0].0.len();
        while count < GROUP {
            match rx.try_recv() {
                Ok(next) => {
                    count += next.0.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let result = store.transaction(|tx| {
            for (records, _) in &group {
                for r in records {
                    insert_audit(tx, r)?;
                }
            }
            Ok::<_, StoreError>(())
        });
        crate::metrics::audit_committed(started.elapsed(), count);
        let reply = result.map_err(|e| e.to_string());
        for (_, done) in group {
            let _ = done.send(reply.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn concurrent_appends_are_all_committed() {
        crate::store::each_backend::run(|f| concurrent_appends(&f.store));
    }

    fn concurrent_appends(store: &Store) {
        let log = AuditLog::start(store).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let rec = AuditRecord {
                            at: i,
                            caller: format!("t{t}"),
                            action: "sign_x509_svid".into(),
                            result: "issued".into(),
                            ..AuditRecord::default()
                        };
                        log.append(vec![rec]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(store.audit_tail(1000).unwrap().len(), 200);
    }
}
