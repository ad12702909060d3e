//! Config diagnostics: every problem names the file, the line and column, and the field path.
//!
//! The file is parsed once more into toml's span-carrying document ([`toml::de::DeTable`]) so that a problem found
//! by field path (`pools.api.algorithm`) can be pointed at in the file, and a problem found by position (a serde
//! type error) can be given its field path.

use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One step of a field path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A path to a field, shown as `pools.api.backends[1].weight`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    pub(crate) fn root() -> Self {
        Self::default()
    }

    pub(crate) fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        Self(segs)
    }

    pub(crate) fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Self(segs)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    /// 1-based line and column, where the file gives them.
    pub(crate) position: Option<(usize, usize)>,
    pub(crate) field: FieldPath,
    pub(crate) message: String,
}

/// Every problem found in one config file. Its `Display` prints one line per problem:
/// `FILE:LINE:COL: FIELD: MESSAGE`.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub(crate) problems: Vec<Problem>,
}

impl ConfigError {
    /// How many problems the file has.
    pub fn count(&self) -> usize {
        self.problems.len()
    }

    pub(crate) fn single(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            problems: vec![Problem {
                position: None,
                field: FieldPath::root(),
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file)?;
            if let Some((line, col)) = p.position {
                write!(f, ":{line}:{col}")?;
            }
            if !p.field.0.is_empty() {
                write!(f, ": {}", p.field)?;
            }
            write!(f, ": {}", p.message)?;
        }
        Ok(())
    }
}

/// Finds where fields are in the file text. The text is parsed for spans only when a message needs one: a
/// config that loads cleanly is parsed once (a reload of 10,000 backends spent 40% of its parse on this).
pub(crate) struct Locator<'a> {
    text: &'a str,
    root: std::cell::OnceCell<Option<Spanned<DeTable<'a>>>>,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        Self {
            text,
            root: std::cell::OnceCell::new(),
        }
    }

    fn root(&self) -> Option<&Spanned<DeTable<'a>>> {
        self.root
            .get_or_init(|| DeTable::parse(self.text).ok())
            .as_ref()
    }

    /// Line and column (1-based) of a byte offset.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        (line, col)
    }

    /// A problem at `field`, pointing at its value (or, with `at_key`, at its key).
    pub(crate) fn problem(
        &self,
        field: FieldPath,
        at_key: bool,
        message: impl Into<String>,
    ) -> Problem {
        let position = self
            .span_of(&field, at_key)
            .map(|span| self.position(span.start));
        Problem {
            position,
            field,
            message: message.into(),
        }
    }

    /// The span of a field's value, or of its key; the nearest enclosing one if the field is absent.
    fn span_of(&self, path: &FieldPath, at_key: bool) -> Option<Range<usize>> {
        let root = self.root()?;
        let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
        let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
        let mut found: Option<Range<usize>> = None;
        for seg in &path.0 {
            let (key_span, value) = match seg {
                Seg::Key(k) => {
                    let Some(t) = table else { break };
                    let Some((key, value)) = t.iter().find(|(key, _)| key.get_ref() == k) else {
                        break;
                    };
                    (Some(key.span()), value)
                }
                Seg::Index(i) => {
                    let Some(value) = array.and_then(|a| a.get(*i)) else {
                        break;
                    };
                    (None, value)
                }
            };
            found = Some(match (at_key, key_span) {
                (true, Some(span)) => span,
                _ => value.span(),
            });
            table = None;
            array = None;
            match value.get_ref() {
                DeValue::Table(t) => table = Some(t),
                DeValue::Array(a) => array = Some(a),
                _ => {}
            }
        }
        found
    }

    /// The path of the innermost field whose value contains `offset` (for errors that come with a position only).
    pub(crate) fn path_at(&self, offset: usize) -> FieldPath {
        fn search(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut Vec<Seg>) -> bool {
            let found_below = match value.get_ref() {
                DeValue::Table(t) => t.iter().any(|(k, v)| {
                    path.push(Seg::Key(k.get_ref().to_string()));
                    let hit = k.span().contains(&offset) || search(v, offset, path);
                    if !hit {
                        path.pop();
                    }
                    hit
                }),
                DeValue::Array(a) => a.iter().enumerate().any(|(i, v)| {
                    path.push(Seg::Index(i));
                    let hit = search(v, offset, path);
                    if !hit {
                        path.pop();
                    }
                    hit
                }),
                _ => false,
            };
            found_below || value.span().contains(&offset)
        }
        let mut path = Vec::new();
        if let Some(root) = self.root() {
            for (k, v) in root.get_ref().iter() {
                path.push(Seg::Key(k.get_ref().to_string()));
                if k.span().contains(&offset) || search(v, offset, &mut path) {
                    return FieldPath(path);
                }
                path.pop();
            }
        }
        FieldPath(path)
    }
}

impl From<&serde_ignored::Path<'_>> for FieldPath {
    fn from(path: &serde_ignored::Path<'_>) -> Self {
        fn walk(path: &serde_ignored::Path<'_>, out: &mut Vec<Seg>) {
            use serde_ignored::Path;
            match path {
                Path::Root => {}
                Path::Seq { parent, index } => {
                    walk(parent, out);
                    out.push(Seg::Index(*index));
                }
                Path::Map { parent, key } => {
                    walk(parent, out);
                    out.push(Seg::Key(key.clone()));
                }
                Path::Some { parent }
                | Path::NewtypeStruct { parent }
                | Path::NewtypeVariant { parent } => walk(parent, out),
            }
        }
        let mut segs = Vec::new();
        walk(path, &mut segs);
        FieldPath(segs)
    }
}
