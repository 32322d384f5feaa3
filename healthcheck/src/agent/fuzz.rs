//! Property tests (`fuzz` in their names, for `PROPTEST_CASES=… cargo test fuzz`):
//! parsing takes any bytes without panicking and never lets a percent past the bound
//! through; messages built from known words, in any case and with any separators, read
//! as a simple model says (the last word of each kind).

use super::{AgentHealth, AgentMode, AgentReply, AgentState, MAX_MESSAGE, MAX_PERCENT};
use crate::fuzzing::config;
use proptest::prelude::*;

/// One word of a message, as the model reads it.
#[derive(Debug, Clone)]
enum Word {
    Percent(u16),
    Mode(AgentMode),
    Health(AgentHealth),
    Ignored(&'static str),
    Unknown(String),
}

impl Word {
    fn text(&self) -> String {
        match self {
            Word::Percent(p) => format!("{p}%"),
            Word::Mode(m) => m.as_str().to_string(),
            Word::Health(AgentHealth::Up) => "up".to_string(),
            Word::Health(AgentHealth::Down(w)) => w.to_string(),
            Word::Ignored(w) => w.to_string(),
            Word::Unknown(w) => w.clone(),
        }
    }
}

fn word() -> impl Strategy<Value = Word> {
    let modes = [AgentMode::Ready, AgentMode::Drain, AgentMode::Maint];
    let health = [
        AgentHealth::Up,
        AgentHealth::Down("down"),
        AgentHealth::Down("fail"),
        AgentHealth::Down("stopped"),
    ];
    prop_oneof![
        (0..=MAX_PERCENT).prop_map(Word::Percent),
        prop::sample::select(modes.to_vec()).prop_map(Word::Mode),
        prop::sample::select(health.to_vec()).prop_map(Word::Health),
        prop::sample::select(vec!["maxconn:30", "MaxConn:1"]).prop_map(Word::Ignored),
        // None of these is a known word, in any case.
        "x[a-z0-9=.%]{0,6}|[0-9]{1,3}[a-z.]{1,3}%?|2[6-9][0-9]%|[3-9][0-9][0-9]%"
            .prop_map(Word::Unknown),
    ]
}

/// Words with random case, joined by runs of separators.
fn message() -> impl Strategy<Value = (Vec<Word>, String)> {
    let sep = prop::collection::vec(prop::sample::select(vec![' ', '\t', ',']), 1..3);
    prop::collection::vec((word(), sep, any::<u64>()), 0..12).prop_map(|words| {
        let mut text = String::new();
        for (w, sep, case) in &words {
            text.extend(sep);
            text.extend(w.text().chars().enumerate().map(|(i, c)| {
                if case >> (i % 64) & 1 == 1 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            }));
        }
        (words.into_iter().map(|(w, _, _)| w).collect(), text)
    })
}

/// What the words say, read the simple way.
fn model(words: &[Word]) -> AgentReply {
    let mut r = AgentReply::NONE;
    for w in words {
        match w {
            Word::Percent(p) => r.weight_percent = Some(*p),
            Word::Mode(m) => r.mode = Some(*m),
            Word::Health(h) => r.health = Some(*h),
            Word::Ignored(_) => {}
            Word::Unknown(_) => r.unknown += 1,
        }
    }
    r
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2 * MAX_MESSAGE)) {
        let r = AgentReply::parse(&bytes);
        prop_assert!(r.weight_percent.is_none_or(|p| p <= MAX_PERCENT), "{r:?}");
        let s = AgentState::default().after(&r);
        prop_assert!(s.weight(u32::MAX) >= u32::from(s.weight_percent > 0));
        prop_assert_eq!(s.weight(1) == 0, s.weight_percent == 0);
    }

    #[test]
    fn fuzz_known_words_any_case_any_separators((words, text) in message(), tail in "[\r\n][ -~]{0,20}") {
        prop_assume!(text.len() <= MAX_MESSAGE);
        prop_assert_eq!(AgentReply::parse(text.as_bytes()), model(&words), "{:?}", text);
        // What follows the line end is not read.
        let with_tail = format!("{text}{tail}");
        prop_assert_eq!(AgentReply::parse(with_tail.as_bytes()), model(&words));
    }
}
