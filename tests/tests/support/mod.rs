//! Helpers for the booted-chat test: an HTTPS/1.1 client for the box's self-signed
//! certificate (`https`) and a software passkey authenticator (`passkey`). Test code only.

#![allow(dead_code)]

pub mod https;
pub mod passkey;
