//! `kinfra image build` (issue 20): an OCI image without Docker. The layout is valid (every
//! blob's digest and size match, `oci-layout`, the config's diff_ids are the layers' tars) and
//! reproducible (built twice: the same manifest digest; a changed file: another); bad input
//! exits 2 naming the thing and writes nothing. Pushes go to a real registry on 127.0.0.1
//! (Debian's `docker-registry`, htpasswd auth): a wrong password fails with a clear error and
//! leaves no tag; the right one pushes, and the real Docker engine pulls the image and runs it:
//! the dashboard and a demo service answer from the host through published ports.
//!
//! Layout, reproducibility and push tests use Debian's static busybox as a stand-in for the
//! binary (any static ELF goes in the same way); the run test needs the real static kinfra from
//! `./x dist` and fails naming it when it is missing.

use crate::support::{Project, http_get_as, kinfra_bin, output_within, stderr, stdout, wait_for};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BUSYBOX: &str = "/bin/busybox";
const TOKEN: &str = "image-test-token-0123456789";

/// A config with a shell-string service (so busybox goes in as /bin/sh), the dashboard on all
/// interfaces (token from the environment in the run test) and two include paths.
const CONFIG: &str = r#"
[project]
name = "imaged"
shutdown_timeout = "10s"

[dashboard]
listen = "0.0.0.0:9000"

[proxy]
http = "0.0.0.0:9100"

[services.hello]
command = ["/kinfra", "demo", "hello", "--port", "${PORT}"]
port = "auto"
health = { http = "/healthz", interval = "1s" }

[services.shell]
command = "echo shell says hi && sleep 1000"

[[routes]]
path = "/"
service = "hello"

[image]
include = ["static/", "app.sh"]
"#;

/// A project with CONFIG, `static/index.html`, `static/css/site.css` and an executable
/// `app.sh`.
fn project() -> Project {
    let p = Project::with_config(CONFIG);
    std::fs::create_dir_all(p.path().join("static/css")).expect("mkdir");
    p.write("static/index.html", "<h1>hi</h1>\n");
    p.write("static/css/site.css", "h1 { color: teal }\n");
    let script = p.write("app.sh", "#!/bin/sh\necho app\n");
    set_mode(&script, 0o755);
    p
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn static_busybox() -> &'static str {
    let out = Command::new("file").args(["-bL", BUSYBOX]).output();
    assert!(
        out.is_ok_and(|o| stdout(&o).contains("statically linked")),
        "no static {BUSYBOX}: install busybox-static (and the `file` package)"
    );
    BUSYBOX
}

/// `kinfra image build ARGS` in the project dir, with `env`.
fn build(p: &Project, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(kinfra_bin());
    cmd.args(["image", "build"])
        .args(args)
        .current_dir(p.path())
        .env_remove("KINFRA_LOG")
        .env_remove("KINFRA_REGISTRY_PASSWORD")
        .env_remove("SOURCE_DATE_EPOCH")
        // Never the machine's docker logins.
        .env("DOCKER_CONFIG", p.path().join(".no-docker-config"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    output_within(&mut cmd, Duration::from_secs(300), "kinfra image build")
}

fn build_ok(p: &Project, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = build(p, args, env);
    assert!(
        out.status.success(),
        "kinfra image build {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// `sha256sum` of a file (coreutils), as `sha256:<hex>`.
fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    format!(
        "sha256:{}",
        stdout(&out).split_whitespace().next().unwrap_or("")
    )
}

/// `gzip -dc FILE | sha256sum`: the digest of a layer's uncompressed tar.
fn diff_id(path: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg("gzip -dc \"$1\" | sha256sum")
        .arg("sh")
        .arg(path)
        .output()
        .expect("gzip and sha256sum run");
    format!(
        "sha256:{}",
        stdout(&out).split_whitespace().next().unwrap_or("")
    )
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// The manifest digest the layout's index.json names, after checking the layout: the
/// `oci-layout` file, every blob named by its SHA-256 with the size its descriptor says, the
/// config's diff_ids the layers' uncompressed tars, the tag annotation.
fn check_layout(layout: &Path, tag: &str) -> (String, Value, Vec<String>) {
    assert_eq!(
        read_json(&layout.join("oci-layout")),
        serde_json::json!({"imageLayoutVersion": "1.0.0"})
    );
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).expect("blobs dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert_eq!(sha256_file(&path), format!("sha256:{name}"), "blob {name}");
    }
    let index = read_json(&layout.join("index.json"));
    assert_eq!(index["schemaVersion"], 2);
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1, "{index}");
    let descriptor = &manifests[0];
    assert_eq!(
        descriptor["annotations"]["org.opencontainers.image.ref.name"],
        tag
    );
    let manifest_digest = descriptor["digest"].as_str().expect("digest").to_owned();
    let check_size = |d: &Value| {
        let path = blob(layout, d["digest"].as_str().expect("digest"));
        let size = std::fs::metadata(&path).expect("blob exists").len();
        assert_eq!(d["size"].as_u64(), Some(size), "size of {}", path.display());
        path
    };
    let manifest = read_json(&check_size(descriptor));
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config = read_json(&check_size(&manifest["config"]));
    let layers = manifest["layers"].as_array().expect("layers");
    let mut listings = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let path = check_size(layer);
        assert_eq!(
            config["rootfs"]["diff_ids"][i],
            diff_id(&path),
            "diff_id {i}"
        );
        let out = Command::new("tar")
            .args(["--numeric-owner", "-tzvf"])
            .arg(&path)
            .output()
            .expect("tar runs");
        assert!(out.status.success(), "tar: {}", stderr(&out));
        // One space between columns, whatever widths tar chose.
        let listing: Vec<String> = stdout(&out)
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        listings.push(listing.join("\n") + "\n");
    }
    (manifest_digest, config, listings)
}

/// Built twice (two output dirs): the same digest; the layout is valid and holds what the
/// config says (binary, CA bundle, busybox as /bin/sh for the shell string, /tmp, the config,
/// the include paths with their modes), the runtime settings and labels; a changed included
/// file gives another digest, and SOURCE_DATE_EPOCH sets `created`.
#[test]
fn image_build_is_reproducible_and_the_layout_is_valid() {
    let p = project();
    let bin = static_busybox();
    let out1 = p.path().join("out1");
    let out2 = p.path().join("out2");
    let said = build_ok(
        &p,
        &["--binary", bin, "--output", "out1", "--tag", "v1"],
        &[],
    );
    build_ok(
        &p,
        &["--binary", bin, "--output", "out2", "--tag", "v1"],
        &[],
    );
    let (digest1, config, listings) = check_layout(&out1, "v1");
    let (digest2, _, _) = check_layout(&out2, "v1");
    assert_eq!(digest1, digest2, "same inputs, same digest");
    assert!(said.contains(&digest1), "{said}");

    let runtime = &listings[0];
    for line in [
        "-rwxr-xr-x 0/0", // the binary
        " kinfra\n",
        "etc/ssl/certs/ca-certificates.crt",
        "drwxrwxrwt 0/0",
        "bin/sh -> busybox",
        "bin/busybox",
    ] {
        assert!(runtime.contains(line), "`{line}` not in\n{runtime}");
    }
    let app = &listings[1];
    for line in [
        "app/kinfra.toml",
        "-rw-r--r-- 0/0 12 1970-01-01 00:00 app/static/index.html",
        "app/static/css/site.css",
        "-rwxr-xr-x 0/0 19 1970-01-01 00:00 app/app.sh",
        "drwx------ 0/0 0 1970-01-01 00:00 app/.kinfra/",
    ] {
        assert!(app.contains(line), "`{line}` not in\n{app}");
    }
    let c = &config["config"];
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/kinfra", "runtime", "up", "-c", "/app/kinfra.toml"])
    );
    assert_eq!(c["WorkingDir"], "/app");
    assert_eq!(
        c["ExposedPorts"],
        serde_json::json!({"9000/tcp": {}, "9100/tcp": {}})
    );
    assert_eq!(c["Volumes"], serde_json::json!({"/app/.kinfra": {}}));
    assert_eq!(
        c["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        config["created"], "1970-01-01T00:00:00Z",
        "not a git checkout"
    );
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");

    // Another file content: another digest.
    p.write("static/index.html", "<h1>changed</h1>\n");
    build_ok(
        &p,
        &["--binary", bin, "--output", "out1", "--tag", "v1"],
        &[],
    );
    let (digest3, _, _) = check_layout(&out1, "v1");
    assert_ne!(digest1, digest3, "a changed include changes the digest");

    // SOURCE_DATE_EPOCH sets created (and the label); the build is still reproducible.
    let env = [("SOURCE_DATE_EPOCH", "1700000000")];
    build_ok(&p, &["--binary", bin, "--output", "out1"], &env);
    build_ok(&p, &["--binary", bin, "--output", "out2"], &env);
    let (d1, config, _) = check_layout(&out1, "latest");
    let (d2, _, _) = check_layout(&out2, "latest");
    assert_eq!(d1, d2);
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.created"],
        "2023-11-14T22:13:20Z"
    );
}

/// A git checkout: the revision label is the commit and `created` the commit's time.
#[test]
fn image_labels_come_from_the_git_commit() {
    let p = project();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(p.path())
            .env("GIT_AUTHOR_DATE", "1600000000 +0000")
            .env("GIT_COMMITTER_DATE", "1600000000 +0000")
            .output()
            .expect("git (Debian package git) runs");
        assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
        stdout(&out).trim().to_owned()
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@example.com",
        "commit",
        "-qm",
        "x",
    ]);
    let head = git(&["rev-parse", "HEAD"]);
    build_ok(&p, &["--binary", static_busybox(), "--output", "out"], &[]);
    let (_, config, _) = check_layout(&p.path().join("out"), "latest");
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.revision"],
        head.as_str()
    );
    assert_eq!(config["created"], "2020-09-13T12:26:40Z");
}

/// Bad input exits 2 naming the thing, and nothing is written: a missing include path, a
/// missing or dynamically linked binary, a reference without a tag, `--username` without the
/// password variable, plain HTTP to a registry elsewhere, an output dir that is not a layout.
#[test]
fn image_build_bad_input_exits_2_and_writes_nothing() {
    let p = project();
    let bin = static_busybox();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--binary", bin, "--push", "127.0.0.1:5/app"],
            "`127.0.0.1:5/app`: no tag",
        ),
        (
            vec!["--binary", "nope/kinfra", "--output", "out"],
            "nope/kinfra",
        ),
        (
            vec!["--output", "out"],
            "dist/kinfra-x86_64-unknown-linux-musl",
        ),
        (
            vec!["--binary", kinfra_bin(), "--output", "out"],
            "dynamically linked (program interpreter",
        ),
        (
            vec![
                "--binary",
                bin,
                "--push",
                "127.0.0.1:5/app:v1",
                "--username",
                "ann",
            ],
            "KINFRA_REGISTRY_PASSWORD",
        ),
        (
            vec![
                "--binary",
                bin,
                "--push",
                "registry.example.com/app:v1",
                "--insecure",
            ],
            "only allowed for a registry on this machine",
        ),
        (
            vec!["--binary", bin, "--output", "static"],
            "is not an OCI image layout",
        ),
        (
            vec!["--binary", bin, "--output", "out", "--tag", "v1/x"],
            "--tag `v1/x`",
        ),
    ];
    for (args, needle) in cases {
        let out = build(&p, &args, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: `{needle}` not in {err}");
    }
    std::fs::remove_file(p.path().join("app.sh")).expect("rm app.sh");
    let out = build(&p, &["--binary", bin, "--output", "out"], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("[image] include `app.sh`"), "{err}");
    assert!(err.contains("No such file"), "{err}");
    let left: Vec<String> = std::fs::read_dir(p.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("out"))
        .collect();
    assert!(left.is_empty(), "written: {left:?}");
    assert!(
        p.path().join("static/index.html").is_file(),
        "static/ untouched"
    );
}

// ---------------------------------------------------------------------------------------------
// A real registry.

/// A `docker-registry serve` on 127.0.0.1 with htpasswd auth (user `ann`, password
/// `right-password`) and its storage in a temp dir; killed on drop.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

const USER: &str = "ann";
const PASSWORD: &str = "right-password";

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Registry {
    /// With htpasswd auth (user `ann`).
    fn start() -> Self {
        Self::start_with(None)
    }

    /// With the given `auth:` section (YAML).
    fn start_with_auth(auth: &str) -> Self {
        Self::start_with(Some(auth))
    }

    fn start_with(auth: Option<&str>) -> Self {
        assert!(
            Path::new("/usr/bin/docker-registry").is_file(),
            "no /usr/bin/docker-registry: install docker-registry (`./x test` does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("kinfra-registry-")
            .tempdir()
            .expect("tempdir");
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", USER, PASSWORD])
            .output()
            .expect("htpasswd (Debian package apache2-utils) runs");
        assert!(htpasswd.status.success(), "htpasswd: {}", stderr(&htpasswd));
        std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).expect("htpasswd file");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let auth = auth.map(str::to_owned).unwrap_or_else(|| {
            format!(
                "auth:\n  htpasswd:\n    realm: kinfra-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            )
        });
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\n\
             http:\n  addr: {addr}\n  secret: kinfra-test-secret\n{auth}",
            root = dir.path().join("storage").display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let registry = Self {
            child,
            addr,
            _dir: dir,
        };
        wait_for(Duration::from_secs(30), "the registry answers /v2/", || {
            registry
                .get("/v2/", None)
                .ok()
                .filter(|(s, _, _)| *s == 401)
        });
        registry
    }

    /// GET `path` (with basic auth when `auth`): (status, headers, body).
    fn get(
        &self,
        path: &str,
        auth: Option<(&str, &str)>,
    ) -> std::io::Result<(u16, String, String)> {
        let authorization = auth
            .map(|(u, p)| {
                format!(
                    "Authorization: Basic {}\r\n",
                    base64_text::encode(&format!("{u}:{p}"))
                )
            })
            .unwrap_or_default();
        self.get_with(path, &authorization)
    }

    /// GET `path` with a bearer token: (status, headers, body).
    fn get_bearer(&self, path: &str, token: &str) -> std::io::Result<(u16, String, String)> {
        self.get_with(path, &format!("Authorization: Bearer {token}\r\n"))
    }

    /// GET `path` with the `authorization` header line (or none): (status, headers, body).
    fn get_with(&self, path: &str, authorization: &str) -> std::io::Result<(u16, String, String)> {
        let mut stream = TcpStream::connect(&self.addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\n\
             {authorization}Connection: close\r\n\r\n",
            self.addr
        )?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        Ok((status, head.to_owned(), body.to_owned()))
    }

    /// The status of GET manifest `repo:tag` with the right credentials.
    fn manifest_status(&self, repo: &str, tag: &str) -> (u16, String) {
        let (status, head, _) = self
            .get(
                &format!("/v2/{repo}/manifests/{tag}"),
                Some((USER, PASSWORD)),
            )
            .expect("GET manifest");
        (status, head)
    }
}

/// Base64 for a basic-auth header (the tests' only use; no crate for it).
mod base64_text {
    pub fn encode(text: &str) -> String {
        super::base64_bytes(text.as_bytes())
    }
}

/// Pushes to the htpasswd registry: no credentials and a wrong password fail with a clear
/// error (exit 1, the password never printed) and leave no tag; the right password pushes,
/// the tag names the built digest, and a second push of the same image is the same digest.
#[test]
fn image_push_to_a_registry_with_basic_auth() {
    let registry = Registry::start();
    let p = project();
    let bin = static_busybox();
    let reference = format!("{}/team/imaged:v1", registry.addr);
    let push = |password: Option<&str>| {
        let mut args = vec!["--binary", bin, "--push", reference.as_str(), "--insecure"];
        let mut env = vec![];
        if let Some(password) = password {
            args.extend(["--username", USER]);
            env.push(("KINFRA_REGISTRY_PASSWORD", password));
        }
        build(&p, &args, &env)
    };

    let out = push(None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("registry {} refused", registry.addr)),
        "{err}"
    );

    let out = push(Some("wrong-password"));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "registry {} refused the credentials of user ann",
            registry.addr
        )),
        "{err}"
    );
    assert!(!err.contains("wrong-password") && !stdout(&out).contains("wrong-password"));
    let (status, _) = registry.manifest_status("team/imaged", "v1");
    assert_eq!(status, 404, "a refused push leaves no tag");

    let said = stdout(&push(Some(PASSWORD)));
    assert!(
        said.contains(&format!("pushed {reference} (sha256:")),
        "{said}"
    );
    let (status, head) = registry.manifest_status("team/imaged", "v1");
    assert_eq!(status, 200, "{head}");
    build_ok(&p, &["--binary", bin, "--output", "layout"], &[]);
    let (digest, _, _) = check_layout(&p.path().join("layout"), "latest");
    assert!(said.contains(&digest), "pushed {said}, built {digest}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("docker-content-digest: {digest}")),
        "{head}"
    );
    let again = stdout(&push(Some(PASSWORD)));
    assert!(again.contains(&digest), "{again}");

    // Without --username, docker's config.json entry for the registry is used.
    let docker_config = p.path().join("docker-config");
    std::fs::create_dir_all(&docker_config).expect("mkdir");
    std::fs::write(
        docker_config.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            registry.addr,
            base64_text::encode(&format!("{USER}:{PASSWORD}"))
        ),
    )
    .expect("config.json");
    let other = format!("{}/team/imaged:from-docker-config", registry.addr);
    let out = build(
        &p,
        &["--binary", bin, "--push", &other, "--insecure"],
        &[("DOCKER_CONFIG", docker_config.to_str().expect("utf-8 path"))],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        registry
            .manifest_status("team/imaged", "from-docker-config")
            .0,
        200
    );
}

// ---------------------------------------------------------------------------------------------
// The real Docker engine pulls and runs the image.

/// The dist binary; fails naming `./x dist` when it is missing.
fn dist_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/kinfra-x86_64-unknown-linux-musl");
    assert!(
        path.is_file(),
        "no {}: build it with `./x dist` (`./x test` does)",
        path.display()
    );
    path
}

/// `docker ARGS` with the test's own docker config dir (never the machine's logins).
fn docker(config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new("docker");
    cmd.env("DOCKER_CONFIG", config)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("docker (Debian package docker.io) runs");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).expect("docker stdin");
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(300)) {
        Ok(out) => out.expect("docker output"),
        Err(_) => {
            crate::support::kill(pid, libc::SIGKILL);
            panic!("docker {args:?} did not finish within 300 s");
        }
    }
}

fn docker_ok(config: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = docker(config, args, stdin);
    assert!(out.status.success(), "docker {args:?}: {}", stderr(&out));
    stdout(&out).trim().to_owned()
}

/// Removes the container and the pulled image when the test ends.
struct Cleanup {
    config: PathBuf,
    container: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = docker(&self.config, &["rm", "-f", &self.container], None);
        let _ = docker(&self.config, &["rmi", "-f", &self.image], None);
    }
}

/// The image with the real static kinfra, pushed to the htpasswd registry; `docker login` and
/// `docker pull` from it (127.0.0.0/8 registries are plain-HTTP by default), `docker run`
/// with the ports published on 127.0.0.1 and the dashboard token from the environment: the
/// dashboard's status lists the demo service and the shell-string service (busybox's /bin/sh)
/// running, and the demo service answers through the proxy.
#[test]
fn image_pulled_and_run_by_docker_serves_the_dashboard_and_a_service() {
    let info = Command::new("docker").arg("info").output();
    assert!(
        info.as_ref().is_ok_and(|o| o.status.success()),
        "no Docker engine: install docker.io and start dockerd (`./x test` does)"
    );
    let binary = dist_binary();
    let registry = Registry::start();
    let p = project();
    let reference = format!("{}/team/imaged:run", registry.addr);
    let said = build_ok(
        &p,
        &[
            "--binary",
            binary.to_str().expect("utf-8 path"),
            "--push",
            &reference,
            "--insecure",
            "--username",
            USER,
        ],
        &[("KINFRA_REGISTRY_PASSWORD", PASSWORD)],
    );
    assert!(said.contains("pushed"), "{said}");

    let config = p.path().join(".docker");
    std::fs::create_dir_all(&config).expect("docker config dir");
    let cleanup = Cleanup {
        config: config.clone(),
        container: format!("kinfra-image-run-{}", std::process::id()),
        image: reference.clone(),
    };
    docker_ok(
        &config,
        &[
            "login",
            "--username",
            USER,
            "--password-stdin",
            &registry.addr,
        ],
        Some(PASSWORD),
    );
    docker_ok(&config, &["pull", &reference], None);
    docker_ok(
        &config,
        &[
            "run",
            "-d",
            "--name",
            &cleanup.container,
            "-p",
            "127.0.0.1::9000",
            "-p",
            "127.0.0.1::9100",
            "-e",
            &format!("KINFRA_DASHBOARD__TOKEN={TOKEN}"),
            &reference,
        ],
        None,
    );
    let port_of = |inner: &str| {
        let text = docker_ok(&config, &["port", &cleanup.container, inner], None);
        text.lines()
            .next()
            .map(|l| l.trim().to_owned())
            .unwrap_or_default()
    };
    let dashboard = port_of("9000/tcp");
    let proxy = port_of("9100/tcp");
    let logs = || {
        stdout(&docker(&config, &["logs", &cleanup.container], None))
            + &stderr(&docker(&config, &["logs", &cleanup.container], None))
    };
    let status = wait_for(
        Duration::from_secs(60),
        "hello healthy and shell running",
        || {
            let (code, body) = http_get_as(&dashboard, "/__status__", Some(TOKEN)).ok()?;
            if code != 200 {
                return None;
            }
            let json: Value = serde_json::from_str(&body).ok()?;
            let s = &json["services"];
            (s["hello"]["health"] == "healthy" && s["shell"]["state"] == "running").then_some(json)
        },
    );
    assert_eq!(status["project"], "imaged", "{status}");
    let (code, body) = wait_for(
        Duration::from_secs(30),
        "the demo service through the proxy",
        || {
            crate::support::http_get(&proxy, "/")
                .ok()
                .filter(|(code, _)| *code == 200)
        },
    );
    assert_eq!(code, 200);
    assert!(!body.is_empty(), "{}", logs());
    let log = logs();
    assert!(log.contains("shell says hi"), "{log}");
}

// ---------------------------------------------------------------------------------------------
// Bearer-token auth: the registry in `auth: token:` mode, a token server the test serves.

/// Base64url without padding (JWT).
fn base64url(bytes: &[u8]) -> String {
    let text = base64_bytes(bytes);
    text.trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

fn base64_bytes(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An ECDSA DER signature (SEQUENCE of r and s) as JWS's fixed 64 bytes r || s.
fn der_to_raw(der: &[u8]) -> Vec<u8> {
    let mut at = 2; // SEQUENCE tag and (short) length
    let mut raw = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[at], 0x02, "INTEGER in {der:?}");
        let len = usize::from(der[at + 1]);
        let mut int = &der[at + 2..at + 2 + len];
        while int.len() > 32 && int[0] == 0 {
            int = &int[1..];
        }
        raw.extend(std::iter::repeat_n(0u8, 32 - int.len()));
        raw.extend_from_slice(int);
        at += 2 + len;
    }
    raw
}

/// The token issuer: a P-256 key and its self-signed certificate (openssl), the registry's
/// `rootcertbundle`.
struct Issuer {
    key: PathBuf,
    cert_der: Vec<u8>,
}

const ISSUER: &str = "kinfra-test-issuer";
const SERVICE: &str = "kinfra-test-registry";

impl Issuer {
    fn new(dir: &Path) -> Self {
        let key = dir.join("token.key");
        let cert = dir.join("token.crt");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl (Debian package openssl) runs");
            assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
            out.stdout
        };
        let key_s = key.to_str().expect("utf-8 path");
        let cert_s = cert.to_str().expect("utf-8 path");
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            key_s,
        ]);
        openssl(&[
            "req",
            "-new",
            "-x509",
            "-key",
            key_s,
            "-out",
            cert_s,
            "-days",
            "2",
            "-subj",
            "/CN=kinfra-test-token-issuer",
        ]);
        let cert_der = openssl(&["x509", "-in", cert_s, "-outform", "DER"]);
        Self { key, cert_der }
    }

    /// A registry token for `access` (`[(repository, [actions])]`), ES256-signed with the
    /// certificate in `x5c`.
    fn token(&self, subject: &str, access: &[(String, Vec<String>)]) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64_bytes(&self.cert_der)],
        });
        let access: Vec<Value> = access
            .iter()
            .map(|(name, actions)| {
                serde_json::json!({"type": "repository", "name": name, "actions": actions})
            })
            .collect();
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 600,
            "nbf": now - 60,
            "iat": now - 60,
            "jti": format!("{}-{now}", std::process::id()),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            base64url(header.to_string().as_bytes()),
            base64url(claims.to_string().as_bytes())
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("openssl dgst");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write signing input");
        let out = child.wait_with_output().expect("openssl dgst output");
        assert!(out.status.success(), "openssl dgst failed");
        format!("{input}.{}", base64url(&der_to_raw(&out.stdout)))
    }
}

/// The token endpoint: answers `GET /token?scope=repository:NAME:ACTIONS&service=...` with a
/// token when the basic credentials are `ann`/`right-password`, 401 otherwise. Serves until
/// the test ends (the thread is detached; its listener dies with the test process).
fn serve_tokens(issuer: std::sync::Arc<Issuer>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                }
            }
            let request = String::from_utf8_lossy(&raw).into_owned();
            let target = request.split_whitespace().nth(1).unwrap_or("").to_owned();
            let expected = format!(
                "authorization: basic {}",
                base64_text::encode(&format!("{USER}:{PASSWORD}"))
            )
            .to_ascii_lowercase();
            let authorized = request
                .lines()
                .any(|l| l.trim().to_ascii_lowercase() == expected);
            let scope = target
                .split_once('?')
                .map(|(_, q)| q)
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("scope="))
                .map(|s| {
                    s.replace("%3A", ":")
                        .replace("%3a", ":")
                        .replace("%2C", ",")
                        .replace("%2c", ",")
                        .replace("%2F", "/")
                        .replace("%2f", "/")
                })
                .unwrap_or_default();
            let access: Vec<(String, Vec<String>)> = scope
                .strip_prefix("repository:")
                .and_then(|rest| rest.rsplit_once(':'))
                .map(|(name, actions)| {
                    vec![(
                        name.to_owned(),
                        actions.split(',').map(str::to_owned).collect(),
                    )]
                })
                .unwrap_or_default();
            let (status, body) = if authorized {
                let token = issuer.token(USER, &access);
                (
                    "200 OK",
                    serde_json::json!({"token": token, "access_token": token, "expires_in": 600})
                        .to_string(),
                )
            } else {
                (
                    "401 Unauthorized",
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"wrong user or password"}]}"#
                        .to_owned(),
                )
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// The registry in token mode trusts the issuer's certificate; oci-client follows its
/// `WWW-Authenticate: Bearer realm=...` challenge to the token server with the basic
/// credentials: the right password pushes (the tag names the built digest, read with a token
/// of our own), a wrong one fails with the token server's refusal and leaves no tag.
#[test]
fn image_push_with_bearer_token_auth() {
    let dir = tempfile::Builder::new()
        .prefix("kinfra-token-")
        .tempdir()
        .expect("tempdir");
    let issuer = std::sync::Arc::new(Issuer::new(dir.path()));
    let token_addr = serve_tokens(issuer.clone());
    let auth = format!(
        "auth:\n  token:\n    realm: http://{token_addr}/token\n    service: {SERVICE}\n    \
         issuer: {ISSUER}\n    rootcertbundle: {}\n",
        dir.path().join("token.crt").display()
    );
    let registry = Registry::start_with_auth(&auth);
    let p = project();
    let bin = static_busybox();
    let reference = format!("{}/team/imaged:bearer", registry.addr);
    let push = |password: &str| {
        build(
            &p,
            &[
                "--binary",
                bin,
                "--push",
                &reference,
                "--insecure",
                "--username",
                USER,
            ],
            &[("KINFRA_REGISTRY_PASSWORD", password)],
        )
    };
    let read_token = issuer.token("reader", &[("team/imaged".into(), vec!["pull".into()])]);
    let manifest = || {
        registry
            .get_bearer("/v2/team/imaged/manifests/bearer", &read_token)
            .expect("GET manifest")
    };

    let out = push("wrong-password");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refused the credentials of user ann: the token server said:")
            && err.contains("wrong user or password"),
        "{err}"
    );
    assert!(!err.contains("wrong-password"), "{err}");
    assert_eq!(manifest().0, 404, "a refused push leaves no tag");

    let out = push(PASSWORD);
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    build_ok(&p, &["--binary", bin, "--output", "layout"], &[]);
    let (digest, _, _) = check_layout(&p.path().join("layout"), "latest");
    assert!(stdout(&out).contains(&digest), "{}", stdout(&out));
    let (status, head, _) = manifest();
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("docker-content-digest: {digest}")),
        "{head}"
    );
}

/// A TCP relay in front of the registry that cuts every connection once `limit` bytes went
/// from the client to the registry in all, and refuses later ones: a push interrupted in the
/// middle of a layer's upload.
fn cutting_relay(upstream: String, limit: usize) -> String {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let addr = listener.local_addr().expect("addr").to_string();
    let sent = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            if sent.load(Ordering::SeqCst) >= limit {
                drop(client);
                continue;
            }
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let (mut c_read, mut s_write) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            let (mut s_read, mut c_write) = (server, client);
            let sent = sent.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    let n = match c_read.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if sent.fetch_add(n, Ordering::SeqCst) + n >= limit {
                        break;
                    }
                    if s_write.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = c_read.shutdown(std::net::Shutdown::Both);
                let _ = s_write.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_read, &mut c_write);
                let _ = c_write.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

/// A push cut off in the middle of a layer's upload fails (exit 1, saying the push failed)
/// and leaves no tag: the manifest is only sent once every blob is in.
#[test]
fn image_push_interrupted_leaves_no_tag() {
    let registry = Registry::start();
    let relay = cutting_relay(registry.addr.clone(), 256 * 1024);
    let p = project();
    let reference = format!("{relay}/team/imaged:cut");
    let out = build(
        &p,
        &[
            "--binary",
            static_busybox(),
            "--push",
            &reference,
            "--insecure",
            "--username",
            USER,
        ],
        &[("KINFRA_REGISTRY_PASSWORD", PASSWORD)],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{}{err}", stdout(&out));
    assert!(
        err.contains(&format!("push to {reference} failed")) && err.contains("no tag was set"),
        "{err}"
    );
    let (status, head) = registry.manifest_status("team/imaged", "cut");
    assert_eq!(status, 404, "an interrupted push leaves no tag: {head}");
}

/// `include = ["."]` takes the whole project directory but not the state dir (a runtime that
/// ran there leaves its store, sockets and tokens in it).
#[test]
fn image_include_of_the_project_dir_leaves_the_state_dir_out() {
    let p = Project::with_config(
        "[services.a]\ncommand = [\"/kinfra\"]\n\n[image]\ninclude = [\".\"]\n",
    );
    p.write("index.html", "hi\n");
    std::fs::create_dir_all(p.path().join(".kinfra")).expect("mkdir");
    p.write(".kinfra/dashboard.token", "secret-token\n");
    build_ok(
        &p,
        &["--binary", static_busybox(), "--output", "../layout-of-dot"],
        &[],
    );
    let layout = p.path().join("../layout-of-dot");
    let (_, _, listings) = check_layout(&layout, "latest");
    let _ = std::fs::remove_dir_all(&layout);
    let app = &listings[1];
    assert!(app.contains("app/index.html"), "{app}");
    assert!(!app.contains("dashboard.token"), "{app}");
    assert!(
        !listings[0].contains("bin/sh"),
        "no shell string, no shell: {}",
        listings[0]
    );
}
