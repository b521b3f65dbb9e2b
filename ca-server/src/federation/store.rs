//! The federations table (store migration 6): each relationship with its
//! last good bundle (SPIFFE JWKS text), so that a restart keeps trusting
//! what was last fetched, and the record of the last attempt.

use signet_identity::{SpiffeId, TrustBundle, TrustDomain};

use super::{EndpointUrl, Profile, Relationship};
use crate::args;
use crate::store::{ChangeKind, Store, StoreError, Tx, notify};

/// Tells every replica (this one included) to reload the relationships:
/// delivered at commit, dropped on rollback.
fn changed(tx: &Tx<'_>, at: i64) -> Result<(), StoreError> {
    notify(tx, ChangeKind::Federation, u64::try_from(at).unwrap_or(0))
}

/// What the poller records about its fetches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchStatus {
    /// Unix seconds; 0 = never.
    pub last_attempt_at: i64,
    pub last_success_at: i64,
    /// Empty after a success.
    pub last_error: String,
    pub consecutive_failures: u32,
}

/// A stored relationship.
#[derive(Debug, Clone)]
pub struct Stored {
    pub relationship: Relationship,
    pub bundle: Option<TrustBundle>,
    pub status: FetchStatus,
}

fn corrupt(td: &str, what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("federation {td}: {what}: {e}"))
}

/// Inserts or replaces `rel`. A replaced relationship keeps its last good
/// bundle only when `keep_bundle`.
///
/// # Errors
/// Database errors.
pub fn upsert(
    store: &Store,
    rel: &Relationship,
    now: i64,
    keep_bundle: bool,
) -> Result<(), StoreError> {
    let (endpoint_id, initial, roots) = columns(rel);
    store.transaction(|tx| {
        tx.execute(
            "INSERT INTO federations (trust_domain, bundle_endpoint_url, profile, endpoint_spiffe_id,
                 initial_bundle, web_roots_pem, from_config, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (trust_domain) DO UPDATE SET
                 bundle_endpoint_url = ?2, profile = ?3, endpoint_spiffe_id = ?4,
                 initial_bundle = ?5, web_roots_pem = ?6, from_config = ?7",
            args![
                rel.trust_domain.as_str(),
                rel.url.as_str(),
                rel.profile.kind().as_str(),
                endpoint_id,
                initial,
                roots,
                rel.from_config,
                now
            ],
        )?;
        if !keep_bundle {
            tx.execute(
                "UPDATE federations SET bundle = NULL, bundle_sequence = 0, last_attempt_at = 0,
                     last_success_at = 0, last_error = '', consecutive_failures = 0
                 WHERE trust_domain = ?1",
                args![rel.trust_domain.as_str()],
            )?;
        }
        changed(tx, now)
    })
}

/// Inserts `rel` in `tx`, failing with [`StoreError::Conflict`] when one
/// exists (one statement, so two concurrent creations cannot both succeed).
///
/// # Errors
/// Database errors, [`StoreError::Conflict`].
pub fn insert_new(tx: &Tx<'_>, rel: &Relationship, now: i64) -> Result<(), StoreError> {
    let (endpoint_id, initial, roots) = columns(rel);
    {
        let res = tx.execute(
            "INSERT INTO federations (trust_domain, bundle_endpoint_url, profile, endpoint_spiffe_id,
                 initial_bundle, web_roots_pem, from_config, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            args![
                rel.trust_domain.as_str(),
                rel.url.as_str(),
                rel.profile.kind().as_str(),
                endpoint_id,
                initial,
                roots,
                rel.from_config,
                now
            ],
        );
        match res {
            Ok(_) => changed(tx, now),
            Err(StoreError::Duplicate(_)) => Err(StoreError::Conflict(format!(
                "a relationship with {} exists already",
                rel.trust_domain
            ))),
            Err(e) => Err(e),
        }
    }
}

fn columns(rel: &Relationship) -> (String, String, Option<Vec<u8>>) {
    match &rel.profile {
        Profile::HttpsSpiffe {
            endpoint_id,
            initial,
        } => (endpoint_id.to_string(), initial.to_jwks(), None),
        Profile::HttpsWeb { roots_pem } => (String::new(), String::new(), roots_pem.clone()),
    }
}

/// Deletes a relationship. Returns whether it existed.
///
/// # Errors
/// Database errors.
pub fn delete(store: &Store, td: &str) -> Result<bool, StoreError> {
    store.transaction(|tx| delete_in(tx, td))
}

/// Deletes a relationship in `tx`. Returns whether it existed.
///
/// # Errors
/// Database errors.
pub fn delete_in(tx: &Tx<'_>, td: &str) -> Result<bool, StoreError> {
    let existed = tx.execute("DELETE FROM federations WHERE trust_domain = ?1", args![td])? > 0;
    if existed {
        changed(tx, 0)?;
    }
    Ok(existed)
}

/// Records a fetch: the new bundle when there is one, and the status.
/// Nothing happens when the relationship is gone.
///
/// # Errors
/// Database errors.
pub fn record(
    store: &Store,
    td: &str,
    bundle: Option<&TrustBundle>,
    status: &FetchStatus,
) -> Result<(), StoreError> {
    store.transaction(|tx| {
        if let Some(b) = bundle {
            tx.execute(
                "UPDATE federations SET bundle = ?2, bundle_sequence = ?3 WHERE trust_domain = ?1",
                args![td, b.to_jwks(), b.sequence() as i64],
            )?;
        }
        tx.execute(
            "UPDATE federations SET last_attempt_at = ?2, last_success_at = ?3, last_error = ?4,
                 consecutive_failures = ?5 WHERE trust_domain = ?1",
            args![
                td,
                status.last_attempt_at,
                status.last_success_at,
                &status.last_error,
                status.consecutive_failures
            ],
        )?;
        changed(tx, status.last_attempt_at)
    })
}

/// Every stored relationship, by trust domain.
///
/// # Errors
/// Database errors, or a row that no longer decodes.
pub fn load_all(store: &Store) -> Result<Vec<Stored>, StoreError> {
    type Columns = (
        String,
        String,
        String,
        String,
        String,
        Option<Vec<u8>>,
        bool,
        Option<String>,
        i64,
        i64,
        String,
        u32,
    );
    let rows: Vec<Columns> = store.with_conn(|c| {
        c.query(
            "SELECT trust_domain, bundle_endpoint_url, profile, endpoint_spiffe_id, initial_bundle,
                 web_roots_pem, from_config, bundle, last_attempt_at, last_success_at, last_error,
                 consecutive_failures
             FROM federations ORDER BY trust_domain",
            &[],
        )?
        .iter()
        .map(|r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
                r.get(11)?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()
    })?;
    let mut out = Vec::with_capacity(rows.len());
    for (
        td,
        url,
        profile,
        endpoint_id,
        initial,
        roots,
        from_config,
        bundle,
        attempt,
        success,
        error,
        failures,
    ) in rows
    {
        let trust_domain = TrustDomain::new(&td).map_err(|e| corrupt(&td, "trust domain", e))?;
        let url = EndpointUrl::parse(&url).map_err(|e| corrupt(&td, "url", e))?;
        let profile =
            match super::ProfileKind::parse(&profile).map_err(|e| corrupt(&td, "profile", e))? {
                super::ProfileKind::HttpsWeb => Profile::HttpsWeb { roots_pem: roots },
                super::ProfileKind::HttpsSpiffe => Profile::HttpsSpiffe {
                    endpoint_id: SpiffeId::parse(&endpoint_id)
                        .map_err(|e| corrupt(&td, "endpoint id", e))?,
                    initial: TrustBundle::from_jwks(trust_domain.clone(), initial.as_bytes())
                        .map_err(|e| corrupt(&td, "initial bundle", e))?,
                },
            };
        let bundle = bundle
            .map(|b| TrustBundle::from_jwks(trust_domain.clone(), b.as_bytes()))
            .transpose()
            .map_err(|e| corrupt(&td, "bundle", e))?;
        out.push(Stored {
            relationship: Relationship {
                trust_domain,
                url,
                profile,
                from_config,
            },
            bundle,
            status: FetchStatus {
                last_attempt_at: attempt,
                last_success_at: success,
                last_error: error,
                consecutive_failures: failures,
            },
        });
    }
    Ok(out)
}
