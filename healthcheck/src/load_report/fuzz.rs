//! Property tests (`fuzz` in their names, for `PROPTEST_CASES=… cargo test fuzz`):
//! parsing never panics and never lets a bad number through; a report written in
//! either encoding reads back the same; pool weights stay finite and non-negative.

use super::{effective_weights, parse, Report};
use crate::fuzzing::config;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// A field as a backend writes it: absent, or a finite non-negative number of any size.
fn value() -> impl Strategy<Value = Option<f64>> {
    prop::option::of(prop_oneof![
        Just(0.0),
        0.0..1.0,
        0.0..1e6,
        prop::num::f64::POSITIVE | prop::num::f64::NORMAL,
    ])
}

/// The fields in `Report` order, and named metrics.
type Written = ([Option<f64>; 5], BTreeMap<String, f64>);

fn written() -> impl Strategy<Value = Written> {
    let fields = [value(), value(), value(), value(), value()];
    let metrics = prop::collection::btree_map("[a-z_]{1,8}", 0.0..1e3, 0..6);
    (fields, metrics)
}

const NAMES: [&str; 5] = [
    "cpu_utilization",
    "application_utilization",
    "mem_utilization",
    "rps_fractional",
    "eps",
];

fn expected(fields: &[Option<f64>; 5]) -> Report {
    let [cpu, app, mem, rps, eps] = fields.map(|v| v.unwrap_or(0.0));
    Report {
        cpu_utilization: cpu,
        application_utilization: app,
        mem_utilization: mem,
        rps_fractional: rps,
        eps,
    }
}

/// `{:?}` writes the shortest digits that read back exactly.
fn text((fields, metrics): &Written, separator: &str) -> String {
    let present = NAMES
        .iter()
        .zip(fields)
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)));
    let named = metrics
        .iter()
        .map(|(k, &v)| (format!("named_metrics.{k}"), v));
    let entries: Vec<String> = present
        .chain(named)
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!("TEXT {}", entries.join(separator))
}

fn json((fields, metrics): &Written) -> String {
    let mut object = serde_json::Map::new();
    for (k, v) in NAMES.iter().zip(fields) {
        if let Some(v) = v {
            object.insert(k.to_string(), (*v).into());
        }
    }
    let named = metrics
        .iter()
        .map(|(k, &v)| (k.clone(), v.into()))
        .collect();
    object.insert("named_metrics".into(), serde_json::Value::Object(named));
    format!("JSON {}", serde_json::Value::Object(object))
}

fn sane(r: &Report) -> bool {
    let fields = [
        r.cpu_utilization,
        r.application_utilization,
        r.mem_utilization,
        r.rps_fractional,
        r.eps,
    ];
    fields.iter().all(|v| v.is_finite() && *v >= 0.0)
}

/// serde_json, built without its `float_roundtrip` feature, may miss the last bit
/// of a 17-digit number; a weight does not care.
fn near(a: f64, b: f64) -> bool {
    (a - b).abs() <= 2.0 * f64::EPSILON * a.abs().max(b.abs())
}

fn near_report(a: &Report, b: &Report) -> bool {
    near(a.cpu_utilization, b.cpu_utilization)
        && near(a.application_utilization, b.application_utilization)
        && near(a.mem_utilization, b.mem_utilization)
        && near(a.rps_fractional, b.rps_fractional)
        && near(a.eps, b.eps)
}

/// Keys the parsers know, in both spellings, and some they do not.
const KEYS: &str = "(eps|rps_fractional|cpuUtilization|named_metrics(\\.a)?|utilization|x)";
/// Numbers, some out of range, and values of other kinds.
const VALUES: &str =
    r#"(-?[0-9]{1,3}(\.[0-9]{0,3})?(e-?[0-9]{1,3})?|inf|NaN|\{\}|\{"a": ?-?[0-9]\}|\[\]|null|"s")"#;

/// Entries as a backend might write them, in either encoding, mixed up.
fn report_like() -> impl Strategy<Value = Vec<u8>> {
    let entry = (KEYS, VALUES);
    let text = prop::collection::vec(entry, 0..5).prop_map(|entries| {
        let entries: Vec<String> = entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("TEXT {}", entries.join(", "))
    });
    let json = prop::collection::vec(entry, 0..5).prop_map(|entries| {
        let entries: Vec<String> = entries
            .iter()
            .map(|(k, v)| format!("\"{k}\": {v}"))
            .collect();
        format!("JSON {{{}}}", entries.join(", "))
    });
    let noise = (
        prop_oneof![Just("TEXT "), Just("JSON ")],
        "[a-z_.=, {}:\"0-9eE+-]{0,64}",
    )
        .prop_map(|(prefix, body)| format!("{prefix}{body}"));
    prop_oneof![text, json, noise].prop_map(String::into_bytes)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_parse_never_panics(
        prefix in prop_oneof![Just(""), Just("TEXT "), Just("JSON ")],
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let bytes = [prefix.as_bytes(), &bytes].concat();
        if let Ok(r) = parse(&bytes) {
            prop_assert!(sane(&r), "{r:?}");
        }
    }

    #[test]
    fn fuzz_parse_report_like_bytes(bytes in report_like()) {
        if let Ok(r) = parse(&bytes) {
            prop_assert!(sane(&r), "{r:?}");
        }
    }

    #[test]
    fn fuzz_round_trip_text_and_json(w in written(), spaced in any::<bool>()) {
        let want = expected(&w.0);
        if w.0.iter().any(Option::is_some) || !w.1.is_empty() {
            let separator = if spaced { " , " } else { "," };
            prop_assert_eq!(parse(text(&w, separator).as_bytes()), Ok(want));
        }
        let got = parse(json(&w).as_bytes());
        prop_assert!(got.is_ok_and(|got| near_report(&got, &want)), "{:?} vs {:?}", got, want);
    }

    #[test]
    fn fuzz_effective_weights_are_finite(
        pool in prop::collection::vec(
            (prop_oneof![Just(0u32), 0u32..100, any::<u32>()], prop::option::of(any::<f64>())),
            0..16,
        ),
        short in 0usize..3,
    ) {
        let configured: Vec<u32> = pool.iter().map(|p| p.0).collect();
        let reported: Vec<Option<f64>> = pool.iter().map(|p| p.1).collect();
        let reported = &reported[..reported.len().saturating_sub(short)];
        let mut out = Vec::new();
        effective_weights(&configured, reported, &mut out);
        prop_assert_eq!(out.len(), configured.len());
        for (w, c) in out.iter().zip(&configured) {
            prop_assert!(w.is_finite() && *w >= 0.0, "{w}");
            prop_assert!(*c > 0 || *w == 0.0);
        }
    }
}
