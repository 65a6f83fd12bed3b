//! `.dockerignore`: which paths of the build context are left out, with docker's rules.
//!
//! The matcher is hand-written rather than built on `globset` because docker's semantics are
//! not gitignore's and not quite any glob library's: `**` becomes `(.*/)?` (or `.*` at the
//! end), a pattern also excludes everything below a directory it matches, `!` exceptions are
//! evaluated last-match-wins, and a walker needs a "could anything below this directory be
//! re-included?" question answered, which needs a prefix match that glob sets do not offer.
//! Matching is a dynamic program over (pattern token, path char), so it is linear in their
//! product and cannot blow up on many stars.

use thiserror::Error;

/// A malformed `.dockerignore` line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(".dockerignore line {line}: {message}")]
pub struct DockerIgnoreError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// One element of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// A literal character.
    Lit(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**/` or `**` inside a pattern: zero or more whole directories, `(.*/)?`.
    AnyDirs,
    /// `**` at the end: anything at all, `.*`.
    AnyTail,
    /// `[...]`: a character class.
    Class {
        /// `[^...]`.
        negated: bool,
        /// Inclusive ranges (single characters are `(c, c)`).
        ranges: Vec<(char, char)>,
    },
}

/// One compiled line.
#[derive(Debug, Clone)]
struct Pattern {
    /// The cleaned pattern as text (without the `!`).
    text: String,
    /// `!pattern`: re-include what matches.
    exception: bool,
    toks: Vec<Tok>,
}

/// The parsed `.dockerignore` of a build context.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

impl DockerIgnore {
    /// Parse the text of a `.dockerignore` file.
    pub fn parse(text: &str) -> Result<DockerIgnore, DockerIgnoreError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for (idx, raw) in text.lines().enumerate() {
            let line = idx + 1;
            // As docker: a comment is a `#` in the very first column, checked before trimming.
            if raw.starts_with('#') {
                continue;
            }
            let mut pat = raw.trim();
            if pat.is_empty() {
                continue;
            }
            let exception = pat.starts_with('!');
            if exception {
                pat = pat[1..].trim();
                if pat.is_empty() {
                    return Err(DockerIgnoreError {
                        line,
                        message: "illegal exclusion pattern: \"!\"".to_string(),
                    });
                }
            }
            let mut cleaned = clean(pat);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let toks = compile(&cleaned).map_err(|message| DockerIgnoreError {
                line,
                message: format!("bad pattern {pat:?}: {message}"),
            })?;
            patterns.push(Pattern {
                text: cleaned,
                exception,
                toks,
            });
        }
        Ok(DockerIgnore { patterns })
    }

    /// True if there are no patterns at all (nothing is excluded).
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The cleaned patterns in order, each with `!` in front if it is an exception.
    pub fn patterns(&self) -> Vec<String> {
        self.patterns
            .iter()
            .map(|p| {
                if p.exception {
                    format!("!{}", p.text)
                } else {
                    p.text.clone()
                }
            })
            .collect()
    }

    /// True if any `!` exception pattern exists (a walker must then look inside excluded dirs).
    #[cfg(test)]
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }

    /// Whether the context-relative `rel_path` is left out of the build context.
    ///
    /// A pattern matches a path if it matches the path itself or any of its parent
    /// directories; the last matching pattern decides. `is_dir` does not change the answer
    /// (docker cleans trailing slashes off patterns, so no pattern is directory-only); it is
    /// taken so callers need not care.
    pub fn is_excluded(&self, rel_path: &str, is_dir: bool) -> bool {
        let _ = is_dir;
        let path = relative(rel_path);
        if path.is_empty() {
            return false;
        }
        let chars: Vec<char> = path.chars().collect();
        let mut excluded = false;
        for pat in &self.patterns {
            // Only a pattern that could flip the current answer needs evaluating.
            if pat.exception != excluded {
                continue;
            }
            if pat.matches_self_or_parent(&chars) {
                excluded = !pat.exception;
            }
        }
        excluded
    }

    /// Whether something below the directory `dir_rel` could be re-included by a `!` pattern,
    /// so a walker that found `dir_rel` excluded must still walk into it (and ask
    /// [`is_excluded`](Self::is_excluded) about each entry). Conservative: may say true for a
    /// directory that turns out to hold nothing included, never false when something is.
    pub fn may_contain_included(&self, dir_rel: &str) -> bool {
        let dir = relative(dir_rel);
        let chars: Vec<char> = dir.chars().collect();
        let mut with_slash = chars.clone();
        if !with_slash.is_empty() {
            with_slash.push('/');
        }
        self.patterns.iter().filter(|p| p.exception).any(|p| {
            (!chars.is_empty() && p.matches_self_or_parent(&chars))
                || run(&p.toks, &with_slash, true)
        })
    }
}

impl Pattern {
    fn matches_self_or_parent(&self, path: &[char]) -> bool {
        if run(&self.toks, path, false) {
            return true;
        }
        path.iter()
            .enumerate()
            .filter(|(_, c)| **c == '/')
            .any(|(i, _)| run(&self.toks, &path[..i], false))
    }
}

/// A context-relative path in the form patterns are matched against: cleaned, no leading `/`,
/// empty for the context root.
fn relative(path: &str) -> String {
    let cleaned = clean(path);
    let trimmed = cleaned.trim_start_matches('/');
    if trimmed == "." {
        String::new()
    } else {
        trimmed.to_string()
    }
}

/// Lexical path cleaning like Go's `path.Clean`: collapses `//`, drops `.`, resolves `..`.
fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Compile a cleaned pattern, rejecting what Go's `filepath.Match` rejects.
fn compile(pattern: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                toks.push(if i >= chars.len() {
                    Tok::AnyTail
                } else {
                    Tok::AnyDirs
                });
            }
            '*' => toks.push(Tok::Star),
            '?' => toks.push(Tok::One),
            '\\' => match chars.get(i) {
                Some(&n) => {
                    i += 1;
                    toks.push(Tok::Lit(n));
                }
                None => return Err("trailing backslash".to_string()),
            },
            '[' => {
                let (tok, next) = compile_class(&chars, i)?;
                toks.push(tok);
                i = next;
            }
            c => toks.push(Tok::Lit(c)),
        }
    }
    Ok(toks)
}

/// Parse a class whose `[` is just before `start`; returns the token and the index after `]`.
fn compile_class(chars: &[char], start: usize) -> Result<(Tok, usize), String> {
    let mut i = start;
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let class_char = |i: &mut usize| -> Result<char, String> {
        match chars.get(*i) {
            None => Err("unterminated character class".to_string()),
            Some('-') | Some(']') => Err("bad character range".to_string()),
            Some('\\') => {
                *i += 1;
                let c = chars
                    .get(*i)
                    .copied()
                    .ok_or("unterminated character class")?;
                *i += 1;
                Ok(c)
            }
            Some(&c) => {
                *i += 1;
                Ok(c)
            }
        }
    };
    loop {
        if chars.get(i) == Some(&']') && !ranges.is_empty() {
            return Ok((Tok::Class { negated, ranges }, i + 1));
        }
        let lo = class_char(&mut i)?;
        let mut hi = lo;
        if chars.get(i) == Some(&'-') {
            i += 1;
            hi = class_char(&mut i)?;
            if hi < lo {
                return Err("bad character range".to_string());
            }
        }
        ranges.push((lo, hi));
    }
}

/// Match `text` against `toks`. With `prefix`, succeed if some continuation of `text` could
/// match (the text is used up while pattern remains).
fn run(toks: &[Tok], text: &[char], prefix: bool) -> bool {
    let n = toks.len();
    let m = text.len();
    let w = m + 1;
    // ok[i * w + j]: toks[i..] matches text[j..] (or, with prefix, can match an extension).
    let mut ok = vec![false; (n + 1) * w];
    ok[n * w + m] = true;
    for i in (0..n).rev() {
        if prefix {
            ok[i * w + m] = true;
        }
        // For AnyDirs: is there a k >= j with text[k] == '/' and ok[i+1][k+1]?
        let mut slash_ahead = false;
        for j in (0..=m).rev() {
            let next = |jj: usize| ok[(i + 1) * w + jj];
            let here = if j == m {
                match &toks[i] {
                    Tok::Star | Tok::AnyDirs | Tok::AnyTail => next(m) || prefix,
                    _ => prefix,
                }
            } else {
                let c = text[j];
                match &toks[i] {
                    Tok::Lit(l) => *l == c && next(j + 1),
                    Tok::One => c != '/' && next(j + 1),
                    Tok::Star => next(j) || (c != '/' && ok[i * w + j + 1]),
                    Tok::AnyTail => next(j) || ok[i * w + j + 1],
                    Tok::AnyDirs => {
                        if c == '/' && next(j + 1) {
                            slash_ahead = true;
                        }
                        next(j) || slash_ahead
                    }
                    Tok::Class { negated, ranges } => {
                        let inside = ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi);
                        inside != *negated && next(j + 1)
                    }
                }
            };
            ok[i * w + j] = here;
        }
    }
    ok[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn di(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).unwrap()
    }

    #[test]
    fn comments_blanks_and_cleaning() {
        let d = di("# comment\n\n  \n/abs\n./dot/\nx//y/../z\n  spaced  \n  # not a comment\n");
        assert_eq!(
            d.patterns(),
            vec!["abs", "dot", "x/z", "spaced", "# not a comment"]
        );
        assert!(d.is_excluded("abs", false));
        assert!(d.is_excluded("dot", true));
        assert!(d.is_excluded("x/z", false));
        assert!(!d.is_excluded("x/y/z", false));
        assert!(d.is_excluded("spaced", false));
    }

    #[test]
    fn crlf_and_bom() {
        let d = di("\u{feff}target\r\n!target/keep\r\n");
        assert_eq!(d.patterns(), vec!["target", "!target/keep"]);
    }

    #[test]
    fn directory_excludes_everything_beneath() {
        let d = di("node_modules\n");
        assert!(d.is_excluded("node_modules", true));
        assert!(d.is_excluded("node_modules/a/b", false));
        assert!(
            !d.is_excluded("src/node_modules", true),
            "patterns are rooted"
        );
        assert!(!d.is_excluded("node_modules2", true));
    }

    #[test]
    fn query_paths_are_cleaned() {
        let d = di("build\n");
        assert!(d.is_excluded("./build/x", false));
        assert!(d.is_excluded("/build", true));
        assert!(d.is_excluded("a/../build//x", false));
        assert!(!d.is_excluded(".", true));
        assert!(!d.is_excluded("", true));
    }

    #[test]
    fn star_and_question_do_not_cross_slash() {
        let d = di("*.log\na?c\n");
        assert!(d.is_excluded("x.log", false));
        assert!(!d.is_excluded("dir/x.log", false));
        assert!(d.is_excluded("abc", false));
        assert!(!d.is_excluded("a/c", false));
        assert!(!d.is_excluded("abbc", false));
        let d = di("*/temp*\n");
        assert!(d.is_excluded("a/temporary", false));
        assert!(!d.is_excluded("a/b/temp", false));
    }

    #[test]
    fn star_matches_top_level_and_everything_under_it() {
        let d = di("*\n");
        assert!(d.is_excluded("a", false));
        assert!(d.is_excluded("a/b/c", false));
    }

    #[test]
    fn double_star() {
        let d = di("**/*.go\n");
        assert!(d.is_excluded("main.go", false));
        assert!(d.is_excluded("a/b/main.go", false));
        assert!(!d.is_excluded("a/b/main.rs", false));
        let d = di("a/**/z\n");
        assert!(d.is_excluded("a/z", false));
        assert!(d.is_excluded("a/b/c/z", false));
        assert!(!d.is_excluded("a/bz", false));
        let d = di("docs/**\n");
        assert!(d.is_excluded("docs/x/y", false));
        assert!(
            !d.is_excluded("docs", true),
            "docs/** needs something after docs/"
        );
        let d = di("**\n");
        assert!(d.is_excluded("anything/at/all", false));
    }

    #[test]
    fn exceptions_last_match_wins() {
        let d = di("*.md\n!README.md\n");
        assert!(d.is_excluded("CHANGES.md", false));
        assert!(!d.is_excluded("README.md", false));
        let d = di("!README.md\n*.md\n");
        assert!(
            d.is_excluded("README.md", false),
            "a later exclusion overrides"
        );
        let d = di("docs\n!docs/keep\ndocs/keep/secret\n");
        assert!(d.is_excluded("docs/a", false));
        assert!(!d.is_excluded("docs/keep", true));
        assert!(!d.is_excluded("docs/keep/x", false));
        assert!(d.is_excluded("docs/keep/secret", false));
        assert!(d.is_excluded("docs/keep/secret/deeper", false));
    }

    #[test]
    fn character_classes_and_escapes() {
        let d = di("file[0-9].txt\nx[^a]y\nlit\\*\n");
        assert!(d.is_excluded("file7.txt", false));
        assert!(!d.is_excluded("fileA.txt", false));
        assert!(d.is_excluded("xby", false));
        assert!(!d.is_excluded("xay", false));
        assert!(d.is_excluded("lit*", false));
        assert!(!d.is_excluded("litx", false));
    }

    #[test]
    fn may_contain_included() {
        let d = di("node_modules\n");
        assert!(!d.may_contain_included("node_modules"));
        let d = di("vendor\n!vendor/keep/*.go\n");
        assert!(d.has_exceptions());
        assert!(d.may_contain_included("vendor"));
        assert!(d.may_contain_included("vendor/keep"));
        assert!(!d.may_contain_included("vendor/other"));
        assert!(!d.may_contain_included("elsewhere"));
        assert!(d.is_excluded("vendor/other/x.go", false));
        assert!(!d.is_excluded("vendor/keep/x.go", false));
        let d = di("a\n!**/keep\n");
        assert!(d.may_contain_included("a/b/c"));
        let d = di("*\n!dir\n");
        assert!(d.may_contain_included("dir"));
        assert!(d.may_contain_included("dir/sub"), "a parent is re-included");
        assert!(d.may_contain_included(""));
    }

    #[test]
    fn errors() {
        let e = DockerIgnore::parse("ok\n!\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert_eq!(
            e.to_string(),
            ".dockerignore line 2: illegal exclusion pattern: \"!\""
        );
        let e = DockerIgnore::parse("a[b\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.message.contains("unterminated"), "{}", e.message);
        assert_eq!(DockerIgnore::parse("x\n[]\n").unwrap_err().line, 2);
        assert_eq!(DockerIgnore::parse("[z-a]\n").unwrap_err().line, 1);
        assert_eq!(DockerIgnore::parse("end\\\n").unwrap_err().line, 1);
    }

    #[test]
    fn empty_file_excludes_nothing() {
        let d = di("");
        assert!(d.is_empty());
        assert!(!d.is_excluded("a", false));
        assert!(!d.may_contain_included("a"));
    }

    #[test]
    fn clean_like_go() {
        assert_eq!(clean("a/./b/../c//"), "a/c");
        assert_eq!(clean("../x"), "../x");
        assert_eq!(clean("/../x"), "/x");
        assert_eq!(clean("./"), ".");
        assert_eq!(clean("/"), "/");
    }

    #[test]
    fn garbage_never_panics() {
        let alphabet: Vec<char> = "*?[]^-\\/!.# \naZ".chars().collect();
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..500 {
            let len = rng.usize(0..30);
            let s: String = (0..len)
                .map(|_| alphabet[rng.usize(0..alphabet.len())])
                .collect();
            if let Ok(d) = DockerIgnore::parse(&s) {
                let len = rng.usize(0..12);
                let p: String = (0..len)
                    .map(|_| alphabet[rng.usize(0..alphabet.len())])
                    .collect();
                let _ = d.is_excluded(&p, false);
                let _ = d.may_contain_included(&p);
            }
        }
    }
}
