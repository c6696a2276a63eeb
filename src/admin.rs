//! Client for the admin API's provisioning contract (see the runbook):
//! POST /users, and on 409 PATCH /users/password; and the Loader's /login.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;
use serde_json::json;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::identity::Password;

#[derive(Debug, Error)]
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
        }
    }
}

/// What the provisioning call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioned {
    /// POST /users answered 200 or 201.
    Created,
    /// POST /users answered 409 and PATCH /users/password succeeded.
    PasswordUpdated,
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

/// The server's message, shortened, with the password scrubbed out in
/// case the server echoes the request back.
fn server_message(resp: Response, password: &Password) -> String {
    let text = resp.text().unwrap_or_default();
    let mut msg: String = text.trim().chars().take(200).collect();
    if text.trim().chars().count() > 200 {
        msg.push('…');
    }
    if !password.expose().is_empty() {
        msg = msg.replace(password.expose(), "<redacted>");
    }
    if msg.is_empty() {
        "(no message)".into()
    } else {
        msg
    }
}

impl AdminClient {
    pub fn new(config: AdminConfig) -> Result<AdminClient, AdminError> {
        let base = check_url(&config.base_url)?;
        Ok(AdminClient {
            http: build_client(&config)?,
            base,
            config,
        })
    }

    /// Sends one request with bounded retries on connection errors,
    /// timeouts, 429 and 5xx. Retrying a POST is safe: a repeat answers 409.
    fn send(
        &self,
        step: &'static str,
        method: reqwest::Method,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Response, AdminError> {
        let url = format!("{}{path}", self.base);
        let mut delay = self.config.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self.http.request(method.clone(), &url).json(body);
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
        let body = json!({"email": email, "password": password.expose(), "role": "CompanionPC"});
        let resp = self.send("POST /users", reqwest::Method::POST, "/users", &body)?;
        match resp.status().as_u16() {
            200 | 201 => return Ok(Provisioned::Created),
            409 => {}
            status => {
                return Err(AdminError::Status {
                    step: "POST /users",
                    status,
                    message: server_message(resp, password),
                })
            }
        }
        let body = json!({"email": email, "password": password.expose()});
        let step = "PATCH /users/password";
        let resp = self.send(step, reqwest::Method::PATCH, "/users/password", &body)?;
        match resp.status().as_u16() {
            200 | 204 => Ok(Provisioned::PasswordUpdated),
            status => Err(AdminError::Status {
                step,
                status,
                message: server_message(resp, password),
            }),
        }
    }
}

/// The TLS library's complaint about the server's certificate, if that is
/// why the request failed.
fn certificate_problem(e: &reqwest::Error) -> Option<String> {
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let text = inner.to_string();
        if text.contains("certificate") {
            return Some(text);
        }
        src = inner.source();
    }
    None
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

/// POST `{config.base_url}/login` with the credentials; Ok when the answer is 2xx.
pub fn login(config: &AdminConfig, email: &str, password: &Password) -> Result<(), AdminError> {
    let client = AdminClient::new(config.clone())?;
    let body = json!({"email": email, "password": password.expose()});
    let resp = client.send("POST /login", reqwest::Method::POST, "/login", &body)?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(AdminError::Status {
            step: "POST /login",
            status: resp.status().as_u16(),
            message: server_message(resp, password),
        })
    }
}
