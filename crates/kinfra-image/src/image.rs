//! An image from its parts: each layer a deterministic tar, gzip-compressed with a fixed
//! header; the OCI image config; the manifest; and the OCI image layout written from them
//! (`oci-layout`, `index.json`, `blobs/sha256/<hex>`). Nothing here reads a clock, so the same
//! [`ImageSpec`] always gives the same manifest digest.

use crate::tar::Archive;
use crate::{ImageError, sha256_digest};
use flate2::{Compression, GzBuilder};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The media type of an OCI image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The media type of an OCI image index.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// The media type of an OCI image config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// The media type of a gzip-compressed layer.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One layer: a name for the history (`kinfra runtime`, `app`) and its files.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    /// Says what the layer holds (the config's `history`).
    pub comment: String,
    /// Its entries.
    pub files: Archive,
}

/// How a container of the image runs (the image config's `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// The program and its arguments.
    pub entrypoint: Vec<String>,
    /// `NAME=value` lines.
    pub env: Vec<String>,
    /// The working directory.
    pub working_dir: String,
    /// `PORT/tcp`.
    pub exposed_ports: Vec<String>,
    /// Directories that are volumes.
    pub volumes: Vec<String>,
    /// Labels (`org.opencontainers.image.version`, ...).
    pub labels: BTreeMap<String, String>,
}

/// Everything an image is made of.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The layers, bottom first.
    pub layers: Vec<LayerSpec>,
    /// How it runs.
    pub runtime: RuntimeSettings,
    /// The OCI architecture (`amd64`).
    pub architecture: String,
    /// The image's creation time and every file's mtime, seconds since 1970 (fixed, from
    /// `SOURCE_DATE_EPOCH` or the commit, so the digest does not depend on when it was built).
    pub created: u64,
}

/// A content-addressed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Its media type.
    pub media_type: String,
    /// `sha256:<hex>` of `data`.
    pub digest: String,
    /// The bytes.
    pub data: Vec<u8>,
}

impl Blob {
    fn new(media_type: &str, data: Vec<u8>) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest: sha256_digest(&data),
            data,
        }
    }

    fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.data.len() as u64,
            annotations: None,
        }
    }
}

/// A built image: its config and layer blobs and the manifest that ties them.
#[derive(Debug, Clone)]
pub struct Image {
    /// The image config blob.
    pub config: Blob,
    /// The layer blobs, bottom first.
    pub layers: Vec<Blob>,
    /// The manifest (a blob itself: its digest is the image's).
    pub manifest: Blob,
}

impl Image {
    /// Builds the image: tars and gzips each layer, writes the config and the manifest.
    pub fn build(spec: &ImageSpec) -> Result<Self, ImageError> {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        let mut history = Vec::new();
        let created = rfc3339(spec.created);
        for layer in &spec.layers {
            let tar = layer
                .files
                .to_bytes(spec.created)
                .map_err(ImageError::Input)?;
            diff_ids.push(sha256_digest(&tar));
            layers.push(Blob::new(LAYER_MEDIA_TYPE, gzip(&tar)?));
            history.push(History {
                created: created.clone(),
                created_by: "kinfra image build".into(),
                comment: layer.comment.clone(),
            });
        }
        let r = &spec.runtime;
        let config = ImageConfig {
            created: created.clone(),
            architecture: spec.architecture.clone(),
            os: "linux".into(),
            config: ContainerConfig {
                entrypoint: r.entrypoint.clone(),
                env: r.env.clone(),
                working_dir: r.working_dir.clone(),
                exposed_ports: r
                    .exposed_ports
                    .iter()
                    .map(|p| (p.clone(), Empty {}))
                    .collect(),
                volumes: r.volumes.iter().map(|v| (v.clone(), Empty {})).collect(),
                labels: r.labels.clone(),
            },
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids,
            },
            history,
        };
        let config = Blob::new(CONFIG_MEDIA_TYPE, to_json(&config)?);
        let mut annotations = BTreeMap::new();
        annotations.insert("org.opencontainers.image.created".to_owned(), created);
        for key in [
            "org.opencontainers.image.version",
            "org.opencontainers.image.revision",
        ] {
            if let Some(value) = r.labels.get(key) {
                annotations.insert(key.to_owned(), value.clone());
            }
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE.into(),
            config: config.descriptor(),
            layers: layers.iter().map(Blob::descriptor).collect(),
            annotations,
        };
        let manifest = Blob::new(MANIFEST_MEDIA_TYPE, to_json(&manifest)?);
        Ok(Self {
            config,
            layers,
            manifest,
        })
    }

    /// The manifest's digest: the image's identity.
    pub fn digest(&self) -> &str {
        &self.manifest.digest
    }

    /// Every blob the manifest refers to (config first, then the layers).
    pub fn referenced_blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }
}

/// Writes `image` as an OCI image layout into `dir`, its manifest tagged `tag` in
/// `index.json` (`org.opencontainers.image.ref.name`). The layout is written beside `dir`
/// first and renamed into place, so `dir` never holds half an image; an existing `dir` is
/// replaced only when it is an image layout (has `oci-layout`) or empty.
pub fn write_layout(image: &Image, dir: &Path, tag: &str) -> Result<(), ImageError> {
    if dir.exists() {
        let is_layout = dir.join("oci-layout").is_file();
        let is_empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !is_layout && !is_empty {
            return Err(ImageError::Input(format!(
                "{} exists and is not an OCI image layout (no oci-layout file); not replacing it",
                dir.display()
            )));
        }
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Write { path, source }
    };
    let result = (|| {
        let blobs = staging.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(write_err(&blobs))?;
        for blob in image
            .referenced_blobs()
            .chain(std::iter::once(&image.manifest))
        {
            let hex = blob.digest.trim_start_matches("sha256:");
            let path = blobs.join(hex);
            std::fs::write(&path, &blob.data).map_err(write_err(&path))?;
        }
        let layout = staging.join("oci-layout");
        std::fs::write(&layout, b"{\"imageLayoutVersion\":\"1.0.0\"}")
            .map_err(write_err(&layout))?;
        let mut descriptor = image.manifest.descriptor();
        descriptor.annotations = Some(BTreeMap::from([(
            "org.opencontainers.image.ref.name".to_owned(),
            tag.to_owned(),
        )]));
        let index = Index {
            schema_version: 2,
            media_type: INDEX_MEDIA_TYPE.into(),
            manifests: vec![descriptor],
        };
        let index_path = staging.join("index.json");
        std::fs::write(&index_path, to_json(&index)?).map_err(write_err(&index_path))?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(write_err(dir))?;
        }
        std::fs::rename(&staging, dir).map_err(write_err(dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

fn gzip(data: &[u8]) -> Result<Vec<u8>, ImageError> {
    let io = |source| ImageError::Write {
        path: PathBuf::from("<gzip>"),
        source,
    };
    // No file name, mtime 0, OS "unknown": the header says nothing about the build.
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), Compression::default());
    encoder.write_all(data).map_err(io)?;
    encoder.finish().map_err(io)
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(value).map_err(|e| ImageError::Input(format!("cannot encode JSON: {e}")))
}

/// `1970-01-01T00:00:00Z` from seconds since 1970 (UTC, no clock read).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Serialize)]
struct Manifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: String,
    config: Descriptor,
    layers: Vec<Descriptor>,
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Index {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: String,
    manifests: Vec<Descriptor>,
}

#[derive(Serialize)]
struct ImageConfig {
    created: String,
    architecture: String,
    os: String,
    config: ContainerConfig,
    rootfs: RootFs,
    history: Vec<History>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    entrypoint: Vec<String>,
    env: Vec<String>,
    working_dir: String,
    exposed_ports: BTreeMap<String, Empty>,
    volumes: BTreeMap<String, Empty>,
    labels: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct History {
    created: String,
    created_by: String,
    comment: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar::{Entry, EntryKind};

    fn spec(content: &[u8]) -> ImageSpec {
        let mut files = Archive::new();
        files
            .insert(
                "app/kinfra.toml",
                Entry {
                    mode: 0o644,
                    kind: EntryKind::File(content.to_vec()),
                },
            )
            .expect("insert");
        ImageSpec {
            layers: vec![LayerSpec {
                comment: "app".into(),
                files,
            }],
            runtime: RuntimeSettings {
                entrypoint: vec!["/kinfra".into()],
                working_dir: "/app".into(),
                exposed_ports: vec!["9000/tcp".into()],
                ..Default::default()
            },
            architecture: "amd64".into(),
            created: 1_700_000_000,
        }
    }

    #[test]
    fn same_spec_same_digest_other_content_other_digest() {
        let a = Image::build(&spec(b"a")).expect("build");
        let b = Image::build(&spec(b"a")).expect("build");
        let c = Image::build(&spec(b"c")).expect("build");
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
        let manifest: serde_json::Value =
            serde_json::from_slice(&a.manifest.data).expect("manifest json");
        assert_eq!(manifest["layers"][0]["digest"], a.layers[0].digest);
        assert_eq!(manifest["config"]["size"], a.config.data.len());
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn layout_replaces_a_layout_but_not_other_dirs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = Image::build(&spec(b"a")).expect("build");
        let out = dir.path().join("img");
        write_layout(&image, &out, "v1").expect("first");
        write_layout(&image, &out, "v1").expect("over a layout");
        let other = dir.path().join("other");
        std::fs::create_dir(&other).expect("mkdir");
        std::fs::write(other.join("precious"), "x").expect("write");
        let error = write_layout(&image, &other, "v1").expect_err("not a layout");
        assert!(error.is_input(), "{error}");
        assert!(other.join("precious").exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
