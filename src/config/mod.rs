//! Configuration: the TOML file format ([`model`]), its checks and runtime settings ([`validate`]), and
//! diagnostics that name file, line and field ([`diag`]).
//!
//! [`load`] is the one entry point: `run`, `validate` and (later) reload all go through it, so they accept and
//! refuse exactly the same files with exactly the same messages.

pub(crate) mod certs;
pub(crate) mod diag;
pub(crate) mod model;
pub(crate) mod settings;
pub(crate) mod validate;

use std::path::Path;

pub use diag::ConfigError;
pub(crate) use diag::{FieldPath, Problem};
pub use settings::*;

/// Reads and checks a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::single(&shown, format!("cannot read the config file: {e}")))?;
    parse(&text, &shown)
}

/// Parses and checks config text; `origin` names the file in messages, and its folder is where relative paths
/// in the file start from.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let at = diag::Locator::new(text);
    let fail = |problems: Vec<Problem>| ConfigError {
        file: origin.to_owned(),
        problems,
    };

    let mut unknown = Vec::new();
    let deserializer = match toml::de::Deserializer::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let position = e.span().map(|s| at.position(s.start));
            return Err(fail(vec![Problem {
                position,
                field: FieldPath::root(),
                message: format!("not valid TOML: {}", e.message()),
            }]));
        }
    };
    let parsed =
        serde_ignored::deserialize(deserializer, |path| unknown.push(FieldPath::from(&path)));
    let mut problems: Vec<Problem> = unknown
        .into_iter()
        .map(|field| {
            let name = field.0.last().map(|s| match s {
                diag::Seg::Key(k) => k.clone(),
                diag::Seg::Index(i) => i.to_string(),
            });
            at.problem(
                field,
                true,
                format!("unknown field {:?}", name.unwrap_or_default()),
            )
        })
        .collect();
    let file = match parsed {
        Ok(file) => file,
        Err(e) => {
            let span = e.span();
            let field = span
                .as_ref()
                .map(|s| at.path_at(s.start))
                .unwrap_or_default();
            problems.push(Problem {
                position: span.map(|s| at.position(s.start)),
                field,
                message: e
                    .message()
                    .replace("expected i64", "expected an integer")
                    .replace("expected u32", "expected an integer"),
            });
            return Err(fail(problems));
        }
    };
    // Paths in the file are relative to the file's folder.
    let folder = Path::new(origin).parent().unwrap_or(Path::new(""));
    match validate::validate(&file, &at, folder) {
        Ok(config) if problems.is_empty() => Ok(config),
        Ok(_) => Err(fail(problems)),
        Err(more) => {
            problems.extend(more);
            problems.sort_by_key(|p| p.position);
            Err(fail(problems))
        }
    }
}
