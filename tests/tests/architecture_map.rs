//! docs/ARCHITECTURE.md's crate graph is the real one: its `crate-graph` block lists, for
//! every workspace crate, the workspace crates it depends on (and, after `dev:`, those it
//! uses only in tests), and this test compares that with `cargo metadata`. A new edge, a
//! removed one or a new crate fails here until the map says so.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Each crate's normal and dev-only workspace dependencies.
type Graph = BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>;

/// Reads the fenced `crate-graph` block of the architecture map.
fn documented(map: &str) -> Result<Graph, String> {
    let block = map
        .split("```crate-graph\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .ok_or("docs/ARCHITECTURE.md has no ```crate-graph block")?;
    let names = |list: &str| -> BTreeSet<String> {
        list.split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut graph = Graph::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let (name, rest) = line
            .split_once("->")
            .ok_or_else(|| format!("a line without `->`: {line:?}"))?;
        let (normal, dev) = match rest.split_once("(dev:") {
            Some((normal, dev)) => (
                normal,
                dev.trim()
                    .strip_suffix(')')
                    .ok_or_else(|| format!("an unclosed (dev: in {line:?}"))?,
            ),
            None => (rest, ""),
        };
        let previous = graph.insert(name.trim().to_owned(), (names(normal), names(dev)));
        if previous.is_some() {
            return Err(format!("{} is listed twice", name.trim()));
        }
    }
    Ok(graph)
}

/// The workspace's own dependency edges, from `cargo metadata`: build and normal
/// dependencies (of any target) as normal, dev-dependencies not also normal as dev.
fn actual(metadata: &serde_json::Value) -> Graph {
    let packages = metadata["packages"].as_array().expect("packages");
    let members: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut graph = Graph::new();
    for package in packages {
        let (mut normal, mut dev) = (BTreeSet::new(), BTreeSet::new());
        for dependency in package["dependencies"].as_array().expect("dependencies") {
            let name = dependency["name"].as_str().expect("a dependency's name");
            if !members.contains(name) {
                continue;
            }
            if dependency["kind"].as_str() == Some("dev") {
                dev.insert(name.to_owned());
            } else {
                normal.insert(name.to_owned());
            }
        }
        let dev = dev.difference(&normal).cloned().collect();
        let name = package["name"].as_str().expect("a package's name");
        graph.insert(name.to_owned(), (normal, dev));
    }
    graph
}

#[test]
fn the_architecture_map_lists_the_real_crate_graph() {
    let root = cloister_tests::workspace_root();
    let map = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let documented = documented(&map).unwrap();
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(&root)
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let actual = actual(&serde_json::from_slice(&output.stdout).unwrap());
    let line = |name: &str, (normal, dev): &(BTreeSet<String>, BTreeSet<String>)| {
        let list = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
        let mut text = format!("{name} -> {}", list(normal));
        if !dev.is_empty() {
            text.push_str(&format!(" (dev: {})", list(dev)));
        }
        text.trim_end().to_owned()
    };
    let render = |graph: &Graph| -> String {
        graph
            .iter()
            .map(|(name, edges)| line(name, edges) + "\n")
            .collect()
    };
    assert_eq!(
        render(&documented),
        render(&actual),
        "docs/ARCHITECTURE.md's crate-graph block (left) differs from cargo metadata (right); \
         the right side is what the block should say"
    );
}

#[test]
fn the_block_reader_takes_edges_and_dev_edges_and_refuses_a_malformed_line() {
    let map = "x\n```crate-graph\na -> b, c (dev: d)\nb ->\n```\n";
    let graph = documented(map).unwrap();
    assert_eq!(
        graph["a"].0,
        BTreeSet::from(["b".to_owned(), "c".to_owned()])
    );
    assert_eq!(graph["a"].1, BTreeSet::from(["d".to_owned()]));
    assert!(graph["b"].0.is_empty() && graph["b"].1.is_empty());
    assert!(documented("```crate-graph\na b\n```").is_err());
    assert!(documented("```crate-graph\na -> b (dev: c\n```").is_err());
    assert!(documented("```crate-graph\na ->\na -> b\n```").is_err());
    assert!(documented("no block").is_err());
}
