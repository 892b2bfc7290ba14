//! docs/METRICS.md lists every metric `troupe::telemetry::names` defines, with the type its
//! description gives it, and nothing else: the catalog cannot drift from the code.

use std::collections::BTreeMap;

/// name -> (constant, type) from telemetry.rs: `pub const X: &str = "troupe_..."` and the
/// `describe_{counter,gauge,histogram}!(X, ...)` calls.
fn from_code() -> BTreeMap<String, String> {
    let src = include_str!("../src/telemetry.rs");
    let mut consts = BTreeMap::new();
    for line in src.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("pub const ") {
            let (ident, value) = rest.split_once(": &str = ").expect("pub const X: &str = \"..\";");
            let value = value.trim_end_matches(';').trim_matches('"');
            consts.insert(ident.to_string(), value.to_string());
        }
    }
    let mut typed = BTreeMap::new();
    for kind in ["counter", "gauge", "histogram"] {
        let call = format!("describe_{kind}!(");
        for (at, _) in src.match_indices(&call) {
            let ident: String = src[at + call.len()..]
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let name = consts
                .get(&ident)
                .unwrap_or_else(|| panic!("{call}{ident}: not a metric name"));
            assert!(
                typed.insert(name.clone(), kind.to_string()).is_none(),
                "{name} described twice"
            );
        }
    }
    for name in consts.values() {
        assert!(typed.contains_key(name), "{name} has no description in telemetry.rs");
    }
    typed
}

/// name -> type from the catalog's table rows: "| `name` | type | labels | meaning |".
fn from_catalog() -> BTreeMap<String, String> {
    let doc = include_str!("../../docs/METRICS.md");
    let mut out = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with("`troupe_") {
            continue;
        }
        let name = cells[1].trim_matches('`').to_string();
        assert!(
            out.insert(name.clone(), cells[2].to_string()).is_none(),
            "{name} listed twice in docs/METRICS.md"
        );
    }
    out
}

#[test]
fn the_catalog_lists_every_metric_with_its_type() {
    let code = from_code();
    let catalog = from_catalog();
    assert!(code.len() > 40, "parsed {} metrics from telemetry.rs", code.len());
    for (name, kind) in &code {
        match catalog.get(name) {
            Some(k) => assert_eq!(k, kind, "{name}: docs/METRICS.md says {k}, the code {kind}"),
            None => panic!("{name} ({kind}) is missing from docs/METRICS.md"),
        }
    }
    for name in catalog.keys() {
        assert!(
            code.contains_key(name),
            "docs/METRICS.md lists {name}, which the code does not define"
        );
    }
}
