//! The documentation against what it documents: every table and key of
//! `examples/sipfilter.toml` (the commented-out example tables too, such as `[crowdsec]`) has
//! its place in `docs/configuration.md`; every command, subcommand and long option that
//! `sipfilter --help` lists is in `docs/cli.md`; and every relative link in `README.md` and
//! `docs/*.md` reaches a file that exists and, for a `#anchor`, a heading (or `<a id>`) in it.
//!
//! Needs no root; the CLI check runs `target/<profile>/sipfilter` (`cargo xtask test` builds
//! it; by hand: `cargo build -p sipfilter`).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use sipfilter_tests::agent::sipfilter_bin;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The markdown files under test: the README and everything in docs/.
fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// Lines outside fenced code blocks.
fn prose_lines(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// `(table, key)` for every key of the example configuration, "" being the top level. A
/// commented-out table (`# [crowdsec]`) counts, with its commented-out `# key = value` lines;
/// other comments are prose.
fn example_keys() -> Vec<(String, String)> {
    let text = read(&root().join("examples/sipfilter.toml"));
    let mut table = String::new();
    let mut commented_table = false;
    let mut keys = Vec::new();
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    for line in text.lines() {
        let (commented, body) = match line.trim().strip_prefix('#') {
            Some(rest) => (true, rest.trim()),
            None => (false, line.trim()),
        };
        if let Some(name) = body.strip_prefix('[').and_then(|b| b.strip_suffix(']')) {
            if name.split('.').all(ident) {
                table = name.to_string();
                commented_table = commented;
                continue;
            }
        }
        if commented && !commented_table {
            continue;
        }
        if let Some((key, _)) = body.split_once('=') {
            let key = key.trim();
            if ident(key) {
                keys.push((table.clone(), key.to_string()));
            }
        }
    }
    keys
}

/// Each heading's section: the heading line and the lines up to the next heading.
fn sections(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in prose_lines(text) {
        if line.starts_with('#') {
            out.push((line.to_string(), String::new()));
        } else if let Some(last) = out.last_mut() {
            last.1.push_str(line);
            last.1.push('\n');
        }
    }
    out
}

#[test]
fn every_configuration_key_is_documented() {
    let keys = example_keys();
    // The parser must see the file, or this test proves nothing.
    assert!(
        keys.len() >= 50,
        "only {} keys found in examples/sipfilter.toml",
        keys.len()
    );
    for must in [
        ("", "monitor"),
        ("crowdsec", "url"),
        ("agent", "metrics_listen"),
        ("trust.unknown_limits.other", "burst"),
    ] {
        assert!(
            keys.contains(&(must.0.to_string(), must.1.to_string())),
            "the example parser missed {must:?}"
        );
    }
    let doc_path = root().join("docs/configuration.md");
    let doc = read(&doc_path);
    let sections = sections(&doc);
    let mut missing = Vec::new();
    for (table, key) in &keys {
        let (name, heading_mark) = if table.is_empty() {
            ("top level".to_string(), "Top level".to_string())
        } else {
            (format!("[{table}]"), format!("`[{table}]`"))
        };
        let Some((_, body)) = sections.iter().find(|(h, _)| h.contains(&heading_mark)) else {
            missing.push(format!("no heading naming {heading_mark} (for {name} {key})"));
            continue;
        };
        if !body.contains(&format!("`{key}`")) {
            missing.push(format!("{name} `{key}` is not under its heading"));
        }
    }
    assert!(
        missing.is_empty(),
        "{} lacks what examples/sipfilter.toml has:\n  {}",
        doc_path.display(),
        missing.join("\n  ")
    );
}

/// The subcommands and long options of `sipfilter ARGS --help`.
fn help(args: &[&str]) -> (Vec<String>, Vec<String>) {
    let out = Command::new(sipfilter_bin())
        .args(args)
        .arg("--help")
        .output()
        .expect("run sipfilter --help");
    assert!(out.status.success(), "sipfilter {args:?} --help failed: {out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8 help");
    let mut commands = Vec::new();
    let mut options = Vec::new();
    let mut in_commands = false;
    for line in text.lines() {
        if line.ends_with(':') && !line.starts_with(' ') {
            in_commands = line == "Commands:";
            continue;
        }
        let word = line.split_whitespace().next().unwrap_or("");
        if in_commands && line.starts_with("  ") && !line.starts_with("   ") && word != "help" {
            commands.push(word.to_string());
        }
        // An option line: `--flag …` or `-f, --flag …`.
        let mut option = line.trim_start();
        if option.starts_with('-') && !option.starts_with("--") {
            option = option.split_once(", ").map_or("", |(_, long)| long);
        }
        if let Some(flag) = option.strip_prefix("--") {
            let flag: String = flag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !flag.is_empty() {
                options.push(flag);
            }
        }
    }
    (commands, options)
}

#[test]
fn every_command_and_option_is_documented() {
    let doc_path = root().join("docs/cli.md");
    let doc = read(&doc_path);
    let headings: BTreeSet<String> = prose_lines(&doc)
        .iter()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_string())
        .collect();
    let (commands, _) = help(&[]);
    assert!(commands.len() >= 10, "only {commands:?} found in `sipfilter --help`");
    let mut missing = Vec::new();
    let mut options: BTreeMap<String, String> = BTreeMap::new();
    for command in &commands {
        if !headings.contains(command) {
            missing.push(format!("no `## {command}` heading"));
        }
        let (subcommands, opts) = help(&[command]);
        for o in opts {
            options.entry(o).or_insert_with(|| command.clone());
        }
        for sub in subcommands {
            if !doc.contains(&format!("sipfilter {command} {sub}")) {
                missing.push(format!("`sipfilter {command} {sub}` is never named"));
            }
            for o in help(&[command, &sub]).1 {
                options.entry(o).or_insert_with(|| format!("{command} {sub}"));
            }
        }
    }
    assert!(
        options.contains_key("pin-dir") && options.contains_key("json"),
        "option parser found {options:?}"
    );
    for (option, command) in &options {
        if matches!(option.as_str(), "help" | "version") {
            continue;
        }
        if !doc.contains(&format!("--{option}")) {
            missing.push(format!("`--{option}` (of `sipfilter {command}`) is never named"));
        }
    }
    assert!(
        missing.is_empty(),
        "{} lacks what `sipfilter --help` lists:\n  {}",
        doc_path.display(),
        missing.join("\n  ")
    );
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors a markdown file offers: its headings' slugs (repeats numbered as GitHub does)
/// and explicit `<a id="…">`s.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for line in prose_lines(text) {
        if line.starts_with('#') {
            let base = slug(line.trim_start_matches('#'));
            let n = seen.entry(base.clone()).or_insert(0);
            out.insert(if *n == 0 { base.clone() } else { format!("{base}-{n}") });
            *n += 1;
        }
        let mut rest = line;
        while let Some(i) = rest.find("<a id=\"").or_else(|| rest.find("<a name=\"")) {
            let after = &rest[i..];
            let start = after.find('"').expect("quote") + 1;
            let len = after[start..].find('"').unwrap_or(0);
            out.insert(after[start..start + len].to_string());
            rest = &after[start + len..];
        }
    }
    out
}

/// Every `](target)` in the prose of a markdown file, inline code spans left out.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose_lines(text) {
        // Drop `code spans`, which may hold brackets that are not links.
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            }
        }
        let mut rest = plain.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let end = after.find(')').unwrap_or(after.len());
            out.push(after[..end].trim().to_string());
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn every_relative_link_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = read(&file);
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match link.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (link.as_str(), None),
            };
            let target = if path.is_empty() {
                file.clone()
            } else {
                file.parent().expect("folder").join(path)
            };
            let shown = format!("{}: ({link})", file.strip_prefix(root()).unwrap_or(&file).display());
            if !target.exists() {
                broken.push(format!("{shown}: {} does not exist", target.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                if target.extension().is_some_and(|x| x == "md") && !anchors(&read(&target)).contains(anchor) {
                    broken.push(format!("{shown}: no heading #{anchor} there"));
                }
            }
        }
    }
    assert!(
        checked >= 50,
        "only {checked} relative links found: is the link parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n  {}", broken.join("\n  "));
}

#[test]
fn the_parsers_of_this_test_work() {
    assert_eq!(slug(" The agent: `sipfilter run`"), "the-agent-sipfilter-run");
    assert_eq!(slug(" Debian 12's 6.1"), "debian-12s-61");
    assert_eq!(
        slug(" Reading the request: scanners, destinations, call bursts"),
        "reading-the-request-scanners-destinations-call-bursts"
    );
    assert_eq!(
        links("see [a](b.md#c) and `[x](y)` and [d](https://e)"),
        ["b.md#c", "https://e"]
    );
    let a = anchors("# T\n## Same\n## Same\n<a id=\"old-name\"></a>\n```\n# not a heading\n```\n");
    assert_eq!(
        a,
        ["old-name", "same", "same-1", "t"]
            .into_iter()
            .map(String::from)
            .collect()
    );
}
