//! The integration tests, as one test binary: each file here was once its
//! own binary under tests/, and each linked the whole of imprint, reqwest
//! and rustls again. As modules they share one link and one process; the
//! helpers are `common` (running the binary, building rootfs trees and
//! archives), `fixtures` (base images built once per binary and copied),
//! `ext4_overlay` and `require` (what a test needs of the
//! machine, shared with the unit tests).

mod common;
mod ext4_overlay;
mod fixtures;
mod require;

mod admin;
mod bad_input;
mod base_swap;
mod batch;
mod bombs;
mod byte_names;
mod cache;
mod cli_output;
mod codecs;
mod disk_images;
mod etc_link;
mod ext4_images;
mod fast_paths;
mod faults;
mod fuzz_corpus;
mod hostile;
mod inspect;
mod json;
mod listing;
mod luks;
mod luks_build;
mod luks_build_tar;
mod manpages;
mod overlays;
mod packaging;
mod pixz;
mod realworld_ext4;
mod realworld_round3;
mod realworld_tar;
mod recipes;
mod sparse_images;
mod staging_race;
mod tar;
mod way_through;
mod xz;
mod xz_cut;
mod xz_images;
