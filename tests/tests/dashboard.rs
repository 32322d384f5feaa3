//! Issue #29 item 5: the Grafana dashboard (`docs/grafana/vigil.json`) queries only
//! metrics vigil exports. Every `vigil_*` name in its queries must be a family in a
//! running vigil's `/metrics` (a histogram's `_bucket`, `_sum` and `_count` count as its
//! family), after one request, when every family the dashboard shows is present.

use vigil_tests::config::{pool, FAST_CHECKS};
use vigil_tests::{get, start_vigil, FakeBackend};

/// The `vigil_*` names in every query (`expr`) of a Grafana dashboard.
fn queried(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(q)) => out.extend(names(q)),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out.sort();
    out.dedup();
    out
}

/// The metric names (`vigil_` and the letters, digits and `_` after it) in a query.
fn names(query: &str) -> Vec<String> {
    let b = query.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = query[i..].find("vigil_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        // Part of a longer identifier (`xvigil_`) is no metric name.
        if start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_') {
            out.push(query[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The families a `/metrics` text declares (`# TYPE name kind`).
fn families(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

/// The names of `queried` that no family of `exported` accounts for.
fn missing(queried: &[String], exported: &[&str]) -> Vec<String> {
    queried
        .iter()
        .filter(|q| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| q.strip_suffix(s))
                .unwrap_or(q);
            !exported.contains(&q.as_str()) && !exported.contains(&base)
        })
        .cloned()
        .collect()
}

#[test]
fn names_and_families_are_read_as_prometheus_writes_them() {
    assert_eq!(
        names("sum(rate(vigil_requests_total{pool=~\"$pool\"}[5m])) / xvigil_no"),
        ["vigil_requests_total"]
    );
    let exported = families("# HELP vigil_a_seconds x\n# TYPE vigil_a_seconds histogram\nvigil_a_seconds_bucket{le=\"1\"} 0\n");
    assert_eq!(exported, ["vigil_a_seconds"]);
    let q = [
        "vigil_a_seconds_bucket".to_string(),
        "vigil_b_total".to_string(),
    ];
    assert_eq!(missing(&q, &exported), ["vigil_b_total"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_metrics_vigil_exports() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grafana/vigil.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let queried = queried(&dashboard);
    assert!(
        queried.len() >= 10,
        "only {} metrics found in the dashboard's queries: {queried:?}",
        queried.len()
    );
    let b = FakeBackend::start("b").await;
    let v = start_vigil("", &[pool("web", &[(&b, 1)], FAST_CHECKS)]).await;
    assert_eq!(get(v.listen, "app", "/").await.unwrap().status, 200);
    let metrics = v.admin_get("/metrics").await.body;
    let missing = missing(&queried, &families(&metrics));
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics vigil does not export: {missing:?}"
    );
}
