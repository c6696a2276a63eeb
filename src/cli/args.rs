//! The command line as clap reads it: subcommands, flags and their help.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::admin::AdminConfig;
use crate::identity::PasswordPolicy;
use crate::image::disk::PartitionChoice;
use crate::image::{ImageOptions, LuksBuild, LuksKey};

use super::token;

const EXAMPLES: &str = "\
Examples:
  # Provision AZJN-0042 and write a new image with its credentials
  IMPRINT_API_TOKEN=... imprint provision --serial AZJN-0042 --owner azaion \\
      --api-url https://admin.example --image rootfs.tbz2 --output out/

  # The runbook's flow: write into an extracted staging tree
  imprint provision --serial AZJN-0042 --api-url https://admin.example \\
      --rootfs-dir Linux_for_Tegra/rootfs --owner azaion

  # No API call: stamp a known password (from a file, never a flag)
  imprint provision --offline --password-file pw.txt --serial AZJN-0042 \\
      --owner azaion --image system.img --output bootloader/system.img --force

  # Check what a built image carries, and that it logs in
  imprint verify out/AZJN-0042-rootfs.tbz2 --serial AZJN-0042 --owner azaion \\
      --login-url http://loader:8080

  # Check that a base (or an OTA payload's rootfs) holds no device's credentials
  imprint verify --no-credentials Linux_for_Tegra/rootfs

  # Look inside an image: list a directory, print a file
  imprint ls out/AZJN-0042-rootfs.tbz2 /etc/azaion
  imprint cat out/AZJN-0042-system.img /etc/hostname

  # See it all work against a local stand-in API
  imprint demo";

#[derive(Parser)]
#[command(
    name = "imprint",
    version,
    about = "Stamp a device's identity into a root-filesystem image, without extracting or mounting it",
    after_help = EXAMPLES
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// More detail on stderr: -v retries and steps, -vv the inner workings (never secrets)
    // clap would list it after as many of a subcommand's flags as this build
    // has subcommands; 6 keeps it where it has always been in the help (after
    // --rootfs-dir), whichever subcommands the features leave in.
    #[arg(short, long, action = clap::ArgAction::Count, global = true, display_order = 6)]
    pub(crate) verbose: u8,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Create the device's account and write its credentials into an image
    #[command(after_help = EXAMPLES)]
    Provision(Box<ProvisionArgs>),
    /// Check the credentials inside a built image or staging tree
    #[command(after_help = EXAMPLES)]
    Verify(VerifyArgs),
    /// List what is at a path inside an image or staging tree, like ls -l (read-only)
    ///
    /// Names inside images are bytes, in whatever charset the tool that made
    /// the image was given: they are printed as GNU tar -tv prints them,
    /// control characters and bytes that are not UTF-8 escaped (\n, \033,
    /// \377) and backslashes doubled, so two names never print alike. PATH
    /// is taken as bytes too. With --json, a name that is not UTF-8 has
    /// U+FFFD in path (target, hard_link) and its exact spelling in
    /// path_escaped (target_escaped, hard_link_escaped).
    Ls(LsArgs),
    /// Write a file from inside an image or staging tree to stdout (read-only)
    ///
    /// PATH is taken as bytes, as the shell passes it: a name in a legacy
    /// charset is given as it is stored, e.g. $'/etc/caf\xe9' in bash.
    Cat(CatArgs),
    /// Build a sample rootfs, provision it against a local stand-in API, verify it
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
    /// Work with batch manifests (merge the shards of one run)
    Manifest {
        #[command(subcommand)]
        command: super::manifest::ManifestCommand,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff) to stdout
    Man {
        /// Write imprint.1 and an imprint-SUBCOMMAND.1 page for each subcommand (nested ones too) into DIR instead
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["image", "rootfs_dir"])))]
pub(crate) struct ProvisionArgs {
    /// Device serial, e.g. AZJN-0042 (uppercase letters, digits, hyphens); repeat for a batch
    #[arg(long, required_unless_present_any = ["serials", "devices"])]
    pub(crate) serial: Vec<String>,
    /// Batch: a file of serials, one a line (# starts a comment), or - for stdin; --output must be a directory
    #[arg(long, value_name = "FILE", conflicts_with = "devices")]
    pub(crate) serials: Option<PathBuf>,
    /// Devices and their own overlay variables: CSV (or TSV, or JSON lines) with a header row and a serial column, or - for stdin. Alone it is a batch like --serials; with --serial it gives those devices' variables
    #[arg(long, value_name = "FILE")]
    pub(crate) devices: Option<PathBuf>,
    /// Resolve everything and print what each image would get (never file content); write nothing, call no API
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// Batch: skip serials whose output already exists, verifies and was made from this base; outputs made from another base are rebuilt keeping their password
    #[arg(long)]
    pub(crate) skip_existing: bool,
    /// Batch with --skip-existing: give outputs rebuilt from another base new passwords instead of keeping theirs
    #[arg(long, requires = "skip_existing")]
    pub(crate) rotate: bool,
    /// Create or reuse, never rotate: an account that exists keeps the password this device's earlier output carries (--skip-existing, or the output --force replaces), or gets the --password-file one; with neither, the device fails instead of getting a new password
    #[arg(long, conflicts_with_all = ["rotate", "offline"])]
    pub(crate) no_rotate: bool,
    /// Batch: API calls in flight at once
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub(crate) jobs: u16,
    /// Admin API base URL (http:// or https://)
    #[arg(long, required_unless_present_any = ["offline", "dry_run"])]
    pub(crate) api_url: Option<String>,
    /// Input image: tar, raw ext2/3/4 or GPT/MBR disk image (each plain, .gz, .bz2, .zst or .xz), or Android sparse. Repeat it to stamp several images of one device with the same credentials and one account call (--output is then a directory)
    #[arg(long, requires = "output")]
    pub(crate) image: Vec<PathBuf>,
    /// Staging rootfs directory to write into in place (the runbook's flow)
    #[arg(long, conflicts_with = "output")]
    pub(crate) rootfs_dir: Option<PathBuf>,
    /// Output file, or a directory (existing or ending in /) for <serial>-<input name>
    #[arg(long)]
    pub(crate) output: Option<PathBuf>,
    /// Replace an existing output file
    #[arg(long)]
    pub(crate) force: bool,
    /// Owner of device.conf: USER, USER:GROUP or UID:GID, looked up in the image's own /etc/passwd and /etc/group (default root:root; the Loader's service user is azaion: pass --owner azaion, a run without --owner over an image that has that user warns)
    #[arg(long)]
    pub(crate) owner: Option<String>,
    /// Read the password from this file (first line) instead of generating one
    #[arg(long)]
    pub(crate) password_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) image_args: ImageArgs,
    #[command(flatten)]
    pub(crate) luks_build: LuksBuildArgs,
    /// Which passwords to accept: runbook (32 lowercase hex, as openssl rand -hex 16) or any (printable ASCII)
    #[arg(long, default_value = "runbook")]
    pub(crate) password_policy: PasswordPolicy,
    /// Make no API call; requires --password-file
    #[arg(long, requires = "password_file", conflicts_with = "api_url")]
    pub(crate) offline: bool,
    /// Extra overlay spec (TOML) to apply after the built-in device.conf one, or - for stdin; repeatable (overlays/README.md; from the .deb, /usr/share/imprint/overlays/)
    #[arg(long = "overlay", value_name = "FILE")]
    pub(crate) overlays: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// Print only the result line
    #[arg(long, short)]
    pub(crate) quiet: bool,
    /// Print the result as one JSON document (schema imprint.provision/1, imprint.batch/1 or, with --dry-run, imprint.dry-run/1)
    #[arg(long)]
    pub(crate) json: bool,
    /// Do not use the scan cache ($XDG_CACHE_HOME/imprint) that lets the next run from the same tarball skip reading it whole
    #[arg(long)]
    pub(crate) no_cache: bool,
    /// Checksum files to write beside each image: sha256 (NAME.sha256, always) and sha1 (NAME.sha1sum, for NVIDIA's kernel-flash tools)
    #[arg(long, value_delimiter = ',', default_value = "sha256")]
    pub(crate) checksum: Vec<ChecksumKind>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ChecksumKind {
    Sha256,
    Sha1,
}

#[derive(Args)]
pub(crate) struct ApiArgs {
    /// File holding the API bearer token (or set IMPRINT_API_TOKEN)
    #[arg(long, value_name = "FILE")]
    pub(crate) api_token_file: Option<PathBuf>,
    /// Send the token over plain http to a host other than this machine
    /// (refused otherwise: the token and passwords would travel in clear)
    #[arg(long)]
    pub(crate) allow_http: bool,
    /// Extra CA certificate (PEM) to trust for the API
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub(crate) client_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub(crate) client_key: Option<PathBuf>,
    /// Seconds to wait for each API request
    #[arg(long, default_value_t = 30)]
    pub(crate) api_timeout: u64,
    /// Retries on connection errors, 429 and 5xx
    #[arg(long, default_value_t = 3)]
    pub(crate) api_retries: u32,
}

/// How every subcommand reads an image: which partitions of a disk image.
#[derive(Args)]
pub(crate) struct ImageArgs {
    /// The partition of a disk image: its GPT name, its number, or all-rootfs (every rootfs slot: APP_ENC and APP_ENC_b when there is an APP_ENC, L4T's encrypted layout; else APP and APP_b when there is an APP; else every ext2/3/4 partition holding /etc). provision and verify take it repeated, each partition with the same credentials (default: the one named APP_ENC, else APP, else the only ext2/3/4 partition holding /etc); ls and cat read one
    #[arg(long, value_name = "NAME|NUMBER|all-rootfs")]
    pub(crate) partition: Vec<PartitionChoice>,
    #[command(flatten)]
    pub(crate) luks: LuksArgs,
}

/// How a LUKS container in the image is opened (key material from files
/// only, never from the command line).
#[derive(Args)]
pub(crate) struct LuksArgs {
    /// File whose every byte is the passphrase of the LUKS container inside the image (as cryptsetup --key-file)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["luks_volume_key_file", "ecid", "l4t_generic"])]
    pub(crate) luks_passphrase_file: Option<PathBuf>,
    /// File holding the LUKS container's volume key, raw bytes (as cryptsetup --volume-key-file)
    #[arg(long, value_name = "FILE", conflicts_with_all = ["ecid", "l4t_generic"])]
    pub(crate) luks_volume_key_file: Option<PathBuf>,
    /// L4T disk encryption: file with the 16-byte EKB key as 32 hex digits (default: all zeros, as flash.sh without a key); with --ecid or --l4t-generic
    #[arg(long, value_name = "FILE")]
    pub(crate) l4t_ekb_key: Option<PathBuf>,
    /// L4T disk encryption: the chip's ECID (hex, as flash.sh reads it with the RCM tool's --uid); the passphrase is this device's
    #[arg(long, value_name = "HEX", conflicts_with = "l4t_generic")]
    pub(crate) ecid: Option<String>,
    /// L4T disk encryption: the generic passphrase (no ECID)
    #[arg(long)]
    pub(crate) l4t_generic: bool,
}

impl LuksArgs {
    pub(crate) fn key(&self) -> Result<Option<LuksKey>> {
        Ok(
            match (&self.luks_passphrase_file, &self.luks_volume_key_file) {
                (Some(path), _) => Some(LuksKey::passphrase_file(path)?),
                (None, Some(path)) => Some(LuksKey::volume_key_file(path)?),
                (None, None) if self.ecid.is_some() || self.l4t_generic => Some(LuksKey::l4t(
                    self.l4t_ekb_key.as_deref(),
                    self.ecid.as_deref(),
                )?),
                (None, None) if self.l4t_ekb_key.is_some() => {
                    bail!("--l4t-ekb-key needs --ecid ECID (this device's passphrase) or --l4t-generic")
                }
                (None, None) => None,
            },
        )
    }
}

/// `provision --luks-encrypt`: the output a new LUKS2 container (L4T's
/// APP_ENC, system_root_encrypted.img) around the stamped filesystem.
#[derive(Args)]
pub(crate) struct LuksBuildArgs {
    /// Write the output as a new LUKS2 container (aes-xts-plain64, 256-bit key, random per output) around the stamped filesystem, as L4T's flash.sh builds system_root_encrypted.img with ROOTFS_ENC=1: the input is a plain ext2/3/4 image (raw or Android sparse, which the output then is too); its keyslot opens with the L4T passphrase (--l4t-ekb-key with --ecid or --l4t-generic) or --luks-passphrase-file; needs --luks-uuid or --luks-uuid-file
    #[arg(long, requires = "image")]
    pub(crate) luks_encrypt: bool,
    /// With --luks-encrypt: the container's UUID, the one flash.sh keeps in l4t-rootfs-uuid.txt_enc in its bootloader directory; with several --image inputs (one device's rootfs slots), once per --image, in the same order
    #[arg(
        long,
        value_name = "UUID",
        requires = "luks_encrypt",
        conflicts_with = "luks_uuid_file"
    )]
    pub(crate) luks_uuid: Vec<String>,
    /// With --luks-encrypt: read the container's UUID from this file, as flash.sh reads bootloader/l4t-rootfs-uuid.txt_enc; with several --image inputs, once per --image, in the same order (ROOTFS_AB=1: l4t-rootfs-uuid.txt_enc, then l4t-rootfs-uuid.txt_b_enc)
    #[arg(long, value_name = "FILE", requires = "luks_encrypt")]
    pub(crate) luks_uuid_file: Vec<PathBuf>,
    /// With --luks-encrypt: the encryption sector size, 512 (cryptsetup on flash.sh's loop device) or 4096
    #[arg(long, value_name = "BYTES", default_value_t = 512, value_parser = clap::builder::TypedValueParser::map(clap::builder::PossibleValuesParser::new(["512", "4096"]), |s| s.parse::<u64>().expect("listed")), requires = "luks_encrypt")]
    pub(crate) luks_sector_size: u64,
}

impl LuksBuildArgs {
    /// What --luks-encrypt asks for, the UUIDs read and checked: one, or
    /// one for each of the `inputs` --image inputs.
    pub(crate) fn build(&self, inputs: usize) -> Result<Option<LuksBuild>> {
        if !self.luks_encrypt {
            return Ok(None);
        }
        let mut uuids = self.luks_uuid.clone();
        for file in &self.luks_uuid_file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the LUKS UUID file {}", file.display()))?;
            // flash.sh takes the first line that is a UUID and nothing
            // else (sed -nr "s/^${uuid_regex}$/\1/p", line 1027).
            uuids.push(
                text.lines()
                    .find(|l| LuksBuild::is_uuid(l))
                    .map(str::to_string)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "{} holds no line that is a UUID (8-4-4-4-12 lowercase hex digits), as flash.sh reads it",
                            file.display()
                        )
                    })?,
            );
        }
        if uuids.is_empty() {
            bail!(
                "--luks-encrypt needs the container's UUID: --luks-uuid UUID, or --luks-uuid-file FILE (flash.sh's bootloader/l4t-rootfs-uuid.txt_enc)"
            );
        }
        if let Some(uuid) = uuids.iter().find(|u| !LuksBuild::is_uuid(u)) {
            bail!("--luks-uuid {uuid:?} is not a UUID as flash.sh takes it (8-4-4-4-12 lowercase hex digits)");
        }
        // Two containers of one device under one UUID: the initrd's
        // crypttab (crypt_root, crypt_root_other) could not tell them apart.
        if uuids.len() != inputs.max(1) {
            bail!(
                "--luks-encrypt got {} container UUIDs for {inputs} --image inputs: give one for each --image, in the same order (flash.sh's l4t-rootfs-uuid.txt_enc for APP_ENC, l4t-rootfs-uuid.txt_b_enc for APP_ENC_b)",
                uuids.len()
            );
        }
        if let Some(twice) = uuids
            .iter()
            .enumerate()
            .find_map(|(i, u)| uuids[..i].contains(u).then_some(u))
        {
            bail!("--luks-encrypt got the container UUID {twice} twice: each container needs its own (the initrd opens them by UUID)");
        }
        let per_input = if uuids.len() > 1 {
            uuids.clone()
        } else {
            Vec::new()
        };
        Ok(Some(LuksBuild {
            uuid: uuids.remove(0),
            per_input,
            sector_size: self.luks_sector_size,
        }))
    }
}

#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// Built image or staging directory
    pub(crate) image: PathBuf,
    /// Check a base instead: pass only if no file that holds a password (device.conf, or an --overlay file using {password}) is in it
    #[arg(long, conflicts_with_all = [
        "serial", "owner", "login_url", "password_policy", "api_token_file", "allow_http",
        "ca_cert", "client_cert", "client_key", "api_timeout", "api_retries",
    ])]
    pub(crate) no_credentials: bool,
    /// With --no-credentials: also look for the files this overlay spec (TOML) fills with {password}; repeatable
    #[arg(long = "overlay", value_name = "FILE", requires = "no_credentials")]
    pub(crate) overlays: Vec<PathBuf>,
    /// Check that the email matches this serial
    #[arg(long)]
    pub(crate) serial: Option<String>,
    /// Expected owner of device.conf (default root:root)
    #[arg(long)]
    pub(crate) owner: Option<String>,
    /// Loader base URL: also check the credentials with POST {URL}/login
    #[arg(long)]
    pub(crate) login_url: Option<String>,
    #[command(flatten)]
    pub(crate) image_args: ImageArgs,
    /// Which passwords pass: runbook (32 lowercase hex) or any (printable ASCII)
    #[arg(long, default_value = "runbook")]
    pub(crate) password_policy: PasswordPolicy,
    #[command(flatten)]
    pub(crate) api: ApiArgs,
    /// Print the report as JSON
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct LsArgs {
    /// Image (any input provision reads) or staging directory
    pub(crate) image: PathBuf,
    /// Absolute path inside the image (default: /); its bytes are taken as they are, as the image's names are bytes
    pub(crate) path: Option<std::ffi::OsString>,
    /// List subdirectories too
    #[arg(short = 'R', long)]
    pub(crate) recursive: bool,
    /// Show the names of each file's extended attributes (security.capability, security.selinux, user.*, ...)
    #[arg(long)]
    pub(crate) xattrs: bool,
    #[command(flatten)]
    pub(crate) image_args: ImageArgs,
    /// Print the listing as JSON (schema imprint.ls/1)
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct CatArgs {
    /// Image (any input provision reads) or staging directory
    pub(crate) image: PathBuf,
    /// Absolute path of a file inside the image (bytes, as the shell passes them); symlinks are followed inside the image
    pub(crate) path: std::ffi::OsString,
    #[command(flatten)]
    pub(crate) image_args: ImageArgs,
}

#[cfg(feature = "demo")]
#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Where to put the demo's files
    #[arg(long, default_value = "imprint-demo")]
    pub(crate) dir: PathBuf,
}

impl ImageArgs {
    /// The image options for provision and verify: every partition named.
    pub(crate) fn options(&self) -> Result<ImageOptions> {
        Ok(ImageOptions {
            partitions: self.partition.clone(),
            luks: self.luks.key()?,
            ..Default::default()
        })
    }

    /// The image options for a command that reads one partition (`ls`,
    /// `cat`): a repeated --partition, or all-rootfs, is refused saying so.
    pub(crate) fn one_partition(&self, command: &str) -> Result<ImageOptions> {
        match &self.partition[..] {
            [] | [PartitionChoice::Number(_) | PartitionChoice::Name(_)] => self.options(),
            [PartitionChoice::AllRootfs] => bail!(
                "imprint {command} reads one partition, and --partition all-rootfs names every rootfs slot; give one partition's name or number (run it once per slot)"
            ),
            many => bail!(
                "imprint {command} reads one partition, but --partition was given {} times ({}); give one (run it once per partition)",
                many.len(),
                many.iter()
                    .map(|p| match p {
                        PartitionChoice::Name(n) => n.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

impl ApiArgs {
    /// The API client's settings for `url`, with the token read from its
    /// file or the environment.
    pub(crate) fn config(&self, url: &str) -> Result<AdminConfig> {
        Ok(AdminConfig {
            base_url: url.to_string(),
            token: token::read(self.api_token_file.as_deref())?,
            ca_cert: self.ca_cert.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(self.api_timeout.max(1)),
            retries: self.api_retries,
            backoff: Duration::from_millis(500),
            allow_http: self.allow_http,
        })
    }
}
