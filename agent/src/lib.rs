//! snowtrail: a Linux agent that transparently intercepts the Snowflake traffic of enrolled workloads
//! and turns it into an authoritative audit trail.
//!
//! The crate is the daemon and the CLI. Each concern has one module; `app` alone wires them together.
//! `ARCHITECTURE.md` at the repository root has the tables of sockets, tasks, files and maps.

pub mod alloc;
pub mod app;
pub mod audit;
pub mod broker;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod control;
pub mod drain;
pub mod enforce;
pub mod enroll;
pub mod identity;
pub mod policy;
pub mod proxy;
pub mod recording;
pub mod redirect;
pub mod snowflake;
pub mod sync;
pub mod telemetry;
pub mod tls;
