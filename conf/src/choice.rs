//! Keys whose value is one of a few words (`balance`, `protocol`, …): each type lists
//! its words once, and parsing, error messages and the reference all read that list.

use crate::types::{AccessLogFormat, Balance, CheckKind, CpuAffinity, Protocol, TlsVersion};

/// A value written as one of a few words; its `Default` is what an omitted key means.
pub(crate) trait Choice: Copy + Default + 'static {
    /// Every value, in the order error messages and the reference list them.
    const ALL: &'static [Self];

    /// The word the config file uses for it.
    fn word(self) -> &'static str;

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.word() == text)
    }

    fn words() -> Vec<&'static str> {
        Self::ALL.iter().map(|c| c.word()).collect()
    }
}

/// `a, b or c`, each word as `show` writes it.
pub(crate) fn one_of<T: Choice>(show: impl Fn(&str) -> String) -> String {
    let words: Vec<String> = T::words().into_iter().map(show).collect();
    match words.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

impl Choice for CpuAffinity {
    const ALL: &'static [Self] = &[CpuAffinity::Auto, CpuAffinity::Off];

    fn word(self) -> &'static str {
        match self {
            CpuAffinity::Auto => "auto",
            CpuAffinity::Off => "off",
        }
    }
}

impl Choice for AccessLogFormat {
    const ALL: &'static [Self] = &[
        AccessLogFormat::Off,
        AccessLogFormat::Text,
        AccessLogFormat::Json,
    ];

    fn word(self) -> &'static str {
        match self {
            AccessLogFormat::Off => "off",
            AccessLogFormat::Text => "text",
            AccessLogFormat::Json => "json",
        }
    }
}

impl Choice for TlsVersion {
    const ALL: &'static [Self] = &[TlsVersion::V1_2, TlsVersion::V1_3];

    fn word(self) -> &'static str {
        match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        }
    }
}

impl Choice for Protocol {
    const ALL: &'static [Self] = &[Protocol::Http1, Protocol::H2];

    fn word(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
        }
    }
}

impl Choice for Balance {
    const ALL: &'static [Self] = &[
        Balance::RoundRobin,
        Balance::WeightedRoundRobin,
        Balance::LeastRequests,
        Balance::PeakEwma,
        Balance::ConsistentHash,
        Balance::LoadReport,
    ];

    fn word(self) -> &'static str {
        self.as_str()
    }
}

impl Choice for CheckKind {
    const ALL: &'static [Self] = &[CheckKind::Http, CheckKind::Tcp, CheckKind::Grpc];

    fn word(self) -> &'static str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_parse_back_and_list_as_messages_do() {
        for b in Balance::ALL {
            assert_eq!(Balance::parse(b.word()), Some(*b));
        }
        assert_eq!(Balance::parse("fastest"), None);
        assert_eq!(one_of::<CpuAffinity>(str::to_string), "auto or off");
        assert_eq!(
            one_of::<TlsVersion>(|w| format!("{w:?}")),
            "\"1.2\" or \"1.3\""
        );
    }
}
