//! The running process: its command line ([`cli`], and [`manual`], the man page and
//! completions rendered from it), start and wiring ([`app`]), the start's steps and
//! signals ([`server`]), the sockets bound before Pingora starts, readiness (systemd's
//! `READY=1`), the drain, the zero-downtime upgrade (by hand, or the running process's
//! own child on SIGUSR2), CPU affinity, the admin listener, `vigil demo`.

pub mod admin;
pub mod affinity;
pub mod app;
pub mod cli;
pub mod demo;
mod drain;
pub mod error;
mod listening;
pub mod manual;
mod ready;
mod relaunch;
pub mod server;
pub mod upgrade;
