//! Where each value of a recipe came from, so that errors found after parsing, merging
//! (`extends`), interpolation and `--set` still point at a file, line and column.
//!
//! serde_yaml gives values without positions, so a second, event-level pass with
//! yaml-rust2 records the position of every key and value under its dotted path
//! (`stages.sft.train.lr`, sequence items as numbers: `stages.eval.models.0`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use crate::diag::Location;

#[derive(Debug, Clone)]
struct Entry {
    key: Option<Location>,
    value: Location,
}

/// Dotted path -> position of the key and of the value.
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    entries: HashMap<String, Entry>,
}

/// Joins path segments the way the source map and error messages spell them.
pub fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_owned()
    } else {
        format!("{parent}.{child}")
    }
}

impl SourceMap {
    /// Indexes `text` (the content of `file`). YAML that does not parse gives an empty map:
    /// serde_yaml reports the syntax error with its own position.
    pub fn build(text: &str, file: &Path) -> SourceMap {
        let mut builder = Builder {
            file: Arc::from(file),
            stack: Vec::new(),
            map: SourceMap::default(),
        };
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return SourceMap::default();
        }
        builder.map
    }

    /// Position of the value at `path`, or of its closest recorded ancestor.
    pub fn value(&self, path: &str) -> Option<Location> {
        self.lookup(path).map(|e| e.value.clone())
    }

    /// Position of the key at `path` (falls back to the value, then to ancestors).
    pub fn key(&self, path: &str) -> Option<Location> {
        self.lookup(path)
            .map(|e| e.key.clone().unwrap_or_else(|| e.value.clone()))
    }

    fn lookup(&self, path: &str) -> Option<&Entry> {
        let mut p = path;
        loop {
            if let Some(e) = self.entries.get(p) {
                return Some(e);
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None => return self.entries.get(""),
            }
        }
    }

    /// Entries of `other` win (a recipe overrides what it extends).
    pub fn overlay(&mut self, other: SourceMap) {
        self.entries.extend(other.entries);
    }

    /// Records that the value at `path` (and everything below it) came from a `--set`.
    pub fn set_override(&mut self, path: &str, loc: Location) {
        let prefix = format!("{path}.");
        self.entries.retain(|k, _| !k.starts_with(&prefix));
        self.entries.insert(
            path.to_owned(),
            Entry {
                key: Some(loc.clone()),
                value: loc,
            },
        );
    }

    /// Copies entries under `from` to `to` where `to` has none (defaults applied to a stage).
    pub fn copy_missing(&mut self, from: &str, to: &str) {
        let prefix = format!("{from}.");
        let copies: Vec<(String, Entry)> = self
            .entries
            .iter()
            .filter_map(|(k, e)| {
                k.strip_prefix(&prefix)
                    .map(|rest| (join(to, rest), e.clone()))
            })
            .collect();
        for (k, e) in copies {
            self.entries.entry(k).or_insert(e);
        }
    }
}

enum Frame {
    Map {
        path: String,
        key: Option<(String, Marker)>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

struct Builder {
    file: Arc<Path>,
    stack: Vec<Frame>,
    map: SourceMap,
}

impl Builder {
    fn loc(&self, m: Marker) -> Location {
        Location::file(self.file.to_path_buf(), m.line(), m.col() + 1)
    }

    /// The path the next value takes, and its key's position; advances the parent.
    fn next_value_path(&mut self) -> (String, Option<Marker>) {
        match self.stack.last_mut() {
            None => (String::new(), None),
            Some(Frame::Seq { path, next }) => {
                let p = join(path, &next.to_string());
                *next += 1;
                (p, None)
            }
            Some(Frame::Map { path, key }) => {
                let (k, m) = key
                    .take()
                    .map_or(("?".to_owned(), None), |(k, m)| (k, Some(m)));
                (join(path, &k), m)
            }
        }
    }

    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }

    fn record(&mut self, path: &str, key: Option<Marker>, value: Marker) {
        let entry = Entry {
            key: key.map(|m| self.loc(m)),
            value: self.loc(value),
        };
        self.map.entries.insert(path.to_owned(), entry);
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(s, ..) if self.expecting_key() => {
                if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                    *key = Some((s, mark));
                }
            }
            Event::Scalar(..) | Event::Alias(..) => {
                let (path, key) = self.next_value_path();
                self.record(&path, key, mark);
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if self.expecting_key() {
                    // A complex (non-scalar) key: give it a placeholder name.
                    if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                        *key = Some(("?".into(), mark));
                    }
                }
                let (path, key) = self.next_value_path();
                self.record(&path, key, mark);
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keys_values_and_sequence_items() {
        let text = "name: x\nstages:\n  sft:\n    train: { lr: 0.1 }\n    models:\n      - from: a\n      - from: b\n";
        let m = SourceMap::build(text, Path::new("r.yaml"));
        assert_eq!(
            m.key("stages.sft.train.lr"),
            Some(Location::file("r.yaml", 4, 14))
        );
        assert_eq!(
            m.value("stages.sft.train.lr"),
            Some(Location::file("r.yaml", 4, 18))
        );
        assert_eq!(
            m.value("stages.sft.models.1.from"),
            Some(Location::file("r.yaml", 7, 15))
        );
        // Unknown paths fall back to the closest ancestor.
        assert_eq!(
            m.key("stages.sft.train.nope"),
            Some(Location::file("r.yaml", 4, 5))
        );
        assert_eq!(
            m.value("stages.sft.train.nope"),
            Some(Location::file("r.yaml", 4, 12))
        );
    }
}
