//! The spec-checking harness itself: Prism passes what the spec allows and the relay records
//! what it does not, so the provider tests' `assert_clean` can fail.

use crate::fake_http::Reply;
use crate::neon_fake::{TOKEN, neon};

async fn get(url: &str, token: &str) -> (u16, String) {
    let answer = reqwest::Client::new()
        .get(url)
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .expect("the relay answers");
    let status = answer.status().as_u16();
    (status, answer.text().await.unwrap_or_default())
}

#[tokio::test]
async fn prism_passes_spec_answers_and_the_relay_records_violations() {
    let (prism, fake) = neon();
    let (project, endpoint, _) = fake.project("harness", "idle");
    let (status, body) = get(
        &format!("{}/projects/{project}/endpoints/{endpoint}", prism.url),
        TOKEN,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"current_state\":\"idle\""), "{body}");
    prism.assert_clean(&project);

    // An answer of the wrong shape (no `endpoint`) is a response violation.
    fake.inject(
        &project,
        "GET /projects",
        Reply::json(200, r#"{"nope":1}"#),
        1,
    );
    let (status, _) = get(
        &format!("{}/projects/{project}/endpoints/{endpoint}", prism.url),
        TOKEN,
    )
    .await;
    assert_eq!(status, 500);
    // A request without the required query parameters never reaches the fake.
    let before = fake.requests(&project).len();
    let (status, _) = get(
        &format!("{}/projects/{project}/connection_uri", prism.url),
        TOKEN,
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(fake.requests(&project).len(), before);
    let violations = prism.violations(&project);
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(
        violations[0]
            .violation
            .as_deref()
            .is_some_and(|v| v.contains("endpoint")),
        "{violations:?}"
    );
    let result = std::panic::catch_unwind(|| prism.assert_clean(&project));
    assert!(result.is_err(), "assert_clean must fail on a violation");
}

#[tokio::test]
async fn the_fake_checks_the_token_itself() {
    let (prism, fake) = neon();
    let (project, endpoint, _) = fake.project("token", "idle");
    let (status, body) = get(
        &format!("{}/projects/{project}/endpoints/{endpoint}", prism.url),
        "wrong-token",
    )
    .await;
    assert_eq!(status, 401, "{body}");
    prism.assert_clean(&project);
}
