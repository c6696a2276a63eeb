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

/// TLS certificates are always checked: an unknown issuer is refused, and
/// the only way to trust a private CA is `--ca-cert` (there is no flag that
/// turns checking off).
#[test]
fn tls_checks_cannot_be_turned_off() {
    let dir = tempfile::TempDir::new().unwrap();
    let d = dir.path();
    let (ca, cert, key) = (d.join("ca.pem"), d.join("cert.pem"), d.join("key.pem"));
    // A private CA and a server certificate for 127.0.0.1 signed by it.
    let made = std::process::Command::new("sh")
        .current_dir(d)
        .arg("-ec")
        .arg(
            "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=test-ca \\
               -keyout ca.key -out ca.pem 2>/dev/null
             openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \\
               -keyout key.pem -out leaf.csr 2>/dev/null
             printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > leaf.ext
             openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial \\
               -days 1 -extfile leaf.ext -out cert.pem 2>/dev/null",
        )
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A TLS server with a self-signed certificate; it answers like a web
    // server, not like the admin API, which is all this test needs.
    let mut server = std::process::Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("https://127.0.0.1:{port}");
    let mut cfg = config(&url);
    cfg.retries = 0;
    let untrusted = AdminClient::new(cfg.clone())
        .unwrap()
        .provision(EMAIL, &password())
        .unwrap_err();
    let text = format!("{untrusted:#}").to_lowercase();
    assert!(
        matches!(untrusted, AdminError::Untrusted { .. }),
        "not reported as an untrusted certificate: {text}"
    );
    cfg.ca_cert = Some(ca.clone());
    let trusted = AdminClient::new(cfg).unwrap().provision(EMAIL, &password());
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        text.contains("certificate"),
        "untrusted server accepted: {text}"
    );
    // With the CA the handshake succeeds; what follows is the web server's
    // answer, not a certificate error.
    if let Err(e) = trusted {
        let text = format!("{e:#}").to_lowercase();
        assert!(
            !text.contains("certificate"),
            "--ca-cert not honoured: {text}"
        );
    }
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_imprint"))
        .args(["provision", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_lowercase();
    assert!(help.contains("--ca-cert"));
    for off_switch in [
        "insecure",
        "no-verify",
        "skip-verify",
        "accept-invalid",
        "danger",
    ] {
        assert!(!help.contains(off_switch), "a TLS off switch: {off_switch}");
    }
}

#[test]
fn debug_output_never_shows_the_token() {
    let mut cfg = config("https://admin.example");
    cfg.token = Some(zeroize::Zeroizing::new("tok-51c0ffee9d2b".to_string()));
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("tok-51c0ffee9d2b"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}
