//! The running process: start and wiring ([`app`]), the start's steps and signals
//! ([`server`]), the sockets bound before Pingora starts, the drain,
//! the zero-downtime upgrade, CPU affinity, the admin listener, `vigil demo`.

pub mod admin;
pub mod affinity;
pub mod app;
pub mod demo;
mod drain;
pub mod error;
mod listening;
pub mod server;
pub mod upgrade;
