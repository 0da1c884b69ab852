//! A typed, path-tracking view over saphyr's spanned node tree.
//!
//! Every accessor returns `Result<_, LayoutError>` naming the node's file, line, column and
//! field path, so the schema code in `build.rs` reads as a list of fields and checks.

use saphyr::{MarkedYaml, Scalar, YamlData};

use crate::error::{ErrorKind, LayoutError, Location};

/// One node together with its field path.
#[derive(Clone)]
pub(crate) struct At<'a, 'y> {
    pub node: &'a MarkedYaml<'y>,
    pub path: String,
    pub file: &'a str,
    /// The whole source text, to read a scalar as written (see [`At::raw`]).
    pub src: &'a str,
}

/// A mapping whose keys have been checked against the schema's list.
pub(crate) struct Map<'a, 'y> {
    pub at: At<'a, 'y>,
    entries: Vec<(&'a str, &'a MarkedYaml<'y>, &'a MarkedYaml<'y>)>,
}

/// The location of a node: saphyr lines are 1-based, columns 0-based; ours are both 1-based.
pub(crate) fn loc_of(file: &str, node: &MarkedYaml<'_>, field: &str) -> Location {
    Location {
        file: file.to_owned(),
        line: node.span.start.line(),
        column: node.span.start.col().saturating_add(1),
        field: field.to_owned(),
    }
}

/// A short description of what a node is, for "wrong type" messages.
pub(crate) fn describe(node: &MarkedYaml<'_>) -> String {
    /// Long strings are cut in messages so one line stays one line.
    const QUOTE_CHARS_MAX: usize = 40;
    match &node.data {
        YamlData::Value(Scalar::Null) => "null".to_owned(),
        YamlData::Value(Scalar::Boolean(b)) => format!("boolean {b}"),
        YamlData::Value(Scalar::Integer(i)) => format!("integer {i}"),
        YamlData::Value(Scalar::FloatingPoint(x)) => format!("number {x}"),
        YamlData::Value(Scalar::String(s)) => {
            let mut q: String = s.chars().take(QUOTE_CHARS_MAX).collect();
            if s.chars().count() > QUOTE_CHARS_MAX {
                q.push_str("...");
            }
            format!("string {q:?}")
        }
        YamlData::Sequence(_) => "a list".to_owned(),
        YamlData::Mapping(_) => "a mapping".to_owned(),
        YamlData::Tagged(tag, _) => format!("a value tagged {tag}"),
        YamlData::Representation(..) | YamlData::Alias(_) | YamlData::BadValue => {
            "an unreadable value".to_owned()
        }
    }
}

impl<'a, 'y> At<'a, 'y> {
    pub fn root(file: &'a str, src: &'a str, node: &'a MarkedYaml<'y>) -> Self {
        Self {
            node,
            path: String::new(),
            file,
            src,
        }
    }

    /// The node's text as written in the source (saphyr's span indices count characters).
    pub fn raw(&self) -> Option<&'a str> {
        let byte_at = |chars: usize| {
            self.src
                .char_indices()
                .nth(chars)
                .map_or(self.src.len(), |(i, _)| i)
        };
        let start = byte_at(self.node.span.start.index());
        let end = byte_at(self.node.span.end.index());
        self.src.get(start..end)
    }

    /// The path as shown in messages (`(document)` for the root).
    pub fn field(&self) -> &str {
        if self.path.is_empty() {
            "(document)"
        } else {
            &self.path
        }
    }

    pub fn loc(&self) -> Location {
        loc_of(self.file, self.node, self.field())
    }

    pub fn line(&self) -> usize {
        self.node.span.start.line()
    }

    pub fn err(&self, kind: ErrorKind, message: impl Into<String>) -> LayoutError {
        LayoutError::new(kind, self.loc(), message)
    }

    fn child_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn wrong_type(&self, expected: &str) -> LayoutError {
        self.err(
            ErrorKind::WrongType,
            format!(
                "wrong type: found {} (expected {expected})",
                describe(self.node)
            ),
        )
    }

    /// This node as a mapping whose keys must all be in `allowed`.
    pub fn map(&self, allowed: &[&str], expected: &str) -> Result<Map<'a, 'y>, LayoutError> {
        let YamlData::Mapping(m) = &self.node.data else {
            return Err(self.wrong_type(expected));
        };
        let mut entries = Vec::with_capacity(m.len());
        for (k, v) in m {
            let YamlData::Value(Scalar::String(key)) = &k.data else {
                return Err(LayoutError::new(
                    ErrorKind::WrongType,
                    loc_of(self.file, k, self.field()),
                    format!(
                        "wrong type: found key {} (expected a key, one of: {})",
                        describe(k),
                        allowed.join(", ")
                    ),
                ));
            };
            if !allowed.contains(&key.as_ref()) {
                return Err(LayoutError::new(
                    ErrorKind::UnknownKey,
                    loc_of(self.file, k, &self.child_path(key)),
                    format!(
                        "unknown key {key:?} (expected one of: {})",
                        allowed.join(", ")
                    ),
                ));
            }
            entries.push((key.as_ref(), k, v));
        }
        Ok(Map {
            at: self.clone(),
            entries,
        })
    }

    /// This node as a list; each item's path is `path[i]`.
    pub fn seq(&self, expected: &str) -> Result<Vec<At<'a, 'y>>, LayoutError> {
        let YamlData::Sequence(items) = &self.node.data else {
            return Err(self.wrong_type(expected));
        };
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, node)| At {
                node,
                path: format!("{}[{i}]", self.path),
                file: self.file,
                src: self.src,
            })
            .collect())
    }

    pub fn str(&self, expected: &str) -> Result<&'a str, LayoutError> {
        match &self.node.data {
            YamlData::Value(Scalar::String(s)) => Ok(s.as_ref()),
            _ => Err(self.wrong_type(expected)),
        }
    }

    pub fn bool(&self) -> Result<bool, LayoutError> {
        match &self.node.data {
            YamlData::Value(Scalar::Boolean(b)) => Ok(*b),
            _ => Err(self.wrong_type("true or false")),
        }
    }

    /// A YAML integer, or `None` if the node is a string (for fields that take either).
    pub fn int_or_str(&self, expected: &str) -> Result<IntOrStr<'a>, LayoutError> {
        match &self.node.data {
            YamlData::Value(Scalar::Integer(i)) => Ok(IntOrStr::Int(*i)),
            YamlData::Value(Scalar::String(s)) => Ok(IntOrStr::Str(s.as_ref())),
            _ => Err(self.wrong_type(expected)),
        }
    }

    /// A YAML integer.
    pub fn int(&self, expected: &str) -> Result<i64, LayoutError> {
        match &self.node.data {
            YamlData::Value(Scalar::Integer(i)) => Ok(*i),
            _ => Err(self.wrong_type(expected)),
        }
    }
}

/// A field that takes an integer or a string.
pub(crate) enum IntOrStr<'a> {
    Int(i64),
    Str(&'a str),
}

impl<'a, 'y> Map<'a, 'y> {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<At<'a, 'y>> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|&(_, _, v)| At {
                node: v,
                path: self.at.child_path(key),
                file: self.at.file,
                src: self.at.src,
            })
    }

    /// The value of `key`; its absence is reported at the mapping.
    pub fn require(&self, key: &str, expected: &str) -> Result<At<'a, 'y>, LayoutError> {
        self.get(key).ok_or_else(|| self.missing(key, expected))
    }

    /// The error for an absent required `key`, reported at the mapping.
    pub fn missing(&self, key: &str, expected: &str) -> LayoutError {
        LayoutError::new(
            ErrorKind::MissingField,
            loc_of(self.at.file, self.at.node, &self.at.child_path(key)),
            format!("missing required field {key:?} (expected {expected})"),
        )
    }

    /// The location of `key` itself (not its value), for errors about the key's presence.
    pub fn key_loc(&self, key: &str) -> Option<Location> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|&(_, k, _)| loc_of(self.at.file, k, &self.at.child_path(key)))
    }
}
