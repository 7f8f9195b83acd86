//! kinfra's OCI images, built without Docker: the static kinfra binary, a CA bundle, the
//! project's config and the files its `[image] include` lists (and a static busybox as
//! `/bin/sh` when the config needs a shell), as a reproducible OCI image: the same inputs give
//! the same manifest digest. The image is written as an OCI image layout on disk
//! ([`write_layout`]) or pushed to a registry through the OCI distribution API ([`push`]).
//!
//! The parts: [`elf`] reads a binary's ELF headers (static or not, architecture); [`tar`]
//! writes deterministic tar archives; [`image`] turns an [`ImageSpec`] into blobs and a
//! manifest; [`project`] makes the spec from a kinfra config; [`reference`] checks
//! `REGISTRY/REPO:TAG`; [`push`] uploads blobs first and the manifest (the tag) last;
//! [`auth`] finds credentials in docker's `config.json`.

pub mod auth;
pub mod elf;
pub mod image;
pub mod project;
pub mod push;
pub mod reference;
pub mod tar;

pub use image::{Blob, Image, ImageSpec, LayerSpec, RuntimeSettings, write_layout};
pub use project::{BuildInputs, SourceInfo, image_spec};
pub use push::{Credentials, PushOptions, push};
pub use reference::ImageRef;

use std::path::PathBuf;

/// What can go wrong building or pushing an image. [`ImageError::is_input`] says whether the
/// cause is the user's input (a missing file, a dynamic binary, a bad reference: exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file the image needs is missing or unreadable.
    #[error("{what} {path}: {source}")]
    File {
        /// What the file is for (`the kinfra binary`, `[image] include path`).
        what: String,
        /// The path.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The binary is not one an empty image can run.
    #[error("{path}: {reason}")]
    Binary {
        /// The binary.
        path: PathBuf,
        /// Why it cannot go into the image.
        reason: String,
    },
    /// Other bad input (a reference without a tag, a path that cannot be stored, an output dir
    /// that is not an image layout).
    #[error("{0}")]
    Input(String),
    /// Writing the layout failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The registry refused the credentials.
    #[error("registry {registry} refused the credentials{user}: {detail}")]
    Unauthorized {
        /// The registry (`host:port`).
        registry: String,
        /// ` of user NAME`, or empty when pushing anonymously.
        user: String,
        /// What the registry said.
        detail: String,
    },
    /// The registry could not be reached or refused the push.
    #[error("push to {reference} failed: {detail}")]
    Push {
        /// The reference pushed to.
        reference: String,
        /// What went wrong.
        detail: String,
    },
}

impl ImageError {
    /// True when the cause is the user's input (exit code 2 in the CLI).
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            Self::File { .. } | Self::Binary { .. } | Self::Input(_)
        )
    }
}

/// Hex SHA-256 of `data` as an OCI digest, `sha256:<hex>`.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(data);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}
