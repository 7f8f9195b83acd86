//! kinfra-tunnel's integration tests: one binary. The Cloudflare API through Stoplight Prism
//! (`prism proxy --errors`, Cloudflare's own spec in `specs/cloudflare/`) in front of a
//! stateful fake; the generated cloudflared configs against cloudflared's documented rules.

#[allow(dead_code)]
#[path = "../../../kinfra-provider/tests/it/fake_http.rs"]
mod fake_http;
#[allow(dead_code)]
#[path = "../../../kinfra-cloud/tests/support/prism.rs"]
mod prism;

mod cloudflare;
#[allow(dead_code)]
#[path = "../support/cloudflare_fake.rs"]
mod cloudflare_fake;
mod ingress;
