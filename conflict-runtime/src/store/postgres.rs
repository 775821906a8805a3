//! PostgreSQL backend (feature `postgres`): [`PgStore`], the [`EntityStore`] to use when several
//! processes or machines change the same entities.
//!
//! The database does the compare-and-commit, so correctness across processes comes from
//! PostgreSQL and nothing else: a single-write commit is one statement,
//!
//! ```sql
//! UPDATE entities SET value = $v, version = version + 1, ...
//!  WHERE entity_type = $t AND id = $id AND version = $expected
//! RETURNING version
//! ```
//!
//! joined (in the same statement, so the same implicit transaction) with the insert of the
//! operation's row in the ledger. Zero rows updated is a conflict, retried by the runtime exactly
//! like a conflict in memory. A multi-write commit is one transaction: every update, then the
//! ledger row, then `COMMIT`; any stale write rolls all of it back. A commit's reads (entities
//! read but not written) are validated in the same transaction: each read row is taken
//! `FOR SHARE`, in one key order with the written rows (so two commits never deadlock each
//! other), and held until `COMMIT`, so no commit can change it before this one has committed;
//! a read entity no longer at the version read rolls everything back, a conflict on that key.
//! The ledger row lists the writes only. A commit without writes validates its reads in one
//! statement and records nothing (no ledger row); without reads either, it does no I/O.
//!
//! A delete sets the row's `value` to `NULL` (a tombstone keeping its version, bumped by the
//! delete); loads skip tombstones, and a create (a write expecting version 0, or
//! [`insert`](EntityStore::insert)) fills a tombstone again at its version + 1. Creates and
//! deletes always take the transaction path; the ledger lists a delete with `"deleted": true`.
//!
//! [`load_many`](EntityStore::load_many) is one statement (`unnest` of the keys joined with the
//! entities), so one snapshot: a multi-write commit is seen whole or not at all.
//!
//! Staging (priorities, admission) stays per process: two processes do not see each other's
//! staged operations, and priorities never order operations of different processes. What one
//! process commits, another sees as a newer version at its own commit.
//!
//! # Failures
//!
//! | what happened | what the caller gets |
//! |---|---|
//! | a stale version (written or read), or SQLSTATE `40001`/`40P01` (serialization failure, deadlock) | [`CommitOutcome::Conflict`]: retried with backoff |
//! | a value written or inserted under another entity's key | [`StoreError::KeyMismatch`], before any I/O: nothing was applied, no ledger row |
//! | one key twice in one commit (written twice, or written and read) | [`StoreError::DuplicateWrite`], before any I/O: nothing was applied, no ledger row |
//! | any other database error before the commit applied (or a lost connection before `COMMIT` was sent) | [`StoreError::Backend`]: nothing was applied |
//! | the connection lost while the commit was in flight | the store looks the op id up in the ledger at once (fencing it, see [`PgStore::resolve`]) and returns the definite answer: `Committed`, or `Backend` (nothing applied) |
//! | ... and that look-up failed too (database down) | [`StoreError::OutcomeUnknown`] with the op id: call [`PgStore::resolve`] later |
//!
//! A commit whose outcome is unknown is never retried blindly. The schema, the SQL and the
//! error mapping are documented in `docs/postgres.md`.
#![allow(
    clippy::doc_markdown,
    reason = "the PostgreSQL backend names PostgreSQL throughout; it is a name, not code"
)]

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use conflict_core::{EntityId, EntityKey, OpId, OperationPriority, StoreError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::{Deserialize, Serialize};
use tokio_postgres::NoTls;
use tokio_postgres::error::{Severity, SqlState};

pub use deadpool_postgres;
pub use tokio_postgres;

use super::{
    Commit, CommitOutcome, EntityCodec, EntityStore, Snapshot, StoreFuture, StoredValue, Write,
    check_key, check_writes,
};

/// The schema [`PgStore::connect`] uses.
///
/// ```
/// use conflict_runtime::store::postgres::{DEFAULT_MAX_CONNECTIONS, DEFAULT_SCHEMA, SCHEMA_VERSION};
/// assert_eq!((DEFAULT_SCHEMA, DEFAULT_MAX_CONNECTIONS, SCHEMA_VERSION), ("conflict", 16, 2));
/// ```
pub const DEFAULT_SCHEMA: &str = "conflict";

/// The schema version this build creates and understands (recorded in `schema_version`).
///
/// Version 2 lets `entities.value` be `NULL` (a deleted entity's tombstone); a schema at
/// version 1 is migrated when a store connects.
pub const SCHEMA_VERSION: i32 = 2;

/// Connections per store unless [`PgStoreBuilder::max_connections`] says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// Connect timeout used when the connection string sets none.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often settling an unknown outcome is tried before giving up with `OutcomeUnknown`, and
/// the first pause between tries (doubled each time).
const FENCE_TRIES: u32 = 3;
const FENCE_FIRST_DELAY: Duration = Duration::from_millis(50);

/// Key of the advisory lock that serializes migrations of every schema in a database, so two
/// processes starting at once do not race on `CREATE ... IF NOT EXISTS` (which is not atomic
/// in PostgreSQL). The bytes spell `conflict`.
const MIGRATION_LOCK: i64 = 0x636f_6e66_6c69_6374;

/// An [`EntityStore`] on PostgreSQL: entities as `jsonb` rows with a version, every commit a
/// compare-and-set in the database, recorded in an operation ledger in the same transaction.
///
/// Cheap to clone (a connection pool and the SQL texts, both shared); safe from any number of
/// tasks. See the [module docs](self) for what a commit does and how failures are reported.
///
/// ```no_run
/// use conflict_runtime::Runtime;
/// use conflict_runtime::store::PgStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Creates (or migrates) the schema `conflict` if needed, idempotently.
/// let store = PgStore::connect("postgres://app@127.0.0.1:5432/app").await?;
/// let rt = Runtime::builder().store(store.clone()).build()?;
/// assert_eq!(rt.store_name(), "postgres");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    sql: Arc<Sql>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PgStore")
            .field("schema", &self.sql.schema)
            .field("connections", &status.size)
            .field("max_connections", &status.max_size)
            .finish()
    }
}

/// Configures and opens a [`PgStore`]; made by [`PgStore::builder`].
///
/// ```no_run
/// use conflict_runtime::store::PgStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), conflict_runtime::store::StoreError> {
/// let store = PgStore::builder("host=127.0.0.1 user=app dbname=app")
///     .schema("billing")
///     .max_connections(32)
///     .connect()
///     .await?;
/// assert_eq!(store.schema(), "billing");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct PgStoreBuilder {
    url: String,
    schema: String,
    max_connections: usize,
}

impl PgStoreBuilder {
    /// The schema holding the store's tables (default [`DEFAULT_SCHEMA`]): lower-case ASCII
    /// letters, digits and `_`, not starting with a digit, at most 63 bytes. Stores on different
    /// schemas of one database are independent.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The most connections the store opens (default [`DEFAULT_MAX_CONNECTIONS`], at least 1).
    /// An operation holds one only while a statement or a commit transaction runs.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Connects and creates or migrates the schema (idempotent, safe from several processes at
    /// once).
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the connection string or the schema name is invalid, the
    /// database cannot be reached, or the schema was created by a newer version of this crate.
    pub async fn connect(self) -> Result<PgStore, StoreError> {
        validate_schema(&self.schema)?;
        if self.max_connections == 0 {
            return Err(config_error("max_connections must be at least 1"));
        }
        let mut config = tokio_postgres::Config::from_str(&self.url)
            .map_err(|e| StoreError::backend("invalid PostgreSQL connection string", e))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("conflict-runtime");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A closed connection is dropped at checkout; one that broke unnoticed fails its
                // next statement, which is reported like any other connection loss.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(self.max_connections)
            .build()
            .map_err(|e| StoreError::backend("could not build the connection pool", e))?;
        let store = PgStore {
            pool,
            sql: Arc::new(Sql::new(&self.schema)),
        };
        store.migrate().await?;
        Ok(store)
    }
}

/// Whether a ledger entry records a commit or a fenced (never-applied) operation.
///
/// ```
/// use conflict_runtime::store::postgres::LedgerStatus;
/// assert_eq!(LedgerStatus::Committed.as_str(), "committed");
/// assert_eq!(LedgerStatus::Aborted.as_str(), "aborted");
/// ```
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerStatus {
    /// The operation's writes were applied, in the same transaction as this entry.
    Committed,
    /// The operation did not commit and never will: the entry was written by
    /// [`PgStore::resolve`] (or by the store itself after a lost connection), and any commit of
    /// the same op id still in flight fails on it.
    Aborted,
}

impl LedgerStatus {
    /// The value stored in the `status` column.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Committed => "committed",
            Self::Aborted => "aborted",
        }
    }
}

/// One entity written by a committed operation.
///
/// ```
/// use conflict_runtime::store::postgres::LedgerTarget;
/// use conflict_runtime::{EntityId, entity::EntityKey};
///
/// let t = LedgerTarget {
///     key: EntityKey::new("Account", EntityId::new()),
///     version: 2,
///     deleted: false,
/// };
/// assert_eq!(t.version, 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerTarget {
    /// The entity.
    pub key: EntityKey,
    /// The version the commit wrote (for a delete: its tombstone's).
    pub version: u64,
    /// Whether the commit deleted the entity.
    pub deleted: bool,
}

/// A row of the operation ledger: at most one per op id.
///
/// ```
/// use conflict_runtime::store::postgres::{LedgerEntry, LedgerStatus};
///
/// fn applied(entry: &LedgerEntry) -> bool {
///     entry.status == LedgerStatus::Committed
/// }
/// # let _ = applied;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The operation.
    pub op_id: OpId,
    /// Committed or aborted.
    pub status: LedgerStatus,
    /// The operation's type (function name); `None` for aborted entries.
    pub op_type: Option<String>,
    /// The entities written and their new versions, in lock order; empty for aborted entries.
    pub targets: Vec<LedgerTarget>,
    /// The operation's effective priority; `None` for aborted entries.
    pub priority: Option<OperationPriority>,
    /// Which attempt committed (1 for the first); `None` for aborted entries.
    pub attempt: Option<u32>,
    /// Why an aborted entry was written; `None` for commits.
    pub reason: Option<String>,
    /// A number from a database sequence, unique and increasing per allocation (gaps are
    /// possible); orders the commits of one entity like their versions. `None` for aborted
    /// entries.
    pub commit_seq: Option<i64>,
    /// When the entry was written (for commits: the commit's last-modified time).
    pub recorded_at: SystemTime,
}

impl PgStore {
    /// Connects to `url` (a `postgres://` URL or `key=value` string), with the schema
    /// [`DEFAULT_SCHEMA`] and [`DEFAULT_MAX_CONNECTIONS`], creating or migrating the schema.
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), conflict_runtime::store::StoreError> {
    /// let store = conflict_runtime::store::PgStore::connect("postgres://app@db/app").await?;
    /// assert_eq!(store.schema(), "conflict");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// See [`PgStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// A builder to choose the schema and the pool size.
    ///
    /// ```
    /// let b = conflict_runtime::store::PgStore::builder("host=db user=app").schema("app_a");
    /// # let _ = b;
    /// ```
    pub fn builder(url: impl Into<String>) -> PgStoreBuilder {
        PgStoreBuilder {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_string(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }

    /// The schema holding this store's tables.
    ///
    /// ```no_run
    /// # async fn f(store: conflict_runtime::store::PgStore) {
    /// println!("entities in {}.entities", store.schema());
    /// # }
    /// ```
    #[must_use]
    pub fn schema(&self) -> &str {
        &self.sql.schema
    }

    /// The connection pool, for reading the ledger or maintenance. Writing to the store's tables
    /// behind its back bypasses the version check: don't.
    ///
    /// ```no_run
    /// # async fn f(store: conflict_runtime::store::PgStore) -> Result<(), Box<dyn std::error::Error>> {
    /// let client = store.pool().get().await?;
    /// let sql = format!("SELECT count(*) FROM \"{}\".ledger", store.schema());
    /// let n: i64 = client.query_one(sql.as_str(), &[]).await?.get(0);
    /// # let _ = n; Ok(()) }
    /// ```
    #[must_use]
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The ledger entry of `op_id`, if there is one. Read-only: `None` means "no entry yet",
    /// which for a commit still in flight elsewhere may change; use [`resolve`](Self::resolve)
    /// for a definite answer.
    ///
    /// ```no_run
    /// # async fn f(store: conflict_runtime::store::PgStore, op: conflict_runtime::operation::OpId) -> Result<(), conflict_runtime::store::StoreError> {
    /// if let Some(entry) = store.lookup(op).await? {
    ///     println!("{op}: {:?} at seq {:?}", entry.status, entry.commit_seq);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the database cannot be reached or the row cannot be read.
    pub async fn lookup(&self, op_id: OpId) -> Result<Option<LedgerEntry>, StoreError> {
        let conn = self.client().await?;
        let row = conn
            .query_opt(self.sql.ledger_get.as_str(), &[op_id.as_uuid()])
            .await
            .map_err(|e| backend_error("could not read the ledger", conn.fail(e)))?;
        row.map(|r| ledger_entry(&r)).transpose()
    }

    /// Settles the outcome of `op_id` for good: if the ledger has no entry for it, writes an
    /// [`Aborted`](LedgerStatus::Aborted) one first, so a commit of that op id still in flight
    /// can no longer apply (its ledger insert would fail, rolling its writes back). Returns the
    /// entry: `Committed` means its writes were applied, `Aborted` that they never will be.
    ///
    /// Use it on the op id of a [`StoreError::OutcomeUnknown`].
    ///
    /// ```no_run
    /// use conflict_runtime::store::StoreError;
    /// use conflict_runtime::store::postgres::LedgerStatus;
    /// # async fn f(store: conflict_runtime::store::PgStore, err: StoreError) -> Result<(), StoreError> {
    /// if let StoreError::OutcomeUnknown { op_id, .. } = err {
    ///     let applied = store.resolve(op_id).await?.status == LedgerStatus::Committed;
    ///     println!("{op_id} applied: {applied}");
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the database cannot be reached; the outcome stays unknown.
    pub async fn resolve(&self, op_id: OpId) -> Result<LedgerEntry, StoreError> {
        self.fence(
            op_id,
            "resolved by PgStore::resolve: no commit was recorded",
        )
        .await
    }

    /// The committed ledger entries that wrote `key`, in commit order. Their count is the
    /// number of commits of the entity, and their versions are `2..=current version`.
    ///
    /// ```no_run
    /// # async fn f(store: conflict_runtime::store::PgStore, key: conflict_runtime::entity::EntityKey) -> Result<(), conflict_runtime::store::StoreError> {
    /// for entry in store.ledger_for(&key).await? {
    ///     println!("{} by {:?}", entry.op_id, entry.op_type);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the database cannot be reached or a row cannot be read.
    pub async fn ledger_for(&self, key: &EntityKey) -> Result<Vec<LedgerEntry>, StoreError> {
        let probe = serde_json::json!([{ "type": key.entity_type, "id": key.id }]);
        let conn = self.client().await?;
        let rows = conn
            .query(self.sql.ledger_for.as_str(), &[&probe])
            .await
            .map_err(|e| backend_error("could not read the ledger", conn.fail(e)))?;
        rows.iter().map(ledger_entry).collect()
    }

    /// A pooled connection (see [`Conn`]).
    async fn client(&self) -> Result<Conn, StoreError> {
        let obj = self.pool.get().await.map_err(|e| {
            StoreError::backend(
                format!(
                    "could not get a PostgreSQL connection ({e}); nothing was sent to the database"
                ),
                e,
            )
        })?;
        Ok(Conn {
            obj: Some(obj),
            broken: AtomicBool::new(false),
        })
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut conn = self.client().await?;
        match self.migrate_on(&mut conn).await {
            Ok(done) => done,
            Err(e) => Err(backend_error(
                "could not create or migrate the schema",
                conn.fail(e),
            )),
        }
    }

    async fn migrate_on(
        &self,
        conn: &mut Conn,
    ) -> Result<Result<(), StoreError>, tokio_postgres::Error> {
        let tx = conn.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(&self.sql.ddl).await?;
        let found: Option<i32> = tx
            .query_one(self.sql.schema_version.as_str(), &[])
            .await?
            .try_get(0)?;
        match found {
            None => {
                tx.execute(self.sql.schema_version_insert.as_str(), &[&SCHEMA_VERSION])
                    .await?;
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Ok(Err(config_error(&format!(
                    "schema `{}` is at version {v}, newer than this build's {SCHEMA_VERSION}: \
                     upgrade conflict-runtime or use another schema",
                    self.sql.schema
                ))));
            }
            Some(v) if v < SCHEMA_VERSION => {
                // 1 -> 2: tombstones (a `NULL` value).
                tx.batch_execute(&self.sql.migrate_v2).await?;
                tx.execute(self.sql.schema_version_insert.as_str(), &[&SCHEMA_VERSION])
                    .await?;
            }
            Some(_) => {}
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Writes an aborted entry for `op_id` unless it has one, then reads its entry. Idempotent,
    /// so a failed try (a pooled connection that broke with the server, a server that is still
    /// starting) is simply tried again, a few times.
    async fn fence(&self, op_id: OpId, reason: &str) -> Result<LedgerEntry, StoreError> {
        let mut delay = FENCE_FIRST_DELAY;
        let mut tries = 1;
        loop {
            match self.fence_once(op_id, reason).await {
                Ok(entry) => return Ok(entry),
                Err(e) if tries >= FENCE_TRIES => return Err(e),
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    tries += 1;
                }
            }
        }
    }

    /// Two statements on purpose: the second, in a new snapshot, sees a commit that the first
    /// waited for.
    async fn fence_once(&self, op_id: OpId, reason: &str) -> Result<LedgerEntry, StoreError> {
        let conn = self.client().await?;
        let fail = |e| backend_error("could not settle the operation in the ledger", conn.fail(e));
        conn.execute(self.sql.ledger_fence.as_str(), &[op_id.as_uuid(), &reason])
            .await
            .map_err(fail)?;
        let row = conn
            .query_one(self.sql.ledger_get.as_str(), &[op_id.as_uuid()])
            .await
            .map_err(fail)?;
        ledger_entry(&row)
    }

    async fn load_row(
        &self,
        key: &EntityKey,
        codec: EntityCodec,
    ) -> Result<Option<Snapshot>, StoreError> {
        let conn = self.client().await?;
        let fail = |e| backend_error(&format!("could not load {key}"), conn.fail(e));
        let stmt = conn.prepare_cached(&self.sql.load).await.map_err(fail)?;
        let Some(row) = conn
            .query_opt(&stmt, &[&key.entity_type.as_ref(), key.id.as_uuid()])
            .await
            .map_err(fail)?
        else {
            return Ok(None);
        };
        drop(conn);
        let read = |e| backend_error(&format!("could not read {key}"), e);
        let version: i64 = row.try_get(0).map_err(read)?;
        let last_modified: SystemTime = row.try_get(1).map_err(read)?;
        let json: serde_json::Value = row.try_get(2).map_err(read)?;
        let value = (codec.decode)(json).map_err(|e| codec_error(key, &e))?;
        Ok(Some(Snapshot {
            value,
            version: from_db_version(version)?,
            last_modified,
        }))
    }

    async fn insert_row(&self, key: EntityKey, value: StoredValue) -> Result<Snapshot, StoreError> {
        let json = value.to_json().map_err(|e| codec_error(&key, &e))?;
        let conn = self.client().await?;
        let stmt = conn
            .prepare_cached(&self.sql.insert)
            .await
            .map_err(|e| backend_error(&format!("could not insert {key}"), conn.fail(e)))?;
        let row = conn
            .query_opt(&stmt, &[&key.entity_type.as_ref(), key.id.as_uuid(), &json])
            .await
            .map_err(|e| {
                let what = if is_definite(&e) {
                    format!("could not insert {key}; nothing was stored")
                } else {
                    format!(
                        "lost the connection while inserting {key}; it may have been stored: \
                         load it to find out"
                    )
                };
                backend_error(&what, conn.fail(e))
            })?;
        match row {
            None => Err(StoreError::AlreadyExists { key }),
            Some(row) => {
                let read = |e| backend_error(&format!("could not read back {key}"), e);
                let version: i64 = row.try_get(0).map_err(read)?;
                Ok(Snapshot {
                    value,
                    version: from_db_version(version)?,
                    last_modified: row.try_get(1).map_err(read)?,
                })
            }
        }
    }

    /// One write: one statement (so one implicit transaction) that updates the row if its
    /// version is the expected one and, only then, inserts the ledger entry.
    /// `w` is the only write of `commit`.
    async fn commit_single(&self, commit: &Commit, w: &Write) -> Result<CommitOutcome, StoreError> {
        let json = w.value.to_json().map_err(|e| codec_error(&w.key, &e))?;
        let expected = to_db_version(w.expected_version)?;
        let priority = i16::from(commit.priority.get());
        let attempt = attempt_to_db(commit.attempt)?;
        let conn = self.client().await?;
        let stmt = conn
            .prepare_cached(&self.sql.commit_single)
            .await
            .map_err(|e| not_applied(commit.op_id, conn.fail(e)))?;
        let rows = match conn
            .query(
                &stmt,
                &[
                    &w.key.entity_type.as_ref(),
                    w.key.id.as_uuid(),
                    &json,
                    &expected,
                    commit.op_id.as_uuid(),
                    &commit.op_type,
                    &priority,
                    &attempt,
                ],
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                let e = conn.fail(e);
                // Release it before settling, which needs a connection of its own.
                drop(conn);
                return self
                    .commit_failed(commit, Some((&w.key, w.expected_version)), e)
                    .await;
            }
        };
        drop(conn);
        // The statement always returns exactly one row (see `Sql::new`).
        let Some(row) = rows.first() else {
            return Err(StoreError::Backend {
                message: format!(
                    "the commit statement of operation {} returned no row",
                    commit.op_id
                ),
                source: None,
            });
        };
        let read = |e| backend_error("could not read the commit's result", e);
        let new_version: Option<i64> = row.try_get(0).map_err(read)?;
        match new_version {
            Some(v) => Ok(CommitOutcome::Committed {
                versions: vec![from_db_version(v)?],
                last_modified: row.try_get(1).map_err(read)?,
            }),
            None => {
                let found: Option<i64> = row.try_get(2).map_err(read)?;
                Ok(CommitOutcome::Conflict {
                    key: w.key.clone(),
                    expected: w.expected_version,
                    actual: reported_actual(found, w.expected_version),
                })
            }
        }
    }

    /// Several writes, or writes with reads: one transaction that takes every row in key order
    /// (so two multi-commits never deadlock each other) — an `UPDATE` for a write, a
    /// `SELECT ... FOR SHARE` for a read, held until `COMMIT` so that the read stays valid —
    /// then the ledger entry (listing the writes), then `COMMIT`. At least one write (a commit
    /// without writes is [`commit_reads`](Self::commit_reads)).
    async fn commit_multi(&self, commit: &Commit) -> Result<CommitOutcome, StoreError> {
        let (writes, deletes, reads) = (&commit.writes, &commit.deletes, &commit.reads);
        let mut order: Vec<(&EntityKey, Target)> = writes
            .iter()
            .enumerate()
            .map(|(i, w)| (&w.key, Target::Write(i)))
            .chain(
                deletes
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (&d.key, Target::Delete(i))),
            )
            .chain(
                reads
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (&r.key, Target::Read(i))),
            )
            .collect();
        order.sort_by(|a, b| a.0.cmp(b.0));
        // No key twice: `commit` refused that (`DuplicateWrite`) before any I/O.
        debug_assert!(order.windows(2).all(|p| p[0].0 != p[1].0));
        let mut steps = Vec::with_capacity(order.len());
        for &(_, target) in &order {
            steps.push(match target {
                Target::Write(index) => {
                    let w = &writes[index];
                    Step::Write {
                        index,
                        json: w.value.to_json().map_err(|e| codec_error(&w.key, &e))?,
                        expected: to_db_version(w.expected_version)?,
                    }
                }
                Target::Delete(index) => Step::Delete {
                    index,
                    expected: to_db_version(deletes[index].expected_version)?,
                },
                Target::Read(index) => Step::Read { index },
            });
        }
        // The first key in lock order, written or read, with the version it expects.
        let first = steps.first().map(|step| step.expects(commit));
        let mut conn = self.client().await?;
        let result = self.multi_transaction(&mut conn, commit, &steps).await;
        match result {
            // A conflict met inside the transaction is an outcome, not a failure.
            Ok(outcome) | Err(TxFailure::Conflict(outcome)) => Ok(outcome),
            Err(TxFailure::Store(e)) => Err(e),
            Err(TxFailure::BeforeCommit(e)) => {
                let e = conn.fail(e);
                match first {
                    Some((key, expected)) if is_conflict(&e) => Ok(CommitOutcome::Conflict {
                        key: key.clone(),
                        expected,
                        actual: None,
                    }),
                    // Before COMMIT nothing can apply, whatever the error.
                    _ => Err(not_applied(commit.op_id, e)),
                }
            }
            Err(TxFailure::AtCommit(e)) => {
                let e = conn.fail(e);
                drop(conn);
                // Reads add nothing to the ledger: settling finds the writes there, or nothing.
                self.commit_failed(commit, first, e).await
            }
        }
    }

    /// A commit without writes: one statement reads the versions of every read entity (a
    /// single statement sees one instant, so no lock is needed when nothing is written) and
    /// compares them; nothing is recorded, not even a ledger entry. No reads: no I/O at all.
    async fn commit_reads(&self, commit: &Commit) -> Result<CommitOutcome, StoreError> {
        let reads = &commit.reads;
        if reads.is_empty() {
            return Ok(CommitOutcome::Committed {
                versions: Vec::new(),
                last_modified: SystemTime::now(),
            });
        }
        let types: Vec<&str> = reads.iter().map(|r| r.key.entity_type.as_ref()).collect();
        let ids: Vec<uuid::Uuid> = reads.iter().map(|r| *r.key.id.as_uuid()).collect();
        let conn = self.client().await?;
        let rows = match conn.prepare_cached(&self.sql.versions_many).await {
            Ok(stmt) => conn.query(&stmt, &[&types, &ids]).await,
            Err(e) => Err(e),
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                let e = conn.fail(e);
                return match reads.iter().min_by(|a, b| a.key.cmp(&b.key)) {
                    Some(r) if is_conflict(&e) => Ok(CommitOutcome::Conflict {
                        key: r.key.clone(),
                        expected: r.version,
                        actual: None,
                    }),
                    // Nothing is written either way.
                    _ => Err(not_applied(commit.op_id, e)),
                };
            }
        };
        drop(conn);
        let mut found: Vec<Option<u64>> = vec![None; reads.len()];
        for row in &rows {
            let (i, version) = ordinal_row(row, reads.len())?;
            found[i] = Some(version);
        }
        // The first stale read in key order, as the locking path would find it.
        let stale = (0..reads.len())
            .filter(|&i| found[i] != Some(reads[i].version))
            .min_by(|&a, &b| reads[a].key.cmp(&reads[b].key));
        Ok(match stale {
            // One instant, no lock waited for: the version found is the current one.
            Some(i) => CommitOutcome::Conflict {
                key: reads[i].key.clone(),
                expected: reads[i].version,
                actual: found[i],
            },
            None => CommitOutcome::Committed {
                versions: Vec::new(),
                last_modified: SystemTime::now(),
            },
        })
    }

    async fn multi_transaction(
        &self,
        conn: &mut Conn,
        commit: &Commit,
        steps: &[Step],
    ) -> Result<CommitOutcome, TxFailure> {
        let (writes, reads) = (&commit.writes, &commit.reads);
        let priority = i16::from(commit.priority.get());
        let attempt = attempt_to_db(commit.attempt).map_err(TxFailure::Store)?;
        let tx = conn.transaction().await.map_err(TxFailure::BeforeCommit)?;
        // Only the statements this commit's steps use are prepared.
        let prepare = async |needed: bool, sql: &str| -> Result<_, TxFailure> {
            if !needed {
                return Ok(None);
            }
            let stmt = tx
                .prepare_cached(sql)
                .await
                .map_err(TxFailure::BeforeCommit)?;
            Ok(Some(stmt))
        };
        let creates = writes.iter().any(|w| w.expected_version == 0);
        let updates = writes.iter().any(|w| w.expected_version != 0);
        let stmts = Statements {
            update: prepare(updates, &self.sql.update).await?,
            create: prepare(creates, &self.sql.create).await?,
            delete: prepare(!commit.deletes.is_empty(), &self.sql.delete).await?,
            read_lock: prepare(!reads.is_empty(), &self.sql.read_lock).await?,
        };
        let mut versions = vec![0u64; writes.len()];
        let mut targets = Vec::with_capacity(writes.len());
        let mut last_modified = SystemTime::UNIX_EPOCH;
        for step in steps {
            match self.take_row(&tx, &stmts, step, commit).await? {
                Taken::Current => {}
                Taken::Written { version, modified } => {
                    let (key, _) = step.expects(commit);
                    last_modified = last_modified.max(modified);
                    // Only writes and deletes apply (a read is `Current` or stale).
                    let deleted = if let Step::Write { index, .. } = *step {
                        versions[index] = version;
                        false
                    } else {
                        true
                    };
                    targets.push(TargetJson {
                        entity_type: key.entity_type.to_string(),
                        id: *key.id.as_uuid(),
                        version,
                        deleted,
                    });
                }
                Taken::Stale(outcome) => {
                    // Rolling back explicitly returns a clean connection to the pool; if it
                    // fails, dropping the transaction rolls back too.
                    let _ = tx.rollback().await;
                    return Ok(outcome);
                }
            }
        }
        // The writes only, in lock order: reads leave no trace in the ledger.
        let targets = serde_json::to_value(&targets).map_err(|e| {
            TxFailure::Store(StoreError::Backend {
                message: format!(
                    "could not encode the ledger targets of operation {}: {e}",
                    commit.op_id
                ),
                source: None,
            })
        })?;
        tx.execute(
            self.sql.ledger_commit.as_str(),
            &[
                commit.op_id.as_uuid(),
                &commit.op_type,
                &targets,
                &priority,
                &attempt,
                &last_modified,
            ],
        )
        .await
        .map_err(TxFailure::BeforeCommit)?;
        tx.commit().await.map_err(TxFailure::AtCommit)?;
        Ok(CommitOutcome::Committed {
            versions,
            last_modified,
        })
    }

    /// Several entities in one statement (so one snapshot), decoded with their codecs.
    async fn load_rows(
        &self,
        keys: &[(EntityKey, EntityCodec)],
    ) -> Result<Vec<Option<Snapshot>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let types: Vec<&str> = keys.iter().map(|(k, _)| k.entity_type.as_ref()).collect();
        let ids: Vec<uuid::Uuid> = keys.iter().map(|(k, _)| *k.id.as_uuid()).collect();
        let conn = self.client().await?;
        let what = || format!("could not load {} entities together", keys.len());
        let fail = |e| backend_error(&what(), conn.fail(e));
        let stmt = conn
            .prepare_cached(&self.sql.load_many)
            .await
            .map_err(fail)?;
        let rows = conn.query(&stmt, &[&types, &ids]).await.map_err(fail)?;
        drop(conn);
        let mut out: Vec<Option<Snapshot>> = vec![None; keys.len()];
        for row in &rows {
            let (i, version) = ordinal_row(row, keys.len())?;
            let (key, codec) = &keys[i];
            let read = |e| backend_error(&format!("could not read {key}"), e);
            let last_modified: SystemTime = row.try_get(2).map_err(read)?;
            let json: serde_json::Value = row.try_get(3).map_err(read)?;
            let value = (codec.decode)(json).map_err(|e| codec_error(key, &e))?;
            out[i] = Some(Snapshot {
                value,
                version,
                last_modified,
            });
        }
        Ok(out)
    }

    /// Takes the row of one step of a multi-commit: for a read, `SELECT ... FOR SHARE` (held
    /// until `COMMIT`: no commit can change the entity before this one has committed, so the
    /// read stays valid; after waiting for a lock, READ COMMITTED returns the newest committed
    /// row) and the comparison; for a write, the conditional `UPDATE`. SQLSTATE 40001/40P01 is
    /// a conflict on this step's key.
    async fn take_row(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        stmts: &Statements,
        step: &Step,
        commit: &Commit,
    ) -> Result<Taken, TxFailure> {
        let (key, expected) = step.expects(commit);
        let conflict_or_failure = |err: tokio_postgres::Error| {
            if is_conflict(&err) {
                TxFailure::Conflict(CommitOutcome::Conflict {
                    key: key.clone(),
                    expected,
                    actual: None,
                })
            } else {
                TxFailure::BeforeCommit(err)
            }
        };
        let stale = |found: Option<i64>| {
            Taken::Stale(CommitOutcome::Conflict {
                key: key.clone(),
                expected,
                actual: reported_actual(found, expected),
            })
        };
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&key.entity_type.as_ref(), key.id.as_uuid()];
        let unprepared = || TxFailure::Store(config_error("a step without its prepared statement"));
        // A write, create or delete: one statement, with its parameters.
        let (stmt, args): (_, Vec<&(dyn tokio_postgres::types::ToSql + Sync)>) = match step {
            Step::Write {
                json, expected: 0, ..
            } => (&stmts.create, vec![params[0], params[1], json]),
            Step::Write { json, expected, .. } => {
                (&stmts.update, vec![params[0], params[1], json, expected])
            }
            Step::Delete { expected, .. } => (&stmts.delete, vec![params[0], params[1], expected]),
            Step::Read { .. } => {
                let Some(read_lock) = &stmts.read_lock else {
                    return Err(unprepared());
                };
                let found: Option<i64> = tx
                    .query_opt(read_lock, &params)
                    .await
                    .map_err(conflict_or_failure)?
                    .map(|row| row.try_get(0))
                    .transpose()
                    .map_err(TxFailure::BeforeCommit)?;
                return Ok(
                    if found.and_then(|v| u64::try_from(v).ok()) == Some(expected) {
                        Taken::Current
                    } else {
                        stale(found)
                    },
                );
            }
        };
        let Some(stmt) = stmt else {
            return Err(unprepared());
        };
        let row = tx
            .query_opt(stmt, &args)
            .await
            .map_err(conflict_or_failure)?;
        // Applied: (version, last_modified). Not: the version found, as a hint.
        let Some(row) = row else {
            let found: Option<i64> = tx
                .query_opt(self.sql.version_of.as_str(), &params)
                .await
                .ok()
                .flatten()
                .and_then(|r| r.try_get(0).ok());
            return Ok(stale(found));
        };
        let version: i64 = row.try_get(0).map_err(TxFailure::BeforeCommit)?;
        Ok(Taken::Written {
            version: from_db_version(version).map_err(TxFailure::Store)?,
            modified: row.try_get(1).map_err(TxFailure::BeforeCommit)?,
        })
    }

    /// The commit statement (or `COMMIT`) failed: a conflict, a definite failure, or a lost
    /// connection with an unknown outcome, which is settled through the ledger. `first` is the
    /// first key in lock order, written or read, with the version it expects (a conflict is
    /// reported on it).
    async fn commit_failed(
        &self,
        commit: &Commit,
        first: Option<(&EntityKey, u64)>,
        e: tokio_postgres::Error,
    ) -> Result<CommitOutcome, StoreError> {
        if is_conflict(&e) {
            if let Some((key, expected)) = first {
                return Ok(CommitOutcome::Conflict {
                    key: key.clone(),
                    expected,
                    actual: None,
                });
            }
        }
        if is_conflict(&e) || is_definite(&e) {
            return Err(not_applied(commit.op_id, e));
        }
        self.settle(commit, e).await
    }

    /// The outcome of `commit` is unknown: fence its op id and report what the ledger says.
    async fn settle(
        &self,
        commit: &Commit,
        cause: tokio_postgres::Error,
    ) -> Result<CommitOutcome, StoreError> {
        let op_id = commit.op_id;
        let why = describe(&cause);
        tracing::warn!(%op_id, error = %why, "commit outcome unknown; settling it in the ledger");
        let reason = format!("the committing connection failed ({why}); settled as not applied");
        let entry = match self.fence(op_id, &reason).await {
            Ok(entry) => entry,
            Err(settle) => {
                return Err(StoreError::OutcomeUnknown {
                    op_id,
                    message: format!(
                        "{why}; settling it failed too ({settle}), call PgStore::resolve later"
                    ),
                });
            }
        };
        match entry.status {
            LedgerStatus::Aborted => Err(StoreError::Backend {
                message: format!(
                    "lost the connection while committing operation {op_id} ({why}); the ledger \
                     now records it as aborted, so nothing was applied"
                ),
                source: Some(Arc::new(cause)),
            }),
            LedgerStatus::Committed => {
                let mut versions = Vec::with_capacity(commit.writes.len());
                for w in &commit.writes {
                    let Some(t) = entry.targets.iter().find(|t| t.key == w.key) else {
                        return Err(StoreError::OutcomeUnknown {
                            op_id,
                            message: format!(
                                "the ledger records a commit of operation {op_id} that does not \
                                 list {}",
                                w.key
                            ),
                        });
                    };
                    versions.push(t.version);
                }
                Ok(CommitOutcome::Committed {
                    versions,
                    last_modified: entry.recorded_at,
                })
            }
        }
    }
}

/// A pooled connection that leaves the pool, instead of going back to it, once it has failed
/// in a way that may have broken it: the next caller then gets a sound connection rather than
/// one whose loss the driver has not noticed yet.
struct Conn {
    /// `Some` from construction until `drop`.
    obj: Option<deadpool_postgres::Object>,
    broken: AtomicBool,
}

impl Conn {
    /// Notes `e`: anything but an `ERROR`-level response (after which the session goes on)
    /// marks the connection broken. Returns `e` for chaining.
    fn fail(&self, e: tokio_postgres::Error) -> tokio_postgres::Error {
        if !is_definite(&e) {
            self.broken.store(true, Ordering::Relaxed);
        }
        e
    }
}

impl std::ops::Deref for Conn {
    type Target = deadpool_postgres::Object;
    fn deref(&self) -> &Self::Target {
        // Invariant: `obj` is only taken in `drop`.
        self.obj.as_ref().expect("connection used after drop")
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Self::Target {
        // Invariant: `obj` is only taken in `drop`.
        self.obj.as_mut().expect("connection used after drop")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(obj) = self.obj.take() {
            if *self.broken.get_mut() {
                // Detached from the pool: closing it here frees its slot for a new connection.
                drop(deadpool_postgres::Object::take(obj));
            }
        }
    }
}

/// An entity a multi-commit names: its write or its read, by index.
#[derive(Clone, Copy)]
enum Target {
    Write(usize),
    Delete(usize),
    Read(usize),
}

/// One row a multi-commit takes, in lock order: a write (encoded before the transaction
/// starts) or a read to validate.
enum Step {
    /// A write (`expected` 0: a create).
    Write {
        index: usize,
        json: serde_json::Value,
        expected: i64,
    },
    Delete {
        index: usize,
        expected: i64,
    },
    Read {
        index: usize,
    },
}

/// The prepared statements of a multi-commit's transaction (`None`: no step needs it).
struct Statements {
    update: Option<tokio_postgres::Statement>,
    create: Option<tokio_postgres::Statement>,
    delete: Option<tokio_postgres::Statement>,
    read_lock: Option<tokio_postgres::Statement>,
}

impl Step {
    /// The key and the version it must be at (expected by the write, or read).
    fn expects<'c>(&self, commit: &'c Commit) -> (&'c EntityKey, u64) {
        match *self {
            Self::Write { index, .. } => {
                let w = &commit.writes[index];
                (&w.key, w.expected_version)
            }
            Self::Delete { index, .. } => {
                let d = &commit.deletes[index];
                (&d.key, d.expected_version)
            }
            Self::Read { index } => {
                let r = &commit.reads[index];
                (&r.key, r.version)
            }
        }
    }
}

/// What taking the row of one step found.
enum Taken {
    /// A read entity still at the version read.
    Current,
    /// The step's write, create or delete applied: the entity's new version and last-modified.
    Written { version: u64, modified: SystemTime },
    /// Not at the version expected (or missing): the commit's outcome, to roll back.
    Stale(CommitOutcome),
}

/// A row of a statement over an array of `len` keys (`Sql::load_many`, `Sql::versions_many`):
/// its key's index (from the 1-based `WITH ORDINALITY` in column 0) and its version (column 1).
fn ordinal_row(row: &tokio_postgres::Row, len: usize) -> Result<(usize, u64), StoreError> {
    let read = |e| backend_error("could not read the entities read together", e);
    let ord: i64 = row.try_get(0).map_err(read)?;
    let version: i64 = row.try_get(1).map_err(read)?;
    let index = usize::try_from(ord)
        .ok()
        .and_then(|o| o.checked_sub(1))
        .filter(|&i| i < len)
        .ok_or_else(|| {
            config_error(&format!(
                "the database answered position {ord} for {len} entities read together"
            ))
        })?;
    Ok((index, from_db_version(version)?))
}

/// How a multi-write transaction failed.
enum TxFailure {
    /// Before `COMMIT` was sent: nothing was applied.
    BeforeCommit(tokio_postgres::Error),
    /// `COMMIT` failed: settled unless the error says it did not apply.
    AtCommit(tokio_postgres::Error),
    /// A conflict met by an `UPDATE` (SQLSTATE 40001/40P01).
    Conflict(CommitOutcome),
    /// Not a database failure.
    Store(StoreError),
}

impl EntityStore for PgStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn load<'a>(
        &'a self,
        key: &'a EntityKey,
        codec: EntityCodec,
    ) -> StoreFuture<'a, Option<Snapshot>> {
        Box::pin(self.load_row(key, codec))
    }

    /// One statement, so one snapshot: under `READ COMMITTED` a statement sees the commits
    /// made before it started, each whole (a multi-write commit is one transaction).
    fn load_many<'a>(
        &'a self,
        keys: &'a [(EntityKey, EntityCodec)],
    ) -> StoreFuture<'a, Vec<Option<Snapshot>>> {
        Box::pin(self.load_rows(keys))
    }

    fn insert(&self, key: EntityKey, value: StoredValue) -> StoreFuture<'_, Snapshot> {
        Box::pin(async move {
            // Before any I/O: a row whose value is another entity would fail every load.
            check_key(&key, &value)?;
            self.insert_row(key, value).await
        })
    }

    fn commit(&self, commit: Commit) -> StoreFuture<'_, CommitOutcome> {
        Box::pin(async move {
            // Before any I/O, and for every write: nothing of a refused commit reaches the
            // database, not even its ledger row.
            check_writes(&commit)?;
            let plain = commit.reads.is_empty() && commit.deletes.is_empty();
            match commit.writes.as_slice() {
                [] if commit.deletes.is_empty() => self.commit_reads(&commit).await,
                [w] if plain && w.expected_version != 0 => self.commit_single(&commit, w).await,
                _ => self.commit_multi(&commit).await,
            }
        })
    }
}

/// How a ledger target is stored in the `targets` jsonb array.
#[derive(Serialize, Deserialize)]
struct TargetJson {
    #[serde(rename = "type")]
    entity_type: String,
    id: uuid::Uuid,
    version: u64,
    /// A delete (its tombstone's version); absent for a write.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
}

/// The SQL texts, with the schema name spliced in once.
struct Sql {
    schema: String,
    ddl: String,
    migrate_v2: String,
    schema_version: String,
    schema_version_insert: String,
    load: String,
    load_many: String,
    versions_many: String,
    read_lock: String,
    insert: String,
    commit_single: String,
    update: String,
    create: String,
    delete: String,
    version_of: String,
    ledger_commit: String,
    ledger_fence: String,
    ledger_get: String,
    ledger_for: String,
}

impl Sql {
    fn new(schema: &str) -> Self {
        // `schema` was validated (lower-case identifier characters only), so quoting it is
        // enough to splice it in.
        let s = format!("\"{schema}\"");
        let ledger_columns =
            "op_id, status, op_type, targets, priority, attempt, reason, commit_seq, recorded_at";
        Self {
            schema: schema.to_string(),
            ddl: ddl(&s),
            migrate_v2: format!("ALTER TABLE {s}.entities ALTER COLUMN value DROP NOT NULL"),
            schema_version: format!("SELECT max(version) FROM {s}.schema_version"),
            schema_version_insert: format!("INSERT INTO {s}.schema_version (version) VALUES ($1)"),
            load: format!(
                "SELECT version, last_modified, value FROM {s}.entities \
                 WHERE entity_type = $1 AND id = $2 AND value IS NOT NULL"
            ),
            // `ord` is the 1-based position of the key in the arrays; a missing key (or a
            // tombstone) has no row.
            load_many: format!(
                "SELECT k.ord, e.version, e.last_modified, e.value
                   FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS k(entity_type, id, ord)
                   JOIN {s}.entities AS e ON e.entity_type = k.entity_type AND e.id = k.id
                  WHERE e.value IS NOT NULL"
            ),
            versions_many: format!(
                "SELECT k.ord, e.version
                   FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS k(entity_type, id, ord)
                   JOIN {s}.entities AS e ON e.entity_type = k.entity_type AND e.id = k.id
                  WHERE e.value IS NOT NULL"
            ),
            // FOR SHARE conflicts with the lock an UPDATE takes (FOR NO KEY UPDATE), not with
            // another FOR SHARE: readers of one entity do not wait for each other.
            read_lock: format!(
                "SELECT version FROM {s}.entities \
                 WHERE entity_type = $1::text AND id = $2::uuid AND value IS NOT NULL FOR SHARE"
            ),
            // Over a tombstone: its version + 1; over a live entity: no row.
            insert: create_sql(&s),
            create: create_sql(&s),
            // Exactly one row: (new version, last modified, version found). The new version is
            // NULL when the compare failed. `found` is read from the statement's snapshot, so
            // it may predate a commit the UPDATE waited for; it is only a hint.
            // `greatest(...)` keeps last-modified monotonic per entity even if the clock steps
            // back; `clock_timestamp()` is read after the row lock, unlike `now()`.
            commit_single: format!(
                "WITH upd AS (
                     UPDATE {s}.entities
                        SET value = $3::jsonb, version = version + 1,
                            last_modified = greatest(clock_timestamp(), last_modified)
                      WHERE entity_type = $1::text AND id = $2::uuid AND version = $4::bigint
                        AND value IS NOT NULL
                  RETURNING version, last_modified
                 ), led AS (
                     INSERT INTO {s}.ledger
                            (op_id, status, op_type, targets, priority, attempt, commit_seq, recorded_at)
                     SELECT $5::uuid, 'committed', $6::text,
                            jsonb_build_array(jsonb_build_object(
                                'type', $1::text, 'id', $2::uuid, 'version', upd.version)),
                            $7::smallint, $8::integer, nextval('{s}.commit_seq'), upd.last_modified
                       FROM upd
                 )
                 SELECT upd.version, upd.last_modified, cur.version
                   FROM (SELECT 1) AS one
                   LEFT JOIN upd ON true
                   LEFT JOIN {s}.entities AS cur
                          ON cur.entity_type = $1::text AND cur.id = $2::uuid
                         AND cur.value IS NOT NULL"
            ),
            update: format!(
                "UPDATE {s}.entities
                    SET value = $3::jsonb, version = version + 1,
                        last_modified = greatest(clock_timestamp(), last_modified)
                  WHERE entity_type = $1::text AND id = $2::uuid AND version = $4::bigint
                    AND value IS NOT NULL
              RETURNING version, last_modified"
            ),
            delete: format!(
                "UPDATE {s}.entities
                    SET value = NULL, version = version + 1,
                        last_modified = greatest(clock_timestamp(), last_modified)
                  WHERE entity_type = $1::text AND id = $2::uuid AND version = $3::bigint
                    AND value IS NOT NULL
              RETURNING version, last_modified"
            ),
            // A tombstone is no entity: no version (as the memory store reports it).
            version_of: format!(
                "SELECT version FROM {s}.entities \
                 WHERE entity_type = $1 AND id = $2 AND value IS NOT NULL"
            ),
            ledger_commit: format!(
                "INSERT INTO {s}.ledger
                        (op_id, status, op_type, targets, priority, attempt, commit_seq, recorded_at)
                 VALUES ($1, 'committed', $2, $3, $4, $5, nextval('{s}.commit_seq'), $6)"
            ),
            ledger_fence: format!(
                "INSERT INTO {s}.ledger (op_id, status, reason) VALUES ($1, 'aborted', $2) \
                 ON CONFLICT (op_id) DO NOTHING"
            ),
            ledger_get: format!("SELECT {ledger_columns} FROM {s}.ledger WHERE op_id = $1"),
            ledger_for: format!(
                "SELECT {ledger_columns} FROM {s}.ledger \
                 WHERE status = 'committed' AND targets @> $1::jsonb ORDER BY commit_seq"
            ),
        }
    }
}

/// The create of an entity (a new row at version 1, or a tombstone filled again at its version
/// + 1): `(version, last_modified)`, or no row if the key holds a live entity.
fn create_sql(s: &str) -> String {
    format!(
        "INSERT INTO {s}.entities AS e (entity_type, id, version, last_modified, value)
         VALUES ($1::text, $2::uuid, 1, clock_timestamp(), $3::jsonb)
         ON CONFLICT (entity_type, id) DO UPDATE
            SET value = excluded.value, version = e.version + 1,
                last_modified = greatest(clock_timestamp(), e.last_modified)
          WHERE e.value IS NULL
      RETURNING version, last_modified"
    )
}

/// The tables, sequence and schema of a store in schema `s` (already quoted), if missing. (A
/// fresh `entities` table is already at version 2: `value` may be `NULL`.)
fn ddl(s: &str) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
         CREATE TABLE IF NOT EXISTS {s}.schema_version (
             version     integer     NOT NULL,
             migrated_at timestamptz NOT NULL DEFAULT clock_timestamp()
         );
         CREATE TABLE IF NOT EXISTS {s}.entities (
             entity_type   text        NOT NULL,
             id            uuid        NOT NULL,
             version       bigint      NOT NULL CHECK (version >= 1),
             last_modified timestamptz NOT NULL,
             value         jsonb,
             PRIMARY KEY (entity_type, id)
         ) WITH (fillfactor = 80);
         CREATE SEQUENCE IF NOT EXISTS {s}.commit_seq;
         CREATE TABLE IF NOT EXISTS {s}.ledger (
             op_id       uuid        PRIMARY KEY,
             status      text        NOT NULL CHECK (status IN ('committed', 'aborted')),
             op_type     text,
             targets     jsonb       NOT NULL DEFAULT '[]',
             priority    smallint,
             attempt     integer,
             reason      text,
             commit_seq  bigint      UNIQUE,
             recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
             CHECK ((status = 'committed') = (commit_seq IS NOT NULL))
         );"
    )
}

fn ledger_entry(row: &tokio_postgres::Row) -> Result<LedgerEntry, StoreError> {
    let read = |e| backend_error("could not read a ledger entry", e);
    let op_id = OpId::from_uuid(row.try_get(0).map_err(read)?);
    let status: &str = row.try_get(1).map_err(read)?;
    let status = match status {
        "committed" => LedgerStatus::Committed,
        "aborted" => LedgerStatus::Aborted,
        other => {
            return Err(StoreError::Backend {
                message: format!("ledger entry {op_id} has an unknown status `{other}`"),
                source: None,
            });
        }
    };
    let targets: serde_json::Value = row.try_get(3).map_err(read)?;
    let targets: Vec<TargetJson> =
        serde_json::from_value(targets).map_err(|e| StoreError::Backend {
            message: format!("ledger entry {op_id} has unreadable targets: {e}"),
            source: None,
        })?;
    let priority: Option<i16> = row.try_get(4).map_err(read)?;
    let priority = priority
        .map(|p| {
            u8::try_from(p)
                .ok()
                .and_then(|p| OperationPriority::new(p).ok())
                .ok_or_else(|| StoreError::Backend {
                    message: format!("ledger entry {op_id} has an invalid priority {p}"),
                    source: None,
                })
        })
        .transpose()?;
    let attempt: Option<i32> = row.try_get(5).map_err(read)?;
    Ok(LedgerEntry {
        op_id,
        status,
        op_type: row.try_get(2).map_err(read)?,
        targets: targets
            .into_iter()
            .map(|t| LedgerTarget {
                key: EntityKey {
                    entity_type: Cow::Owned(t.entity_type),
                    id: EntityId::from_uuid(t.id),
                },
                version: t.version,
                deleted: t.deleted,
            })
            .collect(),
        priority,
        attempt: attempt.and_then(|a| u32::try_from(a).ok()),
        reason: row.try_get(6).map_err(read)?,
        commit_seq: row.try_get(7).map_err(read)?,
        recorded_at: row.try_get(8).map_err(read)?,
    })
}

/// SQLSTATE 40001 (serialization failure) or 40P01 (deadlock detected): the transaction was
/// rolled back because of concurrent ones — a conflict, retried like a stale version.
fn is_conflict(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

/// An `ERROR`-level response: the statement (and its transaction) failed and the session goes
/// on, so nothing was applied. `FATAL`/`PANIC` (the server ending the session, e.g. at
/// shutdown) and I/O errors leave the outcome unknown.
fn is_definite(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| db.parsed_severity() == Some(Severity::Error))
}

/// A failure that certainly applied nothing.
fn not_applied(op_id: OpId, e: tokio_postgres::Error) -> StoreError {
    let message = match e.as_db_error() {
        Some(db) if *db.code() == SqlState::UNIQUE_VIOLATION && db.table() == Some("ledger") => {
            format!(
                "operation {op_id} already has a ledger entry (it was settled or committed \
                 before); nothing was applied"
            )
        }
        _ => format!(
            "commit of operation {op_id} failed ({}); nothing was applied",
            describe(&e)
        ),
    };
    StoreError::backend(message, e)
}

fn backend_error(what: &str, e: tokio_postgres::Error) -> StoreError {
    StoreError::backend(format!("{what}: {}", describe(&e)), e)
}

/// The error with what the driver's `Display` leaves out: SQLSTATE, severity and message of a
/// database error, the cause of an I/O error.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

fn codec_error(key: &EntityKey, e: &serde_json::Error) -> StoreError {
    StoreError::Codec {
        key: key.clone(),
        message: e.to_string(),
    }
}

fn config_error(message: &str) -> StoreError {
    StoreError::Backend {
        message: message.to_string(),
        source: None,
    }
}

fn validate_schema(schema: &str) -> Result<(), StoreError> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(config_error(&format!(
            "invalid schema name `{schema}`: use 1 to 63 lower-case ASCII letters, digits or `_`, \
             not starting with a digit"
        )))
    }
}

fn to_db_version(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| config_error(&format!("version {v} does not fit a bigint")))
}

fn from_db_version(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v)
        .map_err(|_| config_error(&format!("the database holds a negative version {v}")))
}

fn attempt_to_db(a: u32) -> Result<i32, StoreError> {
    i32::try_from(a).map_err(|_| config_error(&format!("attempt {a} does not fit an integer")))
}

/// The version a failed compare found, as a hint: a snapshot that still shows the expected
/// version predates the commit the update waited for, so it says nothing.
fn reported_actual(found: Option<i64>, expected: u64) -> Option<u64> {
    found
        .and_then(|v| u64::try_from(v).ok())
        .filter(|&v| v != expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_lower_case_identifiers() {
        for ok in ["conflict", "t_1", "_x", &"a".repeat(63)] {
            assert!(validate_schema(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1x", "Caps", "a-b", "a\"b", "a b", &"a".repeat(64)] {
            assert!(validate_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_round_trip_through_bigint_and_refuse_what_does_not_fit() {
        assert_eq!(from_db_version(to_db_version(42).unwrap()).unwrap(), 42);
        assert!(to_db_version(u64::MAX).is_err());
        assert!(from_db_version(-1).is_err());
    }

    #[test]
    fn a_stale_snapshot_showing_the_expected_version_is_not_reported_as_actual() {
        assert_eq!(reported_actual(Some(5), 4), Some(5));
        assert_eq!(reported_actual(Some(4), 4), None);
        assert_eq!(reported_actual(None, 4), None);
    }

    #[test]
    fn every_statement_names_the_schema() {
        let sql = Sql::new("sch");
        for text in [
            &sql.load,
            &sql.load_many,
            &sql.versions_many,
            &sql.read_lock,
            &sql.insert,
            &sql.commit_single,
            &sql.update,
            &sql.create,
            &sql.delete,
            &sql.migrate_v2,
            &sql.version_of,
            &sql.ledger_commit,
            &sql.ledger_fence,
            &sql.ledger_get,
            &sql.ledger_for,
        ] {
            assert!(text.contains("\"sch\"."), "{text}");
        }
    }
}
