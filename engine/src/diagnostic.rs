//! Errors a person can act on: `file:line:column`, the field, what was expected,
//! the offending line with a caret under it, and a hint where one helps.

use std::fmt;
use std::path::{Path, PathBuf};

/// A place in a workflow file (1-based line and column; `len` characters wide).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// 1-based line number.
    pub line: u32,
    /// 1-based column number.
    pub column: u32,
    /// Width in characters of the underlined text (at least 1 when rendered).
    pub len: u32,
}

impl Span {
    /// The span of a location reported by the YAML parser.
    pub fn of(location: &serde_saphyr::Location) -> Span {
        Span {
            line: location.line() as u32,
            column: location.column() as u32,
            len: location.span().len() as u32,
        }
    }

    /// Whether the parser knew where this value came from.
    pub fn is_known(&self) -> bool {
        self.line > 0
    }
}

/// One problem found in a workflow or on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where in the file; `None` for problems that have no place (command-line flags).
    pub span: Option<Span>,
    /// The field at fault, as a dotted path (`nodes.sum.with.run`).
    pub field: Option<String>,
    /// What is wrong and what was expected.
    pub message: String,
    /// A suggestion ("did you mean `shell`?").
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A problem at a place in the file, in a named field.
    pub fn at(span: Span, field: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            span: span.is_known().then_some(span),
            field: Some(field.into()),
            message: message.into(),
            hint: None,
        }
    }

    /// A problem with no place in the file.
    pub fn general(message: impl Into<String>) -> Self {
        Diagnostic {
            span: None,
            field: None,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds a suggestion when there is one.
    pub fn with_optional_hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint.or(self.hint);
        self
    }

    /// Renders the diagnostic rustc-style against the file's source text.
    pub fn render(&self, file: &Path, source: &str) -> String {
        let mut out = String::from("error: ");
        match self.span {
            Some(span) => out.push_str(&format!(
                "{}:{}:{}: ",
                file.display(),
                span.line,
                span.column
            )),
            None => out.push_str(&format!("{}: ", file.display())),
        }
        if let Some(field) = &self.field {
            out.push_str(&format!("`{field}`: "));
        }
        out.push_str(&self.message);
        out.push('\n');
        if let Some(span) = self.span {
            out.push_str(&snippet(source, span));
        }
        if let Some(hint) = &self.hint {
            out.push_str(&format!("  = hint: {hint}\n"));
        }
        out
    }
}

/// The offending line with a caret run under the span.
fn snippet(source: &str, span: Span) -> String {
    let Some(line) = source.lines().nth(span.line.saturating_sub(1) as usize) else {
        return String::new();
    };
    let number = span.line.to_string();
    let gutter = " ".repeat(number.len());
    let pad = " ".repeat(span.column.saturating_sub(1) as usize);
    let carets = "^".repeat(span.len.max(1) as usize);
    format!("{gutter} |\n{number} | {line}\n{gutter} | {pad}{carets}\n")
}

/// Every problem found in one file, ready to print.
#[derive(Clone, Debug)]
pub struct Diagnostics {
    /// The file the problems are in.
    pub file: PathBuf,
    /// Its text, for snippets.
    pub source: String,
    /// The problems, in the order found.
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Diagnostics for a file with the given problems.
    pub fn new(file: &Path, source: &str, items: Vec<Diagnostic>) -> Self {
        Diagnostics {
            file: file.to_path_buf(),
            source: source.to_string(),
            items,
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.items {
            f.write_str(&item.render(&self.file, &self.source))?;
        }
        match self.items.len() {
            1 => Ok(()),
            n => write!(f, "{n} errors in {}", self.file.display()),
        }
    }
}

impl std::error::Error for Diagnostics {}

/// The closest candidate to `word`, for "did you mean" hints.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(distance, c)| *distance <= (c.len().max(word.len()) / 3).max(2))
        .min()
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

/// One step of a path into a value: a mapping key or a sequence index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathStep {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

impl fmt::Display for PathStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathStep::Key(k) => write!(f, ".{k}"),
            PathStep::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// A path as text: `.inputs.numbers`, `.targets[2]`.
pub fn path_text(path: &[PathStep]) -> String {
    path.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_file_line_column_field_and_caret() {
        let d = Diagnostic::at(
            Span {
                line: 2,
                column: 8,
                len: 4,
            },
            "nodes.a.uses",
            "unknown node type `shel`",
        )
        .with_hint("did you mean `shell`?");
        let text = d.render(Path::new("w.yaml"), "nodes:\n  uses: shel\n");
        assert!(text.starts_with("error: w.yaml:2:8: `nodes.a.uses`: unknown node type `shel`\n"));
        assert!(
            text.contains("2 |   uses: shel\n  |        ^^^^\n"),
            "{text}"
        );
        assert!(text.ends_with("  = hint: did you mean `shell`?\n"));
    }

    #[test]
    fn suggests_only_close_names() {
        assert_eq!(
            did_you_mean("shel", ["shell", "dpo.train"]).as_deref(),
            Some("did you mean `shell`?")
        );
        assert_eq!(did_you_mean("zzzzzzzz", ["shell"]), None);
    }
}
