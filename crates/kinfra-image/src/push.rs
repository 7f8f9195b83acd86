//! Pushing an [`Image`] through the OCI distribution API (oci-client): every blob first
//! (those the registry has already are skipped), the manifest under its tag last, so a push
//! that is refused or interrupted leaves no tag pointing at a partial image. Basic auth and
//! the bearer-token flow (`WWW-Authenticate: Bearer realm=...`, the credentials sent to the
//! token server) are oci-client's; plain HTTP only for a registry on this machine.

use crate::{Image, ImageError, ImageRef};
use kinfra_core::secret::Secret;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use std::time::Duration;
use tracing::{debug, info};

/// A user and password for the registry (the password never printed).
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The user.
    pub user: String,
    /// The password or token.
    pub password: Secret,
}

/// How to push.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Credentials; `None` pushes anonymously.
    pub credentials: Option<Credentials>,
    /// Plain HTTP (allowed only for a registry on this machine).
    pub insecure: bool,
    /// Extra trusted CA certificates (PEM), for a registry with a private CA.
    pub ca_pem: Vec<Vec<u8>>,
}

/// Pushes `image` to `reference` and returns the manifest's digest.
pub async fn push(
    image: &Image,
    reference: &ImageRef,
    options: &PushOptions,
) -> Result<String, ImageError> {
    if options.insecure && !reference.is_loopback() {
        return Err(ImageError::Input(format!(
            "--insecure (plain HTTP) is only allowed for a registry on this machine \
             (127.0.0.1, localhost), not {}",
            reference.registry
        )));
    }
    kinfra_core::tls::install_crypto_provider();
    let config = ClientConfig {
        protocol: if options.insecure {
            ClientProtocol::HttpsExcept(vec![reference.registry.clone()])
        } else {
            ClientProtocol::Https
        },
        extra_root_certificates: options
            .ca_pem
            .iter()
            .map(|pem| Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.clone(),
            })
            .collect(),
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(120)),
        max_concurrent_upload: 1,
        ..Default::default()
    };
    let push_error = |detail: String| ImageError::Push {
        reference: reference.to_string(),
        detail,
    };
    let client = Client::try_from(config)
        .map_err(|e| push_error(format!("cannot make the HTTP client: {e}")))?;
    let target = Reference::with_tag(
        reference.registry.clone(),
        reference.repository.clone(),
        reference.tag.clone(),
    );
    let auth = match &options.credentials {
        Some(c) => RegistryAuth::Basic(c.user.clone(), c.password.expose().to_owned()),
        None => RegistryAuth::Anonymous,
    };
    let user = options
        .credentials
        .as_ref()
        .map(|c| format!(" of user {}", c.user))
        .unwrap_or_default();
    let map = |error: OciDistributionError| classify(error, reference, &user);
    client
        .auth(&target, &auth, RegistryOperation::Push)
        .await
        .map_err(map)?;
    for blob in image.referenced_blobs() {
        if client
            .blob_exists(&target, &blob.digest)
            .await
            .unwrap_or(false)
        {
            debug!(digest = %blob.digest, "Blob already in the registry.");
            continue;
        }
        client
            .push_blob(&target, blob.data.clone(), &blob.digest)
            .await
            .map_err(|error| match map(error) {
                ImageError::Push { reference, detail } => ImageError::Push {
                    reference,
                    detail: format!("uploading blob {} (no tag was set): {detail}", blob.digest),
                },
                other => other,
            })?;
        debug!(digest = %blob.digest, size = blob.data.len(), "Blob pushed.");
    }
    let content_type = crate::image::MANIFEST_MEDIA_TYPE
        .parse()
        .map_err(|e| push_error(format!("bad content type: {e}")))?;
    client
        .push_manifest_raw(&target, image.manifest.data.clone(), content_type)
        .await
        .map_err(map)?;
    info!(reference = %reference, digest = %image.digest(), "Image pushed.");
    Ok(image.digest().to_owned())
}

/// A refused login is [`ImageError::Unauthorized`]; anything else a push failure, with what
/// the registry said (never the password: oci-client's errors hold URLs and bodies only).
fn classify(error: OciDistributionError, reference: &ImageRef, user: &str) -> ImageError {
    let unauthorized = |detail: String| ImageError::Unauthorized {
        registry: reference.registry.clone(),
        user: user.to_owned(),
        detail,
    };
    match error {
        OciDistributionError::AuthenticationFailure(body) => {
            unauthorized(format!("the token server said: {}", body.trim()))
        }
        OciDistributionError::UnauthorizedError { url } => unauthorized(format!("401 at {url}")),
        OciDistributionError::ServerError { code, message, .. } if code == 401 || code == 403 => {
            unauthorized(format!("HTTP {code}: {}", first_line(&message)))
        }
        OciDistributionError::RegistryError { envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)) =>
        {
            unauthorized(envelope.to_string())
        }
        OciDistributionError::ServerError { code, message, url } => ImageError::Push {
            reference: reference.to_string(),
            detail: format!("HTTP {code} at {url}: {}", first_line(&message)),
        },
        other => ImageError::Push {
            reference: reference.to_string(),
            detail: with_causes(&other),
        },
    }
}

/// The error and its sources, `a: b: c` (reqwest's own text leaves out why it failed).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn first_line(text: &str) -> &str {
    let text = text.trim();
    text.lines().next().unwrap_or(text)
}
