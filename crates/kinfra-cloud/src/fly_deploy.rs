//! `kinfra deploy fly`: the project's image as one Fly machine, through the Machines API
//! with the `fly` provider's client ([`crate::fly`]).
//!
//! A deploy ensures the app (`GET /v1/apps/{app}`; created with `POST /v1/apps` in the
//! given organization when it does not exist), ensures one volume named [`STATE_VOLUME`]
//! for kinfra's state dir (listed first, created once, never a second one), then creates the
//! machine (the image, the volume mounted at the state dir, the proxy's ports 80 and 443 as
//! services) or, when the app has one, updates it under a lease (`fly-machine-lease-nonce`)
//! with its `current_version`: a machine changed meanwhile answers 409, which is reported
//! and never retried. A machine whose config would not change is left alone (unchanged).
//! Either way it then waits for `started` with the `wait` endpoint. A dry-run ([`plan`])
//! reads (the app, its volumes and machines) and lists every request a deploy would send,
//! the token masked, sending none that changes anything.
//!
//! [`plan`]: FlyDeploy::plan

use crate::fly::{
    Fly, FlyProvider, LEASE_HEADER, LEASE_TTL_SECS, LeaseAnswer, MAX_WAIT, MachineInfo, fly_reason,
    planned, planned_text,
};
use kinfra_core::Secret;
use kinfra_provider::http::{HttpError, Method};
use kinfra_provider::provider::InstanceContext;
use kinfra_provider::rest::{CallError, encode_segment};
use kinfra_provider::result::{PlannedRequest, mask_text};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// The name of the volume that holds kinfra's state dir.
pub const STATE_VOLUME: &str = "kinfra_state";
/// The region when none is given (deploy/fly.toml's `primary_region`).
pub const DEFAULT_REGION: &str = "ams";
/// The state volume's size when none is given (GB).
pub const DEFAULT_VOLUME_GB: u32 = 1;
/// The largest state volume a deploy creates (GB; Fly's own limit is 500).
pub const MAX_VOLUME_GB: u32 = 500;
/// How long the machine may take to reach `started`.
pub const STARTED_WITHIN: Duration = Duration::from_secs(300);
/// The metadata key marking the machine kinfra deploys (`kinfra = "deploy"`).
const METADATA_KEY: &str = "kinfra";

/// Why a deploy did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The input is wrong (a bad name, an image without a tag, an app that does not exist
    /// and no organization to create it in, a refused token): fix it and run again.
    #[error("{0}")]
    Input(String),
    /// The API failed or refused a change (a 409, a machine that did not start).
    #[error("{0}")]
    Api(String),
}

/// What to deploy.
#[derive(Debug, Clone)]
pub struct DeploySpec {
    /// The Fly app.
    pub app: String,
    /// The image to run (with a tag or digest); `None` keeps the machine's own (a new
    /// machine needs one).
    pub image: Option<String>,
    /// The organization to create the app in when it does not exist.
    pub org: Option<String>,
    /// The region of the volume and the machine.
    pub region: String,
    /// The state volume's size (GB) when it is created.
    pub volume_size_gb: u32,
    /// Where the state dir is inside the machine (the volume's mount path).
    pub state_dir: String,
    /// The proxy's plain HTTP port inside the machine (Fly's ports 80, and 443 with TLS
    /// ended at Fly's edge, go to it).
    pub http_port: u16,
    /// The proxy's HTTPS port inside the machine, when the config has one (port 443 is
    /// then passed through to it, TLS ended by kinfra).
    pub https_port: Option<u16>,
    /// Environment of the machine (merged over the machine's own on an update).
    pub env: BTreeMap<String, String>,
}

/// Fly app names (and organization slugs, regions): lowercase letters, digits and dashes.
fn valid_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && !text.starts_with('-')
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// True when `reference` names a tag or a digest (`repo:tag`, `repo@sha256:…`), not only a
/// repository (whose `latest` would change under the machine).
pub fn image_has_tag(reference: &str) -> bool {
    if let Some((_, digest)) = reference.split_once('@') {
        return digest.starts_with("sha256:") && digest.len() > "sha256:".len();
    }
    let last = reference.rsplit('/').next().unwrap_or(reference);
    match last.split_once(':') {
        Some((name, tag)) => !name.is_empty() && !tag.is_empty(),
        None => false,
    }
}

impl DeploySpec {
    /// Every problem with the spec, named (nothing is sent when there is one).
    pub fn check(&self) -> Result<(), DeployError> {
        let mut problems = Vec::new();
        if !valid_name(&self.app) {
            problems.push(format!(
                "app `{}`: a Fly app name is a-z, 0-9 and - (63 at most)",
                self.app
            ));
        }
        if let Some(image) = &self.image
            && (image.trim().is_empty() || image.contains(char::is_whitespace))
        {
            problems.push(format!("image `{image}`: not an image reference"));
        } else if let Some(image) = &self.image
            && !image_has_tag(image)
        {
            problems.push(format!(
                "image `{image}` has no tag: give one (e.g. `{image}:v1`) or a digest, so the \
                 machine runs what you built"
            ));
        }
        if let Some(org) = &self.org
            && !valid_name(org)
        {
            problems.push(format!(
                "org `{org}`: an organization slug is a-z, 0-9 and -"
            ));
        }
        if !valid_name(&self.region) {
            problems.push(format!(
                "region `{}`: a Fly region code, e.g. ams",
                self.region
            ));
        }
        if self.volume_size_gb == 0 || self.volume_size_gb > MAX_VOLUME_GB {
            problems.push(format!(
                "volume size {} GB: between 1 and {MAX_VOLUME_GB}",
                self.volume_size_gb
            ));
        }
        if !self.state_dir.starts_with('/') {
            problems.push(format!(
                "state dir `{}`: the mount path must be absolute",
                self.state_dir
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DeployError::Input(problems.join("; ")))
        }
    }

    /// The app's URL on Fly.
    pub fn url(&self) -> String {
        format!("https://{}.fly.dev", self.app)
    }

    /// The services: Fly's ports 80 and 443 to the proxy.
    fn services(&self) -> Value {
        match self.https_port {
            None => json!([{
                "protocol": "tcp",
                "internal_port": self.http_port,
                "autostart": true,
                "autostop": "off",
                "ports": [
                    { "port": 80, "handlers": ["http"], "force_https": true },
                    { "port": 443, "handlers": ["tls", "http"] },
                ],
            }]),
            Some(https) => json!([
                {
                    "protocol": "tcp",
                    "internal_port": self.http_port,
                    "autostart": true,
                    "autostop": "off",
                    "ports": [{ "port": 80, "handlers": ["http"] }],
                },
                {
                    "protocol": "tcp",
                    "internal_port": https,
                    "autostart": true,
                    "autostop": "off",
                    "ports": [{ "port": 443 }],
                },
            ]),
        }
    }

    /// The machine's config: `current`'s (an update) with the image, env, the state
    /// volume's mount, the services and kinfra's metadata set.
    fn config(&self, current: Option<&Value>, volume: &str) -> Value {
        let mut config = match current {
            Some(Value::Object(c)) => Value::Object(c.clone()),
            _ => json!({ "restart": { "policy": "always" } }),
        };
        if let Some(image) = &self.image {
            config["image"] = json!(image);
        }
        let mut env: Map<String, Value> = config
            .get("env")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for (k, v) in &self.env {
            env.insert(k.clone(), json!(v));
        }
        config["env"] = Value::Object(env);
        config["mounts"] = json!([{ "volume": volume, "path": self.state_dir }]);
        config["services"] = self.services();
        let mut metadata: Map<String, Value> = config
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        metadata.insert(METADATA_KEY.into(), json!("deploy"));
        config["metadata"] = Value::Object(metadata);
        config
    }
}

/// A volume as the API lists it (the fields read).
#[derive(Debug, Clone, Deserialize)]
struct VolumeInfo {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    state: String,
}

/// What happened to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineOutcome {
    /// A new machine.
    Created,
    /// The machine's config changed (under a lease, with its current_version).
    Updated,
    /// The machine already had this config: nothing sent.
    Unchanged,
}

/// What a deploy did.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// The app's URL.
    pub url: String,
    /// True when the app was created.
    pub app_created: bool,
    /// The state volume's id.
    pub volume: String,
    /// True when the volume was created.
    pub volume_created: bool,
    /// The machine's id.
    pub machine: String,
    /// What happened to it.
    pub outcome: MachineOutcome,
    /// Its version after the deploy, when the API said.
    pub version: Option<String>,
    /// The image it runs.
    pub image: String,
}

/// What a dry-run found and would send.
#[derive(Debug, Clone)]
pub struct DeployPlan {
    /// The requests a deploy would send that change something (the token masked), in order.
    pub requests: Vec<PlannedRequest>,
    /// The reads the dry-run made (method and URL; they change nothing).
    pub reads: Vec<String>,
    /// What it found and decided, in words.
    pub notes: Vec<String>,
}

/// The app's state as read.
struct Found {
    app_exists: bool,
    volume: Option<VolumeInfo>,
    machine: Option<MachineInfo>,
}

/// Deploys to Fly with one token (see the module docs).
pub struct FlyDeploy {
    fly: Fly,
    token: Secret,
}

impl std::fmt::Debug for FlyDeploy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlyDeploy").finish_non_exhaustive()
    }
}

impl FlyDeploy {
    /// A deployer with `token`, against `base_url` (default: the Machines API).
    pub fn new(token: Secret, base_url: Option<String>) -> Result<Self, DeployError> {
        if token.expose().trim().is_empty() {
            return Err(DeployError::Input("the Fly API token is empty".into()));
        }
        let ctx = InstanceContext {
            instance: "fly".into(),
            token: Some(token.clone()),
            base_url,
            config: Map::new(),
        };
        let fly = FlyProvider::new()
            .fly(&ctx)
            .map_err(|e| DeployError::Input(mask_text(&e.to_string(), &[token.expose()])))?;
        Ok(Self { fly, token })
    }

    /// `text` with the token masked.
    fn mask(&self, text: &str) -> String {
        mask_text(text, &[self.token.expose()])
    }

    /// A failed call as a deploy error: a refused token or a 4xx the user can fix is input
    /// (exit 2); the rest is the API's failure.
    fn call_failed(&self, what: &str, error: &CallError) -> DeployError {
        let text = self.mask(&format!("{what}: {}", fly_reason(error)));
        match error.http.status() {
            Some(401 | 403) => DeployError::Input(self.mask(&format!(
                "{what}: the Fly API refused the token ({}): {}",
                error.http.status().unwrap_or_default(),
                fly_reason(error)
            ))),
            Some(400 | 404 | 422) => DeployError::Input(text),
            _ => DeployError::Api(text),
        }
    }

    fn app_path(app: &str) -> String {
        format!("/v1/apps/{}", encode_segment(app))
    }

    fn volumes_path(app: &str) -> String {
        format!("/v1/apps/{}/volumes", encode_segment(app))
    }

    /// Reads the app, its state volume and its machine. `reads` gets each read's line.
    async fn find(&self, spec: &DeploySpec, reads: &mut Vec<String>) -> Result<Found, DeployError> {
        let app = spec.app.as_str();
        let mut read = |path: &str| reads.push(format!("GET {}{path}", self.fly.api.base()));
        read(&Self::app_path(app));
        match self
            .fly
            .get::<Value>(&Self::app_path(app), &[], false)
            .await
        {
            Ok(_) => {}
            Err(e) if e.http.status() == Some(404) => {
                return Ok(Found {
                    app_exists: false,
                    volume: None,
                    machine: None,
                });
            }
            Err(e) => return Err(self.call_failed(&format!("read Fly app `{app}`"), &e)),
        }
        read(&Self::volumes_path(app));
        let volumes: Vec<VolumeInfo> = self
            .fly
            .get(&Self::volumes_path(app), &[], false)
            .await
            .map_err(|e| self.call_failed(&format!("list the volumes of Fly app `{app}`"), &e))?;
        let usable: Vec<VolumeInfo> = volumes
            .into_iter()
            .filter(|v| v.name == STATE_VOLUME && !v.state.contains("destroy"))
            .collect();
        // One in the region asked for, else the one there is (the machine follows it).
        let volume = usable
            .iter()
            .find(|v| v.region == spec.region)
            .or(usable.first())
            .cloned();
        read(&Fly::machines_path(app));
        let machines =
            self.fly.list(app, false).await.map_err(|e| {
                self.call_failed(&format!("list the machines of Fly app `{app}`"), &e)
            })?;
        let live: Vec<MachineInfo> = machines
            .into_iter()
            .filter(|m| !matches!(m.state.as_str(), "destroyed" | "destroying"))
            .collect();
        let mounts_volume = |m: &MachineInfo| {
            volume.as_ref().is_some_and(|v| {
                m.config["mounts"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|mount| mount["volume"] == v.id.as_str()))
            })
        };
        let ours = |m: &MachineInfo| m.config["metadata"][METADATA_KEY] == "deploy";
        let machine = live
            .iter()
            .find(|m| mounts_volume(m))
            .or_else(|| live.iter().find(|m| ours(m)))
            .or(live.first())
            .cloned();
        Ok(Found {
            app_exists: true,
            volume,
            machine,
        })
    }

    /// The error for an app that does not exist and no organization to create it in.
    fn no_app(spec: &DeploySpec) -> DeployError {
        DeployError::Input(format!(
            "Fly app `{}` does not exist (404): pass --org SLUG to create it in that \
             organization",
            spec.app
        ))
    }

    /// The error for a new machine without an image.
    fn no_image(spec: &DeploySpec) -> DeployError {
        DeployError::Input(format!(
            "Fly app `{}` has no machine yet: pass --image REF (e.g. one pushed with `kinfra \
             image build --push registry.fly.io/{}:v1`)",
            spec.app, spec.app
        ))
    }

    fn create_app_body(spec: &DeploySpec) -> Value {
        json!({ "name": spec.app, "org_slug": spec.org })
    }

    fn create_volume_body(spec: &DeploySpec) -> Value {
        json!({
            "name": STATE_VOLUME,
            "region": spec.region,
            "size_gb": spec.volume_size_gb,
            "encrypted": true,
        })
    }

    fn create_machine_body(spec: &DeploySpec, region: &str, volume: &str) -> Value {
        json!({
            "name": format!("{}-kinfra", spec.app),
            "region": region,
            "config": spec.config(None, volume),
        })
    }

    /// What a deploy would do: the reads it makes now, and every request that changes
    /// something, in order (the token masked). Sends nothing that changes state.
    pub async fn plan(&self, spec: &DeploySpec) -> Result<DeployPlan, DeployError> {
        spec.check()?;
        let mut reads = Vec::new();
        let found = self.find(spec, &mut reads).await?;
        let app = spec.app.as_str();
        let mut shown = Vec::new();
        let mut notes = Vec::new();
        let plan_err = |e: String| DeployError::Input(self.mask(&e));
        if found.app_exists {
            notes.push(format!("app `{app}` exists"));
        } else {
            if spec.org.is_none() {
                return Err(Self::no_app(spec));
            }
            notes.push(format!(
                "app `{app}` does not exist: it is created in org `{}`",
                spec.org.as_deref().unwrap_or_default()
            ));
            shown.push(
                planned(
                    &self.fly,
                    Method::POST,
                    "/v1/apps",
                    &[],
                    &[],
                    Some(Self::create_app_body(spec)),
                )
                .map_err(plan_err)?,
            );
        }
        let (volume_id, region) = match &found.volume {
            Some(v) => {
                notes.push(format!(
                    "volume `{STATE_VOLUME}` exists ({} in {})",
                    v.id, v.region
                ));
                (v.id.clone(), v.region.clone())
            }
            None => {
                notes.push(format!(
                    "volume `{STATE_VOLUME}` is created in {} ({} GB)",
                    spec.region, spec.volume_size_gb
                ));
                shown.push(
                    planned(
                        &self.fly,
                        Method::POST,
                        &Self::volumes_path(app),
                        &[],
                        &[],
                        Some(Self::create_volume_body(spec)),
                    )
                    .map_err(plan_err)?,
                );
                ("<id of the new volume>".to_owned(), spec.region.clone())
            }
        };
        let nonce = "<nonce of the lease>";
        let machine_path = |id: &str, action: &str| {
            format!(
                "/v1/apps/{}/machines/{}{action}",
                encode_segment(app),
                encode_segment(id)
            )
        };
        let wait_version;
        let machine_id = match &found.machine {
            None => {
                if spec.image.is_none() {
                    return Err(Self::no_image(spec));
                }
                notes.push("no machine: one is created".into());
                shown.push(
                    planned(
                        &self.fly,
                        Method::POST,
                        &Fly::machines_path(app),
                        &[],
                        &[],
                        Some(Self::create_machine_body(spec, &region, &volume_id)),
                    )
                    .map_err(plan_err)?,
                );
                wait_version = None;
                "<id of the new machine>".to_owned()
            }
            Some(m) => {
                let desired = spec.config(Some(&m.config), &volume_id);
                if desired == m.config {
                    notes.push(format!(
                        "machine `{}` already has this config: unchanged, nothing sent",
                        m.id
                    ));
                    return Ok(DeployPlan {
                        requests: shown.iter().map(|r| r.masked(&[&self.token])).collect(),
                        reads,
                        notes,
                    });
                }
                notes.push(format!(
                    "machine `{}` (version {}) is updated under a lease",
                    m.id,
                    m.version().unwrap_or("?")
                ));
                shown.push(
                    planned(
                        &self.fly,
                        Method::POST,
                        &machine_path(&m.id, "/lease"),
                        &[],
                        &[],
                        Some(lease_body()),
                    )
                    .map_err(plan_err)?,
                );
                let mut body = json!({ "config": desired });
                body["current_version"] = json!(m.version().unwrap_or("<read under the lease>"));
                shown.push(
                    planned(
                        &self.fly,
                        Method::POST,
                        &machine_path(&m.id, ""),
                        &[],
                        &[(LEASE_HEADER, nonce)],
                        Some(body),
                    )
                    .map_err(plan_err)?,
                );
                shown.push(
                    planned(
                        &self.fly,
                        Method::DELETE,
                        &machine_path(&m.id, "/lease"),
                        &[],
                        &[(LEASE_HEADER, nonce)],
                        None,
                    )
                    .map_err(plan_err)?,
                );
                wait_version = Some("<the new version>");
                m.id.clone()
            }
        };
        let secs = MAX_WAIT.as_secs().to_string();
        let mut query = format!("?state=started&timeout={secs}");
        if let Some(v) = wait_version {
            query.push_str(&format!("&version={v}"));
        }
        shown.push(
            planned_text(
                &self.fly,
                Method::GET,
                &format!(
                    "/v1/apps/{}/machines/{}/wait{query}",
                    encode_segment(app),
                    if found.machine.is_some() {
                        encode_segment(&machine_id)
                    } else {
                        machine_id.clone()
                    }
                ),
                &[],
                None,
            )
            .map_err(plan_err)?,
        );
        notes.push(format!(
            "then it waits for `started`; the URL: {}",
            spec.url()
        ));
        Ok(DeployPlan {
            requests: shown.iter().map(|r| r.masked(&[&self.token])).collect(),
            reads,
            notes,
        })
    }

    /// Deploys (see the module docs); `progress` gets a line per step.
    pub async fn deploy(
        &self,
        spec: &DeploySpec,
        progress: &mut (dyn FnMut(String) + Send),
    ) -> Result<Deployed, DeployError> {
        spec.check()?;
        let app = spec.app.as_str();
        let mut reads = Vec::new();
        let found = self.find(spec, &mut reads).await?;
        if found.machine.is_none() && spec.image.is_none() {
            return Err(Self::no_image(spec));
        }
        let app_created = !found.app_exists;
        if app_created {
            let Some(org) = &spec.org else {
                return Err(Self::no_app(spec));
            };
            let request = self
                .fly
                .request(
                    Method::POST,
                    "/v1/apps",
                    &[],
                    Some(Self::create_app_body(spec)),
                )
                .map_err(|e| DeployError::Input(self.mask(&e.text)))?;
            // Sent once: a create is not repeated blindly.
            self.fly.api.send_once(&request).await.map_err(|e| {
                self.call_failed(&format!("create Fly app `{app}` in org `{org}`"), &e)
            })?;
            progress(format!("created Fly app `{app}` in org `{org}`"));
        }
        let (volume, volume_created) = match &found.volume {
            Some(v) => {
                progress(format!("volume `{STATE_VOLUME}`: {} ({})", v.id, v.region));
                (v.clone(), false)
            }
            None => {
                let request = self
                    .fly
                    .request(
                        Method::POST,
                        &Self::volumes_path(app),
                        &[],
                        Some(Self::create_volume_body(spec)),
                    )
                    .map_err(|e| DeployError::Input(self.mask(&e.text)))?;
                let answer = self.fly.api.send_once(&request).await.map_err(|e| {
                    self.call_failed(&format!("create volume `{STATE_VOLUME}` of `{app}`"), &e)
                })?;
                let v: VolumeInfo = answer.json().map_err(|e| {
                    DeployError::Api(self.mask(&format!("the new volume's answer: {e}")))
                })?;
                progress(format!(
                    "created volume `{STATE_VOLUME}`: {} ({}, {} GB)",
                    v.id, spec.region, spec.volume_size_gb
                ));
                (v, true)
            }
        };
        let region = if volume.region.is_empty() {
            spec.region.clone()
        } else {
            volume.region.clone()
        };
        let (machine, outcome, version, image) = match &found.machine {
            None => {
                let request = self
                    .fly
                    .request(
                        Method::POST,
                        &Fly::machines_path(app),
                        &[],
                        Some(Self::create_machine_body(spec, &region, &volume.id)),
                    )
                    .map_err(|e| DeployError::Input(self.mask(&e.text)))?;
                let answer =
                    self.fly.api.send_once(&request).await.map_err(|e| {
                        self.call_failed(&format!("create a machine in `{app}`"), &e)
                    })?;
                let m: MachineInfo = answer.json().map_err(|e| {
                    DeployError::Api(self.mask(&format!("the new machine's answer: {e}")))
                })?;
                progress(format!("created machine {} in {region}", m.id));
                let version = m.version().map(str::to_owned);
                let image = m.config["image"].as_str().unwrap_or_default().to_owned();
                (m.id, MachineOutcome::Created, version, image)
            }
            Some(m) => {
                let desired = spec.config(Some(&m.config), &volume.id);
                let image = desired["image"].as_str().unwrap_or_default().to_owned();
                if desired == m.config {
                    progress(format!(
                        "machine {} already runs {image} with this config: unchanged",
                        m.id
                    ));
                    (
                        m.id.clone(),
                        MachineOutcome::Unchanged,
                        m.version().map(str::to_owned),
                        image,
                    )
                } else {
                    let version = self.update(spec, &m.id, &volume.id).await?;
                    progress(format!(
                        "updated machine {} to {image} (version {})",
                        m.id,
                        version.as_deref().unwrap_or("?")
                    ));
                    (m.id.clone(), MachineOutcome::Updated, version, image)
                }
            }
        };
        self.wait_started(app, &machine, version.as_deref()).await?;
        progress(format!("machine {machine} is started"));
        Ok(Deployed {
            url: spec.url(),
            app_created,
            volume: volume.id,
            volume_created,
            machine,
            outcome,
            version,
            image,
        })
    }

    /// Updates machine `id` under a lease, reading its config and version under it, with
    /// `current_version`; releases the lease whatever happens. A 409 is reported, never
    /// retried. Returns the new version.
    async fn update(
        &self,
        spec: &DeploySpec,
        id: &str,
        volume: &str,
    ) -> Result<Option<String>, DeployError> {
        let app = spec.app.as_str();
        let lease_path = Fly::machine_path(app, id, "/lease");
        let lease: LeaseAnswer = self
            .fly
            .api
            .call(Method::POST, &lease_path, &[], Some(lease_body()))
            .await
            .map_err(|e| match e.http.status() {
                Some(409) => DeployError::Api(self.mask(&format!(
                    "machine `{id}` of `{app}` is leased by someone else (409 Conflict): {}; \
                     not updated",
                    fly_reason(&e)
                ))),
                _ => self.call_failed(&format!("lease machine `{id}`"), &e),
            })?;
        let nonce = lease
            .nonce
            .filter(|n| !n.is_empty())
            .ok_or_else(|| DeployError::Api(format!("lease machine `{id}`: no nonce")))?;
        let outcome = async {
            let machine = self
                .fly
                .machine(app, id, false)
                .await
                .map_err(|e| self.call_failed(&format!("read machine `{id}`"), &e))?;
            let version = machine.version().map(str::to_owned);
            let mut body = json!({ "config": spec.config(Some(&machine.config), volume) });
            if let Some(v) = &version {
                body["current_version"] = json!(v);
            }
            let request = self
                .fly
                .request(
                    Method::POST,
                    &Fly::machine_path(app, id, ""),
                    &[],
                    Some(body),
                )
                .map_err(|e| DeployError::Input(self.mask(&e.text)))?
                .header(LEASE_HEADER, nonce.as_str());
            match self.fly.api.send_once(&request).await {
                Ok(answer) => Ok(answer
                    .json::<MachineInfo>()
                    .ok()
                    .and_then(|m| m.version().map(str::to_owned))),
                Err(e) if e.http.status() == Some(409) => Err(DeployError::Api(self.mask(&format!(
                    "update of machine `{id}` of `{app}` refused (409 Conflict): {}; it changed \
                     since version {} or is leased elsewhere. Not retried: run the deploy again",
                    fly_reason(&e),
                    version.as_deref().unwrap_or("?")
                )))),
                Err(e) => Err(self.call_failed(&format!("update machine `{id}`"), &e)),
            }
        }
        .await;
        let released = match self
            .fly
            .request(Method::DELETE, &lease_path, &[], None)
            .map(|r| r.header(LEASE_HEADER, nonce.as_str()))
        {
            Ok(r) => self.fly.send_unit(&r).await.map_err(|e| e.text),
            Err(e) => Err(e.text),
        };
        match (outcome, released) {
            (Ok(version), Ok(())) => Ok(version),
            (Ok(_), Err(e)) => Err(DeployError::Api(self.mask(&format!(
                "machine `{id}` updated, but its lease was not released (it expires in \
                 {LEASE_TTL_SECS}s): {e}"
            )))),
            (Err(error), _) => Err(error),
        }
    }

    /// Long-polls `wait` until machine `id` is `started` (bounded by [`STARTED_WITHIN`]);
    /// a machine that fails instead is an error with its state.
    async fn wait_started(
        &self,
        app: &str,
        id: &str,
        version: Option<&str>,
    ) -> Result<(), DeployError> {
        let deadline = Instant::now() + STARTED_WITHIN;
        let mut version = version.map(str::to_owned);
        loop {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(MAX_WAIT);
            if !left.is_zero() {
                match self
                    .fly
                    .wait(app, id, "started", version.as_deref(), left, false)
                    .await
                {
                    Ok(_) => {}
                    // A version the wait does not know (already replaced): read and go on.
                    Err(CallError {
                        http: HttpError::Status { code: 400, .. },
                        ..
                    }) => version = None,
                    Err(e) => {
                        return Err(self.call_failed(&format!("wait for machine `{id}`"), &e));
                    }
                }
            }
            let machine = self
                .fly
                .machine(app, id, false)
                .await
                .map_err(|e| self.call_failed(&format!("read machine `{id}`"), &e))?;
            match machine.state.as_str() {
                "started" => return Ok(()),
                "failed" | "destroyed" | "destroying" => {
                    return Err(DeployError::Api(format!(
                        "machine `{id}` of `{app}` did not start: it is `{}`",
                        machine.state
                    )));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(DeployError::Api(format!(
                    "machine `{id}` of `{app}` is `{}`, not started, after {:?}",
                    machine.state, STARTED_WITHIN
                )));
            }
        }
    }
}

/// The body of a lease request.
fn lease_body() -> Value {
    json!({ "ttl": LEASE_TTL_SECS, "description": "kinfra deploy" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DeploySpec {
        DeploySpec {
            app: "my-app".into(),
            image: Some("registry.fly.io/my-app:v1".into()),
            org: None,
            region: DEFAULT_REGION.into(),
            volume_size_gb: DEFAULT_VOLUME_GB,
            state_dir: "/app/.kinfra".into(),
            http_port: 9100,
            https_port: None,
            env: BTreeMap::from([("KINFRA_PROXY__HTTP".into(), "0.0.0.0:9100".into())]),
        }
    }

    #[test]
    fn an_image_needs_a_tag_or_a_digest() {
        assert!(image_has_tag("registry.fly.io/app:v1"));
        assert!(image_has_tag("127.0.0.1:5000/team/app:1.2"));
        assert!(image_has_tag("ghcr.io/me/app@sha256:abcd"));
        assert!(!image_has_tag("registry.fly.io/app"));
        assert!(!image_has_tag("127.0.0.1:5000/team/app"));
        assert!(!image_has_tag("app:"));
        assert!(!image_has_tag("ghcr.io/me/app@sha256:"));
    }

    #[test]
    fn the_spec_names_every_problem() {
        let mut bad = spec();
        bad.app = "My_App".into();
        bad.image = Some("registry.fly.io/my-app".into());
        bad.org = Some("Org!".into());
        bad.volume_size_gb = 0;
        let DeployError::Input(text) = bad.check().expect_err("bad") else {
            panic!("not input")
        };
        for word in ["`My_App`", "has no tag", "`Org!`", "volume size 0"] {
            assert!(text.contains(word), "{word}: {text}");
        }
        assert!(spec().check().is_ok());
    }

    #[test]
    fn the_config_mounts_the_state_dir_and_maps_the_proxy_ports() {
        let s = spec();
        let config = s.config(None, "vol_1");
        assert_eq!(config["image"], "registry.fly.io/my-app:v1");
        assert_eq!(
            config["mounts"],
            json!([{ "volume": "vol_1", "path": "/app/.kinfra" }])
        );
        assert_eq!(config["services"][0]["internal_port"], 9100);
        let ports: Vec<i64> = config["services"][0]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .filter_map(|p| p["port"].as_i64())
            .collect();
        assert_eq!(ports, [80, 443]);
        // The same spec over the config it made changes nothing (a second deploy: unchanged).
        assert_eq!(s.config(Some(&config), "vol_1"), config);
        // Another image changes only the image; the machine's own env is kept.
        let mut current = config.clone();
        current["env"]["OWN"] = json!("1");
        let mut next = s.clone();
        next.image = Some("registry.fly.io/my-app:v2".into());
        let updated = next.config(Some(&current), "vol_1");
        assert_eq!(updated["image"], "registry.fly.io/my-app:v2");
        assert_eq!(updated["env"]["OWN"], "1");
    }
}
