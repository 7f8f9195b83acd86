//! kinfra-cloud's integration tests: one binary; every provider talks to a stateful fake
//! through Stoplight Prism, which checks each exchange against the provider's own spec.

#[allow(dead_code)]
#[path = "../../../kinfra-provider/tests/it/fake_http.rs"]
mod fake_http;
#[allow(dead_code)]
#[path = "../support/fault_script.rs"]
mod fault_script;
#[allow(dead_code)]
#[path = "../support/neon_fake.rs"]
mod neon_fake;
#[allow(dead_code)]
#[path = "../support/prism.rs"]
mod prism;

mod fly;
#[allow(dead_code)]
#[path = "../support/fly_fake.rs"]
mod fly_fake;
mod harness;
#[cfg(feature = "kubernetes")]
mod kubernetes;
#[cfg(feature = "kubernetes")]
#[allow(dead_code)]
#[path = "../support/kubernetes_fake.rs"]
mod kubernetes_fake;
mod neon;
mod railway;
#[allow(dead_code)]
#[path = "../support/railway_fake.rs"]
mod railway_fake;
mod render;
#[allow(dead_code)]
#[path = "../support/render_fake.rs"]
mod render_fake;
mod supabase;
#[allow(dead_code)]
#[path = "../support/supabase_fake.rs"]
mod supabase_fake;
mod vercel;
#[allow(dead_code)]
#[path = "../support/vercel_fake.rs"]
mod vercel_fake;
