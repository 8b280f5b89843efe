//! Cloister's PID 1. Mounts the filesystems, loads the image's kernel modules, checks
//! entropy, brings up the network, then runs the supervisor in-process and powers off
//! cleanly. It must never exit: PID 1 exiting panics the kernel.
//!
//! Every effect on the machine goes through the [`sys::System`] seam; [`linux`] is the real
//! implementation (the crate's only `unsafe` code) and a recording fake backs the unit
//! tests. The sequence is in [`boot`] and [`shutdown`].

#![deny(unsafe_code)]

pub mod boot;
pub mod cmdline;
pub mod dhcp;
pub mod disks;
pub mod dm;
pub mod entropy;
#[cfg(test)]
mod fake;
pub mod fuzzing;
#[allow(unsafe_code)]
pub mod linux;
pub mod modules;
pub mod mounts;
pub mod network;
pub mod shutdown;
pub mod sys;
