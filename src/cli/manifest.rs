//! `imprint manifest merge`: joins the manifest.json files of a sharded run
//! (the CI's job matrix splits the serials; each job is one batch) into one.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::pipeline::manifest;

#[derive(Subcommand)]
pub(crate) enum ManifestCommand {
    /// Join the manifests of the shards of one run (same base images, no serial twice) into one
    Merge(MergeArgs),
}

#[derive(Args)]
pub(crate) struct MergeArgs {
    /// Where to write the merged manifest (its images are named as in the parts: put them beside it)
    #[arg(long)]
    pub(crate) output: PathBuf,
    /// The shards' manifest.json files
    #[arg(required = true)]
    pub(crate) parts: Vec<PathBuf>,
}

pub(crate) fn run(command: ManifestCommand) -> Result<ExitCode> {
    match command {
        ManifestCommand::Merge(args) => {
            let merged = manifest::merge(&args.parts)?;
            merged.write(&args.output, None)?;
            outln!(
                "{} images from {} manifests; wrote {}",
                merged.images.len(),
                args.parts.len(),
                args.output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
