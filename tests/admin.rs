//! The admin API client against the loopback stub: the runbook's contract,
//! retries, timeouts and what errors say.

use std::time::{Duration, Instant};

use imprint::admin::{self, AdminClient, AdminConfig, AdminError, Provisioned};
use imprint::identity::Password;
use imprint::stub::{Fault, StubServer};

const EMAIL: &str = "azaion-jetson-0042@azaion.com";

fn config(url: &str) -> AdminConfig {
    let mut c = AdminConfig::new(url);
    c.backoff = Duration::from_millis(10);
    c.timeout = Duration::from_secs(2);
    c.connect_timeout = Duration::from_secs(2);
    c
}

fn password() -> Password {
    Password::from_plain("0123456789abcdef0123456789abcdef")
}

fn steps(server: &StubServer) -> Vec<String> {
    server
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

#[test]
fn create_then_update_and_trailing_slash() {
    let server = StubServer::start().unwrap();
    let client = AdminClient::new(config(&format!("{}/", server.url()))).unwrap();
    assert_eq!(
        client.provision(EMAIL, &password()).unwrap(),
        Provisioned::Created
    );
    let other = Password::from_plain("another-password-for-the-device");
    assert_eq!(
        client.provision(EMAIL, &other).unwrap(),
        Provisioned::PasswordUpdated
    );
    assert_eq!(server.password_of(EMAIL).as_deref(), Some(other.expose()));
    assert_eq!(
        steps(&server),
        ["POST /users", "POST /users", "PATCH /users/password"]
    );
    let body = &server.requests()[0].body;
    assert_eq!(body["role"], "CompanionPC");
    assert_eq!(body["email"], EMAIL);
    admin::login(&config(&server.url()), EMAIL, &other).unwrap();
    assert!(admin::login(&config(&server.url()), EMAIL, &password()).is_err());
}

#[test]
fn retries_5xx_and_429_with_backoff_then_succeeds() {
    let server = StubServer::start().unwrap();
    server.push_fault("POST", "/users", Fault::Status(503));
    server.push_fault("POST", "/users", Fault::Status(429));
    server.push_fault("POST", "/users", Fault::Status(500));
    let client = AdminClient::new(config(&server.url())).unwrap();
    assert_eq!(
        client.provision(EMAIL, &password()).unwrap(),
        Provisioned::Created
    );
    assert_eq!(steps(&server).len(), 4);
}

#[test]
fn gives_up_after_the_retry_budget() {
    let server = StubServer::start().unwrap();
    for _ in 0..5 {
        server.push_fault("POST", "/users", Fault::Status(502));
    }
    let mut c = config(&server.url());
    c.retries = 2;
    let err = AdminClient::new(c)
        .unwrap()
        .provision(EMAIL, &password())
        .unwrap_err();
    assert_eq!(steps(&server).len(), 3, "one try and two retries");
    let text = err.to_string();
    assert!(text.contains("502") && text.contains("/users"), "{text}");
    assert_eq!(server.user_count(), 0);
}

#[test]
fn other_4xx_are_not_retried_and_name_the_step() {
    let server = StubServer::start().unwrap();
    server.push_fault("POST", "/users", Fault::Status(403));
    let err = AdminClient::new(config(&server.url()))
        .unwrap()
        .provision(EMAIL, &password())
        .unwrap_err();
    assert!(
        matches!(err, AdminError::Status { status: 403, .. }),
        "{err:?}"
    );
    assert_eq!(steps(&server), ["POST /users"]);
    assert!(!err.to_string().contains(password().expose()));

    // 409, then a failing PATCH: the error names the PATCH step.
    let server = StubServer::start().unwrap();
    let client = AdminClient::new(config(&server.url())).unwrap();
    client.provision(EMAIL, &password()).unwrap();
    server.push_fault("PATCH", "/users/password", Fault::Status(400));
    let err = client
        .provision(EMAIL, &password())
        .unwrap_err()
        .to_string();
    assert!(err.contains("PATCH") && err.contains("400"), "{err}");
}

#[test]
fn unreachable_and_slow_servers_fail_in_bounded_time() {
    // A port nobody listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = config(&format!("http://127.0.0.1:{port}"));
    c.retries = 1;
    let err = AdminClient::new(c)
        .unwrap()
        .provision(EMAIL, &password())
        .unwrap_err();
    assert!(
        matches!(err, AdminError::Unreachable { attempts: 2, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("Check the URL"), "{err}");

    let server = StubServer::start().unwrap();
    server.push_fault("POST", "/users", Fault::Delay(Duration::from_secs(3)));
    let mut c = config(&server.url());
    c.timeout = Duration::from_millis(300);
    c.retries = 0;
    let started = Instant::now();
    let err = AdminClient::new(c)
        .unwrap()
        .provision(EMAIL, &password())
        .unwrap_err();
    assert!(matches!(err, AdminError::Unreachable { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the read timeout applies"
    );

    // A dropped connection is retried like any transport error.
    let server = StubServer::start().unwrap();
    server.push_fault("POST", "/users", Fault::CloseConnection);
    let client = AdminClient::new(config(&server.url())).unwrap();
    assert_eq!(
        client.provision(EMAIL, &password()).unwrap(),
        Provisioned::Created
    );
}

#[test]
fn bad_urls_are_refused_before_any_request() {
    for url in [
        "ftp://admin.example",
        "admin.example",
        "http://user:secret@admin.example",
        "",
    ] {
        let err = AdminClient::new(config(url)).err();
        assert!(
            matches!(err, Some(AdminError::BadUrl { .. })),
            "{url}: {err:?}"
        );
    }
}

#[test]
fn bearer_token_is_sent() {
    let server = StubServer::start().unwrap();
    server.require_token(Some("tok-123".into()));
    let mut c = config(&server.url());
    c.token = Some(zeroize::Zeroizing::new("tok-123".to_string()));
    AdminClient::new(c)
        .unwrap()
        .provision(EMAIL, &password())
        .unwrap();
    assert_eq!(
        server.requests()[0].authorization.as_deref(),
        Some("Bearer tok-123")
    );
}
