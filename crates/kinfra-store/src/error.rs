//! Why the store could not open, read or write.
//!
//! Every error at boot names what it is about: the data directory's path or the server's URL.

use std::path::PathBuf;

/// Why the store could not open, read or write.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `[store] enabled = false`.
    #[error("the store is disabled (`[store] enabled = false`)")]
    Disabled,
    /// The `[store] url` is not one the store can use.
    #[error(
        "unsupported store url `{0}`: expected surrealkv://PATH, mem://, ws://HOST:PORT or wss://HOST:PORT"
    )]
    UnsupportedUrl(String),
    /// The data directory cannot be created, read or written.
    #[error("the store's data directory {} is not usable: {source}", path.display())]
    DataDir {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Another kinfra (or another program) has the data directory open.
    #[error("the store's data directory {} is in use by another process{}", path.display(), holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        /// The data directory.
        path: PathBuf,
        /// The PID written in the lock file, when readable.
        holder: Option<i32>,
    },
    /// The embedded engine refused to open the data directory (corrupt or unreadable files,
    /// no space left).
    #[error("cannot open the store at {}: {message}", path.display())]
    Open {
        /// The data directory.
        path: PathBuf,
        /// The engine's error.
        message: String,
    },
    /// The remote server did not answer, refused the connection or the credentials.
    #[error("cannot connect to the store at {url}: {message}")]
    Remote {
        /// The URL (without credentials).
        url: String,
        /// What went wrong.
        message: String,
    },
    /// Another kinfra writes kinfra's tables on this server (its lease is fresh).
    #[error(
        "kinfra's tables in namespace `{namespace}`, database `{database}` on {url} are in use by another kinfra ({holder}); give each runtime its own `[store] database`"
    )]
    InUse {
        /// The URL (without credentials).
        url: String,
        /// Namespace of kinfra's tables.
        namespace: String,
        /// Database of kinfra's tables.
        database: String,
        /// Who holds them.
        holder: String,
    },
    /// The data was written by a newer kinfra with a schema this one does not know.
    #[error(
        "the store at {location} has schema version {found}, newer than this kinfra's {supported}; upgrade kinfra or point it elsewhere"
    )]
    SchemaTooNew {
        /// Path or URL.
        location: String,
        /// Version found.
        found: u32,
        /// Newest version this build knows.
        supported: u32,
    },
    /// Upgrading the schema failed; nothing was changed past the last complete version.
    #[error("upgrading the store at {location} to schema version {version} failed: {message}")]
    Migration {
        /// Path or URL.
        location: String,
        /// The version being applied.
        version: u32,
        /// The engine's error.
        message: String,
    },
    /// A query failed.
    #[error("store query failed ({what}): {message}")]
    Query {
        /// What the query was for.
        what: &'static str,
        /// The engine's error.
        message: String,
    },
    /// Stored data does not have the expected shape.
    #[error("store data is malformed ({what}): {message}")]
    Malformed {
        /// What was being read.
        what: &'static str,
        /// The decoding error.
        message: String,
    },
    /// The store was shut down.
    #[error("the store is shut down")]
    Closed,
    /// Reading a state-dir file to migrate failed.
    #[error("cannot migrate {}: {source}", path.display())]
    StateFile {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The timeout passed before the work was done.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
}

impl StoreError {
    /// A query error from the engine.
    pub(crate) fn query(what: &'static str, error: impl std::fmt::Display) -> Self {
        StoreError::Query {
            what,
            message: error.to_string(),
        }
    }

    /// A decoding error.
    pub(crate) fn malformed(what: &'static str, error: impl std::fmt::Display) -> Self {
        StoreError::Malformed {
            what,
            message: error.to_string(),
        }
    }
}
