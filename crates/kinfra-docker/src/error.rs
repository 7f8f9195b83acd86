//! Errors of the Docker adapter, and how they map onto the adapter trait's [`ResourceError`].

use kinfra_core::resource::ResourceError;

/// What went wrong talking to Docker.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No Docker engine answers (no socket, daemon down, permission denied).
    #[error("the Docker engine is not reachable at {host}: {reason}")]
    Unavailable {
        /// Where it was looked for.
        host: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// The image is not present and could not be pulled.
    #[error("image `{image}` is not present and pulling it failed: {reason}")]
    Pull {
        /// The image.
        image: String,
        /// The registry's or engine's answer.
        reason: String,
    },
    /// A container by kinfra's name exists that kinfra did not create.
    #[error("a container named `{0}` exists and is not kinfra's; remove or rename it")]
    NameTaken(String),
    /// The resource definition cannot be turned into a container.
    #[error("{0}")]
    Invalid(String),
    /// An engine call failed.
    #[error("{op} failed: {source}")]
    Api {
        /// The operation, e.g. `create container`.
        op: &'static str,
        /// The engine's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The host port of a resource cannot be had.
    #[error("resource `{resource}`: {reason}")]
    Port {
        /// The resource.
        resource: String,
        /// Why (taken by another process, allocation failed).
        reason: String,
    },
    /// The generated secrets file cannot be read or written.
    #[error("the secrets file {path} is not usable: {source}")]
    Secrets {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl DockerError {
    /// An [`DockerError::Api`] error for `op`.
    pub(crate) fn api(op: &'static str) -> impl FnOnce(bollard::errors::Error) -> DockerError {
        move |source| DockerError::Api { op, source }
    }
}

/// The HTTP status of an engine error, when it has one.
pub(crate) fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// True when the engine connection itself failed (not an answer from the engine).
pub(crate) fn is_connection_error(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as E;
    matches!(
        e,
        E::SocketNotFoundError(_)
            | E::HyperResponseError { .. }
            | E::IOError { .. }
            | E::HyperLegacyError { .. }
            | E::RequestTimeoutError
    )
}

impl From<DockerError> for ResourceError {
    fn from(e: DockerError) -> Self {
        match e {
            DockerError::Unavailable { .. } => ResourceError::EngineUnavailable {
                engine: "the Docker engine".into(),
                reason: e.to_string(),
            },
            DockerError::Api { ref source, .. } if is_connection_error(source) => {
                ResourceError::EngineUnavailable {
                    engine: "the Docker engine".into(),
                    reason: e.to_string(),
                }
            }
            DockerError::Pull { .. } | DockerError::NameTaken(_) | DockerError::Invalid(_) => {
                ResourceError::Invalid(e.to_string())
            }
            DockerError::Api { op, .. } => ResourceError::op(op, e),
            DockerError::Secrets { .. } | DockerError::Port { .. } => {
                ResourceError::Invalid(e.to_string())
            }
        }
    }
}
