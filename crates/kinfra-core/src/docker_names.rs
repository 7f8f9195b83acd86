//! The names kinfra gives its Docker containers and volumes, shared by the Docker adapter and
//! `kinfra import` (which names the container in the healthchecks it writes).

/// `s` as a Docker name part: Docker allows `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; anything else
/// becomes `-`, and leading `_`, `.`, `-` are dropped.
pub fn docker_name(s: &str) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    out.trim_start_matches(['_', '.', '-']).to_owned()
}

/// The container's name: `kinfra-PROJECT-NAME`.
pub fn container_name(project: &str, name: &str) -> String {
    format!("kinfra-{}-{}", docker_name(project), docker_name(name))
}

/// A named volume of a resource: `kinfra-PROJECT-NAME-VOLUME`.
pub fn volume_name(project: &str, name: &str, volume: &str) -> String {
    format!(
        "kinfra-{}-{}-{}",
        docker_name(project),
        docker_name(name),
        docker_name(volume)
    )
}
