//! A lexer of Snowflake SQL that tells string literals from the text that is never a literal, for
//! SQL redaction (`redact`) and the statement classifier (`policy`).
//!
//! Tokens cover the text without gaps, each a byte range: whitespace, `--` and `//` line comments
//! (`//` right after `:` is a URL such as `file://`, not a comment), `/* */` block comments,
//! `'...'` literals with `''` and backslash escapes, `$$...$$` literals, quoted identifiers
//! (`"..."` with `""`), words, numbers and single punctuation characters. An unterminated literal,
//! identifier or comment runs to the end of the text.
//!
//! What it does not do: parse statements, or decide what a literal means.

/// Token kinds of the lexer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Whitespace.
    Space,
    /// `-- ...` or `// ...` up to (not including) the newline.
    LineComment,
    /// `/* ... */`.
    BlockComment,
    /// `'...'`.
    Str,
    /// `$$...$$`.
    DollarStr,
    /// `"..."`.
    QuotedIdent,
    /// An identifier or keyword (also `$name` variables).
    Word,
    /// A number.
    Number,
    /// Any other single character (or the run of slashes after `scheme:`).
    Punct,
}

#[cfg(test)]
impl Kind {
    /// A string literal.
    pub(crate) fn is_literal(self) -> bool {
        matches!(self, Kind::Str | Kind::DollarStr)
    }
}

/// A token: its kind and its byte range in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) kind: Kind,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// The lexer, as an iterator over tokens that cover the text without gaps.
pub(crate) struct Lexer<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Lexer<'a> {
    /// A lexer at the start of `sql`.
    pub(crate) fn new(sql: &'a str) -> Self {
        Lexer {
            b: sql.as_bytes(),
            i: 0,
        }
    }

    fn at(&self, j: usize) -> Option<u8> {
        self.b.get(j).copied()
    }

    fn find_from(&self, from: usize, pat: &[u8]) -> Option<usize> {
        self.b
            .get(from..)?
            .windows(pat.len())
            .position(|w| w == pat)
            .map(|p| from + p)
    }
}

fn is_word_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_word_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        let start = self.i;
        let c = self.at(start)?;
        let n = self.b.len();
        let next = self.at(start + 1);
        let (kind, end) = if c.is_ascii_whitespace() {
            let mut j = start;
            while self.at(j).is_some_and(|c| c.is_ascii_whitespace()) {
                j += 1;
            }
            (Kind::Space, j)
        } else if c == b'/' && start > 0 && self.b[start - 1] == b':' {
            // `file:///tmp/x`, `s3://bucket`: the slashes of a URL, not a `//` comment.
            let mut j = start;
            while self.at(j) == Some(b'/') {
                j += 1;
            }
            (Kind::Punct, j)
        } else if (c == b'-' && next == Some(b'-')) || (c == b'/' && next == Some(b'/')) {
            let end = self.find_from(start, b"\n").unwrap_or(n);
            (Kind::LineComment, end)
        } else if c == b'/' && next == Some(b'*') {
            let end = self.find_from(start + 2, b"*/").map_or(n, |p| p + 2);
            (Kind::BlockComment, end)
        } else if c == b'\'' {
            let mut j = start + 1;
            let end = loop {
                match self.at(j) {
                    None => break n,
                    Some(b'\\') => j += 2,
                    Some(b'\'') if self.at(j + 1) == Some(b'\'') => j += 2,
                    Some(b'\'') => break j + 1,
                    Some(_) => j += 1,
                }
            };
            (Kind::Str, end.min(n))
        } else if c == b'$' && next == Some(b'$') {
            let end = self.find_from(start + 2, b"$$").map_or(n, |p| p + 2);
            (Kind::DollarStr, end)
        } else if c == b'"' {
            let mut j = start + 1;
            let end = loop {
                match self.at(j) {
                    None => break n,
                    Some(b'"') if self.at(j + 1) == Some(b'"') => j += 2,
                    Some(b'"') => break j + 1,
                    Some(_) => j += 1,
                }
            };
            (Kind::QuotedIdent, end)
        } else if is_word_start(c) || (c == b'$' && next.is_some_and(is_word_char)) {
            let mut j = start + 1;
            while self.at(j).is_some_and(is_word_char) {
                j += 1;
            }
            (Kind::Word, j)
        } else if c.is_ascii_digit() {
            let mut j = start + 1;
            while self
                .at(j)
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_')
            {
                j += 1;
            }
            (Kind::Number, j)
        } else {
            (Kind::Punct, start + 1)
        };
        self.i = end;
        Some(Token { kind, start, end })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(Kind, &str)> {
        Lexer::new(sql)
            .map(|t| (t.kind, &sql[t.start..t.end]))
            .collect()
    }

    #[test]
    fn tokens_cover_the_text() {
        let sql = "select 'it''s', $$x$$, \"a\"\"b\" -- c\n/* d */ put file:///tmp/a 1.5e3 $v";
        let toks: Vec<Token> = Lexer::new(sql).collect();
        assert_eq!(toks.first().unwrap().start, 0);
        assert_eq!(toks.last().unwrap().end, sql.len());
        assert!(toks.windows(2).all(|w| w[0].end == w[1].start));
        let k = kinds(sql);
        assert!(k.contains(&(Kind::Str, "'it''s'")));
        assert!(k.contains(&(Kind::DollarStr, "$$x$$")));
        assert!(k.contains(&(Kind::QuotedIdent, "\"a\"\"b\"")));
        assert!(k.contains(&(Kind::LineComment, "-- c")));
        assert!(k.contains(&(Kind::BlockComment, "/* d */")));
        assert!(k.contains(&(Kind::Punct, "///")));
        assert!(k.contains(&(Kind::Number, "1.5e3")));
        assert!(k.contains(&(Kind::Word, "$v")));
    }

    #[test]
    fn unterminated_tokens_run_to_the_end() {
        assert_eq!(
            kinds("x='abc"),
            [(Kind::Word, "x"), (Kind::Punct, "="), (Kind::Str, "'abc")]
        );
        assert_eq!(kinds("'a\\"), [(Kind::Str, "'a\\")]);
        assert_eq!(kinds("/* open"), [(Kind::BlockComment, "/* open")]);
        assert_eq!(kinds("\"id"), [(Kind::QuotedIdent, "\"id")]);
    }
}
