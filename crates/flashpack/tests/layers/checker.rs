//! The import checker behind each crate's `tests/layers.rs` (the engine's and the CLI's): reads
//! every `src/**/*.rs` as text (no compiler involved), collects each file's imports — `use`
//! statements and `crate::…` / `super::…` / `self::…` paths in code — resolves each to the file
//! that defines the name, and reports
//! - an import that runs from a lower layer to a higher one (or sideways, between two modules of
//!   the same layer) of the crate's table, and
//! - files that import each other in a circle (any length, inside one module or across modules).
//!
//! A crate's `lib.rs` is its root and may name anything. Test code (`#[cfg(test)] mod …`, inline or
//! a file of its own such as `checkpoint/tests.rs`) is not read: a unit test may build its
//! fixture with a higher layer. A folder's `mod.rs` that re-exports a child's item
//! (`pub use child::Item`, `pub(crate) use child::Item`) does not depend on that child through
//! the re-export: an import of the re-exported name counts as an edge to the child file that
//! defines it.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path: `[]` is the crate root, `["read", "job"]` is `read/job.rs`.
pub type ModPath = Vec<String>;

#[derive(Default)]
pub struct FileInfo {
    /// The file, relative to `src`, for messages.
    display: String,
    /// Whether the file is a folder's `mod.rs` (or `lib.rs`): its children are `name.rs` beside it.
    is_folder: bool,
    /// Names re-exported by `pub use` / `pub(crate) use`: name -> absolute path of the original.
    reexports: BTreeMap<String, Vec<String>>,
    /// Imports: (line, absolute path as written, whether it is a re-export of a child).
    imports: Vec<(usize, Vec<String>, bool)>,
}

pub struct Crate {
    pub files: BTreeMap<ModPath, FileInfo>,
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn mod_path(rel: &str) -> (ModPath, bool) {
    let stem = rel.trim_end_matches(".rs");
    let mut parts: Vec<String> = stem.split('/').map(str::to_string).collect();
    let last = parts.last().cloned().unwrap_or_default();
    if last == "mod" || (parts.len() == 1 && last == "lib") {
        parts.pop();
        (parts, true)
    } else {
        (parts, false)
    }
}

/// The file's text with comments, string contents and `#[cfg(test)] mod … { … }` blocks blanked
/// out (lines kept, so line numbers stay right).
fn code_lines(text: &str) -> Vec<String> {
    // Blank comments and string/char literal contents first, char by char.
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut block_depth = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if block_depth > 0 {
            if c == '*' && next == Some('/') {
                block_depth -= 1;
                out.push_str("  ");
                i += 2;
            } else if c == '/' && next == Some('*') {
                block_depth += 1;
                out.push_str("  ");
                i += 2;
            } else {
                out.push(if c == '\n' { '\n' } else { ' ' });
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            block_depth = 1;
            out.push_str("  ");
            i += 2;
            continue;
        }
        if c == 'r' && (next == Some('#') || next == Some('"')) {
            // Raw string r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) == Some(&'"')
                && !chars
                    .get(i.wrapping_sub(1))
                    .is_some_and(|p| p.is_alphanumeric() || *p == '_')
            {
                out.push_str(&" ".repeat(j + 1 - i));
                i = j + 1;
                loop {
                    if i >= chars.len() {
                        break;
                    }
                    if chars[i] == '"' && (0..hashes).all(|k| chars.get(i + 1 + k) == Some(&'#')) {
                        out.push_str(&" ".repeat(1 + hashes));
                        i += 1 + hashes;
                        break;
                    }
                    out.push(if chars[i] == '\n' { '\n' } else { ' ' });
                    i += 1;
                }
                continue;
            }
        }
        if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(if chars[i] == '\n' { '\n' } else { ' ' });
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
            continue;
        }
        if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') — not a lifetime ('a).
            let is_char = matches!(
                (next, chars.get(i + 2)),
                (Some('\\'), _) | (Some(_), Some('\''))
            );
            if is_char {
                out.push(' ');
                i += 1;
                while i < chars.len() && chars[i] != '\'' {
                    if chars[i] == '\\' {
                        out.push(' ');
                        i += 1;
                    }
                    out.push(' ');
                    i += 1;
                }
                out.push(' ');
                i += 1;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    // Then drop `#[cfg(test)]` modules by brace counting.
    let mut lines: Vec<String> = out.lines().map(str::to_string).collect();
    let mut k = 0;
    while k < lines.len() {
        if lines[k].trim() == "#[cfg(test)]" {
            let mut m = k + 1;
            while m < lines.len() && lines[m].trim().starts_with("#[") {
                m += 1;
            }
            let t = lines
                .get(m)
                .map(|l| l.trim().to_string())
                .unwrap_or_default();
            let is_mod = t.starts_with("mod ")
                || t.starts_with("pub mod ")
                || t.starts_with("pub(crate) mod ");
            if is_mod && t.contains('{') {
                let mut depth = 0i32;
                let mut end = m;
                'scan: for (n, l) in lines.iter().enumerate().skip(m) {
                    for ch in l.chars() {
                        match ch {
                            '{' => depth += 1,
                            '}' => {
                                depth -= 1;
                                if depth == 0 {
                                    end = n;
                                    break 'scan;
                                }
                            }
                            _ => {}
                        }
                    }
                    end = n;
                }
                for l in lines.iter_mut().take(end + 1).skip(k) {
                    l.clear();
                }
                k = end + 1;
                continue;
            }
        }
        k += 1;
    }
    lines
}

/// Expand a use tree (`a::{b, c::{d as e}, self}`) into full paths; `as` renames are kept as the
/// last segment's alias in the second element.
fn expand_use(tree: &str) -> Vec<(Vec<String>, String)> {
    fn tokens(s: &str) -> Vec<String> {
        let mut t = Vec::new();
        let mut cur = String::new();
        let cs: Vec<char> = s.chars().collect();
        let mut i = 0;
        while i < cs.len() {
            let c = cs[i];
            if c.is_alphanumeric() || c == '_' {
                cur.push(c);
            } else {
                if !cur.is_empty() {
                    t.push(std::mem::take(&mut cur));
                }
                if c == ':' && cs.get(i + 1) == Some(&':') {
                    t.push("::".into());
                    i += 1;
                } else if matches!(c, '{' | '}' | ',' | '*') {
                    t.push(c.to_string());
                }
            }
            i += 1;
        }
        if !cur.is_empty() {
            t.push(cur);
        }
        t
    }
    fn parse(
        toks: &[String],
        pos: &mut usize,
        prefix: Vec<String>,
        out: &mut Vec<(Vec<String>, String)>,
    ) {
        let mut path = prefix;
        while let Some(t) = toks.get(*pos) {
            match t.as_str() {
                "{" => {
                    *pos += 1;
                    loop {
                        match toks.get(*pos).map(String::as_str) {
                            None => return,
                            Some("}") => {
                                *pos += 1;
                                return;
                            }
                            Some(",") => *pos += 1,
                            _ => parse(toks, pos, path.clone(), out),
                        }
                    }
                }
                "::" => *pos += 1,
                "," | "}" => break,
                "*" => {
                    *pos += 1;
                    out.push((path.clone(), "*".into()));
                    return;
                }
                name => {
                    *pos += 1;
                    if name == "self" && !path.is_empty() {
                        let alias = path.last().cloned().unwrap_or_default();
                        out.push((path.clone(), alias));
                        return;
                    }
                    path.push(name.to_string());
                    let next = toks.get(*pos).map(String::as_str);
                    if next == Some("as") {
                        let alias = toks.get(*pos + 1).cloned().unwrap_or_default();
                        *pos += 2;
                        out.push((path.clone(), alias));
                        return;
                    }
                    if next != Some("::") {
                        let alias = path.last().cloned().unwrap_or_default();
                        out.push((path.clone(), alias));
                        return;
                    }
                }
            }
        }
    }
    let toks = tokens(tree);
    let mut out = Vec::new();
    let mut pos = 0;
    parse(&toks, &mut pos, Vec::new(), &mut out);
    out
}

/// Make `path` (as written in the file whose module is `module`) absolute from the crate root;
/// `None` for paths outside the crate (std, other crates) or local names.
fn absolute(
    path: &[String],
    module: &ModPath,
    is_folder: bool,
    children: &BTreeSet<String>,
) -> Option<Vec<String>> {
    let first = path.first()?;
    // `super` in `read/data.rs` is `read`; in `read/mod.rs` it is the crate root.
    let mut base: Vec<String> = module.clone();
    let mut rest = path;
    match first.as_str() {
        "crate" => {
            base.clear();
            rest = &path[1..];
        }
        "self" => rest = &path[1..],
        "super" => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        name if children.contains(name) => {}
        _ => return None,
    }
    let _ = is_folder;
    let mut abs = base;
    abs.extend(rest.iter().cloned());
    Some(abs)
}

/// The children a folder file declares as test code: `#[cfg(test)]` followed by `mod name;`
/// (`pub(crate) mod name;` too).
fn test_only_children(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "#[cfg(test)]")
        .filter_map(|w| {
            let decl = w[1]
                .strip_prefix("pub(crate) ")
                .or_else(|| w[1].strip_prefix("pub "))
                .unwrap_or(w[1]);
            decl.strip_prefix("mod ")?.strip_suffix(';')
        })
        .map(str::to_string)
        .collect()
}

pub fn read_crate(src: &Path) -> Crate {
    let mut paths = Vec::new();
    collect(src, &mut paths);
    let mut sources = BTreeMap::new();
    let mut test_only: BTreeSet<ModPath> = BTreeSet::new();
    for p in &paths {
        let rel = p
            .strip_prefix(src)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        let (m, is_folder) = mod_path(&rel);
        let text = std::fs::read_to_string(p).expect("read source");
        if is_folder {
            for child in test_only_children(&text) {
                test_only.insert(m.iter().cloned().chain([child]).collect());
            }
        }
        sources.insert(m, (rel, is_folder, text));
    }
    let mut texts = BTreeMap::new();
    let mut files: BTreeMap<ModPath, FileInfo> = BTreeMap::new();
    // A test-only file (`#[cfg(test)] mod tests;`) is test code, like an inline test module.
    for (m, (rel, is_folder, text)) in sources {
        if test_only.contains(&m) {
            continue;
        }
        texts.insert(m.clone(), code_lines(&text));
        files.insert(
            m,
            FileInfo {
                display: rel,
                is_folder,
                ..Default::default()
            },
        );
    }
    let modules: BTreeSet<ModPath> = files.keys().cloned().collect();
    for (m, lines) in &texts {
        let children: BTreeSet<String> = modules
            .iter()
            .filter(|c| c.len() == m.len() + 1 && c.starts_with(m))
            .map(|c| c[m.len()].clone())
            .collect();
        let info = files.get_mut(m).expect("known file");
        let is_folder = info.is_folder;
        // `use` statements (possibly over several lines), and the lines they take.
        let mut use_lines = BTreeSet::new();
        let mut n = 0;
        while n < lines.len() {
            let t = lines[n].trim_start();
            let vis_use = ["use ", "pub use ", "pub(crate) use ", "pub(super) use "]
                .iter()
                .find(|p| t.starts_with(**p));
            if let Some(prefix) = vis_use {
                let public = *prefix != "use ";
                let start = n;
                let mut stmt = t[prefix.len()..].to_string();
                while !stmt.contains(';') && n + 1 < lines.len() {
                    n += 1;
                    stmt.push(' ');
                    stmt.push_str(lines[n].trim());
                }
                use_lines.extend(start..=n);
                let stmt = stmt.split(';').next().unwrap_or_default();
                for (path, alias) in expand_use(stmt) {
                    let Some(abs) = absolute(&path, m, is_folder, &children) else {
                        continue;
                    };
                    let into_child = abs.len() > m.len() && abs.starts_with(m) && is_folder;
                    if public && alias != "*" {
                        info.reexports.insert(alias.clone(), abs.clone());
                    }
                    info.imports.push((start + 1, abs, public && into_child));
                }
                n += 1;
                continue;
            }
            n += 1;
        }
        // Paths in code: `crate::a::b`, `super::a`, `self::a`, `child::a` (not on the lines of
        // `use` statements, read above: a continued line of `use crate::{…}` may start with a
        // module name that is not this file's child).
        for (idx, line) in lines.iter().enumerate() {
            if use_lines.contains(&idx) {
                continue;
            }
            let cs: Vec<char> = line.chars().collect();
            let mut i = 0;
            while i < cs.len() {
                let word_start = i == 0
                    || !(cs[i - 1].is_alphanumeric() || cs[i - 1] == '_' || cs[i - 1] == ':');
                let rest: String = cs[i..].iter().collect();
                // `crate::…`, `super::…`, `self::…`, or a child module's `name::…`.
                let kw = ["crate", "super", "self"]
                    .into_iter()
                    .chain(children.iter().map(String::as_str))
                    .any(|k| rest.strip_prefix(k).is_some_and(|r| r.starts_with("::")));
                if word_start && kw {
                    let mut segs = Vec::new();
                    let mut cur = String::new();
                    let mut j = i;
                    while j < cs.len() {
                        let c = cs[j];
                        if c.is_alphanumeric() || c == '_' {
                            cur.push(c);
                            j += 1;
                        } else if c == ':' && cs.get(j + 1) == Some(&':') {
                            segs.push(std::mem::take(&mut cur));
                            j += 2;
                        } else {
                            break;
                        }
                    }
                    if !cur.is_empty() {
                        segs.push(cur);
                    }
                    if let Some(abs) = absolute(&segs, m, is_folder, &children) {
                        info.imports.push((idx + 1, abs, false));
                    }
                    i = j.max(i + 1);
                } else {
                    i += 1;
                }
            }
        }
    }
    Crate { files }
}

impl Crate {
    /// The file that defines the item at `abs` (following re-exports), as a module path.
    fn resolve(&self, abs: &[String], depth: usize) -> ModPath {
        let mut cur: ModPath = Vec::new();
        for (k, seg) in abs.iter().enumerate() {
            let mut next = cur.clone();
            next.push(seg.clone());
            if self.files.contains_key(&next) {
                cur = next;
                continue;
            }
            if depth < 16 {
                if let Some(target) = self.files.get(&cur).and_then(|f| f.reexports.get(seg)) {
                    if target.as_slice() != &abs[..=k] {
                        let mut full = target.clone();
                        full.extend(abs[k + 1..].iter().cloned());
                        return self.resolve(&full, depth + 1);
                    }
                }
            }
            break;
        }
        cur
    }

    /// Every file-to-file import edge: (from, line, to, path as written).
    pub fn edges(&self) -> Vec<(ModPath, usize, ModPath, String)> {
        let mut out = Vec::new();
        for (m, info) in &self.files {
            for (line, abs, face) in &info.imports {
                if *face {
                    continue;
                }
                let to = self.resolve(abs, 0);
                // A file naming its own items, or a folder's `mod.rs` naming itself.
                if &to == m {
                    continue;
                }
                out.push((m.clone(), *line, to, format!("crate::{}", abs.join("::"))));
            }
        }
        out
    }

    fn display(&self, m: &ModPath) -> String {
        self.files
            .get(m)
            .map(|f| f.display.clone())
            .unwrap_or_else(|| m.join("/"))
    }
}

fn layer(layers: &[(&str, u32)], m: &ModPath) -> Option<u32> {
    let top = m.first()?;
    layers.iter().find(|(name, _)| name == top).map(|(_, l)| *l)
}

/// Imports against the layer order (or between two modules of one layer), and modules missing
/// from the table.
pub fn layer_violations(c: &Crate, layers: &[(&str, u32)]) -> Vec<String> {
    let mut bad = Vec::new();
    for m in c.files.keys() {
        if !m.is_empty() && layer(layers, m).is_none() {
            bad.push(format!(
                "{}: module `{}` has no row in LAYERS",
                c.display(m),
                m[0]
            ));
        }
    }
    for (from, line, to, path) in c.edges() {
        // The crate root may name anything.
        if from.is_empty() || to.is_empty() || from[0] == to[0] {
            if to.is_empty() && !from.is_empty() {
                bad.push(format!(
                    "{}:{line}: `{path}` imports from lib.rs; import from the module that defines it",
                    c.display(&from)
                ));
            }
            continue;
        }
        let (Some(lf), Some(lt)) = (layer(layers, &from), layer(layers, &to)) else {
            continue;
        };
        if lt >= lf {
            bad.push(format!(
                "{}:{line}: `{path}` -> {} runs {} (layer {lf} `{}` may import only layers below {lf}; `{}` is layer {lt})",
                c.display(&from),
                c.display(&to),
                if lt == lf { "sideways" } else { "upwards" },
                from[0],
                to[0]
            ));
        }
    }
    bad.sort();
    bad.dedup();
    bad
}

/// Circles of files importing each other (strongly connected components of more than one file).
pub fn cycles(c: &Crate) -> Vec<String> {
    let edges = c.edges();
    let nodes: Vec<ModPath> = c.files.keys().cloned().collect();
    let index: BTreeMap<&ModPath, usize> = nodes.iter().enumerate().map(|(i, m)| (m, i)).collect();
    let mut adj: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); nodes.len()];
    for (from, _, to, _) in &edges {
        if let (Some(&a), Some(&b)) = (index.get(from), index.get(to)) {
            adj[a].insert(b);
        }
    }
    // Tarjan's strongly connected components.
    struct St {
        idx: usize,
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on: Vec<bool>,
        stack: Vec<usize>,
        comps: Vec<Vec<usize>>,
    }
    fn visit(v: usize, adj: &[BTreeSet<usize>], s: &mut St) {
        s.index[v] = Some(s.idx);
        s.low[v] = s.idx;
        s.idx += 1;
        s.stack.push(v);
        s.on[v] = true;
        for &w in &adj[v] {
            match s.index[w] {
                None => {
                    visit(w, adj, s);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on[w] => s.low[v] = s.low[v].min(iw),
                _ => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on[w] = false;
                comp.push(w);
                if w == v {
                    break;
                }
            }
            s.comps.push(comp);
        }
    }
    let n = nodes.len();
    let mut s = St {
        idx: 0,
        index: vec![None; n],
        low: vec![0; n],
        on: vec![false; n],
        stack: Vec::new(),
        comps: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(v, &adj, &mut s);
        }
    }
    let mut out = Vec::new();
    for comp in s.comps.iter().filter(|c| c.len() > 1) {
        let members: BTreeSet<&ModPath> = comp.iter().map(|&i| &nodes[i]).collect();
        let mut lines = vec![format!(
            "circle of {} files: {}",
            comp.len(),
            members
                .iter()
                .map(|m| c.display(m))
                .collect::<Vec<_>>()
                .join(", ")
        )];
        let mut seen = BTreeSet::new();
        for (from, line, to, path) in &edges {
            if members.contains(from) && members.contains(to) && seen.insert((from, to)) {
                lines.push(format!(
                    "  {}:{line}: `{path}` -> {}",
                    c.display(from),
                    c.display(to)
                ));
            }
        }
        out.push(lines.join("\n"));
    }
    out.sort();
    out
}
