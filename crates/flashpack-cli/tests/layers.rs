//! The CLI's modules import each other one way only: every `crate::` edge in the code (not the
//! comments) of `src/*.rs` runs from a higher layer to a lower one of the table below, so there
//! is no import circle (as the Python package's import-graph test holds for the package). A new
//! module must be given a layer here; an edge against the table, or any circle, fails with the
//! edges named.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each module of `src/` and its layer: a module may use only modules of lower layers.
const LAYERS: &[(&str, u32)] = &[
    // Leaves: the error type, number/table formatting, byte sums, signals.
    ("error", 0),
    ("format", 1),
    ("touch", 1),
    ("interrupt", 1),
    // What the commands read: a local path or a URL.
    ("location", 2),
    // The parser (argument types come from the commands' modules below it).
    ("convert", 3),
    ("args", 4),
    // One module per subcommand.
    ("inspect", 3),
    ("metadata", 3),
    ("verify", 3),
    ("bench", 3),
    // Runs a parsed command line.
    ("run", 5),
    // The crate root and the binary.
    ("lib", 6),
    ("main", 7),
];

/// `module -> modules it names through `crate::` (or `flashpack_cli::` for the binary)`.
fn edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<&str> = LAYERS.iter().map(|(m, _)| *m).collect();
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        // Code only: a doc link to a higher module (`[`crate::run::Outcome`]`) is no import.
        let text: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut used = BTreeSet::new();
        for prefix in ["crate::", "flashpack_cli::"] {
            for (at, _) in text.match_indices(prefix) {
                // `crate::{a, b}` and `crate::a::...`: every module named right after the prefix.
                let rest = &text[at + prefix.len()..];
                let names: Vec<&str> = match rest.strip_prefix('{') {
                    Some(group) => group
                        .split('}')
                        .next()
                        .unwrap_or("")
                        .split(',')
                        .map(|n| n.trim().split("::").next().unwrap_or("").trim())
                        .collect(),
                    None => vec![rest
                        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()
                        .unwrap_or("")],
                };
                for n in names {
                    if modules.contains(n) && n != name {
                        used.insert(n.to_string());
                    }
                }
            }
        }
        graph.insert(name, used);
    }
    graph
}

/// A circle in `graph`, if there is one (as the list of modules around it).
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut around = path[at..].to_vec();
            around.push(node.to_string());
            return Some(around);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn modules_import_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = edges(&src);
    let layer: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let unknown: Vec<&String> = graph
        .keys()
        .filter(|m| !layer.contains_key(m.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "modules without a layer in LAYERS: {unknown:?}"
    );
    let against: Vec<String> = graph
        .iter()
        .flat_map(|(from, to)| to.iter().map(move |to| (from, to)))
        .filter(|(from, to)| layer[from.as_str()] <= layer[to.as_str()])
        .map(|(from, to)| format!("{from} -> {to}"))
        .collect();
    assert!(
        against.is_empty(),
        "imports against the layer order: {against:?}"
    );
    assert_eq!(circle(&graph), None, "an import circle");
}

#[test]
fn the_checks_see_a_circle_and_an_edge_upward() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    let c = circle(&graph).expect("a circle");
    assert_eq!(c.first(), c.last());
    assert_eq!(c.len(), 4, "{c:?}");

    // The scan finds `crate::x` and `crate::{x, y::z}` edges; the real sources have some.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let real = edges(&src);
    assert!(
        real["run"].contains("convert") && real["run"].contains("bench"),
        "{real:?}"
    );
    assert!(real["convert"].contains("location"), "{real:?}");
}
