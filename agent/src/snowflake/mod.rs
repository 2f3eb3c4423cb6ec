//! The Snowflake REST protocol as typed requests and responses (no I/O).
pub mod hosts;
