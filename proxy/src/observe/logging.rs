//! Logs to stderr through `tracing`, as text or JSON lines. `RUST_LOG` overrides the
//! level; Pingora's own chatter is kept to warnings.
//!
//! No line a peer can cause once per connection is written: a scan would fill the disk.
//! Such events ([`PeerCaused`]: rustls's warnings — an IP address sent as SNI, a warning
//! alert — and Pingora's `H2 handshake error`, a client that chose HTTP/2 and then did
//! not speak it) are counted in a metric instead, and each kind is said in one line per
//! episode (at most one a minute, with the first one's text).

use std::sync::{LazyLock, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
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

/// Connections that chose HTTP/2 and failed its handshake, counted instead of logged.
pub static H2_HANDSHAKE_ERRORS: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::IntCounter::new(
        "vigil_h2_handshake_errors_total",
        "Client connections that chose HTTP/2 and failed its handshake, counted instead of logged",
    )
    .expect("static metric")
});

/// The target of the line vigil's HTTP/2 server writes when a client's handshake fails
/// (counted in `H2_HANDSHAKE_ERRORS`, not written).
pub const H2_HANDSHAKE_TARGET: &str = "vigil::h2_handshake";

/// At most one line per this long about each kind of peer-caused event.
const EPISODE: Duration = Duration::from_secs(60);

/// The kinds of event a peer causes once per connection.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PeerCaused {
    /// rustls at `warn`.
    Rustls,
    /// Pingora's accept path at `error`: the HTTP/2 handshake failed.
    H2Handshake,
}

impl PeerCaused {
    fn of(meta: &Metadata<'_>) -> Option<PeerCaused> {
        let target = meta.target();
        if (target == "rustls" || target.starts_with("rustls::")) && *meta.level() == Level::WARN {
            Some(PeerCaused::Rustls)
        } else if (target == "pingora_core::apps" || target == H2_HANDSHAKE_TARGET)
            && *meta.level() == Level::ERROR
        {
            // Pingora's one `error!` there is `H2 handshake error`, as vigil's own.
            Some(PeerCaused::H2Handshake)
        } else {
            None
        }
    }

    fn counter(self) -> &'static prometheus::IntCounter {
        match self {
            PeerCaused::Rustls => &TLS_WARNINGS,
            PeerCaused::H2Handshake => &H2_HANDSHAKE_ERRORS,
        }
    }

    fn said(self) -> &'static str {
        match self {
            PeerCaused::Rustls => {
                "TLS peers cause rustls warnings; counted in vigil_tls_warnings_total, one line a minute at most"
            }
            PeerCaused::H2Handshake => {
                "clients choose HTTP/2 and fail its handshake; counted in vigil_h2_handshake_errors_total, one line a minute at most"
            }
        }
    }
}

pub fn init(format: LogFormat) {
    let from_env = std::env::var("RUST_LOG").ok();
    let mut filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("pingora_core=warn".parse().expect("static directive"))
        .add_directive("pingora_proxy=warn".parse().expect("static directive"));
    // Unless rustls is asked for by name, peer-caused events are counted, not written.
    // (Filtered by target with directives, which look at each event: rustls and Pingora
    // log through `log`, whose events share one callsite per level. Pingora's `apps`
    // module has one line, the `H2 handshake error`; its submodules are written as
    // before.)
    if !from_env.is_some_and(|v| v.contains("rustls")) {
        for directive in [
            "rustls=error",
            "pingora_core::apps=off",
            "vigil::h2_handshake=off",
            "pingora_core::apps::http_app=warn",
        ] {
            filter = filter.add_directive(directive.parse().expect("static directive"));
        }
    }
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let quiet = Quieted::default().with_filter(
        Targets::new()
            .with_target("rustls", Level::WARN)
            .with_target("pingora_core::apps", Level::ERROR)
            .with_target(H2_HANDSHAKE_TARGET, Level::ERROR),
    );
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(quiet)
        .init();
}

/// Counts peer-caused events; one line per kind per [`EPISODE`].
#[derive(Default)]
struct Quieted {
    /// When each kind was last said.
    last_line: Mutex<[Option<Instant>; 2]>,
}

impl<S: Subscriber> Layer<S> for Quieted {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        // rustls and Pingora log through `log`: their events' own target and level are
        // in the normalized metadata, not the shared callsite's.
        use tracing_log::NormalizeEvent;
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let Some(kind) = PeerCaused::of(meta) else {
            return;
        };
        kind.counter().inc();
        let now = Instant::now();
        {
            let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
            let slot = &mut last[kind as usize];
            if slot.is_some_and(|t| now.duration_since(t) < EPISODE) {
                return;
            }
            *slot = Some(now);
        }
        let mut first = Message(String::new());
        event.record(&mut first);
        tracing::warn!(first = %first.0, "{}", kind.said());
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
