//! Maps a key path (`sinks[0].parquet.roll.max_rows`) to its line in the YAML text.
//!
//! serde reports *what* is wrong and, through `serde_path_to_error`, *where* in the
//! structure; this module walks the YAML event stream once (saphyr-parser keeps source
//! positions) and records the line of every mapping key and sequence item, so every
//! config error, including the semantic ones found after parsing, can name its line.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser};

/// Line numbers (1-based) of every key path in one YAML document.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

enum Frame {
    Map {
        path: String,
        expecting_key: bool,
        key: Option<String>,
    },
    Seq {
        path: String,
        index: usize,
    },
}

impl LineIndex {
    /// Indexes `text`. A text that does not parse yields an empty index (the YAML parser
    /// of the config loader reports that error with its own position).
    pub fn new(text: &str) -> Self {
        let mut index = LineIndex::default();
        let mut stack: Vec<Frame> = Vec::new();
        for event in Parser::new_from_str(text) {
            let Ok((event, span)) = event else {
                break;
            };
            let line = span.start.line();
            // The path of a value that starts here (scalar, mapping or sequence).
            let value_path = match stack.last_mut() {
                Some(Frame::Map {
                    path,
                    expecting_key,
                    key,
                }) => {
                    if *expecting_key {
                        if let Event::Scalar(name, ..) = &event {
                            let child = join(path, name);
                            index.lines.entry(child).or_insert(line);
                            *key = Some(name.to_string());
                            *expecting_key = false;
                        }
                        None
                    } else {
                        *expecting_key = true;
                        Some(join(path, key.as_deref().unwrap_or("?")))
                    }
                }
                Some(Frame::Seq { path, index: i }) => {
                    let child = format!("{path}[{i}]");
                    *i += 1;
                    index.lines.entry(child.clone()).or_insert(line);
                    Some(child)
                }
                None => Some(String::new()),
            };
            match event {
                Event::MappingStart(..) => stack.push(Frame::Map {
                    path: value_path.unwrap_or_default(),
                    expecting_key: true,
                    key: None,
                }),
                Event::SequenceStart(..) => stack.push(Frame::Seq {
                    path: value_path.unwrap_or_default(),
                    index: 0,
                }),
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                _ => {}
            }
        }
        index
    }

    /// The line of `path`, or of its nearest ancestor that appears in the text (a missing
    /// key is reported at the mapping that should hold it).
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(line) = self.lines.get(path) {
                return Some(*line);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }
}

/// The line where the YAML parser first fails on `text`, if it does; for errors the
/// YAML deserializer reports without a position.
pub fn syntax_error_line(text: &str) -> Option<usize> {
    Parser::new_from_str(text)
        .find_map(|event| event.err())
        .map(|e| e.marker().line())
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "name: demo\nsource:\n  kafka:\n    topics: [a, b]\nsinks:\n  - parquet:\n      path: /tmp\n      roll:\n        max_rows: 10\n  - kafka:\n      topic: out\n";

    #[test]
    fn finds_nested_keys_and_sequence_items() {
        let index = LineIndex::new(TEXT);
        assert_eq!(index.line_of("name"), Some(1));
        assert_eq!(index.line_of("source.kafka.topics"), Some(4));
        assert_eq!(index.line_of("sinks[0].parquet.roll.max_rows"), Some(9));
        assert_eq!(index.line_of("sinks[1].kafka.topic"), Some(11));
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        let index = LineIndex::new(TEXT);
        assert_eq!(index.line_of("sinks[0].parquet.roll.max_age"), Some(8));
        assert_eq!(index.line_of("sinks[1].kafka.key"), Some(10));
        assert_eq!(index.line_of("nothing.here"), None);
    }
}
