//! Parsing, one backend's weight under blackout and expiry, and a pool's weights, with
//! instants passed in (no clock, no sleeping).

use super::*;
use std::time::Duration;
use tokio::time::Instant;

fn report(qps: f64, utilization: f64) -> Report {
    Report {
        rps_fractional: qps,
        application_utilization: utilization,
        ..Report::default()
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn load_report_parses_text_with_spaces_and_maps() {
    let r = parse(
        b"TEXT cpu_utilization=0.3, rps_fractional = 120 ,eps=0.5,\tnamed_metrics.foo=1.2, \
          mem_utilization=0.25,application_utilization=0.4, utilization.gpu=0.9",
    )
    .unwrap();
    let want = Report {
        cpu_utilization: 0.3,
        application_utilization: 0.4,
        mem_utilization: 0.25,
        rps_fractional: 120.0,
        eps: 0.5,
    };
    assert_eq!(r, want);
}

#[test]
fn load_report_parses_json_in_both_spellings() {
    let snake = br#"JSON {"cpu_utilization": 0.3, "rps_fractional": 120, "eps": 0.5,
        "named_metrics": {"foo": 1.2}, "request_cost": {}, "utilization": {"db": 1}}"#;
    let camel = br#"JSON {"cpuUtilization":0.3,"rpsFractional":1.2e2,"eps":0.5,"namedMetrics":{"foo":1.2}}"#;
    let want = Report {
        cpu_utilization: 0.3,
        rps_fractional: 120.0,
        eps: 0.5,
        ..Report::default()
    };
    assert_eq!(parse(snake), Ok(want));
    assert_eq!(parse(camel), Ok(want));
    // Escapes in a key are read as JSON says.
    assert_eq!(parse(br#"JSON {"\u0065ps": 2}"#).unwrap().eps, 2.0);
}

#[test]
fn load_report_absent_fields_are_zero() {
    assert_eq!(
        parse(b"TEXT eps=1").unwrap(),
        Report {
            eps: 1.0,
            ..Report::default()
        }
    );
    assert_eq!(parse(b"JSON {}"), Ok(Report::default()));
    assert_eq!(
        parse(b"  TEXT   named_metrics.a=1  "),
        Ok(Report::default())
    );
}

#[test]
fn load_report_unknown_keys_are_ignored() {
    let text = parse(b"TEXT eps=1, future_field=whatever, future_map.x=-3").unwrap();
    assert_eq!(text.eps, 1.0);
    let json = br#"JSON {"eps": 1, "future": {"nested": [1, "two", null, -3]}, "flag": true}"#;
    assert_eq!(parse(json).unwrap().eps, 1.0);
}

#[test]
fn load_report_malformed_reports_say_why() {
    let long = format!("TEXT eps=1{}", " ".repeat(MAX_REPORT_BYTES));
    let cases: &[(&[u8], &str)] = &[
        (long.as_bytes(), "longer than 4096 bytes"),
        (b"TEXT eps=\xff", "not UTF-8"),
        (b"", "format is neither TEXT nor JSON"),
        (b"eps=1", "format is neither TEXT nor JSON"),
        (b"text eps=1", "format is neither TEXT nor JSON"),
        (b"TEXTeps=1", "format is neither TEXT nor JSON"),
        (b"BIN AAAA", "format is neither TEXT nor JSON"),
        (b"TEXT", "empty TEXT report"),
        (b"TEXT   ", "empty TEXT report"),
        (b"TEXT eps", "TEXT entry without '='"),
        (b"TEXT eps=1,", "TEXT entry without '='"),
        (b"TEXT =1", "TEXT entry without a key"),
        (b"TEXT eps=", "value is not a number"),
        (b"TEXT eps=1x", "value is not a number"),
        (b"TEXT named_metrics.a=x", "value is not a number"),
        (b"TEXT eps=-1", "number is negative or not finite"),
        (b"TEXT eps=inf", "number is negative or not finite"),
        (b"TEXT eps=NaN", "number is negative or not finite"),
        (
            b"TEXT request_cost.a=-0.5",
            "number is negative or not finite",
        ),
        (b"TEXT eps=1, eps=1", "duplicate key"),
        (b"TEXT eps=1, eps=2", "duplicate key"),
        (b"TEXT cpu_utilization=1, cpuUtilization=1", "duplicate key"),
        (
            b"TEXT named_metrics.a=1, named_metrics.a=2",
            "duplicate key",
        ),
        (b"TEXT x=1, x=2", "duplicate key"),
        (b"JSON", "bad JSON"),
        (b"JSON {", "bad JSON"),
        (b"JSON []", "bad JSON"),
        (b"JSON {} {}", "bad JSON"),
        (br#"JSON {"eps": "1"}"#, "bad JSON"),
        (br#"JSON {"eps": null}"#, "bad JSON"),
        (br#"JSON {"named_metrics": 1}"#, "bad JSON"),
        (br#"JSON {"eps": 1e999}"#, "bad JSON"),
        (br#"JSON {"eps": -1}"#, "number is negative or not finite"),
        (
            br#"JSON {"utilization": {"a": -1}}"#,
            "number is negative or not finite",
        ),
        (br#"JSON {"eps": 1, "eps": 1}"#, "duplicate key"),
        (
            br#"JSON {"rps_fractional": 1, "rpsFractional": 1}"#,
            "duplicate key",
        ),
        (
            br#"JSON {"named_metrics": {}, "namedMetrics": {}}"#,
            "duplicate key",
        ),
        (
            br#"JSON {"named_metrics": {"a": 1, "a": 2}}"#,
            "duplicate key",
        ),
        (br#"JSON {"x": 1, "y": 2, "x": [3]}"#, "duplicate key"),
    ];
    for &(input, reason) in cases {
        let got = parse(input).map_err(Malformed::reason);
        assert_eq!(got, Err(reason), "{:?}", String::from_utf8_lossy(input));
    }
}

#[test]
fn load_report_at_the_size_limit_is_read() {
    let mut value = b"TEXT eps=1".to_vec();
    value.resize(MAX_REPORT_BYTES, b' ');
    assert_eq!(parse(&value).unwrap().eps, 1.0);
}

#[test]
fn load_report_negative_zero_reads_as_zero() {
    let r = parse(b"TEXT eps=-0").unwrap();
    assert!(r.eps == 0.0 && r.eps.is_sign_positive());
}

#[test]
fn load_report_weight_follows_grfc_a58() {
    // 100 qps at 0.5 utilization, 10 errors/s counted as 10/100 more utilization.
    let r = Report {
        eps: 10.0,
        ..report(100.0, 0.5)
    };
    assert!(close(r.weight(1.0).unwrap(), 100.0 / 0.6));
    assert!(close(r.weight(0.0).unwrap(), 200.0));
    // A nonsense penalty counts as none rather than making the weight NaN.
    assert!(close(r.weight(f64::NAN).unwrap(), 200.0));
    assert!(close(r.weight(-1.0).unwrap(), 200.0));
    // The application's utilization wins over CPU; CPU is used without it.
    let cpu = Report {
        cpu_utilization: 0.25,
        ..report(100.0, 0.0)
    };
    assert_eq!(cpu.weight(1.0), Some(400.0));
    let both = Report {
        cpu_utilization: 0.25,
        ..report(100.0, 0.5)
    };
    assert_eq!(both.weight(1.0), Some(200.0));
    assert_eq!(report(0.0, 0.5).weight(1.0), None);
    assert_eq!(report(100.0, 0.0).weight(1.0), None);
    assert_eq!(report(f64::MAX, f64::MIN_POSITIVE).weight(1.0), None);
}

const BLACKOUT: Duration = Duration::from_secs(10);
const EXPIRY: Duration = Duration::from_secs(180);

#[test]
fn load_report_weight_waits_out_the_blackout() {
    let backend = LoadReports::new();
    let t0 = Instant::now();
    assert_eq!(backend.weight(t0, BLACKOUT, EXPIRY), None);
    backend.record(&report(100.0, 0.5), 1.0, t0);
    let s = Duration::from_secs(1);
    assert_eq!(backend.weight(t0 + BLACKOUT - s, BLACKOUT, EXPIRY), None);
    backend.record(&report(100.0, 0.5), 1.0, t0 + BLACKOUT - s);
    assert_eq!(backend.weight(t0 + BLACKOUT, BLACKOUT, EXPIRY), Some(200.0));
    // No blackout: the first weight counts at once.
    let fresh = LoadReports::new();
    fresh.record(&report(100.0, 0.5), 1.0, t0);
    assert_eq!(fresh.weight(t0, Duration::ZERO, EXPIRY), Some(200.0));
}

#[test]
fn load_report_expiry_forgets_and_blackout_applies_again() {
    let backend = LoadReports::new();
    let t0 = Instant::now();
    backend.record(&report(100.0, 0.5), 1.0, t0);
    let s = Duration::from_secs(1);
    assert_eq!(
        backend.weight(t0 + EXPIRY - s, BLACKOUT, EXPIRY),
        Some(200.0)
    );
    assert_eq!(backend.weight(t0 + EXPIRY, BLACKOUT, EXPIRY), None);
    // Reports resume: a new blackout, and the old weight is not averaged in.
    let t1 = t0 + EXPIRY + s;
    backend.record(&report(100.0, 0.25), 1.0, t1);
    assert_eq!(backend.weight(t1 + BLACKOUT - s, BLACKOUT, EXPIRY), None);
    assert_eq!(backend.weight(t1 + BLACKOUT, BLACKOUT, EXPIRY), Some(400.0));
}

#[test]
fn load_report_reports_without_a_weight_change_nothing() {
    let backend = LoadReports::new();
    let t0 = Instant::now();
    backend.record(&report(0.0, 0.5), 1.0, t0);
    assert_eq!(
        backend.weight(t0 + EXPIRY - BLACKOUT, BLACKOUT, EXPIRY),
        None
    );
    backend.record(&report(100.0, 0.5), 1.0, t0);
    // Weightless reports neither refresh the weight nor restart the blackout.
    let t1 = t0 + BLACKOUT;
    backend.record(&report(0.0, 0.9), 1.0, t1);
    assert_eq!(backend.weight(t1, BLACKOUT, EXPIRY), Some(200.0));
    backend.record(
        &report(100.0, 0.0),
        1.0,
        t0 + EXPIRY - Duration::from_secs(1),
    );
    assert_eq!(backend.weight(t0 + EXPIRY, BLACKOUT, EXPIRY), None);
}

#[test]
fn load_report_one_odd_report_moves_the_weight_by_alpha() {
    let backend = LoadReports::new();
    let t0 = Instant::now();
    backend.record(&report(100.0, 0.5), 1.0, t0);
    backend.record(&report(100.0, 0.1), 1.0, t0);
    let w = backend.weight(t0 + BLACKOUT, BLACKOUT, EXPIRY).unwrap();
    assert!(close(w, 200.0 + EWMA_ALPHA * (1000.0 - 200.0)), "{w}");
    // A lasting change is taken in after a few more reports.
    for _ in 0..20 {
        backend.record(&report(100.0, 0.1), 1.0, t0);
    }
    let w = backend.weight(t0 + BLACKOUT, BLACKOUT, EXPIRY).unwrap();
    assert!((w - 1000.0).abs() < 1.0, "{w}");
}

#[test]
fn load_report_utilization_is_the_latest_reported_until_it_expires() {
    let backend = LoadReports::new();
    let t0 = Instant::now();
    assert_eq!(backend.utilization(t0, EXPIRY), None);
    backend.record(&report(100.0, 0.5), 1.0, t0);
    assert_eq!(backend.utilization(t0, EXPIRY), Some(0.5));
    let cpu_only = Report {
        cpu_utilization: 0.7,
        ..Report::default()
    };
    backend.record(&cpu_only, 1.0, t0);
    assert_eq!(backend.utilization(t0, EXPIRY), Some(0.7));
    assert_eq!(backend.utilization(t0 + EXPIRY, EXPIRY), None, "gone quiet");
}

fn weights(configured: &[u32], reported: &[Option<f64>]) -> Vec<f64> {
    let mut out = vec![123.0];
    effective_weights(configured, reported, &mut out);
    out
}

#[test]
fn load_report_half_the_utilization_gets_twice_the_weight() {
    let t0 = Instant::now();
    let backends: Vec<LoadReports> = (0..3).map(|_| LoadReports::new()).collect();
    for (b, utilization) in backends.iter().zip([0.25, 0.5, 0.5]) {
        b.record(&report(100.0, utilization), 1.0, t0);
    }
    let now = t0 + BLACKOUT;
    let reported: Vec<_> = backends
        .iter()
        .map(|b| b.weight(now, BLACKOUT, EXPIRY))
        .collect();
    let w = weights(&[10, 10, 10], &reported);
    // Reports 400, 200, 200 around a mean of 266.7, on the configured mean of 10.
    assert!(
        close(w[0], 15.0) && close(w[1], 7.5) && close(w[2], 7.5),
        "{w:?}"
    );
    assert!(close(w[0], 2.0 * w[1]));
}

#[test]
fn load_report_equal_reports_give_the_configured_mean() {
    let w = weights(&[1, 2, 6], &[Some(50.0), Some(50.0), Some(50.0)]);
    assert!(w.iter().all(|&w| close(w, 3.0)), "{w:?}");
}

#[test]
fn load_report_no_reports_leave_configured_weights() {
    assert_eq!(weights(&[5, 0, 7], &[None, None, None]), [5.0, 0.0, 7.0]);
    assert_eq!(weights(&[5, 7], &[]), [5.0, 7.0]);
    assert_eq!(weights(&[], &[Some(1.0)]), Vec::<f64>::new());
}

#[test]
fn load_report_expired_reporter_gets_its_configured_weight() {
    let t0 = Instant::now();
    let backends: Vec<LoadReports> = (0..3).map(|_| LoadReports::new()).collect();
    for b in &backends {
        b.record(&report(100.0, 0.5), 1.0, t0);
    }
    // The third stops reporting; the others go on.
    let later = t0 + EXPIRY;
    for b in &backends[..2] {
        b.record(&report(100.0, 0.5), 1.0, later - Duration::from_secs(1));
    }
    let reported: Vec<_> = backends
        .iter()
        .map(|b| b.weight(later, BLACKOUT, EXPIRY))
        .collect();
    assert_eq!(reported, [Some(200.0), Some(200.0), None]);
    assert_eq!(weights(&[4, 8, 30], &reported), [6.0, 6.0, 30.0]);
}

#[test]
fn load_report_zero_configured_stays_zero() {
    let w = weights(&[0, 10, 10], &[Some(1000.0), Some(100.0), Some(100.0)]);
    assert_eq!(w, [0.0, 10.0, 10.0]);
}

#[test]
fn load_report_wild_reports_are_clamped() {
    // Twelve reporters: the wild one is held to ten times the mean of 10.
    let mut reported = vec![Some(1.0); 12];
    reported[0] = Some(1e12);
    let w = weights(&[10; 12], &reported);
    assert_eq!(w[0], 100.0);
    assert!(w[1..].iter().all(|&w| w == 1.0), "{w:?}");
    // Four: it cannot pass four times the mean, and the others keep a tenth.
    let w = weights(&[10; 4], &[Some(1e12), Some(1.0), Some(1.0), Some(1.0)]);
    assert!(close(w[0], 40.0) && w[1..] == [1.0, 1.0, 1.0], "{w:?}");
}

#[test]
fn load_report_odd_reported_values_are_ignored() {
    let reported = [
        Some(f64::NAN),
        Some(f64::INFINITY),
        Some(-1.0),
        Some(0.0),
        Some(2.0),
    ];
    let w = weights(&[1, 2, 3, 4, 5], &reported);
    assert_eq!(w, [1.0, 2.0, 3.0, 4.0, 5.0]);
    let huge = weights(&[1, 1], &[Some(f64::MAX), Some(f64::MAX)]);
    assert_eq!(huge, [1.0, 1.0]);
}
