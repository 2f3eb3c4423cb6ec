//! The proxy's Snowflake-aware layer: what an intercepted connection says, read as the protocol
//! it is, applied to policy and turned into audit events and recordings.
//!
//! It sits on the [`transport`](super::transport), which it reaches only through the seam that
//! layer defines: [`router::Router`] is the transport's [`ExchangeHandler`], and each
//! intercepted connection's [`context::ConnCtx`] its [`ConnectionHandler`]. Handlers send
//! upstream through the `send` they are given, never through a socket of their own.
//!
//! [`router`] maps each endpoint to its handler and is the only module that knows them all;
//! [`context`] holds what the handlers share; [`state`] the sessions and statements in flight,
//! and calls no handler. The handlers: [`login`] (login, token renewal, logout), [`statement`]
//! (query, polls, monitoring, abort), [`sql_api`] (statements through the SQL API), [`holds`] (statements held for approval), [`masking`]
//! (results shaped by a rule), [`recording_tee`] (results recorded as they pass),
//! [`transfers`] (PUT/GET stage transfers), [`requests`] (any other request to a Snowflake
//! host), [`tagging`] (QUERY_TAG), [`brokering`] (the
//! broker's logins and token handles) and [`gate`] (the policy's decision on a statement).
//!
//! [`ExchangeHandler`]: super::transport::ExchangeHandler
//! [`ConnectionHandler`]: super::transport::ConnectionHandler

mod brokering;
pub mod context;
mod gate;
pub mod holds;
#[cfg(test)]
mod lifecycle_tests;
mod login;
mod masking;
mod recording_tee;
mod requests;
pub mod router;
mod sql_api;
pub mod state;
mod statement;
mod tagging;
mod transfers;
