//! `kinfra plan` through the binary: a `command` provider resource whose status command says
//! stopped plans `resume` with its dry-run start call (and nothing runs: the state file its
//! start would create stays absent); once the state file exists it plans `noop`; services and
//! containers are listed as local; a config with a refused key exits 2.

use crate::support::{Project, stderr, stdout};

fn config(extra: &str) -> String {
    format!(
        "[project]\nname = \"pl\"\n\
         [providers.sh]\nprovider = \"command\"\n\
         [resources.flag]\nprovider = \"sh\"\non_down = \"pause\"\n\
         start = \"touch flag.state\"\nstop = \"rm -f flag.state\"\nstatus = \"test -f flag.state\"\n\
         [services.app]\ncommand = \"exec sleep 1000\"\n\
         {extra}"
    )
}

fn entry(plan: &serde_json::Value, name: &str) -> serde_json::Value {
    plan["resources"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in the plan: {plan}"))
}

#[test]
fn plan_reads_status_and_dry_runs_start_without_changing_anything() {
    let p = Project::with_config(&config(""));

    let out = p.run(&["plan", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON plan");
    let flag = entry(&plan, "flag");
    assert_eq!(flag["kind"], "command", "{flag}");
    assert_eq!(flag["action"], "resume", "{flag}");
    assert_eq!(flag["on_down"], "pause", "{flag}");
    assert_eq!(flag["calls"][0]["method"], "EXEC", "{flag}");
    assert_eq!(flag["calls"][0]["url"], "touch flag.state", "{flag}");
    let app = entry(&plan, "app");
    assert_eq!(app["kind"], "process", "{app}");
    assert_eq!(app["action"], "local", "{app}");
    assert!(app["calls"].as_array().is_some_and(Vec::is_empty), "{app}");
    assert!(
        !p.path().join("flag.state").exists(),
        "plan ran the start command"
    );

    let out = p.run(&["plan"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.lines().any(|l| l.starts_with("flag")
            && l.contains("resume")
            && l.contains("EXEC touch flag.state")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("app") && l.contains("not planned (local)")),
        "{text}"
    );
    assert!(!p.path().join("flag.state").exists());

    p.write("flag.state", "");
    let out = p.run(&["plan", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON plan");
    let flag = entry(&plan, "flag");
    assert_eq!(flag["action"], "noop", "{flag}");
    assert!(
        flag["calls"].as_array().is_some_and(Vec::is_empty),
        "{flag}"
    );
}

#[test]
fn plan_shows_a_status_error_per_resource_and_exits_2_on_a_bad_config() {
    // A status command that fails with a pattern set is an error, not a state.
    let p = Project::with_config(
        "[project]\nname = \"pe\"\n[providers.sh]\nprovider = \"command\"\n\
         [resources.cloud]\nprovider = \"sh\"\n\
         start = \"true\"\nstatus = \"exit 7\"\nstatus_running = \"^ACTIVE$\"\n",
    );
    let out = p.run(&["plan", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON plan");
    let cloud = entry(&plan, "cloud");
    assert_eq!(cloud["action"], "unknown", "{cloud}");
    assert!(
        cloud["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("unknown: ")),
        "{cloud}"
    );

    let p = Project::with_config(&config("").replace("status = ", "stauts = "));
    let out = p.run(&["plan"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("status"), "{}", stderr(&out));
}

/// A fake API on 127.0.0.1 that answers every request with `body` and records the request
/// lines it got, each followed by ` | ` and its `Authorization` header (empty without one).
fn fake_api(body: &'static str) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            // Read the headers (the GET has no body).
            let mut auth = String::new();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                    break;
                }
                if let Some((name, value)) = header.split_once(':')
                    && name.eq_ignore_ascii_case("authorization")
                {
                    auth = value.trim().to_owned();
                }
            }
            log.lock()
                .expect("lock")
                .push(format!("{} | {auth}", line.trim()));
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, seen)
}

#[test]
fn an_http_api_resource_plans_its_start_endpoint_without_sending_it() {
    let (addr, seen) = fake_api("{\"project\":{\"status\":\"SUSPENDED\"}}");
    let p = Project::with_config(&format!(
        "[project]\nname = \"ph\"\n[providers.api]\nprovider = \"http-api\"\n\
         base_url = \"http://{addr}/v1\"\ntoken = \"tok-plan-secret\"\n\
         [resources.db]\nprovider = \"api\"\nproject_id = \"p1\"\n\
         status = {{ method = \"GET\", path = \"/projects/{{project_id}}\" }}\n\
         start = {{ method = \"POST\", path = \"/projects/{{project_id}}/start\" }}\n\
         state_pointer = \"/project/status\"\n\
         state_map = {{ ACTIVE = \"running\", SUSPENDED = \"stopped\" }}\n"
    ));
    let out = p.run(&["plan", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let plan: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON plan");
    let db = entry(&plan, "db");
    assert_eq!(db["kind"], "http-api", "{db}");
    assert_eq!(db["action"], "resume", "{db}");
    // The start endpoint rendered as the resource would send it (token masked), not sent.
    let call = &db["calls"][0];
    assert_eq!(call["method"], "POST", "{db}");
    assert_eq!(
        call["url"],
        format!("http://{addr}/v1/projects/p1/start"),
        "{db}"
    );
    assert_eq!(
        call["headers"],
        serde_json::json!([["Authorization", "****"]]),
        "{db}"
    );
    let requests = seen.lock().expect("lock").clone();
    assert!(
        !requests.is_empty() && requests.iter().all(|r| r.starts_with("GET ")),
        "only status reads were sent: {requests:?}"
    );
    assert!(!stdout(&out).contains("tok-plan-secret"));
}

/// `${VAR}` in a provider instance (token, base_url) and in a provider resource's keys is
/// filled in from kinfra's environment, as DESIGN's `token = "${NEON_API_KEY}"` shows; an
/// unset variable is an input error naming the key (not a literal `${...}` sent as the token).
#[test]
fn provider_tokens_urls_and_keys_take_environment_variables() {
    let (addr, seen) = fake_api("{\"project\":{\"status\":\"ACTIVE\"}}");
    let p = Project::with_config(
        "[project]\nname = \"penv\"\n[providers.api]\nprovider = \"http-api\"\n\
         base_url = \"http://${PENV_API}/v1\"\ntoken = \"${PENV_TOKEN}\"\n\
         [resources.db]\nprovider = \"api\"\nproject_id = \"${PENV_PROJECT:-p1}\"\n\
         status = { method = \"GET\", path = \"/projects/{project_id}\" }\n\
         state_pointer = \"/project/status\"\n\
         state_map = { ACTIVE = \"running\" }\n",
    );
    let env = [
        ("PENV_API", addr.as_str()),
        ("PENV_TOKEN", "tok-from-env"),
        ("PENV_PROJECT", "p7"),
    ];
    let out = p.run_env(&["plan", "--json"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let requests = seen.lock().expect("lock").clone();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("GET /v1/projects/p7 ") && r.ends_with("| Bearer tok-from-env")),
        "the status read used the variables' values: {requests:?}"
    );

    let out = p.run_env(&["config", "check"], &env[..2]);
    assert!(
        out.status.success(),
        "the default fills PENV_PROJECT: {}",
        stderr(&out)
    );
    let out = p.run_env(&["config", "check"], &env[1..]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("providers.api.base_url") && err.contains("PENV_API"),
        "{err}"
    );
}
