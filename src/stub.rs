//! A loopback stand-in for the admin API and the Loader's /login, for
//! `imprint demo` and the tests: a real HTTP server on 127.0.0.1 with the
//! runbook's semantics, request recording and scripted faults. Built with
//! the `demo` feature (on by default).
//!
//! ```
//! use imprint::admin::{AdminClient, AdminConfig, Provisioned};
//! use imprint::identity::Password;
//! use imprint::stub::StubServer;
//!
//! let server = StubServer::start().unwrap();
//! let client = AdminClient::new(AdminConfig::new(&server.url())).unwrap();
//! let password = Password::generate().unwrap();
//! let email = "azaion-jetson-0042@azaion.com";
//! assert_eq!(client.provision(email, &password).unwrap(), Provisioned::Created);
//! assert_eq!(client.provision(email, &password).unwrap(), Provisioned::PasswordUpdated);
//! assert_eq!(server.password_of(email).as_deref(), Some(password.expose()));
//! ```

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

/// A scripted misbehaviour, consumed by one matching request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this status without touching the users table.
    Status(u16),
    /// Wait, then handle the request normally.
    Delay(Duration),
    /// Drop the connection without an answer.
    CloseConnection,
    /// Apply the change, then answer this error status.
    StatusAfterApplying(u16),
    /// Run this (a test's own action, e.g. replacing a file the client is
    /// reading), then handle the request normally: something happens at a
    /// known step of the client's run, not after a guessed delay.
    Run(Hook),
}

/// An action a [`Fault::Run`] performs while the request waits.
#[derive(Clone)]
pub struct Hook(pub Arc<dyn Fn() + Send + Sync>);

impl Hook {
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> Hook {
        Hook(Arc::new(f))
    }
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

/// One request as the stub saw it; the password is never recorded.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    /// The JSON body with `password` replaced by `"<redacted>"`.
    pub body: Value,
}

#[derive(Default)]
struct State {
    users: HashMap<String, String>,
    requests: Vec<RecordedRequest>,
    faults: Vec<(String, String, Fault)>,
    token: Option<String>,
}

pub struct StubServer {
    server: Arc<Server>,
    state: Arc<Mutex<State>>,
    url: String,
    workers: Vec<JoinHandle<()>>,
}

impl StubServer {
    /// Listens on a free port of 127.0.0.1; [`StubServer::url`] says which.
    pub fn start() -> io::Result<StubServer> {
        let server = Arc::new(Server::http("127.0.0.1:0").map_err(io::Error::other)?);
        let port = server
            .server_addr()
            .to_ip()
            .map(|a| a.port())
            .ok_or_else(|| io::Error::other("not an IP listener"))?;
        let state = Arc::new(Mutex::new(State::default()));
        // A few workers so a delayed request does not block the others.
        let workers = (0..4)
            .map(|_| {
                let server = Arc::clone(&server);
                let state = Arc::clone(&state);
                std::thread::spawn(move || {
                    while let Ok(req) = server.recv() {
                        handle(req, &state);
                    }
                })
            })
            .collect();
        Ok(StubServer {
            server,
            state,
            url: format!("http://127.0.0.1:{port}"),
            workers,
        })
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    pub fn password_of(&self, email: &str) -> Option<String> {
        self.lock().users.get(email).cloned()
    }

    pub fn user_count(&self) -> usize {
        self.lock().users.len()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// When set, requests without `Authorization: Bearer <token>` get 401.
    pub fn require_token(&self, token: Option<String>) {
        self.lock().token = token;
    }

    pub fn push_fault(&self, method: &str, path: &str, fault: Fault) {
        self.lock()
            .faults
            .push((method.to_string(), path.to_string(), fault));
    }
}

impl Drop for StubServer {
    fn drop(&mut self) {
        self.server.unblock();
        for _ in 1..self.workers.len() {
            self.server.unblock();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn reply(req: Request, status: u16, body: Value) {
    let header = Header::from_bytes("Content-Type", "application/json").expect("static header");
    let _ = req.respond(
        Response::from_string(body.to_string())
            .with_status_code(status)
            .with_header(header),
    );
}

fn handle(mut req: Request, state: &Mutex<State>) {
    let method = req.method().to_string();
    let path = req.url().split('?').next().unwrap_or("").to_string();
    let authorization = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.to_string());
    let mut text = String::new();
    let _ = req.as_reader().read_to_string(&mut text);
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let mut recorded = body.clone();
    if let Some(p) = recorded.get_mut("password") {
        *p = json!("<redacted>");
    }
    let fault = {
        let mut st = crate::sync::lock(state);
        st.requests.push(RecordedRequest {
            method: method.clone(),
            path: path.clone(),
            authorization: authorization.clone(),
            body: recorded,
        });
        let at = st
            .faults
            .iter()
            .position(|(m, p, _)| *m == method && *p == path);
        at.map(|i| st.faults.remove(i).2)
    };
    let mut after = None;
    match fault {
        Some(Fault::Status(s)) => return reply(req, s, json!({"error": "injected fault"})),
        Some(Fault::CloseConnection) => {
            drop(req.into_writer());
            return;
        }
        Some(Fault::Delay(d)) => std::thread::sleep(d),
        Some(Fault::StatusAfterApplying(s)) => after = Some(s),
        Some(Fault::Run(hook)) => (hook.0)(),
        None => {}
    }
    let mut st = crate::sync::lock(state);
    let login = *req.method() == Method::Post && path == "/login";
    if let Some(token) = &st.token {
        if !login && authorization.as_deref() != Some(&format!("Bearer {token}")) {
            drop(st);
            return reply(req, 401, json!({"error": "missing or wrong bearer token"}));
        }
    }
    let field = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let (status, answer) = match (req.method(), path.as_str()) {
        (Method::Get, "/health") => (200, json!({"status": "ok"})),
        (Method::Post, "/users") => match (field("email"), field("password"), field("role")) {
            (Some(e), Some(p), Some(r)) if r == "CompanionPC" && !e.is_empty() && !p.is_empty() => {
                match st.users.entry(e) {
                    std::collections::hash_map::Entry::Occupied(_) => {
                        (409, json!({"error": "user exists"}))
                    }
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(p);
                        (201, json!({"status": "created"}))
                    }
                }
            }
            _ => (
                400,
                json!({"error": "email, password and role CompanionPC required"}),
            ),
        },
        (Method::Patch, "/users/password") => match (field("email"), field("password")) {
            (Some(e), Some(p)) if !p.is_empty() => match st.users.get_mut(&e) {
                Some(stored) => {
                    *stored = p;
                    (200, json!({"status": "updated"}))
                }
                None => (404, json!({"error": "no such user"})),
            },
            _ => (400, json!({"error": "email and password required"})),
        },
        (Method::Post, "/login") => match (field("email"), field("password")) {
            (Some(e), Some(p)) if st.users.get(&e) == Some(&p) => (200, json!({"status": "ok"})),
            _ => (401, json!({"error": "invalid credentials"})),
        },
        _ => (404, json!({"error": "not found"})),
    };
    drop(st);
    match after {
        Some(s) => reply(req, s, json!({"error": "injected fault after applying"})),
        None => reply(req, status, answer),
    }
}
