//! HAProxy's agent-check words, read from a passing HTTP check's body when a pool sets
//! `health_check.agent`. HAProxy asks a separate agent port; vigil reads the same words
//! from the check it already makes, so a backend steers its own traffic with one
//! endpoint.
//!
//! The message is the body's first line: up to its first CR or LF, within its first
//! [`MAX_MESSAGE`] bytes (a body whose first line runs past them is cut mid-word and
//! read as saying nothing, as HAProxy ignores an incomplete line). Words are separated
//! by spaces, tabs or commas, in any case; a word starting with `#` begins a free-text
//! description, ignored. Of each kind of word the last one counts, as in HAProxy:
//! - `NN%`, 0 to [`MAX_PERCENT`]: the weight is the configured one × NN / 100, rounded,
//!   at least 1; `0%` keeps new requests away as `drain` does.
//! - `ready` ends the agent's `drain` or `maint`; `drain`: no new requests, those in
//!   flight finish; `maint`: no requests at all, but (unlike the operator's
//!   maintenance) checks go on, so the agent can bring it back.
//! - `down`, `fail`, `stopped`: the check fails, counted toward `fall` like any other;
//!   `up`: accepted (the check passes, as it would without the word).
//! - `maxconn:N`: accepted, ignored.
//!
//! Anything else is ignored. What the agent said lasts until it says otherwise
//! ([`AgentState::after`]): a message without a word changes nothing.
//!
//! Pure: [`AgentReply::parse`] takes any bytes and never panics.

use std::fmt;

/// Body bytes an agent message is read from.
pub const MAX_MESSAGE: usize = 1024;

/// The largest `NN%` accepted (HAProxy's bound on a server's weight).
pub const MAX_PERCENT: u16 = 256;

/// The agent's word on whether the backend takes requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AgentMode {
    #[default]
    Ready,
    /// No new requests; those in flight finish.
    Drain,
    /// No requests; still checked.
    Maint,
}

impl AgentMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentMode::Ready => "ready",
            AgentMode::Drain => "drain",
            AgentMode::Maint => "maint",
        }
    }
}

/// The agent's word on health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentHealth {
    Up,
    /// `down`, `fail` or `stopped`: the word, for the check's failure.
    Down(&'static str),
}

/// What one agent message said: of each kind of word, the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgentReply {
    pub weight_percent: Option<u16>,
    pub mode: Option<AgentMode>,
    pub health: Option<AgentHealth>,
    /// Words not understood, ignored.
    pub unknown: u16,
}

impl AgentReply {
    /// A message that says nothing (and what non-HTTP checks carry).
    pub const NONE: AgentReply = AgentReply {
        weight_percent: None,
        mode: None,
        health: None,
        unknown: 0,
    };

    /// The message at the start of `body` (see the module's header).
    pub fn parse(body: &[u8]) -> AgentReply {
        let head = &body[..body.len().min(MAX_MESSAGE)];
        let line = match head.iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(end) => &head[..end],
            None if body.len() > MAX_MESSAGE => return AgentReply::NONE,
            None => head,
        };
        let mut reply = AgentReply::NONE;
        let words = line
            .split(|&b| matches!(b, b' ' | b'\t' | b','))
            .filter(|w| !w.is_empty());
        for word in words {
            if word[0] == b'#' {
                break;
            }
            reply.read(word);
        }
        reply
    }

    fn read(&mut self, word: &[u8]) {
        let is = |w: &str| word.eq_ignore_ascii_case(w.as_bytes());
        if is("up") {
            self.health = Some(AgentHealth::Up);
        } else if let Some(w) = ["down", "fail", "stopped"].into_iter().find(|w| is(w)) {
            self.health = Some(AgentHealth::Down(w));
        } else if is("ready") {
            self.mode = Some(AgentMode::Ready);
        } else if is("drain") {
            self.mode = Some(AgentMode::Drain);
        } else if is("maint") {
            self.mode = Some(AgentMode::Maint);
        } else if let Some(p) = percent(word) {
            self.weight_percent = Some(p);
        } else if !word
            .get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"maxconn:"))
        {
            self.unknown = self.unknown.saturating_add(1);
        }
    }
}

/// `NN%` with NN at most [`MAX_PERCENT`].
fn percent(word: &[u8]) -> Option<u16> {
    let digits = word.strip_suffix(b"%")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().try_fold(0u16, |n, d| {
        n.checked_mul(10)?.checked_add(u16::from(d - b'0'))
    })?;
    (n <= MAX_PERCENT).then_some(n)
}

/// What a backend's agent has said so far; a backend whose pool has no agent keeps the
/// default (ready, 100%).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentState {
    pub mode: AgentMode,
    pub weight_percent: u16,
}

impl Default for AgentState {
    fn default() -> Self {
        AgentState {
            mode: AgentMode::Ready,
            weight_percent: 100,
        }
    }
}

impl AgentState {
    /// After `reply`: what it does not say stays as it was.
    pub fn after(self, reply: &AgentReply) -> AgentState {
        AgentState {
            mode: reply.mode.unwrap_or(self.mode),
            weight_percent: reply.weight_percent.unwrap_or(self.weight_percent),
        }
    }

    /// What keeps new requests away: `maint`, `drain`, or `0%` (as `drain`); `Ready`
    /// when nothing does.
    pub fn hold(self) -> AgentMode {
        match self.mode {
            AgentMode::Ready if self.weight_percent == 0 => AgentMode::Drain,
            mode => mode,
        }
    }

    /// The weight to balance by: `configured` × the percent, rounded; at least 1 unless
    /// the percent (or the configured weight) is 0, so a small share never drains.
    pub fn weight(self, configured: u32) -> u32 {
        let scaled = (u64::from(configured) * u64::from(self.weight_percent) + 50) / 100;
        let floor = u64::from(configured > 0 && self.weight_percent > 0);
        scaled.max(floor).min(u64::from(u32::MAX)) as u32
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}%", self.mode.as_str(), self.weight_percent)
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> AgentReply {
        AgentReply::parse(s.as_bytes())
    }

    #[test]
    fn words_of_each_kind_the_last_wins() {
        let r = parse("75%,maxconn:30,maint,down\n");
        assert_eq!(r.weight_percent, Some(75));
        assert_eq!(r.mode, Some(AgentMode::Maint));
        assert_eq!(r.health, Some(AgentHealth::Down("down")));
        assert_eq!(r.unknown, 0);
        let r = parse("DRAIN\tReady 10% 50%  Up");
        assert_eq!(r.mode, Some(AgentMode::Ready));
        assert_eq!(r.weight_percent, Some(50));
        assert_eq!(r.health, Some(AgentHealth::Up));
        assert_eq!(parse("Stopped").health, Some(AgentHealth::Down("stopped")));
        assert_eq!(parse("FAIL").health, Some(AgentHealth::Down("fail")));
    }

    #[test]
    fn the_first_line_alone_and_no_description() {
        assert_eq!(parse("up\ndrain\n").mode, None);
        assert_eq!(parse("50%\r\ndrain").weight_percent, Some(50));
        assert_eq!(parse("\ndrain"), AgentReply::NONE);
        let r = parse("down # disk full, drain soon 0%");
        assert_eq!(r.health, Some(AgentHealth::Down("down")));
        assert_eq!((r.mode, r.weight_percent, r.unknown), (None, None, 0));
        // A `#` inside a word is part of it.
        assert_eq!(parse("dr#ain").unknown, 1);
    }

    #[test]
    fn percentages_from_0_to_256() {
        for (word, want) in [
            ("0%", Some(0)),
            ("007%", Some(7)),
            ("100%", Some(100)),
            ("256%", Some(256)),
            ("257%", None),
            ("99999999999999999999%", None),
            ("%", None),
            ("-5%", None),
            ("5.5%", None),
            ("50%%", None),
            ("50", None),
        ] {
            assert_eq!(parse(word).weight_percent, want, "{word}");
            assert_eq!(parse(word).unknown, u16::from(want.is_none()), "{word}");
        }
    }

    #[test]
    fn unknown_words_are_counted_and_change_nothing() {
        let r = parse("a ok, MAXCONN:12 maxconn: weight=5 💥");
        assert_eq!(
            r,
            AgentReply {
                unknown: 4,
                ..AgentReply::NONE
            }
        );
        assert_eq!(AgentState::default().after(&r), AgentState::default());
        assert_eq!(parse(""), AgentReply::NONE);
        assert_eq!(parse(" ,\t, "), AgentReply::NONE);
    }

    #[test]
    fn only_the_first_kibibyte_is_read() {
        // The newline is the last byte read.
        let long = format!("drain{}\n50%", " ".repeat(MAX_MESSAGE - 6));
        assert_eq!(parse(&long).mode, Some(AgentMode::Drain));
        // A first line cut by the bound is not read: its last word could be half of one.
        let cut = format!("{}drain 50%", " ".repeat(MAX_MESSAGE - 8));
        assert_eq!(parse(&cut), AgentReply::NONE);
        assert_eq!(parse(&cut[1..]).weight_percent, Some(50));
        // A body that ends without a newline is a whole message.
        assert_eq!(parse("drain").mode, Some(AgentMode::Drain));
    }

    #[test]
    fn state_lasts_until_the_agent_says_otherwise() {
        let s = AgentState::default().after(&parse("drain 50%"));
        assert_eq!((s.mode, s.weight_percent), (AgentMode::Drain, 50));
        assert_eq!(s.after(&parse("")), s);
        assert_eq!(s.after(&parse("up")), s, "up does not end a drain");
        let s = s.after(&parse("ready"));
        assert_eq!((s.mode, s.weight_percent), (AgentMode::Ready, 50));
        assert_eq!(s.to_string(), "ready 50%");
    }

    #[test]
    fn weight_and_hold() {
        let at = |p: u16| AgentState {
            mode: AgentMode::Ready,
            weight_percent: p,
        };
        assert_eq!(at(100).weight(7), 7);
        assert_eq!(at(50).weight(2), 1);
        assert_eq!(at(50).weight(3), 2, "1.5 rounds up");
        assert_eq!(at(10).weight(1), 1, "a small share never drains");
        assert_eq!(at(256).weight(1_000_000), 2_560_000);
        assert_eq!(at(256).weight(u32::MAX), u32::MAX);
        assert_eq!(at(0).weight(5), 0);
        assert_eq!(at(100).weight(0), 0);
        assert_eq!(at(0).hold(), AgentMode::Drain, "0% is a drain");
        assert_eq!(at(1).hold(), AgentMode::Ready);
        let maint = AgentState {
            mode: AgentMode::Maint,
            weight_percent: 0,
        };
        assert_eq!(maint.hold(), AgentMode::Maint);
    }
}
