//! State dirs and secret files another user could have planted, and what another user sees,
//! through the binary. As root, the test stands in for "another user" with uid/gid 65534
//! (`nobody`): it chowns paths to it, and runs the CLI as it with util-linux's `setpriv`.

use crate::support::{Project, kinfra_bin, output_within, stderr, unique_tag};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const OTHER_UID: u32 = 65534;

fn require_root() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "these tests need root (they chown files to another user); run them as root (./x test in CI)"
    );
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown_other(path: &Path) {
    std::os::unix::fs::chown(path, Some(OTHER_UID), Some(OTHER_UID)).expect("chown");
}

/// `kinfra ARGS` in the project dir as uid 65534 (bounded by 60 s).
fn run_as_other(p: &Project, args: &[&str]) -> Output {
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("setpriv is missing: apt-get install util-linux (or run ./x test)");
    let mut cmd = Command::new(setpriv);
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        kinfra_bin(),
    ])
    .args(args)
    .current_dir(p.path())
    .env_remove("KINFRA_LOG")
    .env("KINFRA_PROXY__HTTP", "127.0.0.1:0")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    output_within(
        &mut cmd,
        Duration::from_secs(60),
        &format!("kinfra {args:?} as uid 65534"),
    )
}

fn config(tag: &str) -> String {
    format!(
        "[project]\nname = \"own\"\n[env]\nKINFRA_TEST_TAG = \"{tag}\"\n\
         [dashboard]\nlisten = \"127.0.0.1:0\"\n[proxy]\nenabled = false\n\
         [services.web]\ncommand = \"exec sleep 1000\"\n"
    )
}

/// Runs `runtime up` expecting a refusal: exit 2, the message names path, owner and mode,
/// and nothing was started (no control socket).
fn assert_refused(p: &Project, path_named: &str, needles: &[&str]) {
    let out = p.run(&["runtime", "up"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(path_named), "the path is not named: {err}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} missing: {err}");
    }
    assert!(
        !p.path().join(".kinfra/control.sock").exists(),
        "a refused runtime left a control socket"
    );
}

#[test]
fn a_state_dir_planted_by_another_user_is_refused_and_its_token_never_used() {
    require_root();
    let p = Project::with_config(&config(&unique_tag("planted")));
    let state = p.path().join(".kinfra");
    std::fs::create_dir(&state).expect("mkdir");
    std::fs::write(state.join("dashboard.token"), "planted-token\n").expect("write");
    chmod(&state, 0o777);
    chown_other(&state);
    chown_other(&state.join("dashboard.token"));

    assert_refused(
        &p,
        &state.display().to_string(),
        &["uid 65534", "mode 0777", "not by the user running kinfra"],
    );
    // Left as it was: not chmodded, not taken over.
    let meta = std::fs::metadata(&state).expect("stat");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (OTHER_UID, 0o777));
    // `kinfra dashboard url` never prints the planted token either.
    let out = p.run(&["dashboard", "url"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("planted-token"),
        "the planted token was used"
    );
}

#[test]
fn own_state_dir_or_token_writable_by_others_is_refused() {
    require_root();
    let p = Project::with_config(&config(&unique_tag("writable")));
    let state = p.path().join(".kinfra");
    std::fs::create_dir(&state).expect("mkdir");
    chmod(&state, 0o777);
    assert_refused(
        &p,
        &state.display().to_string(),
        &["mode 0777", "every user"],
    );

    chmod(&state, 0o700);
    let token = state.join("dashboard.token");
    std::fs::write(&token, "maybe-planted\n").expect("write");
    chmod(&token, 0o620);
    assert_refused(
        &p,
        &token.display().to_string(),
        &["mode 0620", "its group"],
    );
}

#[test]
fn a_fresh_state_dir_is_private_and_another_user_gets_honest_errors() {
    require_root();
    let tag = unique_tag("other-user");
    let p = Project::with_config(&config(&tag));
    // The other user may enter the project and read its config, as in a shared directory.
    chmod(p.path(), 0o755);
    chmod(&p.path().join("kinfra.toml"), 0o644);
    let mut up = p.up(&[], &[]);
    let state = p.path().join(".kinfra");
    let meta = std::fs::metadata(&state).expect("stat state dir");
    assert_eq!(
        meta.mode() & 0o777,
        0o700,
        "state dir mode {:o}",
        meta.mode()
    );

    // A client of another user: a runtime is there, it cannot be reached by this user.
    let out = run_as_other(&p, &["runtime", "status"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("no kinfra runtime is running"), "{err}");
    assert!(
        err.contains("cannot reach its control socket")
            && err.contains(&state.join("control.sock").display().to_string())
            && err.contains("uid 65534")
            && err.contains("uid 0"),
        "{err}"
    );

    // A second `runtime up` by another user names the path and the reason, once, exit 2.
    let out = run_as_other(&p, &["runtime", "up"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&state.display().to_string()), "{err}");
    assert!(err.contains("owned by uid 0"), "{err}");
    assert!(!err.contains("Operation not permitted"), "{err}");

    up.signal(libc::SIGTERM);
    assert!(up.wait_exit(Duration::from_secs(30)).success());
    assert!(crate::support::pids_tagged(&tag).is_empty());
}
