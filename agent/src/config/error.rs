//! Configuration errors, and the rustc-like rendering of their position.
//!
//! Every problem found in a configuration file, whether the TOML parser or our own
//! validation found it, is reported with the file name, a 1-based line and column,
//! the offending source line and a caret under the offending token. SREs fix
//! configs under pressure; pointing at the exact character saves them a search.
use std::ops::Range;
use std::path::PathBuf;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read (missing, unreadable, not UTF-8...).
    #[error("cannot read configuration file {}: {source}", path.display())]
    Io {
        /// The file we tried to read.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration: a TOML syntax error, a
    /// wrong type, an unknown key or a value our validation rejects.
    #[error("{origin}:{line}:{column}: {message}{snippet}")]
    Invalid {
        /// Where the text came from (usually the file name), as given to `parse`.
        origin: String,
        /// 1-based line of the offending token.
        line: usize,
        /// 1-based column (in characters, not bytes) of the offending token.
        column: usize,
        /// What is wrong, in one sentence, without the position.
        message: String,
        /// The offending source line with a caret marker under the token, already
        /// rendered on lines of their own (each starting with '\n'); empty when the
        /// position is past the end of the text.
        snippet: String,
    },
}

impl ConfigError {
    /// Builds an `Invalid` error for the byte range `span` of `text`. A `None`
    /// span (an error that has no natural place, such as a missing table) points
    /// at line 1, column 1.
    pub(crate) fn invalid(
        origin: &str,
        text: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        let span = span.unwrap_or(0..0);
        let (line, column, snippet) = locate(text, span);
        ConfigError::Invalid {
            origin: origin.to_owned(),
            line,
            column,
            message: message.into(),
            snippet,
        }
    }

    /// The 1-based (line, column) of an `Invalid` error; `None` for I/O errors.
    pub fn position(&self) -> Option<(usize, usize)> {
        match self {
            ConfigError::Invalid { line, column, .. } => Some((*line, *column)),
            ConfigError::Io { .. } => None,
        }
    }
}

/// Converts a byte span into a 1-based line and character column, and renders the
/// source line with carets under the span (clipped to that line), like rustc does.
fn locate(text: &str, span: Range<usize>) -> (usize, usize, String) {
    // Spans come from the TOML parser or from our own spanned values; clamp them and
    // snap to a character boundary anyway, so that a surprising span can never
    // make error reporting itself panic.
    let mut start = span.start.min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = text[..start].matches('\n').count() + 1;
    let column = text[line_start..start].chars().count() + 1;

    let source_line = text[line_start..line_end].trim_end_matches('\r');
    if source_line.is_empty() && start >= text.len() {
        // The end of the file: there is no token to underline.
        return (line, column, String::new());
    }
    let mut end = span.end.clamp(start, line_end);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let width = text[start..end].chars().count().max(1);
    // Keep tabs as tabs in the padding so the caret lines up under the token
    // whatever the terminal's tab width is.
    let padding: String = text[line_start..start]
        .chars()
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    let gutter = " ".repeat(line.to_string().len());
    let snippet = format!(
        "\n{gutter} |\n{line} | {source_line}\n{gutter} | {padding}{carets}",
        carets = "^".repeat(width)
    );
    (line, column, snippet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_lines_and_character_columns() {
        let text = "a = 1\nb = \"é\" x\n";
        let offset = text.find('x').expect("x is in the text");
        let (line, column, snippet) = locate(text, offset..offset + 1);
        // 'x' is the 9th character of its line although it is the 10th byte.
        assert_eq!((line, column), (2, 9));
        assert!(snippet.contains("2 | b = \"é\" x"), "{snippet}");
        assert!(
            snippet.ends_with(&format!("  | {}^", " ".repeat(8))),
            "{snippet:?}"
        );
    }

    #[test]
    fn missing_span_points_at_the_start() {
        let err = ConfigError::invalid("f.toml", "x = 1\n", None, "nope");
        assert_eq!(err.position(), Some((1, 1)));
        let shown = err.to_string();
        assert!(shown.starts_with("f.toml:1:1: nope\n"), "{shown}");
        assert!(shown.ends_with("1 | x = 1\n  | ^"), "{shown}");
    }

    #[test]
    fn end_of_file_has_no_snippet() {
        let err = ConfigError::invalid("f.toml", "x = [\n", Some(6..6), "eof");
        assert_eq!(err.to_string(), "f.toml:2:1: eof");
    }
}
