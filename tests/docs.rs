//! The attribute reference (`docs/attributes.md`) and the UI suite (`tests/ui/fail/`) name the
//! same compile errors: every trybuild case is listed in the reference, and every case the
//! reference lists exists.

use std::collections::BTreeSet;
use std::path::Path;

/// The names in the last column of every Markdown table of `doc` whose last header cell is
/// `case`: each a backticked case name, several per cell allowed.
fn cases_named_in(doc: &str) -> BTreeSet<String> {
    fn cells(line: &str) -> Vec<&str> {
        let line = line.trim().trim_start_matches('|').trim_end_matches('|');
        line.split('|').map(str::trim).collect()
    }
    let mut names = BTreeSet::new();
    let mut in_case_table = false;
    for line in doc.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            in_case_table = false;
            continue;
        }
        let row = cells(line);
        let last = row.last().copied().unwrap_or_default();
        if !in_case_table {
            // A table starts with its header row.
            in_case_table = last == "case";
            continue;
        }
        if last.chars().all(|c| matches!(c, '-' | ':')) {
            continue; // the separator row
        }
        for (i, part) in last.split('`').enumerate() {
            // Odd parts are inside backticks.
            if i % 2 == 1 {
                names.insert(part.to_string());
            } else {
                assert!(
                    part.chars().all(|c| c == ',' || c.is_whitespace()),
                    "the case cell `{last}` has text outside backticks: {part:?}"
                );
            }
        }
    }
    names
}

/// The stems of `tests/ui/fail/*.rs`.
fn fail_cases(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| {
            p.file_stem()
                .expect("a file name")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

#[test]
fn attribute_reference_names_exactly_the_ui_fail_cases() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc_path = root.join("../docs/attributes.md");
    let doc = std::fs::read_to_string(&doc_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", doc_path.display()));
    let named = cases_named_in(&doc);
    let cases = fail_cases(&root.join("ui/fail"));
    assert!(!cases.is_empty(), "no UI cases found");

    let undocumented: Vec<_> = cases.difference(&named).collect();
    let unknown: Vec<_> = named.difference(&cases).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/attributes.md and tests/ui/fail/ disagree:\n  cases not named in the doc: \
         {undocumented:?}\n  names in the doc without a case: {unknown:?}"
    );
}

/// The parser itself: a table is a case table only if its header ends with `case`, and a cell
/// may name several cases.
#[test]
fn case_tables_are_recognised() {
    let doc = "\
| a | case |
|---|---|
| x | `one`, `two` |

| key | default |
|---|---|
| `not_a_case` | 1 |

| misuse | error | case |
|---|---|---|
| y | `msg` in the middle | `three` |
";
    let names: Vec<_> = cases_named_in(doc).into_iter().collect();
    assert_eq!(names, ["one", "three", "two"]);
}
