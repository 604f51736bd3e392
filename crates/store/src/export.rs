//! Bulk Data export jobs and their files. A job is queued by a kick-off, claimed by one
//! worker at a time for a lease (an attempt number names the holder, so a worker that
//! lost its job writes nothing more), filled file by file, and finished; its requester
//! deletes it, or it is purged when it expires.

use diesel::prelude::*;
use tessera_iam::StoreError;

use crate::schema::{export_files, export_jobs};
use crate::{db_error, Store};

const QUEUED: &str = "queued";
const RUNNING: &str = "running";
const COMPLETED: &str = "completed";
const FAILED: &str = "failed";

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportStatus {
    Queued,
    Running,
    Completed,
    Failed,
}

impl ExportStatus {
    fn parse(text: &str) -> Self {
        match text {
            QUEUED => Self::Queued,
            RUNNING => Self::Running,
            COMPLETED => Self::Completed,
            _ => Self::Failed,
        }
    }
}

/// A kick-off to queue.
#[derive(Debug, Clone)]
pub struct NewExport<'a> {
    pub id: &'a str,
    pub partition: &'a str,
    pub client_id: &'a str,
    pub subject: &'a str,
    /// The kick-off token's scope and partitions: the job exports what they grant.
    pub scope: &'a str,
    pub partitions: &'a [String],
    /// `tessera_vault::export::ExportRequest` as JSON.
    pub request: &'a str,
    pub created: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportJob {
    pub id: String,
    pub partition: String,
    pub client_id: String,
    pub subject: String,
    pub scope: String,
    pub partitions: Vec<String>,
    pub request: String,
    pub status: ExportStatus,
    pub progress: Option<String>,
    pub error: Option<String>,
    pub created: i64,
    /// When the current attempt started: the manifest's `transactionTime`.
    pub started: Option<i64>,
    pub finished: Option<i64>,
    /// The attempt that holds (or last held) the job.
    pub attempt: i32,
}

/// One file of a job: resources of one type, or OperationOutcomes (`error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportFile {
    pub seq: i32,
    pub error: bool,
    pub resource_type: String,
    pub count: i64,
}

/// A row of `export_jobs` as the store reads it (all but the lease).
#[derive(Queryable, Selectable)]
#[diesel(table_name = export_jobs)]
struct JobRow {
    id: String,
    partition_id: String,
    client_id: String,
    subject: String,
    scope: String,
    partitions: String,
    request: String,
    status: String,
    progress: Option<String>,
    error: Option<String>,
    created: i64,
    started: Option<i64>,
    finished: Option<i64>,
    attempt: i32,
}

fn job(row: JobRow) -> ExportJob {
    ExportJob {
        id: row.id,
        partition: row.partition_id,
        client_id: row.client_id,
        subject: row.subject,
        scope: row.scope,
        partitions: row.partitions.split(' ').map(str::to_owned).collect(),
        request: row.request,
        status: ExportStatus::parse(&row.status),
        progress: row.progress,
        error: row.error,
        created: row.created,
        started: row.started,
        finished: row.finished,
        attempt: row.attempt,
    }
}

fn file((seq, kind, resource_type, count): (i32, String, String, i64)) -> ExportFile {
    ExportFile {
        seq,
        error: kind == "error",
        resource_type,
        count,
    }
}

/// The job's row while `attempt` still holds it (not deleted, finished or taken over).
macro_rules! held {
    ($id:expr, $attempt:expr) => {
        export_jobs::table
            .filter(export_jobs::id.eq($id))
            .filter(export_jobs::attempt.eq($attempt))
            .filter(export_jobs::status.eq(RUNNING))
    };
}

/// Why a kick-off was not queued: the client has enough (the insert is rolled back).
enum Full {
    Yes,
    Db(diesel::result::Error),
}

impl From<diesel::result::Error> for Full {
    fn from(e: diesel::result::Error) -> Self {
        Full::Db(e)
    }
}

impl Store {
    /// Queues an export unless its client already has `max_active` queued or running;
    /// `false` then.
    pub fn export_enqueue(&self, job: &NewExport<'_>, max_active: i64) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        // Written first, then counted: the transaction is a writer from its first
        // statement (SQLite cannot make a reader a writer once another has written).
        let queued = conn.transaction(|conn| {
            diesel::insert_into(export_jobs::table)
                .values((
                    export_jobs::id.eq(job.id),
                    export_jobs::partition_id.eq(job.partition),
                    export_jobs::client_id.eq(job.client_id),
                    export_jobs::subject.eq(job.subject),
                    export_jobs::scope.eq(job.scope),
                    export_jobs::partitions.eq(job.partitions.join(" ")),
                    export_jobs::request.eq(job.request),
                    export_jobs::status.eq(QUEUED),
                    export_jobs::created.eq(job.created),
                ))
                .execute(conn)
                .map_err(Full::Db)?;
            let active: i64 = export_jobs::table
                .filter(export_jobs::client_id.eq(job.client_id))
                .filter(export_jobs::status.eq_any([QUEUED, RUNNING]))
                .count()
                .get_result(conn)
                .map_err(Full::Db)?;
            if active > max_active {
                return Err(Full::Yes);
            }
            Ok(())
        });
        match queued {
            Ok(()) => Ok(true),
            Err(Full::Yes) => Ok(false),
            Err(Full::Db(e)) => Err(db_error(e)),
        }
    }

    pub fn export_job(&self, id: &str) -> Result<Option<ExportJob>, StoreError> {
        let mut conn = self.conn()?;
        export_jobs::table
            .filter(export_jobs::id.eq(id))
            .select(JobRow::as_select())
            .first(&mut *conn)
            .optional()
            .map(|row| row.map(job))
            .map_err(db_error)
    }

    /// A job's files, in the order they were written.
    pub fn export_files(&self, id: &str) -> Result<Vec<ExportFile>, StoreError> {
        let mut conn = self.conn()?;
        export_files::table
            .filter(export_files::job_id.eq(id))
            .order(export_files::seq)
            .select((
                export_files::seq,
                export_files::kind,
                export_files::resource_type,
                export_files::count,
            ))
            .load(&mut *conn)
            .map(|rows| rows.into_iter().map(file).collect())
            .map_err(db_error)
    }

    /// One file and its NDJSON.
    pub fn export_file(
        &self,
        id: &str,
        seq: i32,
    ) -> Result<Option<(ExportFile, String)>, StoreError> {
        let mut conn = self.conn()?;
        export_files::table
            .filter(export_files::job_id.eq(id))
            .filter(export_files::seq.eq(seq))
            .select((
                export_files::seq,
                export_files::kind,
                export_files::resource_type,
                export_files::count,
                export_files::content,
            ))
            .first::<(i32, String, String, i64, String)>(&mut *conn)
            .optional()
            .map(|row| {
                row.map(|(seq, kind, resource_type, count, content)| {
                    (file((seq, kind, resource_type, count)), content)
                })
            })
            .map_err(db_error)
    }

    /// Deletes a job and its files (cancelled, or collected); `false` if there was none.
    pub fn export_delete(&self, id: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        conn.transaction(|conn| {
            let jobs =
                diesel::delete(export_jobs::table.filter(export_jobs::id.eq(id))).execute(conn)?;
            diesel::delete(export_files::table.filter(export_files::job_id.eq(id)))
                .execute(conn)?;
            Ok(jobs)
        })
        .map(|n| n > 0)
        .map_err(|e: diesel::result::Error| db_error(e))
    }

    /// Claims the oldest queued job, or one whose worker's lease ran out (its files so
    /// far are dropped: it starts over), until `lease_until`. A job already tried
    /// `max_attempts` times fails instead of being tried again.
    pub fn export_claim(
        &self,
        now: i64,
        lease_until: i64,
        max_attempts: i32,
    ) -> Result<Option<ExportJob>, StoreError> {
        let mut conn = self.conn()?;
        loop {
            let claimable = export_jobs::status.eq(QUEUED).or(export_jobs::status
                .eq(RUNNING)
                .and(export_jobs::lease_until.lt(now)));
            let candidate: Option<(String, i32)> = export_jobs::table
                .filter(claimable)
                .order(export_jobs::created)
                .select((export_jobs::id, export_jobs::attempt))
                .first(&mut *conn)
                .optional()
                .map_err(db_error)?;
            let Some((id, attempt)) = candidate else {
                return Ok(None);
            };
            let claimed = conn
                .transaction(|conn| {
                    let target = export_jobs::table
                        .filter(export_jobs::id.eq(&id))
                        .filter(export_jobs::attempt.eq(attempt))
                        .filter(claimable);
                    let changed = if attempt >= max_attempts {
                        diesel::update(target)
                            .set((
                                export_jobs::status.eq(FAILED),
                                export_jobs::error
                                    .eq(format!("the export stopped unfinished {attempt} times")),
                                export_jobs::finished.eq(now),
                                export_jobs::lease_until.eq(None::<i64>),
                            ))
                            .execute(conn)?;
                        0
                    } else {
                        diesel::update(target)
                            .set((
                                export_jobs::status.eq(RUNNING),
                                export_jobs::attempt.eq(attempt + 1),
                                export_jobs::started.eq(now),
                                export_jobs::lease_until.eq(lease_until),
                                export_jobs::progress.eq(None::<String>),
                            ))
                            .execute(conn)?
                    };
                    if changed == 1 {
                        diesel::delete(export_files::table.filter(export_files::job_id.eq(&id)))
                            .execute(conn)?;
                    }
                    Ok(changed == 1)
                })
                .map_err(|e: diesel::result::Error| db_error(e))?;
            if claimed {
                return self.export_job(&id);
            }
        }
    }

    /// Adds file `seq` to a job `attempt` still holds, records its progress and extends
    /// its lease, in one transaction; `false` (and nothing written) when the job was
    /// deleted or taken over.
    #[allow(clippy::too_many_arguments)]
    pub fn export_add_file(
        &self,
        id: &str,
        attempt: i32,
        added: &ExportFile,
        content: &str,
        progress: &str,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        conn.transaction(|conn| {
            let ours = diesel::update(held!(id, attempt))
                .set((
                    export_jobs::progress.eq(progress),
                    export_jobs::lease_until.eq(lease_until),
                ))
                .execute(conn)?;
            if ours == 0 {
                return Ok(false);
            }
            diesel::insert_into(export_files::table)
                .values((
                    export_files::job_id.eq(id),
                    export_files::seq.eq(added.seq),
                    export_files::kind.eq(if added.error { "error" } else { "output" }),
                    export_files::resource_type.eq(&added.resource_type),
                    export_files::count.eq(added.count),
                    export_files::content.eq(content),
                ))
                .execute(conn)?;
            Ok(true)
        })
        .map_err(|e: diesel::result::Error| db_error(e))
    }

    /// Records progress and extends the lease; `false` when the job is no longer held.
    pub fn export_renew(
        &self,
        id: &str,
        attempt: i32,
        progress: &str,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        diesel::update(held!(id, attempt))
            .set((
                export_jobs::progress.eq(progress),
                export_jobs::lease_until.eq(lease_until),
            ))
            .execute(&mut *conn)
            .map(|n| n == 1)
            .map_err(db_error)
    }

    /// Finishes a job `attempt` holds: completed, or failed with `error`.
    pub fn export_finish(
        &self,
        id: &str,
        attempt: i32,
        error: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        diesel::update(held!(id, attempt))
            .set((
                export_jobs::status.eq(if error.is_some() { FAILED } else { COMPLETED }),
                export_jobs::error.eq(error),
                export_jobs::finished.eq(now),
                export_jobs::lease_until.eq(None::<i64>),
            ))
            .execute(&mut *conn)
            .map(|n| n == 1)
            .map_err(db_error)
    }

    /// Deletes the jobs (and files) that finished before `before`; how many.
    pub fn export_purge(&self, before: i64) -> Result<usize, StoreError> {
        let mut conn = self.conn()?;
        let expired: Vec<String> = export_jobs::table
            .filter(export_jobs::finished.lt(before))
            .select(export_jobs::id)
            .load(&mut *conn)
            .map_err(db_error)?;
        conn.transaction(|conn| {
            for id in &expired {
                diesel::delete(export_jobs::table.filter(export_jobs::id.eq(id))).execute(conn)?;
                diesel::delete(export_files::table.filter(export_files::job_id.eq(id)))
                    .execute(conn)?;
            }
            Ok(expired.len())
        })
        .map_err(|e: diesel::result::Error| db_error(e))
    }
}
