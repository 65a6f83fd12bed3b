//! Docker's word processing for instruction arguments: quote removal, escapes and `$VAR`
//! substitution, as `ENV`, `ARG`, `LABEL`, `COPY`, `WORKDIR`, `USER`, `FROM`, ... apply it.
//!
//! The parser keeps arguments as written (quotes included, as docker's parser does); this is
//! the one place that removes quotes, so `'$HOME'` stays literal and `"$HOME"` is expanded.

use thiserror::Error;

/// Nesting deeper than this (`${A:-${B:-...}}`) is refused instead of risking the stack.
const MAX_DEPTH: usize = 64;

/// Why a word could not be expanded (messages follow docker's).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExpandError {
    /// `${` without its `}`.
    #[error("syntax error: missing '}}'")]
    MissingBrace,
    /// `${}`, `${:x}`, `${{x}`.
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    /// A quote that is never closed; the field is the quote character.
    #[error("unexpected end of statement while looking for matching {}", quote_name(*.0))]
    UnterminatedQuote(char),
    /// `${NAME?message}` or `${NAME:?message}` on an unset (or empty) variable.
    #[error("{name}: {message}")]
    Required {
        /// The variable.
        name: String,
        /// The given message, or docker's default one.
        message: String,
    },
    /// A modifier this implementation does not know (`${A#x}`, `${A%x}`, `${A/x/y}`, ...).
    #[error("unsupported modifier ({0}) in substitution")]
    UnsupportedModifier(String),
    /// Substitutions nested more than 64 deep.
    #[error("substitution nested too deeply")]
    TooDeep,
}

fn quote_name(q: char) -> &'static str {
    if q == '\'' {
        "single-quote"
    } else {
        "double-quote"
    }
}

/// Expand one word: remove quotes, apply escapes, substitute `$VAR`/`${VAR...}` from `lookup`.
///
/// Supported: `$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR-word}`, `${VAR:+word}`, `${VAR+word}`,
/// `${VAR:?msg}`, `${VAR?msg}`; unset variables expand to the empty string; `\$` (with the
/// Dockerfile's escape character) is a literal `$`; single quotes are fully literal; inside
/// double quotes the escape character only escapes `"`, `$` and itself.
pub fn expand(
    word: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    escape: char,
) -> Result<String, ExpandError> {
    let mut lexer = Lexer {
        chars: word.chars().collect(),
        pos: 0,
        lookup,
        escape,
    };
    lexer.process_until(None, 0)
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    escape: char,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Unquoted text up to `stop` (consumed) or the end of the word.
    fn process_until(&mut self, stop: Option<char>, depth: usize) -> Result<String, ExpandError> {
        if depth > MAX_DEPTH {
            return Err(ExpandError::TooDeep);
        }
        let mut out = String::new();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.pos += 1;
                return Ok(out);
            }
            match ch {
                '\'' => out.push_str(&self.single_quote()?),
                '"' => out.push_str(&self.double_quote(depth)?),
                '$' => out.push_str(&self.dollar(depth)?),
                _ => {
                    self.pos += 1;
                    if ch == self.escape {
                        // The escape character takes the next one literally; alone at the end
                        // of the word it disappears.
                        match self.next() {
                            Some(c) => out.push(c),
                            None => break,
                        }
                    } else {
                        out.push(ch);
                    }
                }
            }
        }
        if stop.is_some() {
            return Err(ExpandError::MissingBrace);
        }
        Ok(out)
    }

    fn single_quote(&mut self) -> Result<String, ExpandError> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.next() {
                None => return Err(ExpandError::UnterminatedQuote('\'')),
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quote(&mut self, depth: usize) -> Result<String, ExpandError> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(ExpandError::UnterminatedQuote('"')),
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('$') => out.push_str(&self.dollar(depth)?),
                Some(c) => {
                    self.pos += 1;
                    if c == self.escape {
                        match self.peek() {
                            // Dropped; the missing closing quote is reported next round.
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.escape => {
                                self.pos += 1;
                                out.push(n);
                            }
                            // Other escapes stay as written, as in sh.
                            Some(_) => out.push(c),
                        }
                    } else {
                        out.push(c);
                    }
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        match self.peek() {
            Some(c) if c.is_numeric() => {
                while let Some(c) = self.peek().filter(|c| c.is_numeric()) {
                    name.push(c);
                    self.pos += 1;
                }
                return name;
            }
            Some(c) if matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!') => {
                self.pos += 1;
                name.push(c);
                return name;
            }
            _ => {}
        }
        while let Some(c) = self.peek().filter(|c| c.is_alphanumeric() || *c == '_') {
            name.push(c);
            self.pos += 1;
        }
        name
    }

    fn dollar(&mut self, depth: usize) -> Result<String, ExpandError> {
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok((self.lookup)(&name).unwrap_or_default());
        }
        self.pos += 1;
        match self.peek() {
            None => return Err(ExpandError::MissingBrace),
            Some('{' | '}' | ':') => return Err(ExpandError::BadSubstitution),
            Some(_) => {}
        }
        let name = self.name();
        let mut op = self.next().ok_or(ExpandError::MissingBrace)?;
        if op == '}' {
            return Ok((self.lookup)(&name).unwrap_or_default());
        }
        let mut modifier = op.to_string();
        let null_is_unset = op == ':';
        if null_is_unset {
            op = self.next().ok_or(ExpandError::MissingBrace)?;
            modifier.push(op);
        }
        if !matches!(op, '-' | '+' | '?') {
            return Err(ExpandError::UnsupportedModifier(modifier));
        }
        let word = self.process_until(Some('}'), depth + 1)?;
        let value = (self.lookup)(&name);
        let unset = match &value {
            None => true,
            Some(v) => null_is_unset && v.is_empty(),
        };
        match op {
            '-' => Ok(if unset {
                word
            } else {
                value.unwrap_or_default()
            }),
            '+' => Ok(if unset { String::new() } else { word }),
            _ => {
                if !unset {
                    return Ok(value.unwrap_or_default());
                }
                let message = if !word.is_empty() {
                    word
                } else if value.is_none() {
                    "is not allowed to be unset".to_string()
                } else {
                    "is not allowed to be empty".to_string()
                };
                Err(ExpandError::Required { name, message })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "B" => Some("b b".into()),
            "EMPTY" => Some(String::new()),
            "ÜBER" => Some("u".into()),
            "1" => Some("one".into()),
            _ => None,
        }
    }

    fn x(word: &str) -> Result<String, ExpandError> {
        expand(word, &env, '\\')
    }

    fn ok(word: &str) -> String {
        x(word).unwrap()
    }

    #[test]
    fn plain_and_simple_vars() {
        assert_eq!(ok("hello"), "hello");
        assert_eq!(ok("$A"), "alpha");
        assert_eq!(ok("${A}"), "alpha");
        assert_eq!(ok("x$A/y"), "xalpha/y");
        assert_eq!(ok("${A}_x"), "alpha_x");
        assert_eq!(
            ok("$A_x"),
            "",
            "the name runs on through letters, digits and _"
        );
        assert_eq!(ok("$ÜBER"), "u");
        assert_eq!(
            ok("$1x"),
            "onex",
            "a name starting with a digit is only digits"
        );
    }

    #[test]
    fn unset_is_empty() {
        assert_eq!(ok("[$NOPE]"), "[]");
        assert_eq!(ok("[${NOPE}]"), "[]");
    }

    #[test]
    fn lone_dollar_is_literal() {
        assert_eq!(ok("$"), "$");
        assert_eq!(ok("a$ b"), "a$ b");
        assert_eq!(ok("$/x"), "$/x");
    }

    #[test]
    fn default_forms() {
        assert_eq!(ok("${NOPE:-dflt}"), "dflt");
        assert_eq!(ok("${EMPTY:-dflt}"), "dflt");
        assert_eq!(ok("${A:-dflt}"), "alpha");
        assert_eq!(ok("${NOPE-dflt}"), "dflt");
        assert_eq!(
            ok("${EMPTY-dflt}"),
            "",
            "without colon, empty counts as set"
        );
        assert_eq!(ok("${A-dflt}"), "alpha");
    }

    #[test]
    fn alternative_forms() {
        assert_eq!(ok("${A:+alt}"), "alt");
        assert_eq!(ok("${EMPTY:+alt}"), "");
        assert_eq!(ok("${NOPE:+alt}"), "");
        assert_eq!(ok("${EMPTY+alt}"), "alt");
        assert_eq!(ok("${NOPE+alt}"), "");
    }

    #[test]
    fn required_forms() {
        assert_eq!(ok("${A:?must}"), "alpha");
        assert_eq!(
            x("${NOPE?}").unwrap_err().to_string(),
            "NOPE: is not allowed to be unset"
        );
        assert_eq!(
            x("${EMPTY:?}").unwrap_err().to_string(),
            "EMPTY: is not allowed to be empty"
        );
        assert_eq!(
            x("${NOPE:?give it}").unwrap_err(),
            ExpandError::Required {
                name: "NOPE".into(),
                message: "give it".into()
            }
        );
        assert_eq!(ok("${EMPTY?x}"), "");
    }

    #[test]
    fn nested_words_in_modifiers() {
        assert_eq!(ok("${NOPE:-$A}"), "alpha");
        assert_eq!(ok("${NOPE:-${ALSO:-deep}}"), "deep");
        assert_eq!(ok("${NOPE:-\"a b\"}"), "a b");
        assert_eq!(ok("${NOPE:-a\\}b}"), "a}b");
    }

    #[test]
    fn escapes() {
        assert_eq!(ok("\\$A"), "$A");
        assert_eq!(ok("a\\ b"), "a b");
        assert_eq!(ok("a\\\\b"), "a\\b");
        assert_eq!(ok("trailing\\"), "trailing");
        assert_eq!(expand("`$A", &env, '`').unwrap(), "$A");
        assert_eq!(
            expand("C:\\dir\\$A", &env, '`').unwrap(),
            "C:\\dir\\alpha",
            "with ` as escape, backslashes are ordinary"
        );
    }

    #[test]
    fn quotes() {
        assert_eq!(ok("'$A'"), "$A");
        assert_eq!(ok("\"$A\""), "alpha");
        assert_eq!(ok("\"x y\""), "x y");
        assert_eq!(ok("'a \\ b'"), "a \\ b", "single quotes are fully literal");
        assert_eq!(ok("\"a \\\"q\\\" \\$A \\n\""), "a \"q\" $A \\n");
        assert_eq!(ok("\"it's\""), "it's");
        assert_eq!(ok("'say \"hi\"'"), "say \"hi\"");
        assert_eq!(ok("pre\"$B\"post"), "preb bpost");
    }

    #[test]
    fn errors() {
        assert_eq!(x("${A"), Err(ExpandError::MissingBrace));
        assert_eq!(x("${"), Err(ExpandError::MissingBrace));
        assert_eq!(x("${A:-x"), Err(ExpandError::MissingBrace));
        assert_eq!(x("${A:"), Err(ExpandError::MissingBrace));
        assert_eq!(x("${}"), Err(ExpandError::BadSubstitution));
        assert_eq!(x("${:-x}"), Err(ExpandError::BadSubstitution));
        assert_eq!(x("'abc"), Err(ExpandError::UnterminatedQuote('\'')));
        assert_eq!(x("\"abc"), Err(ExpandError::UnterminatedQuote('"')));
        assert_eq!(x("\"abc\\"), Err(ExpandError::UnterminatedQuote('"')));
        assert_eq!(
            x("${A#x}"),
            Err(ExpandError::UnsupportedModifier("#".into()))
        );
        assert_eq!(
            x("${A:x}"),
            Err(ExpandError::UnsupportedModifier(":x".into()))
        );
        assert_eq!(
            x("${A"),
            Err(ExpandError::MissingBrace),
            "message: {}",
            ExpandError::MissingBrace
        );
        assert_eq!(
            ExpandError::MissingBrace.to_string(),
            "syntax error: missing '}'"
        );
        assert_eq!(
            ExpandError::UnterminatedQuote('\'').to_string(),
            "unexpected end of statement while looking for matching single-quote"
        );
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let word = "${A:-".repeat(10_000);
        assert_eq!(x(&word), Err(ExpandError::TooDeep));
        let ok_word = format!("{}x{}", "${N:-".repeat(10), "}".repeat(10));
        assert_eq!(ok(&ok_word), "x");
    }

    #[test]
    fn garbage_never_panics() {
        let alphabet: Vec<char> = "${}:-+?#%'\"\\`aZ_1 /é".chars().collect();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let len = rng.usize(0..24);
            let s: String = (0..len)
                .map(|_| alphabet[rng.usize(0..alphabet.len())])
                .collect();
            let _ = expand(&s, &env, '\\');
            let _ = expand(&s, &env, '`');
        }
    }
}
