//! The `imprint` command: parse args -> open image -> plan -> write ->
//! provision -> commit -> checksum. The steps live in the library; this file
//! turns flags into a request and results into lines for a person.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use zeroize::Zeroizing;

use imprint::admin::AdminConfig;
use imprint::identity::{Password, Serial};
use imprint::owner::OwnerSpec;
use imprint::pipeline::batch;
use imprint::pipeline::{self, Request, Target};
use imprint::plan::OverlaySpec;
use imprint::stub;
use imprint::verify::{self, Expectations};

mod demo;

const EXAMPLES: &str = "\
Examples:
  # Provision AZJN-0042 and write a new image with its credentials
  IMPRINT_API_TOKEN=... imprint provision --serial AZJN-0042 \\
      --api-url https://admin.example --image rootfs.tbz2 --output out/

  # The runbook's flow: write into an extracted staging tree
  imprint provision --serial AZJN-0042 --api-url https://admin.example \\
      --rootfs-dir Linux_for_Tegra/rootfs --owner azaion

  # No API call: stamp a known password (from a file, never a flag)
  imprint provision --offline --password-file pw.txt --serial AZJN-0042 \\
      --image system.img --output bootloader/system.img --force

  # Check what a built image carries, and that it logs in
  imprint verify out/AZJN-0042-rootfs.tbz2 --serial AZJN-0042 --login-url http://loader:8080

  # See it all work against a local stand-in API
  imprint demo";

#[derive(Parser)]
#[command(
    name = "imprint",
    version,
    about = "Stamp a device's identity into a root-filesystem image, without extracting or mounting it",
    after_help = EXAMPLES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More detail on stderr: -v retries and steps, -vv the inner workings (never secrets)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
}

#[derive(Subcommand)]
enum Command {
    /// Create the device's account and write its credentials into an image
    #[command(after_help = EXAMPLES)]
    Provision(ProvisionArgs),
    /// Check the credentials inside a built image or staging tree
    #[command(after_help = EXAMPLES)]
    Verify(VerifyArgs),
    /// Build a sample rootfs, provision it against a local stand-in API, verify it
    Demo(DemoArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff) to stdout
    Man,
    /// Run the stand-in admin API and Loader on 127.0.0.1 (for testing)
    #[command(hide = true)]
    StubServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["image", "rootfs_dir"])))]
struct ProvisionArgs {
    /// Device serial, e.g. AZJN-0042 (uppercase letters, digits, hyphens); repeat for a batch
    #[arg(long, required_unless_present = "serials")]
    serial: Vec<String>,
    /// Batch: a file of serials, one a line (# starts a comment); --output must be a directory
    #[arg(long, value_name = "FILE")]
    serials: Option<PathBuf>,
    /// Batch: skip serials whose output already exists and verifies
    #[arg(long)]
    skip_existing: bool,
    /// Batch: API calls in flight at once
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,
    /// Admin API base URL (http:// or https://)
    #[arg(long, required_unless_present = "offline")]
    api_url: Option<String>,
    /// Input image: tar (plain, .gz, .bz2/.tbz2, .zst, .xz), raw ext4 or Android sparse
    #[arg(long, requires = "output")]
    image: Option<PathBuf>,
    /// Staging rootfs directory to write into in place (the runbook's flow)
    #[arg(long, conflicts_with = "output")]
    rootfs_dir: Option<PathBuf>,
    /// Output file, or a directory (existing or ending in /) for <serial>-<input name>
    #[arg(long)]
    output: Option<PathBuf>,
    /// Replace an existing output file
    #[arg(long)]
    force: bool,
    /// Owner of device.conf: USER, USER:GROUP or UID:GID, looked up in the image's own /etc/passwd and /etc/group
    #[arg(long, default_value = "root:root")]
    owner: String,
    /// Read the password from this file (first line) instead of generating one
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Make no API call; requires --password-file
    #[arg(long, requires = "password_file", conflicts_with = "api_url")]
    offline: bool,
    /// Extra overlay spec (TOML) to apply after the built-in device.conf one
    #[arg(long = "overlay", value_name = "FILE")]
    overlays: Vec<PathBuf>,
    #[command(flatten)]
    api: ApiArgs,
    /// Print only the result line
    #[arg(long, short)]
    quiet: bool,
    /// Print the result as one JSON document (schema imprint.provision/1 or imprint.batch/1)
    #[arg(long)]
    json: bool,
    /// Checksum files to write beside each image: sha256 (NAME.sha256, always) and sha1 (NAME.sha1sum, for NVIDIA's kernel-flash tools)
    #[arg(long, value_delimiter = ',', default_value = "sha256")]
    checksum: Vec<ChecksumKind>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ChecksumKind {
    Sha256,
    Sha1,
}

#[derive(Args)]
struct ApiArgs {
    /// File holding the API bearer token (or set IMPRINT_API_TOKEN)
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) to trust for the API
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS
    #[arg(long, value_name = "FILE", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// Seconds to wait for each API request
    #[arg(long, default_value_t = 30)]
    api_timeout: u64,
    /// Retries on connection errors, 429 and 5xx
    #[arg(long, default_value_t = 3)]
    api_retries: u32,
}

#[derive(Args)]
struct VerifyArgs {
    /// Built image or staging directory
    image: PathBuf,
    /// Check that the email matches this serial
    #[arg(long)]
    serial: Option<String>,
    /// Expected owner of device.conf (default root:root)
    #[arg(long)]
    owner: Option<String>,
    /// Loader base URL: also check the credentials with POST {URL}/login
    #[arg(long)]
    login_url: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DemoArgs {
    /// Where to put the demo's files
    #[arg(long, default_value = "imprint-demo")]
    dir: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => tracing::Level::WARN,
        1 => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .without_time()
        .init();
    install_panic_report();
    if let Err(e) = imprint::io::output::install_signal_cleanup() {
        eprintln!("imprint: warning: cannot install signal handlers: {e}");
    }
    match run(cli) {
        Ok(code) => code,
        // A closed pipe (`imprint man | head`) is the reader's choice.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("imprint: error: {}", error_line(&e));
            ExitCode::from(1)
        }
    }
}

/// A panic is a bug: say so in one line, without the default hook's
/// payload as is. The message goes through the secret scrubber first, so
/// even a careless `expect(&format!(..))` cannot print a password or token.
fn install_panic_report() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "imprint: internal error{at}: {}. This is a bug in imprint; please report it (see SECURITY.md). The input image is never modified.",
            imprint::redact::scrub(&payload)
        );
    }));
}

/// The error and its causes on one line, skipping a cause whose text the
/// line already holds (many messages name their cause themselves).
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Provision(args) => provision_cmd(args),
        Command::Verify(args) => verify_cmd(args),
        Command::Completions { shell } => {
            let mut cli = Cli::command();
            clap_complete::generate(shell, &mut cli, "imprint", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            demo::run(&args.dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::StubServer { listen } => {
            let server = stub::StubServer::start_on(&listen)
                .with_context(|| format!("cannot listen on {listen}"))?;
            println!("{}", server.url());
            loop {
                std::thread::park();
            }
        }
    }
}

impl ApiArgs {
    fn config(&self, url: &str) -> Result<AdminConfig> {
        let token = read_token(self.api_token_file.as_deref())?;
        Ok(AdminConfig {
            base_url: url.to_string(),
            token,
            ca_cert: self.ca_cert.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(self.api_timeout.max(1)),
            retries: self.api_retries,
            backoff: Duration::from_millis(500),
        })
    }
}

/// The token comes from a file or the environment, never from a flag value,
/// so it does not show in `ps` or shell history.
fn read_token(file: Option<&Path>) -> Result<Option<Zeroizing<String>>> {
    let raw = match file {
        Some(path) => Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the API token file {}", path.display()))?,
        ),
        None => match std::env::var("IMPRINT_API_TOKEN") {
            Ok(t) => Zeroizing::new(t),
            Err(_) => return Ok(None),
        },
    };
    let token = raw.trim();
    if token.is_empty() {
        bail!("the API token is empty; put the token in the file or IMPRINT_API_TOKEN");
    }
    imprint::redact::register(token);
    Ok(Some(Zeroizing::new(token.to_string())))
}

fn provision_cmd(args: ProvisionArgs) -> Result<ExitCode> {
    let owner: OwnerSpec = args.owner.parse()?;
    let password = args
        .password_file
        .as_deref()
        .map(Password::from_file)
        .transpose()?;
    let mut overlay = OverlaySpec::default_spec();
    for path in &args.overlays {
        overlay.extend(OverlaySpec::load(path)?);
    }
    let api = match (&args.api_url, args.offline) {
        (Some(url), false) => Some(args.api.config(url)?),
        _ => None,
    };
    let sha1sum = args.checksum.contains(&ChecksumKind::Sha1);
    // Tests and benchmarks compare the fast paths against the full rewrite.
    let write = imprint::image::WriteOptions {
        full_rewrite: std::env::var_os("IMPRINT_FULL_REWRITE").is_some(),
    };
    let mut serials = args
        .serial
        .iter()
        .map(|s| Serial::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(file) = &args.serials {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the serials file {}", file.display()))?;
        serials.extend(batch::read_serials(&text, &file.display().to_string())?);
    }
    if serials.len() != 1 || args.serials.is_some() {
        let (Some(input), Some(output)) = (&args.image, &args.output) else {
            bail!("a batch needs --image IN and --output DIR");
        };
        return batch_cmd(
            batch::BatchRequest {
                serials,
                input: input.clone(),
                output_dir: output.clone(),
                owner,
                password,
                overlay,
                api,
                sha1sum,
                write,
                force: args.force,
                skip_existing: args.skip_existing,
                jobs: args.jobs as usize,
            },
            args.quiet,
            args.json,
        );
    }
    let serial = serials.remove(0);
    let target = match (&args.image, &args.rootfs_dir, &args.output) {
        (Some(input), None, Some(output)) => Target::Image {
            input: input.clone(),
            output: pipeline::output_path(input, output, &serial, args.force)?,
        },
        (None, Some(dir), None) => Target::StagingDir(dir.clone()),
        _ => bail!("give --image IN --output OUT, or --rootfs-dir DIR"),
    };
    let request = Request {
        serial,
        target,
        owner,
        password,
        overlay,
        api,
        sha1sum,
        write,
    };
    let quiet = args.quiet || args.json;
    let json = args.json;
    imprint::io::progress::enable(std::io::stderr().is_terminal() && !quiet);
    let report = pipeline::run(&request, &mut |line| {
        imprint::io::progress::finish();
        if !quiet {
            eprintln!("imprint: {line}");
        }
    });
    imprint::io::progress::finish();
    let report = report?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&provision_json(&report))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let owner = format!("{}:{}", report.owner.uid, report.owner.gid);
    match &report.emitted {
        Some(out) => println!(
            "{}: wrote {} ({} bytes, sha256 {}), device.conf owner {owner}, mode 0600",
            report.serial,
            out.path.display(),
            out.size,
            out.sha256
        ),
        None => {
            for f in &report.staged {
                println!("{}: wrote {} (owner {owner})", report.serial, f.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `provision --json` document (docs/json.md). Carries no secret.
fn provision_json(report: &pipeline::Report) -> serde_json::Value {
    let emitted = report.emitted.as_ref();
    serde_json::json!({
        "schema": "imprint.provision/1",
        "serial": report.serial,
        "email": report.email,
        "input_kind": report.kind,
        "output": emitted.map(|e| e.path.display().to_string()),
        "sha256": emitted.map(|e| e.sha256.clone()),
        "size": emitted.map(|e| e.size),
        "sidecar": emitted.map(|e| imprint::io::output::sidecar_path(&e.path).display().to_string()),
        "staged": report.staged.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "device_conf": {
            "path": "/etc/azaion/device.conf",
            "mode": "0600",
            "uid": report.owner.uid,
            "gid": report.owner.gid,
            "user": report.owner.user_name,
            "group": report.owner.group_name,
        },
        "sha1sum": report.sha1sum.as_ref().map(|p| p.display().to_string()),
        "account": match report.account {
            Some(imprint::admin::Provisioned::Created) => Some("created"),
            Some(imprint::admin::Provisioned::PasswordUpdated) => Some("password_updated"),
            None => None,
        },
    })
}

fn batch_cmd(req: batch::BatchRequest, quiet: bool, json: bool) -> Result<ExitCode> {
    let total = req.serials.len();
    imprint::io::progress::enable(std::io::stderr().is_terminal() && !quiet && !json);
    let report = batch::run(req, &|line| {
        if !quiet && !json {
            eprintln!("imprint: {line}");
        }
    });
    imprint::io::progress::finish();
    let report = report?;
    if json {
        let results: Vec<serde_json::Value> = report
            .outcomes
            .iter()
            .map(|(serial, outcome)| match outcome {
                batch::Outcome::Written => {
                    serde_json::json!({"serial": serial, "status": "written"})
                }
                batch::Outcome::Skipped => {
                    serde_json::json!({"serial": serial, "status": "skipped"})
                }
                batch::Outcome::Failed(why) => {
                    serde_json::json!({"serial": serial, "status": "failed", "error": why})
                }
            })
            .collect();
        let doc = serde_json::json!({
            "schema": "imprint.batch/1",
            "manifest": report.manifest_path.display().to_string(),
            "failed": report.failed(),
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(if report.failed() == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    for (serial, outcome) in &report.outcomes {
        match outcome {
            batch::Outcome::Written => println!("{serial}: written"),
            batch::Outcome::Skipped => println!("{serial}: skipped (already built and verified)"),
            batch::Outcome::Failed(why) => println!("{serial}: FAILED: {why}"),
        }
    }
    let failed = report.failed();
    let skipped = report
        .outcomes
        .iter()
        .filter(|(_, o)| *o == batch::Outcome::Skipped)
        .count();
    println!(
        "{} of {total} written, {skipped} skipped, {failed} failed; manifest {}",
        total - failed - skipped,
        report.manifest_path.display()
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn verify_cmd(args: VerifyArgs) -> Result<ExitCode> {
    let expect = Expectations {
        serial: args.serial.as_deref().map(Serial::parse).transpose()?,
        owner: args.owner.as_deref().map(str::parse).transpose()?,
        login: args
            .login_url
            .as_deref()
            .map(|url| args.api.config(url))
            .transpose()?,
    };
    imprint::io::progress::enable(std::io::stderr().is_terminal() && !args.json);
    let report = verify::verify(&args.image, &expect);
    imprint::io::progress::finish();
    let report = report?;
    if args.json {
        let doc = serde_json::json!({
            "schema": "imprint.verify/1",
            "image": report.image.display().to_string(),
            "passed": report.passed(),
            "checks": report.checks,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for c in &report.checks {
            println!("{c}");
        }
        println!(
            "{}: {}",
            args.image.display(),
            if report.passed() {
                "all checks passed"
            } else {
                "verification FAILED"
            }
        );
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
