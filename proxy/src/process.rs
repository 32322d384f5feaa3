//! The running process: start and wiring ([`app`]), signals and drain ([`server`]),
//! the zero-downtime upgrade, CPU affinity, the admin listener, `vigil demo`.

pub mod admin;
pub mod affinity;
pub mod app;
pub mod demo;
pub mod error;
pub mod server;
pub mod upgrade;
