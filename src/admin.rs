//! Client for the admin API's provisioning contract (see the runbook):
//! POST /users, and on 409 PATCH /users/password; and the Loader's /login.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::identity::Password;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error("invalid API URL {url:?}: {why}")]
    BadUrl { url: String, why: &'static str },
    #[error("cannot use {what} {path}: {why}")]
    Tls {
        what: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    #[error("the API token holds a line break or other control or non-ASCII characters; a token is one line of printable ASCII. Check the token file or IMPRINT_API_TOKEN")]
    BadToken,
    #[error("{url} is plain http, which would send the API token and the device's password unencrypted; use https, or pass --allow-http on a network you trust")]
    PlainHttp { url: String },
    #[error("{step} {url} failed after {attempts} attempt(s): {cause}. Check the URL, the network and that the API is up")]
    Unreachable {
        step: &'static str,
        url: String,
        attempts: u32,
        cause: String,
    },
    #[error("{step} {url}: the server's TLS certificate is not trusted ({cause}). If the API uses a private CA, pass its certificate with --ca-cert; certificate checks cannot be turned off")]
    Untrusted {
        step: &'static str,
        url: String,
        cause: String,
    },
    #[error("the account {email} already exists (POST /users answered 409) and --no-rotate forbids giving it a new password: no earlier output of this device holds its current one. Rebuild from the previous run's outputs (--skip-existing over the directory that holds them), give the device's password with --password-file, or leave out --no-rotate to rotate it on purpose (every device flashed with the old password stops logging in)")]
    Exists { email: String },
    #[error("{step} answered {status}: {message}")]
    Status {
        step: &'static str,
        status: u16,
        message: String,
    },
}

/// How to reach and authenticate to the admin API. Its `Debug` shows
/// whether there is a token, never the token.
#[derive(Clone)]
pub struct AdminConfig {
    /// Base URL, e.g. `https://admin.example`; one trailing slash is stripped.
    pub base_url: String,
    /// Bearer token (from a file or IMPRINT_API_TOKEN; never a flag value).
    pub token: Option<Zeroizing<String>>,
    /// Extra PEM CA certificate to trust.
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate and key for mTLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// Attempts after the first one, on connection errors, 429 and 5xx.
    pub retries: u32,
    /// Delay before the first retry; doubles each time.
    pub backoff: Duration,
    /// Send the token over plain http (refused unless set).
    pub allow_http: bool,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("base_url", &self.base_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_cert", &self.ca_cert)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

impl AdminConfig {
    /// Defaults: 10 s to connect, 30 s a request, 3 retries from 500 ms.
    pub fn new(base_url: &str) -> AdminConfig {
        AdminConfig {
            base_url: base_url.to_string(),
            token: None,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            retries: 3,
            backoff: Duration::from_millis(500),
            allow_http: false,
        }
    }
}

/// A token must be one line of visible ASCII: anything else cannot be sent
/// as a header, and is refused before any image is written.
fn check_token(token: &str) -> Result<(), AdminError> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(AdminError::BadToken);
    }
    Ok(())
}

/// What the provisioning call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Provisioned {
    /// POST /users answered 200 or 201.
    Created,
    /// POST /users answered 409 and PATCH /users/password succeeded.
    PasswordUpdated,
    /// POST /users answered 409 and the account kept its password
    /// ([`OnConflict::Keep`]).
    Existing,
}

/// What to do when POST /users answers 409: the account exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnConflict {
    /// PATCH /users/password to this password, as the runbook does.
    #[default]
    SetPassword,
    /// Send nothing more: the account has this password already (it is
    /// the one an earlier output carries, set when that output was made).
    Keep,
    /// Fail with [`AdminError::Exists`] and send nothing more: the
    /// password is a new one, and setting it would lock out every device
    /// that carries the account's current one (`--no-rotate`).
    Refuse,
}

pub struct AdminClient {
    http: Client,
    base: String,
    config: AdminConfig,
}

fn check_url(url: &str) -> Result<String, AdminError> {
    let bad = |why| AdminError::BadUrl {
        url: url.to_string(),
        why,
    };
    let parsed = reqwest::Url::parse(url)
        .map_err(|_| bad("expected http://HOST[:PORT][/PATH] or https://..."))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Never echo the URL back: it holds a credential.
        return Err(AdminError::BadUrl {
            url: format!(
                "{}://<redacted>@{}",
                parsed.scheme(),
                parsed.host_str().unwrap_or("")
            ),
            why: "credentials in the URL are refused; use --api-token-file or IMPRINT_API_TOKEN",
        });
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    Ok(url.strip_suffix('/').unwrap_or(url).to_string())
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, AdminError> {
    std::fs::read(path).map_err(|e| AdminError::Tls {
        what,
        path: path.to_path_buf(),
        why: e.to_string(),
    })
}

fn build_client(config: &AdminConfig) -> Result<Client, AdminError> {
    let mut builder = Client::builder()
        .connect_timeout(config.connect_timeout)
        .timeout(config.timeout)
        .use_rustls_tls()
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &config.ca_cert {
        let pem = read_pem("CA certificate", path)?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| AdminError::Tls {
            what: "CA certificate",
            path: path.clone(),
            why: e.to_string(),
        })?;
        if certs.is_empty() {
            return Err(AdminError::Tls {
                what: "CA certificate",
                path: path.clone(),
                why: "no PEM certificate in it".into(),
            });
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    if let (Some(cert), Some(key)) = (&config.client_cert, &config.client_key) {
        let mut pem = read_pem("client certificate", cert)?;
        pem.push(b'\n');
        pem.extend(Zeroizing::new(read_pem("client key", key)?).iter());
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| AdminError::Tls {
            what: "client certificate and key",
            path: cert.clone(),
            why: e.to_string(),
        });
        zeroize::Zeroize::zeroize(&mut pem);
        builder = builder.identity(identity?);
    }
    builder
        .build()
        .map_err(|e| AdminError::Client(e.to_string()))
}

/// How much of an error answer is read: enough for any message a person
/// would write, and a server cannot make imprint hold more.
const MAX_ERROR_BODY: u64 = 4096;
/// How much of it is shown.
const MAX_MESSAGE_CHARS: usize = 200;

/// The server's message: at most [`MAX_ERROR_BODY`] bytes read, every
/// secret scrubbed out (in case the server echoes the request or its
/// headers back), then shortened. Scrubbing comes before shortening, so a
/// secret cut in half by the limit cannot leave its first half behind.
fn server_message(resp: Response, secrets: &[&str]) -> String {
    use std::io::Read;
    let mut raw = Zeroizing::new(Vec::new());
    let _ = resp.take(MAX_ERROR_BODY).read_to_end(&mut raw);
    let text = Zeroizing::new(String::from_utf8_lossy(&raw).into_owned());
    let scrubbed = scrub_secrets(text.trim(), secrets);
    let mut msg: String = scrubbed.chars().take(MAX_MESSAGE_CHARS).collect();
    if scrubbed.chars().count() > MAX_MESSAGE_CHARS || raw.len() as u64 == MAX_ERROR_BODY {
        msg.push('…');
    }
    if msg.is_empty() {
        "(no message)".into()
    } else {
        msg
    }
}

/// `text` with each secret, in any letter case and in its base64 and URL
/// encodings, replaced by `<redacted>`.
fn scrub_secrets(text: &str, secrets: &[&str]) -> String {
    use base64::Engine as _;
    let mut forms: Vec<String> = Vec::new();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        forms.push(secret.to_string());
        forms.push(base64::engine::general_purpose::STANDARD.encode(secret));
        forms.push(base64::engine::general_purpose::STANDARD_NO_PAD.encode(secret));
        forms.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret));
        forms.push(url_encode(secret));
    }
    // Longest first, so a form that contains another is replaced whole.
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms.dedup();
    let mut out = text.to_string();
    for form in &forms {
        out = replace_ignoring_case(&out, form);
    }
    zeroize::Zeroize::zeroize(&mut forms);
    out
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Replaces every ASCII-case-insensitive occurrence of `needle`.
fn replace_ignoring_case(haystack: &str, needle: &str) -> String {
    let (hay, pat) = (haystack.as_bytes(), needle.as_bytes());
    if pat.is_empty() || pat.len() > hay.len() {
        return haystack.to_string();
    }
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay.len() - i >= pat.len() && hay[i..i + pat.len()].eq_ignore_ascii_case(pat) {
            out.extend_from_slice(b"<redacted>");
            i += pat.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON request body built in a buffer that is wiped when the request is
/// done with it (the password is in it).
fn json_body(fields: &[(&str, &str)]) -> Zeroizing<Vec<u8>> {
    let mut body = Zeroizing::new(Vec::with_capacity(256));
    body.push(b'{');
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        serde_json::to_writer(&mut *body, key).expect("writing to memory");
        body.push(b':');
        serde_json::to_writer(&mut *body, value).expect("writing to memory");
    }
    body.push(b'}');
    body
}

/// Hands the request body to the HTTP library as a reader over a wiping
/// buffer, so imprint keeps no unwiped copy of it.
struct WipingBody(std::io::Cursor<Zeroizing<Vec<u8>>>);

impl std::io::Read for WipingBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl AdminClient {
    /// A client for the admin API `config` names. Nothing is sent yet; a
    /// token is never sent over plain `http://` to another machine unless
    /// `allow_http` says so.
    ///
    /// ```
    /// use imprint::admin::{AdminClient, AdminConfig, AdminError};
    ///
    /// let mut config = AdminConfig::new("http://admin.example");
    /// config.token = Some(String::from("t0ken").into());
    /// assert!(matches!(AdminClient::new(config), Err(AdminError::PlainHttp { .. })));
    ///
    /// let mut config = AdminConfig::new("https://admin.example");
    /// config.retries = 5;
    /// let client = AdminClient::new(config).unwrap();
    /// # let _ = client;
    /// ```
    ///
    /// `imprint::stub` (feature `demo`) has an example against a stand-in
    /// API on 127.0.0.1.
    pub fn new(config: AdminConfig) -> Result<AdminClient, AdminError> {
        let base = check_url(&config.base_url)?;
        if let Some(token) = &config.token {
            check_token(token)?;
            if is_plain_http(&base) && !is_loopback(&base) && !config.allow_http {
                return Err(AdminError::PlainHttp { url: base });
            }
        }
        Ok(AdminClient {
            http: build_client(&config)?,
            base,
            config,
        })
    }

    /// What an answer must never show: the password and the token.
    fn secrets<'a>(&'a self, password: &'a Password) -> Vec<&'a str> {
        let mut secrets = vec![password.expose()];
        secrets.extend(self.config.token.as_deref().map(String::as_str));
        secrets
    }

    /// Sends one request with bounded retries on connection errors,
    /// timeouts, 429 and 5xx. Retrying a POST is safe: a repeat answers 409.
    fn send(
        &self,
        step: &'static str,
        method: reqwest::Method,
        path: &str,
        body: &[u8],
    ) -> Result<Response, AdminError> {
        let url = format!("{}{path}", self.base);
        let mut delay = self.config.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let copy = Zeroizing::new(body.to_vec());
            let len = copy.len() as u64;
            let reader = WipingBody(std::io::Cursor::new(copy));
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(reqwest::blocking::Body::sized(reader, len));
            if let Some(token) = &self.config.token {
                req = req.bearer_auth(token.as_str());
            }
            let last = attempt > self.config.retries;
            tracing::debug!(step, attempt, "sending");
            match req.send() {
                Ok(resp) => {
                    let s = resp.status();
                    let retryable = s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error();
                    if !retryable || last {
                        return Ok(resp);
                    }
                    tracing::info!(step, attempt, status = s.as_u16(), ?delay, "retrying");
                }
                // Retrying cannot make a certificate trusted.
                Err(e) if certificate_problem(&e).is_some() => {
                    return Err(AdminError::Untrusted {
                        step,
                        url,
                        cause: certificate_problem(&e).unwrap_or_default(),
                    })
                }
                Err(e) if last => {
                    return Err(AdminError::Unreachable {
                        step,
                        url,
                        attempts: attempt,
                        cause: describe_transport(&e),
                    })
                }
                Err(e) => {
                    tracing::info!(step, attempt, cause = %describe_transport(&e), ?delay, "retrying");
                }
            }
            std::thread::sleep(delay);
            delay = delay.saturating_mul(2);
        }
    }

    /// Creates the account or, if it exists, sets its password.
    pub fn provision(&self, email: &str, password: &Password) -> Result<Provisioned, AdminError> {
        self.provision_with(email, password, OnConflict::SetPassword)
    }

    /// Creates the account; if it exists, does what `on_conflict` says.
    pub fn provision_with(
        &self,
        email: &str,
        password: &Password,
        on_conflict: OnConflict,
    ) -> Result<Provisioned, AdminError> {
        let body = json_body(&[
            ("email", email),
            ("password", password.expose()),
            ("role", "CompanionPC"),
        ]);
        let resp = self.send("POST /users", reqwest::Method::POST, "/users", &body)?;
        match resp.status().as_u16() {
            200 | 201 => return Ok(Provisioned::Created),
            409 if on_conflict == OnConflict::Refuse => {
                return Err(AdminError::Exists {
                    email: email.to_string(),
                })
            }
            409 if on_conflict == OnConflict::Keep => return Ok(Provisioned::Existing),
            409 => {}
            status => {
                return Err(AdminError::Status {
                    step: "POST /users",
                    status,
                    message: server_message(resp, &self.secrets(password)),
                })
            }
        }
        let body = json_body(&[("email", email), ("password", password.expose())]);
        let step = "PATCH /users/password";
        let resp = self.send(step, reqwest::Method::PATCH, "/users/password", &body)?;
        match resp.status().as_u16() {
            200 | 204 => Ok(Provisioned::PasswordUpdated),
            status => Err(AdminError::Status {
                step,
                status,
                message: server_message(resp, &self.secrets(password)),
            }),
        }
    }
}

/// The TLS library's complaint about the server's certificate, if that is
/// why the request failed. Found by type, not by wording: rustls's error
/// sits in the chain inside an `io::Error`, whose `source()` skips it, so
/// each `io::Error` is opened with `get_ref`.
fn certificate_problem(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut src = Some(e);
    while let Some(inner) = src {
        let tls = inner.downcast_ref::<rustls::Error>().or_else(|| {
            inner
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|e| e.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls.filter(|t| is_certificate_error(t)) {
            return Some(tls.to_string());
        }
        src = inner.source();
    }
    None
}

/// Whether rustls refused the server's certificate (as opposed to a
/// protocol or I/O failure, which retrying might cure).
fn is_certificate_error(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::InvalidCertRevocationList(_)
    )
}

fn describe_transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        // reqwest errors name the URL, never the body.
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            s = format!("{s}: {inner}");
            src = inner.source();
        }
        s
    }
}

/// POST `{config.base_url}/login` with the device's credentials; Ok when
/// the answer is 2xx. The Loader gets no credential but the device's: the
/// admin API's token and client certificate are not sent to it.
pub fn login(config: &AdminConfig, email: &str, password: &Password) -> Result<(), AdminError> {
    let mut config = config.clone();
    config.token = None;
    config.client_cert = None;
    config.client_key = None;
    config.allow_http = true;
    let client = AdminClient::new(config)?;
    let body = json_body(&[("email", email), ("password", password.expose())]);
    let resp = client.send("POST /login", reqwest::Method::POST, "/login", &body)?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(AdminError::Status {
            step: "POST /login",
            status: resp.status().as_u16(),
            message: server_message(resp, &client.secrets(password)),
        })
    }
}

/// True when the URL's host is this machine (127.0.0.0/8, ::1,
/// localhost): plain http there never crosses a network.
pub(crate) fn is_loopback(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    let host = parsed.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// True for a plain-http URL (credentials would cross the network in clear).
pub(crate) fn is_plain_http(url: &str) -> bool {
    url.get(..7)
        .is_some_and(|s| s.eq_ignore_ascii_case("http://"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transport error as reqwest chains it: a wrapper whose source is
    /// an `io::Error` holding the TLS library's error.
    #[derive(Debug, thiserror::Error)]
    #[error("error sending request")]
    struct Wrapped(#[source] std::io::Error);

    fn chained(tls: rustls::Error) -> Wrapped {
        Wrapped(std::io::Error::new(std::io::ErrorKind::InvalidData, tls))
    }

    #[test]
    fn an_untrusted_certificate_is_told_by_its_type_not_its_wording() {
        let untrusted = chained(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert_eq!(
            certificate_problem(&untrusted).as_deref(),
            Some("invalid peer certificate: UnknownIssuer")
        );
        // Wording about certificates in another failure is not a refused
        // certificate: that one is retried and reported as unreachable.
        let other = chained(rustls::Error::General(
            "the certificate store is busy".into(),
        ));
        assert_eq!(certificate_problem(&other), None);
        let plain = Wrapped(std::io::Error::other("certificate"));
        assert_eq!(certificate_problem(&plain), None);
    }

    #[test]
    fn scrubs_every_form_of_each_secret_before_cutting() {
        use base64::Engine as _;
        let password = "0123456789abcdef0123456789abcdef";
        let token = "tok-3n5/x+y=z";
        let echoes = [
            format!("{}{password}", "x".repeat(180)),
            password.to_uppercase(),
            base64::engine::general_purpose::STANDARD.encode(password),
            format!("Authorization: Bearer {token}"),
            url_encode(token),
            base64::engine::general_purpose::STANDARD.encode(token),
        ];
        for echo in echoes {
            let out = scrub_secrets(&echo, &[password, token]);
            let cut: String = out.chars().take(MAX_MESSAGE_CHARS).collect();
            for needle in [&password[..8], "0123456789ABCDEF", "tok-3n5", "MDEyMzQ1"] {
                assert!(!cut.contains(needle), "{needle} left in {cut:?}");
            }
            assert!(out.contains("<redacted>"), "{out}");
        }
    }

    #[test]
    fn json_bodies_are_valid_json() {
        let body = json_body(&[("email", "a\"b@c"), ("password", "p\\w")]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["email"], "a\"b@c");
        assert_eq!(v["password"], "p\\w");
    }

    #[test]
    fn tokens_and_plain_http() {
        assert!(check_token("abc.DEF-123").is_ok());
        assert!(check_token("abc\r\nX-Evil: 1").is_err());
        assert!(check_token("é").is_err());
        for url in [
            "http://127.0.0.1:8080",
            "http://[::1]:1",
            "http://localhost/api",
        ] {
            assert!(is_loopback(url), "{url}");
        }
        assert!(!is_loopback("http://10.0.0.1"));
        let mut config = AdminConfig::new("http://admin.example");
        config.token = Some(Zeroizing::new("t0ken".into()));
        assert!(matches!(
            AdminClient::new(config.clone()),
            Err(AdminError::PlainHttp { .. })
        ));
        config.allow_http = true;
        assert!(AdminClient::new(config).is_ok());
    }
}
