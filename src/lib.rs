//! imprint: stamp a device's identity into a root-filesystem image without
//! extracting or mounting it.
//!
//! The flow, as `main.rs` drives it: validate the serial ([`identity`]),
//! open the image ([`image`]), resolve the overlay into a [`overlay::Plan`]
//! against the image's own users ([`owner`]), write a new image into a temp
//! file ([`output`]), provision the account ([`admin`]), then commit the
//! image and its checksum. [`verify`] reads a built image back.

pub mod admin;
pub mod batch;
pub mod identity;
pub mod image;
pub mod output;
pub mod overlay;
pub mod owner;
pub mod progress;
pub mod provision;
pub mod stub;
pub mod verify;
