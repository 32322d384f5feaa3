//! Logs to stderr through `tracing`, as text or JSON lines. `RUST_LOG` overrides the
//! level; Pingora's own chatter is kept to warnings.
//!
//! A peer can make rustls warn once per connection (an IP address sent as SNI, a
//! warning alert): a scan would fill the disk. Those warnings are counted in
//! `vigil_tls_warnings_total` instead, and said in one line per episode (at most one
//! a minute, with the first one's text).

use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// rustls warnings (per connection, a peer's doing), counted instead of logged.
pub static TLS_WARNINGS: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::IntCounter::new(
        "vigil_tls_warnings_total",
        "TLS warnings a peer caused (an IP address as SNI, an alert), counted instead of logged",
    )
    .expect("static metric")
});

/// At most one line per this long about peers' TLS warnings.
const EPISODE: Duration = Duration::from_secs(60);

pub fn init(format: LogFormat) {
    let from_env = std::env::var("RUST_LOG").ok();
    let mut filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("pingora_core=warn".parse().expect("static directive"))
        .add_directive("pingora_proxy=warn".parse().expect("static directive"));
    // Unless asked for by name, rustls's lines are counted, not written.
    if !from_env.is_some_and(|v| v.contains("rustls")) {
        filter = filter.add_directive("rustls=error".parse().expect("static directive"));
    }
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let quiet = Quieted::default().with_filter(Targets::new().with_target("rustls", Level::WARN));
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(quiet)
        .init();
}

/// Counts rustls's warnings; one line per [`EPISODE`].
#[derive(Default)]
struct Quieted {
    last_line: Mutex<Option<Instant>>,
}

impl<S: Subscriber> Layer<S> for Quieted {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() == Level::ERROR {
            return; // written as it is
        }
        TLS_WARNINGS.inc();
        let now = Instant::now();
        {
            let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| now.duration_since(t) < EPISODE) {
                return;
            }
            *last = Some(now);
        }
        let mut first = Message(String::new());
        event.record(&mut first);
        tracing::warn!(
            first = %first.0,
            "TLS peers cause rustls warnings; counted in vigil_tls_warnings_total, one line a minute at most"
        );
    }
}

/// An event's `message` field as text.
struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }
}
