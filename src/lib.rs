//! Switchyard: a multi-tenant, OpenAI-compatible LLM gateway.
//!
//! The crate is laid out along the request's path: `config` turns tenant files into an
//! immutable snapshot, `http` owns the wire surface (auth, bodies, errors), `actors` own the
//! proxies and the upstream connection pools, `routing` decides where a request goes,
//! `providers` speak each upstream's wire format, and `emulator` is the strict stand-in for the
//! paid providers that the tests, the README and the load tests run against.
// `deny`, not `forbid`: the measured exception carries `#[expect(unsafe_code)]`: the ledger
// spool's shared mapping (`governance::spool`).
#![deny(unsafe_code)]

pub mod actors;
pub mod api;
pub mod cli;
pub mod config;
pub mod embedding;
pub mod emulator;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod fxhash;
pub mod governance;
pub mod http;
pub mod providers;
pub mod routing;
pub mod run;
pub mod telemetry;
