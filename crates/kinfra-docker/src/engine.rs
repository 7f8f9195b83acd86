//! The connection to the Docker engine and the few engine operations kinfra uses: image
//! present-or-pull, volumes, containers found by label, create, start, stop, remove,
//! inspect, logs and wait. Speaks only what API 1.41 (Docker 20.10) offers.

use crate::error::{DockerError, is_connection_error, status_of};
use crate::pull::PullProgress;
use crate::spec::{ContainerSpec, LABEL_MANAGED, Labels};
use bollard::Docker;
use bollard::models::{ContainerInspectResponse, ContainerSummary, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use std::time::{Duration, Instant};
use tracing::info;

/// Default engine address.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";
/// Longest wait for the engine to answer a plain request.
const REQUEST_TIMEOUT_S: u64 = 60;

/// A connected engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    host: String,
}

/// How an image became available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSource {
    /// It was present.
    Present,
    /// It was pulled now.
    Pulled,
}

/// Splits `name[:tag]` into name and tag (`latest` when none); a digest stays in the name.
pub fn split_image(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => (&image[..slash + i], &image[slash + i + 1..]),
        None => (image, "latest"),
    }
}

impl Engine {
    /// Connects to `DOCKER_HOST` or the local socket and agrees on an API version. Fails
    /// with [`DockerError::Unavailable`] when no engine answers.
    pub async fn connect() -> Result<Engine, DockerError> {
        let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| DEFAULT_HOST.to_owned());
        Self::connect_to(&host).await
    }

    /// Connects to a `unix://` socket (or a plain socket path).
    pub async fn connect_to(host: &str) -> Result<Engine, DockerError> {
        let unavailable = |reason: String| DockerError::Unavailable {
            host: host.to_owned(),
            reason,
        };
        let docker = if host.starts_with("unix://") || host.starts_with('/') {
            let path = host.strip_prefix("unix://").unwrap_or(host);
            if !std::path::Path::new(path).exists() {
                return Err(unavailable(format!(
                    "no socket at {path} (is dockerd running?)"
                )));
            }
            Docker::connect_with_unix(path, REQUEST_TIMEOUT_S, bollard::API_DEFAULT_VERSION)
        } else {
            Docker::connect_with_host(host)
        }
        .map_err(|e| unavailable(e.to_string()))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        docker
            .ping()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(Engine {
            docker,
            host: host.to_owned(),
        })
    }

    /// Where the engine is.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The bollard client (for tests and tools).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Makes sure `image` is present: pulls it only when missing, reporting progress lines
    /// (`Pulling redis:7: 42% 6.1/14.5 MB, 3/7 layers done`) at most once a second to
    /// `progress`, and the pull's state after every message of the engine's stream to
    /// `on_update` (which must be cheap: it only keeps it), the last one `complete`.
    pub async fn ensure_image(
        &self,
        image: &str,
        progress: &(dyn Fn(String) + Send + Sync),
        on_update: &(dyn Fn(&PullProgress) + Send + Sync),
    ) -> Result<ImageSource, DockerError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => return Ok(ImageSource::Present),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) if is_connection_error(&e) => {
                return Err(DockerError::Unavailable {
                    host: self.host.clone(),
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(DockerError::api("inspect image")(e)),
        }
        let (name, tag) = split_image(image);
        let mut opts = CreateImageOptionsBuilder::new().from_image(name);
        if !tag.is_empty() {
            opts = opts.tag(tag);
        }
        progress(format!("Pulling {image}"));
        let mut stream = self.docker.create_image(Some(opts.build()), None, None);
        let mut pull = PullProgress::new(image);
        on_update(&pull);
        let mut last_report = Instant::now();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| DockerError::Pull {
                image: image.to_owned(),
                reason: e.to_string(),
            })?;
            if let Some(status) = &info.status {
                let detail = info.progress_detail.as_ref();
                pull.update(
                    info.id.as_deref(),
                    status,
                    detail.and_then(|d| d.current),
                    detail.and_then(|d| d.total),
                );
                on_update(&pull);
            }
            if last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                let now = pull.snapshot();
                let (done, layers) = pull.layers();
                let mut line = format!("Pulling {image}:");
                if let Some(p) = now.percent {
                    line.push_str(&format!(" {p:.0}%"));
                }
                if let (Some(c), Some(t)) = (now.current, now.total) {
                    line.push_str(&format!(" {:.1}/{:.1} MB,", c as f64 / 1e6, t as f64 / 1e6));
                }
                progress(format!("{line} {done}/{layers} layers done"));
            }
        }
        // The stream can end without an error and without the image (engine quirks).
        self.docker
            .inspect_image(image)
            .await
            .map_err(|e| DockerError::Pull {
                image: image.to_owned(),
                reason: e.to_string(),
            })?;
        pull.finish();
        on_update(&pull);
        progress(format!("Pulled {image}"));
        info!(%image, "Image pulled.");
        Ok(ImageSource::Pulled)
    }

    /// Creates the named volumes of `spec` that do not exist yet, labelled as its.
    pub async fn ensure_volumes(&self, spec: &ContainerSpec) -> Result<(), DockerError> {
        for volume in spec.volumes.keys() {
            match self.docker.inspect_volume(volume).await {
                Ok(_) => continue,
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => return Err(DockerError::api("inspect volume")(e)),
            }
            self.docker
                .create_volume(VolumeCreateRequest {
                    name: Some(volume.clone()),
                    labels: Some(spec.labels.to_map(None)),
                    ..Default::default()
                })
                .await
                .map_err(DockerError::api("create volume"))?;
        }
        Ok(())
    }

    /// Every container (running or not) labelled as this resource's, newest first.
    pub async fn find(&self, labels: &Labels) -> Result<Vec<ContainerSummary>, DockerError> {
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&labels.filter())
            .build();
        let mut list = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| self.classify("list containers", e))?;
        list.sort_by_key(|c| std::cmp::Reverse(c.created.unwrap_or(0)));
        Ok(list)
    }

    /// Every container kinfra created for `project`.
    pub async fn find_project(&self, project: &str) -> Result<Vec<ContainerSummary>, DockerError> {
        let filter = std::collections::HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{}={project}", crate::spec::LABEL_PROJECT),
            ],
        )]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filter)
            .build();
        self.docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| self.classify("list containers", e))
    }

    fn classify(&self, op: &'static str, e: bollard::errors::Error) -> DockerError {
        if is_connection_error(&e) {
            DockerError::Unavailable {
                host: self.host.clone(),
                reason: e.to_string(),
            }
        } else {
            DockerError::api(op)(e)
        }
    }

    /// Creates the container of `spec` and returns its id. A container by that name that is
    /// not kinfra's is refused, never replaced.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        let opts = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        match self
            .docker
            .create_container(Some(opts), spec.to_body())
            .await
        {
            Ok(r) => Ok(r.id),
            Err(e) if status_of(&e) == Some(409) => Err(DockerError::NameTaken(spec.name.clone())),
            Err(e) => Err(self.classify("create container", e)),
        }
    }

    /// Starts a container (already running is fine).
    pub async fn start(&self, id: &str) -> Result<(), DockerError> {
        match self.docker.start_container(id, None).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            Err(e) => Err(self.classify("start container", e)),
        }
    }

    /// Stops a container: its stop signal, then SIGKILL after `grace`. Not running or gone
    /// is fine.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), DockerError> {
        let t = i32::try_from(grace.as_secs().max(1)).unwrap_or(i32::MAX);
        let opts = StopContainerOptionsBuilder::new().t(t).build();
        match self.docker.stop_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(status_of(&e), Some(304 | 404)) => Ok(()),
            Err(e) => Err(self.classify("stop container", e)),
        }
    }

    /// Removes a container (forcing it down), and its anonymous volumes; named ones stay.
    pub async fn remove(&self, id: &str) -> Result<(), DockerError> {
        let opts = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.classify("remove container", e)),
        }
    }

    /// Removes the named volumes labelled as this resource's.
    pub async fn remove_volumes(&self, labels: &Labels) -> Result<Vec<String>, DockerError> {
        let opts = ListVolumesOptionsBuilder::new()
            .filters(&labels.filter())
            .build();
        let list = self
            .docker
            .list_volumes(Some(opts))
            .await
            .map_err(|e| self.classify("list volumes", e))?;
        let mut removed = Vec::new();
        for v in list.volumes.unwrap_or_default() {
            let opts = RemoveVolumeOptionsBuilder::new().force(false).build();
            match self.docker.remove_volume(&v.name, Some(opts)).await {
                Ok(()) => removed.push(v.name),
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => return Err(self.classify("remove volume", e)),
            }
        }
        Ok(removed)
    }

    /// Inspects a container; `None` when it does not exist.
    pub async fn inspect(&self, id: &str) -> Result<Option<ContainerInspectResponse>, DockerError> {
        match self.docker.inspect_container(id, None).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.classify("inspect container", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_split_into_name_and_tag() {
        assert_eq!(split_image("redis:7"), ("redis", "7"));
        assert_eq!(split_image("redis"), ("redis", "latest"));
        assert_eq!(
            split_image("localhost:5000/app/x:1.2"),
            ("localhost:5000/app/x", "1.2")
        );
        assert_eq!(
            split_image("localhost:5000/app"),
            ("localhost:5000/app", "latest")
        );
        assert_eq!(split_image("a@sha256:00"), ("a@sha256:00", ""));
    }
}
