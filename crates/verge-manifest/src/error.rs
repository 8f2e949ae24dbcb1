//! Manifest errors, rendered like compiler diagnostics: what is wrong, where
//! (file, line, column, the offending line with a caret), and what to do.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A manifest that cannot be used, with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManifestError {
    /// The file could not be read.
    Io {
        /// The manifest path.
        path: PathBuf,
        /// The operating system's message.
        message: String,
    },
    /// The file was read but its content is invalid.
    Invalid(Box<Diagnostic>),
}

/// A problem at a position in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The manifest path.
    pub path: PathBuf,
    /// 1-based line of the problem.
    pub line: usize,
    /// 1-based column (in characters) of the problem.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
    /// The offending source line and the caret marking the span.
    pub snippet: (String, String),
}

impl std::error::Error for ManifestError {}

impl ManifestError {
    /// An error at byte `span` of `text`, the content of the TOML file
    /// `path` (a manifest, or another configuration file in its format).
    pub fn at(
        path: &Path,
        text: &str,
        span: Range<usize>,
        message: impl Into<String>,
        help: Option<String>,
    ) -> Self {
        let start = span.start.min(text.len());
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line_text = text[line_start..line_end].trim_end_matches('\r');
        let line = text[..start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        let end = span.end.clamp(start, line_end);
        let width = text[start..end].chars().count().max(1);
        let caret = format!("{}{}", " ".repeat(column - 1), "^".repeat(width));
        ManifestError::Invalid(Box::new(Diagnostic {
            path: path.to_path_buf(),
            line,
            column,
            message: message.into(),
            help,
            snippet: (line_text.to_string(), caret),
        }))
    }

    /// The 1-based line and column of the problem, if it has one.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            ManifestError::Invalid(d) => Some((d.line, d.column)),
            ManifestError::Io { .. } => None,
        }
    }
}

/// Shows `path` relative to the current directory when it is below it.
fn display_path(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| path.to_path_buf())
        .display()
        .to_string()
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestError::Io { path, message } => {
                write!(f, "cannot read manifest {}: {message}", display_path(path))
            }
            ManifestError::Invalid(d) => {
                let Diagnostic {
                    path,
                    line,
                    column,
                    message,
                    help,
                    snippet: (text, caret),
                } = d.as_ref();
                let gutter = " ".repeat(line.to_string().len());
                writeln!(f, "{message}")?;
                writeln!(f, "{gutter}--> {}:{line}:{column}", display_path(path))?;
                writeln!(f, "{gutter} |")?;
                writeln!(f, "{line} | {text}")?;
                write!(f, "{gutter} | {caret}")?;
                if let Some(help) = help {
                    write!(f, "\n{gutter} = help: {help}")?;
                }
                Ok(())
            }
        }
    }
}
