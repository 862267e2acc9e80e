//! The module graph is a pipeline (ARCHITECTURE.md, "Module graph"): no top-level module
//! of `agent/src` may reach itself through `crate::` paths. Read from the sources, as
//! rust-analyzer's tidy tests do: every `crate::<module>` outside comments and unit tests
//! is an edge; a cycle fails with the files and lines that make it.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Top-level module -> module it names -> where (file:line).
type Graph = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Whether a file holds only tests (`tests.rs`, `*_tests.rs`, files under `tests/`).
fn test_only(path: &Path) -> bool {
    path.components().any(|c| c.as_os_str() == "tests")
        || path
            .file_stem()
            .and_then(|s| s.to_str())
            .is_some_and(|s| s == "tests" || s.ends_with("_tests"))
}

/// The `crate::<name>` paths of `source` with their line numbers, outside comments and
/// the trailing `#[cfg(test)] mod tests`.
fn crate_paths(source: &str) -> Vec<(usize, String)> {
    let source = match source.find("#[cfg(test)]\nmod tests") {
        Some(at) => &source[..at],
        None => source,
    };
    let mut out = Vec::new();
    for (n, line) in source.lines().enumerate() {
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            // `nhi_crate::x` or `$crate::x` are not ours.
            let before = rest[..at].chars().next_back();
            rest = &rest[at + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((n + 1, name));
            }
        }
    }
    out
}

fn graph(src: &Path) -> Graph {
    let mut modules = BTreeSet::new();
    for entry in fs::read_dir(src).expect("read src") {
        let path = entry.expect("entry").path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir()
            || (path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main")
        {
            modules.insert(name);
        }
    }
    let mut graph = Graph::new();
    for module in &modules {
        let mut files = Vec::new();
        let dir = src.join(module);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
        let file = src.join(format!("{module}.rs"));
        if file.is_file() {
            files.push(file);
        }
        let edges = graph.entry(module.clone()).or_default();
        for file in files
            .iter()
            .filter(|f| !test_only(f.strip_prefix(src).unwrap()))
        {
            let text = fs::read_to_string(file).expect("read source");
            for (line, target) in crate_paths(&text) {
                if &target != module && modules.contains(&target) {
                    edges.entry(target).or_default().push(format!(
                        "{}:{line}",
                        file.strip_prefix(src).unwrap().display()
                    ));
                }
            }
        }
    }
    graph
}

/// One cycle, if there is any: the modules in order, the first repeated at the end.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(|e| e.keys()) {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_module_graph_has_no_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    assert!(
        graph.len() > 10 && graph["journal"].contains_key("evidence"),
        "the graph was not read: {graph:#?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("{} -> {}: {:?}", w[0], w[1], graph[&w[0]][&w[1]]))
            .collect();
        panic!("import cycle {}:\n{}", cycle.join(" -> "), steps.join("\n"));
    }
}

#[test]
fn a_cycle_is_found_and_comments_and_tests_do_not_count() {
    let paths = crate_paths(
        "use crate::a::X;\n// crate::b in a comment\nlet y = crate::c::f(); // crate::d\n\
         $crate::e; nhi_crate::f;\n#[cfg(test)]\nmod tests {\n    use crate::g;\n}\n",
    );
    assert_eq!(
        paths,
        vec![(1, "a".to_owned()), (3, "c".to_owned())],
        "only code outside unit tests"
    );
    let edge = |a: &str, b: &str| (a.to_owned(), BTreeMap::from([(b.to_owned(), vec![])]));
    let acyclic: Graph = [edge("a", "b"), edge("b", "c")].into_iter().collect();
    assert_eq!(find_cycle(&acyclic), None);
    let cyclic: Graph = [edge("a", "b"), edge("b", "c"), edge("c", "a")]
        .into_iter()
        .collect();
    assert_eq!(
        find_cycle(&cyclic),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
