//! Reading a file: TOML parsing, error positions, and the context validation runs in.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::error::{ConfigError, Location};
use super::file::RawConfig;
use super::types::NodeConfig;

impl NodeConfig {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_for(path, None)
    }

    /// Reads and validates the file for a node that has the applications `known` built in:
    /// any other application without a `command` is an error at its record.
    pub fn load_for(path: &Path, known: Option<&[&str]>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            at: Location { file: path.to_path_buf(), line: None, column: None },
            source,
        })?;
        Self::parse_for(&text, path, known)
    }

    /// Parses and validates `text`; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_for(text, path, None)
    }

    /// [`NodeConfig::parse`] for a node with the applications `known` built in.
    pub fn parse_for(text: &str, path: &Path, known: Option<&[&str]>) -> Result<Self, ConfigError> {
        let cx = Cx { text, file: path, dir: path.parent().unwrap_or(Path::new("")), known_apps: known };
        let raw: RawConfig = toml::from_str(text).map_err(|e| cx.toml_error(&e))?;
        cx.validate(raw)
    }
}

/// Parsing context: the text and file for error positions, the directory for relative paths.
pub(crate) struct Cx<'a> {
    pub(crate) text: &'a str,
    pub(crate) file: &'a Path,
    pub(crate) dir: &'a Path,
    /// The applications built into the node, when the caller knows them.
    pub(crate) known_apps: Option<&'a [&'a str]>,
}

impl Cx<'_> {
    /// The location of byte range `span`, or of the whole file for `None`.
    pub(crate) fn location(&self, span: Option<Range<usize>>) -> Location {
        let (line, column) = match span {
            Some(span) => {
                let (line, column) = line_column(self.text, span.start);
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        Location { file: self.file.to_path_buf(), line, column }
    }

    /// The location of `value`.
    pub(crate) fn at<T>(&self, value: &Spanned<T>) -> Location {
        self.location(Some(value.span()))
    }

    /// 1-based line of `value`.
    pub(crate) fn line_of<T>(&self, value: &Spanned<T>) -> usize {
        line_column(self.text, value.span().start).0
    }

    /// Turns a toml syntax or type error into a `ConfigError` that names the key.
    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span();
        // toml keeps the key path private, so find it again from the span.
        let key = span.as_ref().and_then(|s| {
            let root = DeTable::parse(self.text).ok()?;
            locate(root.get_ref(), s.start, "")
        });
        // Say it in TOML's words: keys rather than fields, integers rather than u64.
        let message = e
            .message()
            .trim_end()
            .replacen("unknown field", "unknown key", 1)
            .replace("expected u64", "expected a non-negative integer");
        let missing = message.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`'));
        match (key, missing) {
            (Some(key), Some(field)) => {
                ConfigError::MissingKey { at: self.location(span), key: format!("{key}.{field}") }
            }
            // A top-level section is missing: there is no line to point at.
            (None, Some(field)) => {
                ConfigError::MissingSection { at: self.location(None), section: field.to_string() }
            }
            (Some(key), None) if message.starts_with("unknown key") => {
                ConfigError::UnknownKey { at: self.location(span), key, message }
            }
            (Some(key), None) => ConfigError::WrongType { at: self.location(span), key, message },
            (None, None) if DeTable::parse(self.text).is_err() => {
                // Quote the offending text when it is short, e.g. the key of a duplicate key.
                let near = span
                    .as_ref()
                    .and_then(|s| self.text.get(s.clone()))
                    .filter(|t| !t.is_empty() && t.len() <= 40 && !t.contains('\n'))
                    .map(|t| format!(" (at `{t}`)"))
                    .unwrap_or_default();
                ConfigError::Syntax { at: self.location(span), message: format!("{message}{near}") }
            }
            (None, None) => ConfigError::Layout { at: self.location(span), message },
        }
    }

    /// Resolves `path` against the config file's directory and makes it absolute, so the
    /// result does not depend on the process's later working directory.
    pub(crate) fn resolve(&self, path: &str) -> PathBuf {
        let joined = self.dir.join(path);
        if joined.is_absolute() { joined } else { std::path::absolute(&joined).unwrap_or(joined) }
    }
}

/// The dotted key path (e.g. `farm.group`, `app[1].name`) whose key or value covers `offset`.
fn locate(table: &DeTable<'_>, offset: usize, prefix: &str) -> Option<String> {
    for (key, value) in table.iter() {
        let path = if prefix.is_empty() {
            toml_key(key.get_ref())
        } else {
            format!("{prefix}.{}", toml_key(key.get_ref()))
        };
        if covers(&key.span(), offset) {
            return Some(path);
        }
        if let Some(found) = locate_value(value, offset, path) {
            return Some(found);
        }
    }
    None
}

fn locate_value(value: &Spanned<DeValue<'_>>, offset: usize, path: String) -> Option<String> {
    // Header tables are spread over many lines, so look inside before matching the span.
    match value.get_ref() {
        DeValue::Table(table) => {
            if let Some(found) = locate(table, offset, &path) {
                return Some(found);
            }
        }
        DeValue::Array(array) => {
            for (i, item) in array.iter().enumerate() {
                if let Some(found) = locate_value(item, offset, format!("{path}[{i}]")) {
                    return Some(found);
                }
            }
        }
        _ => {}
    }
    covers(&value.span(), offset).then_some(path)
}

fn covers(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset && offset > 0)
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

/// A key as TOML writes it: bare when it can be, else quoted.
pub(crate) fn toml_key(key: &str) -> String {
    let bare = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { key.to_string() } else { toml::Value::String(key.to_string()).to_string() }
}
