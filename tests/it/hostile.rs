//! Hostile surroundings: a Loader that must get nothing but the device's
//! credentials, an admin server that echoes secrets back, streams an
//! endless error body or redirects elsewhere, a process someone asks for a
//! core dump, and batches killed at random moments.

use crate::common;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use imprint::admin::{AdminClient, AdminConfig};
use imprint::identity::Password;
use imprint::stub::{Fault, StubServer};
use serde_json::Value;
use tempfile::TempDir;

/// An admin API token with characters that URL encoding changes.
const TOKEN: &str = "t0ken-Qx7/Kp+Zr=Lm9~Vb3wE5";

fn tarball(dir: &Path) -> PathBuf {
    let root = make_rootfs(dir, "rootfs");
    let input = dir.join("base.tar.gz");
    make_tar(&root, &input, "tar.gz", "gnu", true);
    input
}

// ---- a hostile HTTP/1.1 server ------------------------------------------

/// One request as the hostile server read it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    body: String,
}

impl Seen {
    /// The `password` field of the JSON body.
    fn password(&self) -> Option<String> {
        let body: Value = serde_json::from_str(&self.body).ok()?;
        body["password"].as_str().map(str::to_string)
    }

    /// The bearer token of the Authorization header.
    fn token(&self) -> Option<String> {
        self.authorization
            .as_deref()?
            .strip_prefix("Bearer ")
            .map(str::to_string)
    }
}

/// What the hostile server answers one request with.
enum Answer {
    /// A whole answer: status, extra headers and body.
    Whole {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// A 400 whose body, 1 GiB of it, is written lazily until the client
    /// goes away; with or without a Content-Length.
    Endless { with_length: bool },
}

const GIB: u64 = 1 << 30;
/// The server gives up by itself after this long, or this many requests.
const SERVER_LIFETIME: Duration = Duration::from_secs(60);
const MAX_REQUESTS: usize = 64;

/// A one-thread HTTP/1.1 responder on 127.0.0.1: one request a
/// connection, answered by a closure that sees the request and its index.
/// It stops when dropped, after [`SERVER_LIFETIME`] or [`MAX_REQUESTS`].
struct Hostile {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Body bytes of endless answers the client took before it went away.
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

type Answerer = dyn Fn(usize, &Seen) -> Answer + Send;

impl Hostile {
    fn start(answer: impl Fn(usize, &Seen) -> Answer + Send + 'static) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (record, counter, halt) = (Arc::clone(&seen), Arc::clone(&sent), Arc::clone(&stop));
        let answer: Box<Answerer> = Box::new(answer);
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + SERVER_LIFETIME;
            let mut served = 0;
            while !halt.load(Ordering::Relaxed)
                && Instant::now() < deadline
                && served < MAX_REQUESTS
            {
                match listener.accept() {
                    Ok((stream, _)) => {
                        served += 1;
                        serve(stream, &*answer, &record, &counter);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
        });
        Hostile {
            url,
            seen,
            sent,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request (headers up to 64 KiB, a Content-Length body up to
/// 1 MiB); None if the client sends something else or goes away.
fn read_request(stream: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 << 10 {
            return None;
        }
        let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let (method, path) = (request_line.next()?, request_line.next()?);
    let mut authorization = None;
    let mut length = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "authorization" => authorization = Some(value.trim().to_string()),
            "content-length" => length = value.trim().parse().ok()?,
            _ => {}
        }
    }
    if length > 1 << 20 {
        return None;
    }
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(Seen {
        method: method.to_string(),
        path: path.to_string(),
        authorization,
        body: String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned(),
    })
}

fn serve(mut stream: TcpStream, answer: &Answerer, seen: &Mutex<Vec<Seen>>, sent: &AtomicU64) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let Some(request) = read_request(&mut stream) else {
        return;
    };
    let index = {
        let mut seen = seen.lock().unwrap();
        seen.push(request.clone());
        seen.len() - 1
    };
    match answer(index, &request) {
        Answer::Whole {
            status,
            headers,
            body,
        } => {
            let mut head = format!(
                "HTTP/1.1 {status} Hostile\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body.as_bytes());
        }
        Answer::Endless { with_length } => {
            let length = if with_length {
                format!("Content-Length: {GIB}\r\n")
            } else {
                String::new()
            };
            let head = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n{length}\r\n"
            );
            if stream.write_all(head.as_bytes()).is_err() {
                return;
            }
            let chunk = vec![b'x'; 64 << 10];
            let mut total = 0u64;
            while total < GIB {
                match stream.write(&chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        total += n as u64;
                        sent.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

// ---- secrets in every form ------------------------------------------------

fn base64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Percent-encoding with lowercase hex digits (as valid as uppercase).
fn url_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02x}"),
        })
        .collect()
}

fn swap_case(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// Fails if `text` shows a secret in a form a reader could use: whole, in
/// any letter case, base64 or URL-encoded, or the first 8 characters of
/// any of these.
fn assert_shows_no_secret(text: &str, secrets: &BTreeSet<String>, what: &str) {
    let lower = text.to_ascii_lowercase();
    for secret in secrets {
        for form in [secret.clone(), base64(secret), url_encoded(secret)] {
            let form = form.to_ascii_lowercase();
            let head: String = form.chars().take(8).collect();
            assert!(
                !lower.contains(&form) && !lower.contains(&head),
                "{what} shows a secret (or its first 8 characters, {head:?}):\n{text}"
            );
        }
    }
}

/// The echoes a careless admin server puts in its error answer: the
/// password and the token in several forms, at offsets around the 200
/// characters imprint shows.
fn echo(variant: usize, request: &Seen) -> String {
    let password = request.password().unwrap_or_default();
    let token = request.token().unwrap_or_default();
    let auth = request.authorization.clone().unwrap_or_default();
    match variant {
        // The password straddles the cut at 200 characters.
        0 => format!("{}{password} is not acceptable", "x".repeat(180)),
        1 => format!(
            "{}PASSWORD {} REJECTED; REQUEST WAS {}",
            "y".repeat(120),
            password.to_uppercase(),
            request.body.to_uppercase()
        ),
        2 => format!(
            "{}password={} token={}",
            "z".repeat(170),
            base64(&password),
            base64(&token)
        ),
        3 => format!(
            "{}token={}; you sent Authorization: {auth}",
            "w".repeat(185),
            url_encoded(&token)
        ),
        4 => format!("you sent Authorization: {auth} and {}", request.body),
        _ => format!("{}{}", "v".repeat(190), swap_case(&token)),
    }
}

const ECHO_VARIANTS: usize = 6;

fn bad_request(body: String) -> Answer {
    Answer::Whole {
        status: 400,
        headers: Vec::new(),
        body,
    }
}

// ---- 1. the Loader gets no admin credential -------------------------------

#[test]
fn the_loader_gets_the_device_credentials_and_never_the_admin_token() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let input = tarball(d);
    let admin = StubServer::start().unwrap();
    admin.require_token(Some(TOKEN.to_string()));
    let out = d.join("out.tar.gz");
    let o = run(provision_online(&input, &out, &admin.url()).env("IMPRINT_API_TOKEN", TOKEN));
    assert!(o.status.success(), "{}", stderr(&o));
    // The token did reach the admin API (it refuses requests without it).
    let bearer = format!("Bearer {TOKEN}");
    let calls = admin.requests();
    assert!(!calls.is_empty());
    assert!(calls
        .iter()
        .all(|r| r.authorization.as_deref() == Some(bearer.as_str())));

    // The Loader knows the device's account (made there without a token).
    let loader = StubServer::start().unwrap();
    let password = admin.password_of(EMAIL).unwrap();
    AdminClient::new(AdminConfig::new(&loader.url()))
        .unwrap()
        .provision(EMAIL, &Password::from_plain(&password))
        .unwrap();
    let token_file = d.join("token");
    fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    // The token from the environment, then from a file; client certificate
    // files that do not exist: reading them would fail the login.
    for from_file in [false, true] {
        let before = loader.requests().len();
        let mut cmd = bin();
        cmd.arg("verify")
            .arg(&out)
            .args(["--serial", SERIAL, "--login-url", &loader.url()])
            .args(["--client-cert", "/nonexistent/cert.pem"])
            .args(["--client-key", "/nonexistent/key.pem"]);
        if from_file {
            cmd.arg("--api-token-file").arg(&token_file);
        } else {
            cmd.env("IMPRINT_API_TOKEN", TOKEN);
        }
        let v = run(&mut cmd);
        assert!(v.status.success(), "{}\n{}", stdout(&v), stderr(&v));
        assert!(
            stdout(&v).contains(&format!("POST {}/login accepted", loader.url())),
            "{}",
            stdout(&v)
        );
        let seen = loader.requests();
        let logins: Vec<_> = seen[before..].iter().collect();
        assert_eq!(logins.len(), 1, "{logins:?}");
        assert_eq!(
            (logins[0].method.as_str(), logins[0].path.as_str()),
            ("POST", "/login")
        );
        assert_eq!(logins[0].authorization, None, "the Loader got a credential");
        assert_eq!(logins[0].body["email"], EMAIL);
    }
}

// ---- 2. a hostile admin server --------------------------------------------

#[test]
fn error_answers_that_echo_the_secrets_show_neither_password_nor_token() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let input = tarball(d);
    let server = Hostile::start(|i, request| bad_request(echo(i % ECHO_VARIANTS, request)));
    // One single run per echo, each with a new password.
    for variant in 0..ECHO_VARIANTS {
        let out = d.join(format!("single-{variant}"));
        fs::create_dir(&out).unwrap();
        let o = run(provision_online(&input, &out.join("x.tar.gz"), &server.url)
            .args(["-vv", "--api-retries", "0"])
            .env("IMPRINT_API_TOKEN", TOKEN));
        let err = stderr(&o);
        let secrets = secrets_seen(&server.seen());
        assert_shows_no_secret(&err, &secrets, &format!("stderr, echo {variant}"));
        assert_shows_no_secret(&stdout(&o), &secrets, &format!("stdout, echo {variant}"));
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("POST /users answered 400"), "{err}");
        // The echo was there, and was scrubbed (the placeholder itself may
        // be cut at 200 characters).
        assert!(err.contains("<redacted"), "echo {variant}: {err}");
        assert!(listing(&out).is_empty(), "left behind: {:?}", listing(&out));
    }
    assert_eq!(server.seen().len(), ECHO_VARIANTS);

    // A batch meets every echo once; its JSON carries the errors.
    let serials: String = (1..=ECHO_VARIANTS)
        .map(|i| format!("AZJN-{i:04}\n"))
        .collect();
    fs::write(d.join("serials.txt"), serials).unwrap();
    let o = run(bin()
        .args(["provision", "--json", "--jobs", "1", "--api-retries", "0"])
        .args(["--api-url", &server.url, "--serials"])
        .arg(d.join("serials.txt"))
        .arg("--image")
        .arg(&input)
        .arg("--output")
        .arg(d.join("batch"))
        .env("IMPRINT_API_TOKEN", TOKEN));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let doc: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), ECHO_VARIANTS, "{doc}");
    for r in results {
        assert_eq!(r["status"], "failed", "{doc}");
        let error = r["error"].as_str().unwrap();
        assert!(
            error.contains("POST /users answered 400") && error.contains("<redacted"),
            "{doc}"
        );
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 2 * ECHO_VARIANTS);
    let secrets = secrets_seen(&seen);
    assert_eq!(
        secrets.len(),
        2 * ECHO_VARIANTS + 1,
        "a password each, one token"
    );
    assert_shows_no_secret(&stdout(&o), &secrets, "batch --json");
    assert_shows_no_secret(&stderr(&o), &secrets, "batch stderr");
}

/// The PATCH after a 409 reads its error answer the same way.
#[test]
fn the_password_update_error_is_scrubbed_too() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let input = tarball(d);
    let server = Hostile::start(|_, request| {
        if request.method == "POST" {
            Answer::Whole {
                status: 409,
                headers: Vec::new(),
                body: "exists".into(),
            }
        } else {
            bad_request(echo(0, request))
        }
    });
    let o = run(provision_online(&input, &d.join("x.tar.gz"), &server.url)
        .args(["--api-retries", "0"])
        .env("IMPRINT_API_TOKEN", TOKEN));
    let err = stderr(&o);
    let seen = server.seen();
    assert_shows_no_secret(&err, &secrets_seen(&seen), "stderr");
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("PATCH /users/password answered 400") && err.contains("<redacted>"),
        "{err}"
    );
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].path, "/users/password");
}

/// Every password and token the server received, and our own token.
fn secrets_seen(seen: &[Seen]) -> BTreeSet<String> {
    let mut secrets: BTreeSet<String> = seen
        .iter()
        .flat_map(|r| [r.password(), r.token()])
        .flatten()
        .collect();
    assert!(secrets.contains(TOKEN), "the token was not sent: {seen:?}");
    secrets.insert(TOKEN.to_string());
    secrets
}

/// Runs `cmd` and returns its output, wall time and peak resident set
/// size in KiB (from wait4, for this child alone).
// The child is reaped by wait4, which std's Child cannot see.
#[allow(clippy::zombie_processes)]
fn run_measured(cmd: &mut Command) -> (std::process::Output, Duration, u64) {
    let start = Instant::now();
    let mut child: Child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: waits for the child this function spawned (std never reaps it
    // behind our back: we call no wait on `child`).
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(got, pid, "wait4: {}", std::io::Error::last_os_error());
    let elapsed = start.elapsed();
    let output = std::process::Output {
        status: std::process::ExitStatus::from_raw(status),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    (output, elapsed, usage.ru_maxrss as u64)
}

#[test]
fn an_endless_error_body_is_not_read_past_its_first_kibibytes() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let input = tarball(d);
    for with_length in [true, false] {
        let server = Hostile::start(move |_, _| Answer::Endless { with_length });
        let out = d.join(format!("out-{with_length}"));
        fs::create_dir(&out).unwrap();
        let (o, elapsed, peak_kib) = run_measured(
            provision_online(&input, &out.join("x.tar.gz"), &server.url).args([
                "--api-retries",
                "0",
                "--api-timeout",
                "30",
            ]),
        );
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains("POST /users answered 400: xxxx"), "{err}");
        assert!(err.lines().all(|l| l.len() < 1000), "{err}");
        assert!(
            elapsed < Duration::from_secs(10),
            "took {elapsed:?} (Content-Length: {with_length})"
        );
        assert!(
            peak_kib < 100 << 10,
            "peak RSS {peak_kib} KiB (Content-Length: {with_length})"
        );
        let sent = server_done(server, &out);
        eprintln!(
            "endless body (Content-Length {with_length}): failed after {elapsed:?}, peak RSS {peak_kib} KiB, {sent} bytes sent"
        );
    }
}

/// Stops the server and checks imprint left the body (all but what the
/// socket buffers took) unread.
fn server_done(server: Hostile, out: &Path) -> u64 {
    let seen = server.seen().len();
    let stop = Instant::now();
    let sent = Arc::clone(&server.sent);
    drop(server);
    assert!(stop.elapsed() < Duration::from_secs(10), "the server hung");
    let sent = sent.load(Ordering::Relaxed);
    assert_eq!(seen, 1);
    assert!(
        sent < GIB / 4,
        "imprint read {sent} bytes of the error body"
    );
    assert!(listing(out).is_empty(), "left behind: {:?}", listing(out));
    sent
}

#[test]
fn redirects_are_not_followed() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let input = tarball(d);
    let elsewhere = StubServer::start().unwrap();
    let target = elsewhere.url();
    for status in [302u16, 307, 308] {
        let to = target.clone();
        let server = Hostile::start(move |_, request| Answer::Whole {
            status,
            headers: vec![("Location".into(), format!("{to}{}", request.path))],
            body: String::new(),
        });
        let out = d.join(format!("out-{status}"));
        fs::create_dir(&out).unwrap();
        let o = run(provision_online(&input, &out.join("x.tar.gz"), &server.url)
            .args(["--api-retries", "0"])
            .env("IMPRINT_API_TOKEN", TOKEN));
        assert!(
            elsewhere.requests().is_empty(),
            "a {status} redirect was followed: {:?}",
            elsewhere.requests()
        );
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("POST /users answered {status}")),
            "{}",
            stderr(&o)
        );
        assert_eq!(server.seen().len(), 1);
        assert!(listing(&out).is_empty(), "left behind: {:?}", listing(&out));

        // The Loader's login does not follow one either.
        let pw = write_password(d, PASSWORD);
        let image = d.join(format!("offline-{status}.tar.gz"));
        let made = run(&mut provision_offline(&input, &image, "root", &pw));
        assert!(made.status.success(), "{}", stderr(&made));
        let v = run(bin()
            .arg("verify")
            .arg(&image)
            .args(["--login-url", &server.url])
            .env("IMPRINT_API_TOKEN", TOKEN));
        assert!(
            elsewhere.requests().is_empty(),
            "a {status} redirect of the login was followed: {:?}",
            elsewhere.requests()
        );
        assert_eq!(v.status.code(), Some(1), "{}", stdout(&v));
        assert!(
            stdout(&v).contains(&format!("POST /login answered {status}")),
            "{}",
            stdout(&v)
        );
        let seen = server.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].authorization, None);
    }
}

// ---- 3. no core dump ----------------------------------------------------

/// How to run a command as a user other than root, so that /proc shows
/// whether it is dumpable (the /proc/PID files of a process that is not
/// are root's): `setpriv` to nobody when we are root, nothing otherwise.
fn unprivileged() -> (Vec<String>, u32) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if me != 0 {
        return (Vec::new(), me);
    }
    let prefix = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    (prefix.iter().map(|s| s.to_string()).collect(), 65534)
}

/// Starts `argv` through `bash -c 'ulimit -c unlimited; exec ...'` in `cwd`,
/// with SIGQUIT's default action (a shell starting the tests in the
/// background may have left it ignored, and bash cannot undo that).
fn spawn_core_unlimited(argv: &[String], cwd: &Path) -> Child {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("bash");
    cmd.args(["-c", "ulimit -c unlimited; exec \"$@\"", "bash"])
        .args(argv)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: signal() is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGQUIT, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd.spawn().unwrap()
}

/// The soft and hard core size limits in /proc/PID/limits.
fn core_limits(pid: u32) -> (String, String) {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max core file size"))
        .unwrap_or_else(|| panic!("no core limit in\n{limits}"));
    let mut fields = line.split_whitespace().map(str::to_string);
    (fields.next().unwrap(), fields.next().unwrap())
}

/// The owner /proc gives the process's files: its user while it is
/// dumpable, root when it is not.
fn proc_owner(pid: u32) -> u32 {
    fs::metadata(format!("/proc/{pid}/status")).unwrap().uid()
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn no_core_dump_and_sigquit_cleans_up_like_sigint() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
    let input = tarball(d);
    let (prefix, user) = unprivileged();
    let work = d.join("work");
    fs::create_dir(&work).unwrap();
    fs::set_permissions(&work, fs::Permissions::from_mode(0o700)).unwrap();
    sh(&format!("chown {user} {}", work.display()));
    let core_pattern = fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();

    // Control: a plain program started the same way has the unlimited core
    // size, is dumpable (its /proc files are its user's), and SIGQUIT
    // makes it dump core.
    let mut argv = prefix.clone();
    argv.extend(["sleep".to_string(), "30".to_string()]);
    let control = spawn_core_unlimited(&argv, &work);
    let pid = control.id();
    wait_for("sleep started", || {
        fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    });
    assert_eq!(
        core_limits(pid),
        ("unlimited".to_string(), "unlimited".to_string())
    );
    assert_eq!(proc_owner(pid), user, "the control is not dumpable?");
    unsafe { libc::kill(pid as i32, libc::SIGQUIT) };
    let control = control.wait_with_output().unwrap();
    assert_eq!(control.status.signal(), Some(libc::SIGQUIT));
    let control_dumped = control.status.core_dumped();
    let core_files = listing(&work);
    for name in &core_files {
        fs::remove_file(work.join(name)).unwrap();
    }
    eprintln!(
        "core_pattern {:?}: the control dumped core: {control_dumped}, files {core_files:?}",
        core_pattern.trim()
    );

    let server = StubServer::start().unwrap();
    server.push_fault("POST", "/users", Fault::Delay(Duration::from_secs(2)));
    let mut argv = prefix;
    argv.push(env!("CARGO_BIN_EXE_imprint").to_string());
    for a in ["provision", "--serial", SERIAL, "--api-url", &server.url()] {
        argv.push(a.to_string());
    }
    argv.push("--image".into());
    argv.push(input.display().to_string());
    argv.push("--output".into());
    argv.push(work.join("x.tar.gz").display().to_string());
    let child = spawn_core_unlimited(&argv, &work);
    let pid = child.id();
    // The image is in its temp file and the API call in flight.
    wait_for("the temp file and the API call", || {
        listing(&work).iter().any(|n| n.contains(".imprint-")) && !server.requests().is_empty()
    });
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some(user.to_string().as_str()),
        "{uid_line}"
    );
    assert_eq!(core_limits(pid), ("0".to_string(), "0".to_string()));
    assert_eq!(proc_owner(pid), 0, "imprint is dumpable");
    unsafe { libc::kill(pid as i32, libc::SIGQUIT) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(131), "{}", stderr(&o));
    assert!(!o.status.core_dumped());
    assert!(
        stderr(&o).contains("interrupted by signal 3"),
        "{}",
        stderr(&o)
    );
    assert!(
        listing(&work).is_empty(),
        "left behind (a core, a temp file or an output): {:?}",
        listing(&work)
    );
}

// ---- 4. crash consistency of batches --------------------------------------

const BATCH_SIZE: usize = 30;

fn batch_serials() -> Vec<String> {
    (1..=BATCH_SIZE).map(|i| format!("AZJN-{i:04}")).collect()
}

fn offline_batch(d: &Path, input: &Path, out: &Path, full_rewrite: bool) -> Command {
    let mut c = bin();
    c.args(["provision", "--offline", "--password-file"])
        .arg(d.join("password.txt"))
        .arg("--serials")
        .arg(d.join("serials.txt"))
        .arg("--image")
        .arg(input)
        .arg("--output")
        .arg(out);
    if full_rewrite {
        c.env("IMPRINT_FULL_REWRITE", "1");
    }
    c
}

fn manifest_serials(out: &Path) -> Vec<String> {
    let m: Value =
        serde_json::from_str(&fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    m["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let file = out.join(e["output"].as_str().unwrap());
            assert_eq!(e["sha256"], sha256(&file), "{}", file.display());
            e["serial"].as_str().unwrap().to_string()
        })
        .collect()
}

fn temps(out: &Path) -> Vec<String> {
    let names = if out.is_dir() {
        listing(out)
    } else {
        Vec::new()
    };
    names
        .into_iter()
        .filter(|n| n.contains(".imprint-"))
        .collect()
}

/// After a finished run: the manifest lists every serial once, each image
/// verifies, `sha256sum -c` passes, and there is nothing else.
fn assert_batch_complete(out: &Path) {
    let serials = batch_serials();
    assert_eq!(manifest_serials(out), serials);
    for s in &serials {
        let image = out.join(format!("{s}-base.tar.gz"));
        let v = run(bin().arg("verify").arg(&image).args(["--serial", s]));
        assert!(v.status.success(), "{s}: {}", stdout(&v));
    }
    let check = sh(&format!("cd {} && sha256sum -c -- *.sha256", out.display()));
    assert_eq!(stdout(&check).matches(": OK").count(), BATCH_SIZE);
    let mut expected: Vec<String> = serials
        .iter()
        .flat_map(|s| {
            [
                format!("{s}-base.tar.gz"),
                format!("{s}-base.tar.gz.sha256"),
            ]
        })
        .collect();
    expected.push("manifest.json".into());
    expected.sort();
    assert_eq!(listing(out), expected);
}

/// A small generator for kill times; the seed is printed so a failure can
/// be repeated with HOSTILE_SEED.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("HOSTILE_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("kill times from HOSTILE_SEED={seed}");
        Rng(seed | 1)
    }

    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn a_batch_killed_at_any_moment_is_finished_by_a_skip_existing_rerun() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let input = tarball(d);
    write_password(d, PASSWORD);
    fs::write(d.join("serials.txt"), batch_serials().join("\n") + "\n").unwrap();
    // A whole run first: the baseline every killed one is held to.
    let o = run(&mut offline_batch(d, &input, &d.join("whole"), false));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_batch_complete(&d.join("whole"));
    let mut rng = Rng::new();
    let mut interrupted = 0;
    // The output directory is made by the run, maybe after the kill.
    let images_in = |out: &Path| -> BTreeSet<String> {
        let names = if out.is_dir() {
            listing(out)
        } else {
            Vec::new()
        };
        names
            .into_iter()
            .filter(|n| n.ends_with("-base.tar.gz"))
            .collect()
    };
    for trial in 0..8 {
        let full_rewrite = trial % 2 == 1;
        let out = d.join(format!("out-{trial}"));
        let mut child = offline_batch(d, &input, &out, full_rewrite)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The first trial is killed early, at a random moment of its first
        // 10 ms; the others once a random number of images is out, a
        // random fraction of 3 ms later (in the middle of the next image,
        // its checksum or the manifest).
        let start = Instant::now();
        let when = if trial == 0 {
            std::thread::sleep(Duration::from_secs_f64(rng.unit() * 0.010));
            "early".to_string()
        } else {
            let k = 1 + (rng.unit() * (BATCH_SIZE - 2) as f64) as usize;
            while images_in(&out).len() < k
                && child.try_wait().unwrap().is_none()
                && start.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_secs_f64(rng.unit() * 0.003));
            format!("after {k} images")
        };
        let _ = child.kill();
        let status = child.wait().unwrap();
        let at = start.elapsed();

        // What the killed run left: a manifest that is whole and lists only
        // images that exist, images under final names that are complete.
        if out.join("manifest.json").exists() {
            let listed = manifest_serials(&out);
            let unique: BTreeSet<&String> = listed.iter().collect();
            assert_eq!(unique.len(), listed.len(), "{listed:?}");
        }
        let images = images_in(&out);
        let left = temps(&out);
        if status.signal() == Some(libc::SIGKILL) && !images.is_empty() && images.len() < BATCH_SIZE
        {
            interrupted += 1;
        }
        eprintln!(
            "trial {trial} (full rewrite {full_rewrite}): killed {when}, at {at:?}: {status}, {} images, temp files {left:?}",
            images.len()
        );

        let o = run(offline_batch(d, &input, &out, false).arg("--skip-existing"));
        let text = stdout(&o);
        assert!(o.status.success(), "{text}\n{}", stderr(&o));
        // Every image the killed run left verifies (it was renamed only
        // when complete), so it is skipped; the others are written.
        let summary = format!(
            "{} of {BATCH_SIZE} written, {} skipped, 0 failed",
            BATCH_SIZE - images.len(),
            images.len()
        );
        assert!(text.contains(&summary), "expected {summary}:\n{text}");
        for temp in &left {
            assert!(
                stderr(&o).contains(&format!("removed {}", out.join(temp).display())),
                "{temp} not reported removed:\n{}",
                stderr(&o)
            );
        }
        assert_batch_complete(&out);
    }
    assert!(
        interrupted >= 3,
        "only {interrupted} kills landed in the middle of a batch; see the trials above"
    );
}

/// A run killed after an image's rename and before its checksum and
/// manifest line: a --skip-existing rerun writes the checksum, lists the
/// serial, and makes no API call. Stale temp files of dead runs go; those
/// of live processes and of other users stay.
#[test]
fn an_image_left_without_its_checksum_is_healed_without_an_api_call() {
    let dir = TempDir::new().unwrap();
    let d = dir.path();
    let input = tarball(d);
    let server = StubServer::start().unwrap();
    let out = d.join("out");
    let batch = || {
        run(bin()
            .args(["provision", "--skip-existing", "--api-url", &server.url()])
            .args(["--serial", "AZJN-0001", "--serial", "AZJN-0002"])
            .args(["--serial", "AZJN-0003", "--image"])
            .arg(&input)
            .arg("--output")
            .arg(&out))
    };
    let o = batch();
    assert!(o.status.success(), "{}", stderr(&o));
    let calls = server.requests().len();
    assert_eq!(calls, 3);
    let image = out.join("AZJN-0002-base.tar.gz");
    let sidecar = out.join("AZJN-0002-base.tar.gz.sha256");
    let sidecar_text = fs::read_to_string(&sidecar).unwrap();
    fs::remove_file(&sidecar).unwrap();
    let mut m: Value =
        serde_json::from_str(&fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    m["images"]
        .as_array_mut()
        .unwrap()
        .retain(|e| e["serial"] != "AZJN-0002");
    fs::write(out.join("manifest.json"), m.to_string()).unwrap();

    // Temp files: of a dead run (removed), of a live process and of
    // another user (both kept).
    let dead = {
        let mut c = Command::new("true").spawn().unwrap();
        c.wait().unwrap();
        c.id()
    };
    let stale = format!(".AZJN-0004-base.tar.gz.imprint-{dead}-0123456789abcdef.tmp");
    let live = format!(
        ".AZJN-0004-base.tar.gz.imprint-{}-0123456789abcdef.tmp",
        std::process::id()
    );
    let foreign = format!(".AZJN-0005-base.tar.gz.imprint-{dead}-fedcba9876543210.tmp");
    for name in [&stale, &live, &foreign] {
        fs::write(out.join(name), "partial").unwrap();
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        sh(&format!("chown 65534 {}", out.join(&foreign).display()));
    }

    let o = batch();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("AZJN-0002: skipped")
            && stdout(&o).contains("0 of 3 written, 3 skipped"),
        "{}",
        stdout(&o)
    );
    assert_eq!(
        server.requests().len(),
        calls,
        "an API call for a skipped image"
    );
    assert_eq!(fs::read_to_string(&sidecar).unwrap(), sidecar_text);
    assert!(sidecar_text.starts_with(&sha256(&image)));
    assert_eq!(
        manifest_serials(&out),
        ["AZJN-0001", "AZJN-0002", "AZJN-0003"]
    );
    let left = temps(&out);
    assert!(!left.contains(&stale), "{left:?}");
    assert!(left.contains(&live), "{left:?}");
    assert_eq!(left.contains(&foreign), root, "{left:?}");
    let v = run(bin().arg("verify").arg(&image).args([
        "--serial",
        "AZJN-0002",
        "--login-url",
        &server.url(),
    ]));
    assert!(v.status.success(), "{}", stdout(&v));
}
