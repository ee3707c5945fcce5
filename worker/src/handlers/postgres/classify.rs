//! Which database errors are worth a retry and which refuse the event for
//! its own data.

use super::*;

/// Connection problems, timeouts, lock and serialisation conflicts may
/// pass. Whatever the database refuses about the data itself will not:
/// SQLSTATE class 22 (data exception: NUL in text, out-of-range values,
/// invalid JSON) and class 23 (integrity constraint violation).
pub(super) fn failure_for_error(error: sqlx::Error) -> HandlerError {
    match &error {
        sqlx::Error::Database(db)
            if db.code().is_some_and(|code| code.starts_with("22") || code.starts_with("23")) =>
        {
            HandlerError::permanent("the database refused the event", error)
        }
        sqlx::Error::Encode(_) | sqlx::Error::TypeNotFound { .. } | sqlx::Error::ColumnNotFound(_) => {
            HandlerError::permanent("the event does not fit the status table", error)
        }
        _ => HandlerError::transient("writing to the database failed", error),
    }
}

/// Errors after which writing the events one at a time can help: data
/// exceptions and integrity violations (SQLSTATE classes 22 and 23: one of
/// the events is bad) and transaction rollbacks (class 40: a deadlock or
/// serialisation failure with another worker's batch).
pub(super) fn refused_for_its_data(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23") || code.starts_with("40")),
        _ => false,
    }
}
