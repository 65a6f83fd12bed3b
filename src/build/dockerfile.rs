//! The Dockerfile parser: text to [`Dockerfile`], following docker's (buildkit's) parser.
//!
//! Arguments are kept as written, quotes included, exactly as docker's parser keeps them:
//! quote removal and `$VAR` substitution belong together (`'$A'` must stay literal), so both
//! happen later in [`expand`](super::expand::expand), which the builder applies to the
//! arguments of `ENV`, `ARG`, `LABEL`, `COPY`, `WORKDIR`, ... as docker does.

use std::collections::HashMap;

use thiserror::Error;

use super::instruction::{CommandForm, CopySpec, Dockerfile, Instruction, Located, Stage};

/// A Dockerfile that cannot be parsed; displays as `line N: message`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line of the offending instruction (its first line).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parser directives docker knows; others (and anything after a non-directive) are comments.
const DIRECTIVES: [&str; 3] = ["escape", "syntax", "check"];

/// Parse the text of a Dockerfile.
pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.lines().collect();
    let mut escape = '\\';
    let mut i = 0;
    let mut seen: Vec<String> = Vec::new();
    while let Some((name, value)) = lines.get(i).and_then(|l| directive(l)) {
        if !DIRECTIVES.contains(&name.as_str()) {
            break;
        }
        let err = |message: String| ParseError {
            line: i + 1,
            message,
        };
        if seen.contains(&name) {
            return Err(err(format!("only one {name} parser directive can be used")));
        }
        if name == "escape" {
            escape = match value.as_str() {
                "\\" => '\\',
                "`" => '`',
                _ => {
                    return Err(err(format!(
                        "invalid escape token {value:?}: must be ` or \\"
                    )))
                }
            };
        }
        seen.push(name);
        i += 1;
    }

    let mut parser = Parser {
        escape,
        global_args: Vec::new(),
        stages: Vec::new(),
        any_instruction: false,
    };
    while i < lines.len() {
        let line = i + 1;
        let first = lines[i].trim_start();
        i += 1;
        if first.is_empty() || first.starts_with('#') {
            continue;
        }
        // `joined` is what docker hands to the instruction (pieces concatenated as written);
        // `pieces` become the one-space-joined text kept for history and messages.
        let (content, mut more) = strip_continuation(first, escape);
        let mut joined = content.to_string();
        let mut pieces = vec![content.trim()];
        while more && i < lines.len() {
            let raw = lines[i];
            i += 1;
            let t = raw.trim_start();
            // Docker skips comment lines and blank lines inside a continued instruction.
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            let (content, m) = strip_continuation(raw, escape);
            joined.push_str(content);
            pieces.push(content.trim());
            more = m;
        }
        pieces.retain(|p| !p.is_empty());
        let text = pieces.join(" ");
        parser
            .instruction(line, &joined, text)
            .map_err(|message| ParseError { line, message })?;
    }

    if parser.stages.is_empty() {
        let message = if parser.any_instruction {
            "no FROM instruction: a Dockerfile needs at least one stage"
        } else {
            "the Dockerfile has no instructions"
        };
        return Err(ParseError {
            line: lines.len().max(1),
            message: message.to_string(),
        });
    }
    Ok(Dockerfile {
        global_args: parser.global_args,
        stages: parser.stages,
        escape,
    })
}

/// `# name=value` at the top of the file, name lower-cased.
fn directive(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix('#')?.trim_start();
    let name_len = rest
        .char_indices()
        .find(|(_, c)| !c.is_ascii_alphanumeric())
        .map_or(rest.len(), |(i, _)| i);
    let name = &rest[..name_len];
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    let value = rest[name_len..].trim_start().strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    Some((name.to_ascii_lowercase(), value.to_string()))
}

/// Split off a trailing escape character (plus trailing blanks): the line continues.
/// An escaped escape character (`\\` at the end) does not continue the line, as in buildkit.
fn strip_continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    if let Some(body) = t.strip_suffix(escape) {
        if !body.ends_with(escape) {
            return (body, true);
        }
    }
    (line, false)
}

struct Parser {
    escape: char,
    global_args: Vec<(String, Option<String>)>,
    stages: Vec<Stage>,
    any_instruction: bool,
}

impl Parser {
    /// One logical line; errors are messages, the caller adds the line number.
    fn instruction(&mut self, line: usize, joined: &str, text: String) -> Result<(), String> {
        self.any_instruction = true;
        let joined = joined.trim();
        let (keyword, rest) = match joined.find(char::is_whitespace) {
            Some(pos) => (&joined[..pos], &joined[pos..]),
            None => (joined, ""),
        };
        let (flag_words, args) = extract_flags(rest);
        let args = args.trim();
        let upper = keyword.to_ascii_uppercase();
        let esc = self.escape;

        let instruction = match upper.as_str() {
            "FROM" => return self.from(line, &flag_words, args),
            "ARG" => {
                flags(&flag_words, &[], &upper)?;
                let list = parse_arg(args, esc)?;
                if self.stages.is_empty() {
                    self.global_args.extend(list);
                    return Ok(());
                }
                Instruction::Arg(list)
            }
            "ONBUILD" | "HEALTHCHECK" => {
                return Err(format!("{upper} is not supported by strata"));
            }
            "RUN" | "CMD" | "ENTRYPOINT" | "COPY" | "ADD" | "WORKDIR" | "ENV" | "EXPOSE"
            | "LABEL" | "USER" | "VOLUME" | "SHELL" | "STOPSIGNAL" | "MAINTAINER" => {
                if self.stages.is_empty() {
                    return Err(format!(
                        "{upper} before the first FROM (only ARG may come before FROM)"
                    ));
                }
                stage_instruction(&upper, &flag_words, args, esc)?
            }
            _ => return Err(format!("unknown instruction {keyword:?}")),
        };
        if let Some(stage) = self.stages.last_mut() {
            stage.instructions.push(Located {
                line,
                text,
                instruction,
            });
        }
        Ok(())
    }

    fn from(&mut self, line: usize, flag_words: &[String], args: &str) -> Result<(), String> {
        let mut f = flags(flag_words, &[("platform", Kind::Str)], "FROM")?;
        let words: Vec<&str> = args.split_whitespace().collect();
        let (base, name) = match words.as_slice() {
            [base] => (*base, None),
            [base, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                (*base, Some(name.to_lowercase()))
            }
            _ => return Err("FROM requires either one or three arguments".to_string()),
        };
        if let Some(name) = &name {
            let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
            if !valid {
                return Err(format!(
                    "invalid name for build stage: {name:?}, name can't start with a number or contain symbols"
                ));
            }
            if self.stages.iter().any(|s| s.name.as_ref() == Some(name)) {
                return Err(format!("duplicate stage name {name:?}"));
            }
        }
        self.stages.push(Stage {
            base: base.to_string(),
            name,
            platform: f.remove("platform"),
            line,
            instructions: Vec::new(),
        });
        Ok(())
    }
}

/// Build a non-`FROM`, non-`ARG` instruction from its flags and arguments.
fn stage_instruction(
    upper: &str,
    flag_words: &[String],
    args: &str,
    esc: char,
) -> Result<Instruction, String> {
    let at_least_one = || format!("{upper} requires at least one argument");
    let exactly_one = || format!("{upper} requires exactly one argument");
    if upper == "COPY" || upper == "ADD" {
        return copy(upper, flag_words, args);
    }
    flags(flag_words, &[], upper)?;
    Ok(match upper {
        "RUN" | "CMD" | "ENTRYPOINT" => {
            if args.is_empty() {
                return Err(at_least_one());
            }
            let form = command_form(args);
            if upper == "RUN" {
                if let CommandForm::Shell(s) = &form {
                    if s.split_whitespace().any(is_heredoc) {
                        return Err("heredocs (<<EOF) are not supported".to_string());
                    }
                }
            }
            match upper {
                "RUN" => Instruction::Run(form),
                "CMD" => Instruction::Cmd(form),
                _ => Instruction::Entrypoint(form),
            }
        }
        "WORKDIR" | "USER" | "MAINTAINER" => {
            if args.is_empty() {
                return Err(exactly_one());
            }
            match upper {
                "WORKDIR" => Instruction::Workdir(args.to_string()),
                "USER" => Instruction::User(args.to_string()),
                _ => Instruction::Maintainer(args.to_string()),
            }
        }
        "STOPSIGNAL" => {
            if args.split_whitespace().count() != 1 {
                return Err(exactly_one());
            }
            Instruction::StopSignal(args.to_string())
        }
        "ENV" => Instruction::Env(parse_name_val(args, upper, esc)?),
        "LABEL" => Instruction::Label(parse_name_val(args, upper, esc)?),
        "EXPOSE" => {
            let ports: Vec<String> = args.split_whitespace().map(str::to_string).collect();
            if ports.is_empty() {
                return Err(at_least_one());
            }
            Instruction::Expose(ports)
        }
        "VOLUME" => {
            let paths = json_or_words(args);
            if paths.is_empty() {
                return Err(at_least_one());
            }
            if paths.iter().any(|p| p.trim().is_empty()) {
                return Err("VOLUME specified can not be an empty string".to_string());
            }
            Instruction::Volume(paths)
        }
        "SHELL" => match command_form(args) {
            CommandForm::Exec(v) if !v.is_empty() => Instruction::Shell(v),
            CommandForm::Exec(_) => return Err(at_least_one()),
            CommandForm::Shell(_) => {
                return Err("SHELL requires the arguments to be in JSON form".to_string())
            }
        },
        _ => return Err(format!("unknown instruction {upper:?}")),
    })
}

/// `COPY`/`ADD` with their flags; the JSON array form allows spaces in paths.
fn copy(upper: &str, flag_words: &[String], args: &str) -> Result<Instruction, String> {
    let spec: &[(&str, Kind)] = if upper == "COPY" {
        &[
            ("from", Kind::Str),
            ("chown", Kind::Str),
            ("chmod", Kind::Str),
            ("link", Kind::Bool),
        ]
    } else {
        &[
            ("chown", Kind::Str),
            ("chmod", Kind::Str),
            ("link", Kind::Bool),
        ]
    };
    let mut f = flags(flag_words, spec, upper)?;
    let mut list = json_or_words(args);
    if list.len() < 2 {
        return Err(format!(
            "{upper} requires at least two arguments (sources and a destination), but {} given",
            list.len()
        ));
    }
    if list.iter().any(|w| is_heredoc(w)) {
        return Err("heredocs (<<EOF) are not supported".to_string());
    }
    let dest = list.pop().unwrap_or_default();
    let chmod = match f.remove("chmod") {
        Some(mode) => Some(parse_chmod(&mode)?),
        None => None,
    };
    let spec = CopySpec {
        sources: list,
        dest,
        from: f.remove("from"),
        chown: f.remove("chown"),
        chmod,
    };
    Ok(if upper == "COPY" {
        Instruction::Copy(spec)
    } else {
        Instruction::Add(spec)
    })
}

fn is_heredoc(word: &str) -> bool {
    word.strip_prefix("<<")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_alphanumeric() || "_-\"'".contains(c)))
}

fn parse_chmod(mode: &str) -> Result<u32, String> {
    let bad = || format!("invalid --chmod value {mode:?}: expected an octal mode like 755");
    if mode.is_empty() || mode.len() > 5 || !mode.chars().all(|c| ('0'..='7').contains(&c)) {
        return Err(bad());
    }
    match u32::from_str_radix(mode, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(bad()),
    }
}

/// A JSON array of strings is the exec form; anything else (even a broken array) is shell form.
fn command_form(args: &str) -> CommandForm {
    if args.starts_with('[') {
        if let Ok(v) = serde_json::from_str::<Vec<String>>(args) {
            return CommandForm::Exec(v);
        }
    }
    CommandForm::Shell(args.to_string())
}

/// A JSON array of strings, or else the whitespace-separated words (no quote handling, as
/// docker does for `COPY`/`ADD`/`VOLUME`).
fn json_or_words(args: &str) -> Vec<String> {
    match command_form(args) {
        CommandForm::Exec(v) => v,
        CommandForm::Shell(s) => s.split_whitespace().map(str::to_string).collect(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Bool,
}

/// Check the `--name[=value]` words against what the instruction accepts.
fn flags(
    words: &[String],
    spec: &[(&str, Kind)],
    upper: &str,
) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for word in words {
        let body = word.strip_prefix("--").unwrap_or(word);
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let Some((_, kind)) = spec.iter().find(|(n, _)| *n == name) else {
            if upper == "RUN" && ["mount", "network", "security"].contains(&name) {
                return Err(format!("RUN --{name} is not supported by strata"));
            }
            return Err(format!("unknown flag --{name} for {upper}"));
        };
        if out.contains_key(name) {
            return Err(format!("duplicate flag --{name}"));
        }
        let value = match (kind, value) {
            (Kind::Str, Some(v)) if !v.is_empty() => v.to_string(),
            (Kind::Str, _) => return Err(format!("missing a value on flag --{name}")),
            (Kind::Bool, None) => "true".to_string(),
            (Kind::Bool, Some(v)) => match v.to_ascii_lowercase().as_str() {
                "true" | "false" => v.to_ascii_lowercase(),
                _ => {
                    return Err(format!(
                        "expecting boolean value for flag --{name}, not: {v:?}"
                    ))
                }
            },
        };
        out.insert(name.to_string(), value);
    }
    Ok(out)
}

/// Docker's `extractBuilderFlags`: leading words starting with `--` (quotes and `\` handled)
/// and the rest of the line after them.
fn extract_flags(line: &str) -> (Vec<String>, &str) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut phase = Phase::Spaces;
    let mut blank_ok = false;
    let mut k = 0;
    loop {
        let Some(&(pos, ch)) = chars.get(k) else {
            if phase != Phase::Spaces && word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            return (words, "");
        };
        match phase {
            Phase::Spaces => {
                if ch.is_whitespace() {
                    k += 1;
                    continue;
                }
                if ch != '-' || chars.get(k + 1).map(|c| c.1) != Some('-') {
                    return (words, &line[pos..]);
                }
                phase = Phase::Word;
            }
            Phase::Word => {
                k += 1;
                if ch.is_whitespace() {
                    phase = Phase::Spaces;
                    if word == "--" {
                        return (words, &line[pos..]);
                    }
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    blank_ok = false;
                } else if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                } else if ch == '\\' {
                    if let Some(&(_, n)) = chars.get(k) {
                        word.push(n);
                        k += 1;
                    }
                } else {
                    word.push(ch);
                }
            }
            Phase::Quote(q) => {
                k += 1;
                if ch == q {
                    phase = Phase::Word;
                } else if ch == '\\' {
                    match chars.get(k) {
                        Some(&(_, n)) => {
                            word.push(n);
                            k += 1;
                        }
                        None => phase = Phase::Word,
                    }
                } else {
                    word.push(ch);
                }
            }
        }
    }
}

/// Docker's `parseWords`: split on blanks outside quotes, keeping quotes and escapes in the
/// words (they are removed later, by `expand`).
fn parse_words(rest: &str, esc: char) -> Vec<String> {
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut blank_ok = false;
    let mut k = 0;
    while k < chars.len() {
        let ch = chars[k];
        k += 1;
        if let Some(q) = quote {
            if ch == q {
                quote = None;
            } else if ch == esc && q != '\'' {
                match chars.get(k) {
                    Some(&n) => {
                        word.push(ch);
                        word.push(n);
                        k += 1;
                    }
                    None => quote = None,
                }
                continue;
            }
            word.push(ch);
            continue;
        }
        if ch.is_whitespace() {
            if in_word && (blank_ok || !word.is_empty()) {
                words.push(std::mem::take(&mut word));
            }
            in_word = false;
            blank_ok = false;
            continue;
        }
        in_word = true;
        if ch == '\'' || ch == '"' {
            quote = Some(ch);
            blank_ok = true;
        } else if ch == esc {
            // Escape plus the next character are kept verbatim, even a quote; a lone escape
            // at the end is dropped.
            if let Some(&n) = chars.get(k) {
                word.push(ch);
                word.push(n);
                k += 1;
            }
            continue;
        }
        word.push(ch);
    }
    if in_word && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// `ENV`/`LABEL`: `k=v k2="v 2"` or the legacy `k value with spaces`.
fn parse_name_val(args: &str, upper: &str, esc: char) -> Result<Vec<(String, String)>, String> {
    let words = parse_words(args, esc);
    let Some(first) = words.first() else {
        return Err(format!("{upper} requires at least one argument"));
    };
    if !first.contains('=') {
        let (key, value) = match args.find(char::is_whitespace) {
            Some(pos) => (&args[..pos], args[pos..].trim_start()),
            None => (args, ""),
        };
        if value.is_empty() {
            return Err(format!("{upper} must have two arguments"));
        }
        return Ok(vec![(key.to_string(), value.to_string())]);
    }
    words
        .iter()
        .map(|w| match w.split_once('=') {
            Some(("", _)) => Err(format!("{upper} names can not be blank")),
            Some((k, v)) => Ok((k.to_string(), v.to_string())),
            None => Err(format!(
                "syntax error - can't find = in {w:?}. Must be of the form: name=value"
            )),
        })
        .collect()
}

/// `ARG a b=c`: names with optional defaults.
fn parse_arg(args: &str, esc: char) -> Result<Vec<(String, Option<String>)>, String> {
    let words = parse_words(args, esc);
    if words.is_empty() {
        return Err("ARG requires at least one argument".to_string());
    }
    words
        .iter()
        .map(|w| match w.split_once('=') {
            Some(("", _)) => Err("ARG names can not be blank".to_string()),
            Some((k, v)) => Ok((k.to_string(), Some(v.to_string()))),
            None => Ok((w.clone(), None)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Dockerfile {
        match parse(text) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    /// The instructions of the only (or last) stage.
    fn instrs(text: &str) -> Vec<Instruction> {
        let d = ok(text);
        let stage = d.stages.last().unwrap();
        stage
            .instructions
            .iter()
            .map(|l| l.instruction.clone())
            .collect()
    }

    fn one(body: &str) -> Instruction {
        let v = instrs(&format!("FROM scratch\n{body}\n"));
        assert_eq!(v.len(), 1, "{v:?}");
        v[0].clone()
    }

    fn err(text: &str) -> ParseError {
        parse(text).unwrap_err()
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn kv(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn minimal_stage_and_lines() {
        let d = ok("# a comment\n\nFROM alpine:3.19\n  # indented comment\nRUN echo hi\n");
        assert_eq!(d.escape, '\\');
        assert!(d.global_args.is_empty());
        assert_eq!(d.stages.len(), 1);
        let st = &d.stages[0];
        assert_eq!(st.base, "alpine:3.19");
        assert_eq!(st.name, None);
        assert_eq!(st.platform, None);
        assert_eq!(st.line, 3);
        assert_eq!(
            st.instructions,
            vec![Located {
                line: 5,
                text: "RUN echo hi".into(),
                instruction: Instruction::Run(CommandForm::Shell("echo hi".into())),
            }]
        );
    }

    #[test]
    fn keywords_are_case_insensitive() {
        let d = ok("from scratch As Builder\nrun true\nCoPy a b\n");
        assert_eq!(d.stages[0].name.as_deref(), Some("builder"));
        assert_eq!(d.stages[0].instructions.len(), 2);
        assert_eq!(d.stages[0].instructions[1].text, "CoPy a b");
    }

    #[test]
    fn from_forms() {
        let d = ok("FROM --platform=linux/amd64 golang:1.22 AS build\nFROM build\nFROM oci:/x/y:tag as final\n");
        assert_eq!(d.stages.len(), 3);
        assert_eq!(d.stages[0].platform.as_deref(), Some("linux/amd64"));
        assert_eq!(d.stages[0].base, "golang:1.22");
        assert_eq!(d.stages[0].name.as_deref(), Some("build"));
        assert_eq!(d.stages[1].base, "build");
        assert_eq!(d.stages[1].line, 2);
        assert_eq!(d.stages[2].base, "oci:/x/y:tag");
        assert_eq!(d.stages[2].name.as_deref(), Some("final"));
    }

    #[test]
    fn from_errors() {
        let e = err("FROM\n");
        assert_eq!(e.line, 1);
        assert_eq!(e.message, "FROM requires either one or three arguments");
        assert_eq!(
            err("FROM a b\n").message,
            "FROM requires either one or three arguments"
        );
        assert_eq!(
            err("FROM a TO b\n").message,
            "FROM requires either one or three arguments"
        );
        assert!(err("FROM a AS 1x\n").message.contains("invalid name"));
        assert!(err("FROM a AS x$y\n").message.contains("invalid name"));
        let e = err("FROM a AS x\nFROM b AS X\n");
        assert_eq!(
            (e.line, e.message.as_str()),
            (2, "duplicate stage name \"x\"")
        );
        assert_eq!(
            err("FROM --foo=1 a\n").message,
            "unknown flag --foo for FROM"
        );
    }

    #[test]
    fn global_args_before_from() {
        let d = ok("ARG BASE=alpine\nARG V\nFROM $BASE\nARG V\n");
        assert_eq!(
            d.global_args,
            vec![("BASE".into(), Some("alpine".into())), ("V".into(), None)]
        );
        assert_eq!(d.stages[0].base, "$BASE");
        assert_eq!(
            d.stages[0].instructions[0].instruction,
            Instruction::Arg(vec![("V".into(), None)])
        );
    }

    #[test]
    fn arg_forms() {
        assert_eq!(
            one("ARG a b=c d=\"x y\" e="),
            Instruction::Arg(vec![
                ("a".into(), None),
                ("b".into(), Some("c".into())),
                ("d".into(), Some("\"x y\"".into())),
                ("e".into(), Some(String::new())),
            ])
        );
        assert_eq!(
            err("FROM a\nARG\n").message,
            "ARG requires at least one argument"
        );
        assert_eq!(
            err("FROM a\nARG =x\n").message,
            "ARG names can not be blank"
        );
    }

    #[test]
    fn instruction_before_from() {
        let e = err("ARG X\nRUN true\nFROM a\n");
        assert_eq!(e.line, 2);
        assert_eq!(
            e.to_string(),
            "line 2: RUN before the first FROM (only ARG may come before FROM)"
        );
    }

    #[test]
    fn no_stage_errors() {
        assert_eq!(err("").message, "the Dockerfile has no instructions");
        assert_eq!(
            err("# only\n\n").message,
            "the Dockerfile has no instructions"
        );
        let e = err("ARG A\nARG B\n");
        assert_eq!(
            e.message,
            "no FROM instruction: a Dockerfile needs at least one stage"
        );
    }

    #[test]
    fn unknown_instruction() {
        let e = err("FROM a\n\n\n\n\n\nFRO b\n");
        assert_eq!(e.to_string(), "line 7: unknown instruction \"FRO\"");
        assert_eq!(err("FRO b\n").message, "unknown instruction \"FRO\"");
    }

    #[test]
    fn unsupported_instructions() {
        assert_eq!(
            err("FROM a\nHEALTHCHECK CMD true\n").to_string(),
            "line 2: HEALTHCHECK is not supported by strata"
        );
        assert_eq!(
            err("FROM a\nonbuild RUN x\n").message,
            "ONBUILD is not supported by strata"
        );
    }

    #[test]
    fn continuations() {
        let text = "FROM a\nRUN apt-get update && \\\n    apt-get install -y \\\n  # a comment inside\n\n      curl\nUSER me\n";
        let d = ok(text);
        let i = &d.stages[0].instructions;
        assert_eq!(i.len(), 2);
        assert_eq!(i[0].line, 2);
        assert_eq!(
            i[0].instruction,
            Instruction::Run(CommandForm::Shell(
                "apt-get update &&     apt-get install -y       curl".into()
            ))
        );
        assert_eq!(i[0].text, "RUN apt-get update && apt-get install -y curl");
        assert_eq!(i[1].line, 7);
    }

    #[test]
    fn continuation_joins_without_space_like_docker() {
        assert_eq!(
            one("RUN echo ab\\\ncd"),
            Instruction::Run(CommandForm::Shell("echo abcd".into()))
        );
    }

    #[test]
    fn continuation_with_trailing_blanks_and_at_eof() {
        let d = ok("FROM a\nRUN one \\   \n two \\");
        assert_eq!(
            d.stages[0].instructions[0].instruction,
            Instruction::Run(CommandForm::Shell("one  two".into()))
        );
        assert_eq!(d.stages[0].instructions[0].text, "RUN one two");
    }

    #[test]
    fn escaped_escape_does_not_continue() {
        let v = instrs("FROM a\nRUN echo x\\\\\nUSER u\n");
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[0],
            Instruction::Run(CommandForm::Shell("echo x\\\\".into()))
        );
    }

    #[test]
    fn crlf_and_bom() {
        let d = ok("\u{feff}FROM a\r\nRUN x \\\r\n y\r\n");
        assert_eq!(
            d.stages[0].instructions[0].instruction,
            Instruction::Run(CommandForm::Shell("x  y".into()))
        );
    }

    #[test]
    fn escape_directive_backtick() {
        let d = ok("# escape=`\nFROM a\nRUN dir C:\\ `\n  /b\nWORKDIR C:\\x\n");
        assert_eq!(d.escape, '`');
        let i = &d.stages[0].instructions;
        assert_eq!(
            i[0].instruction,
            Instruction::Run(CommandForm::Shell("dir C:\\   /b".into()))
        );
        assert_eq!(i[1].instruction, Instruction::Workdir("C:\\x".into()));
    }

    #[test]
    fn directives() {
        let d = ok("# syntax=docker/dockerfile:1\n#ESCAPE = \\\nFROM a\n");
        assert_eq!(d.escape, '\\');
        // After the first non-directive line, `# escape=` is just a comment.
        let d = ok("# hello\n# escape=`\nFROM a\nRUN x \\\n y\n");
        assert_eq!(d.escape, '\\');
        assert_eq!(
            d.stages[0].instructions[0].instruction,
            Instruction::Run(CommandForm::Shell("x  y".into()))
        );
        let e = err("# escape=`\n# escape=`\nFROM a\n");
        assert_eq!(
            (e.line, e.message.as_str()),
            (2, "only one escape parser directive can be used")
        );
        let e = err("# escape=x\nFROM a\n");
        assert_eq!(e.line, 1);
        assert!(e.message.contains("invalid escape token"), "{}", e.message);
    }

    #[test]
    fn exec_and_shell_forms() {
        assert_eq!(
            one("CMD [\"nginx\", \"-g\", \"daemon off;\"]"),
            Instruction::Cmd(CommandForm::Exec(s(&["nginx", "-g", "daemon off;"])))
        );
        assert_eq!(
            one("ENTRYPOINT [\"/bin/tini\",\"--\"]"),
            Instruction::Entrypoint(CommandForm::Exec(s(&["/bin/tini", "--"])))
        );
        assert_eq!(one("CMD []"), Instruction::Cmd(CommandForm::Exec(vec![])));
        assert_eq!(
            one("RUN [\"echo\", \"a\\\"b\"]"),
            Instruction::Run(CommandForm::Exec(s(&["echo", "a\"b"])))
        );
        // Not valid JSON (single quotes, or non-strings): docker falls back to shell form.
        assert_eq!(
            one("CMD ['nginx']"),
            Instruction::Cmd(CommandForm::Shell("['nginx']".into()))
        );
        assert_eq!(
            one("RUN [1, 2]"),
            Instruction::Run(CommandForm::Shell("[1, 2]".into()))
        );
        assert_eq!(
            one("ENTRYPOINT exec app --flag"),
            Instruction::Entrypoint(CommandForm::Shell("exec app --flag".into()))
        );
    }

    #[test]
    fn missing_command_arguments() {
        assert_eq!(
            err("FROM a\nRUN\n").message,
            "RUN requires at least one argument"
        );
        assert_eq!(
            err("FROM a\nCMD   \n").message,
            "CMD requires at least one argument"
        );
    }

    #[test]
    fn run_flags_refused() {
        assert_eq!(
            err("FROM a\nRUN --mount=type=cache,target=/x make\n").message,
            "RUN --mount is not supported by strata"
        );
        assert_eq!(
            err("FROM a\nRUN --frob make\n").message,
            "unknown flag --frob for RUN"
        );
        // A `--` word that is not at the start is just part of the command.
        assert_eq!(
            one("RUN ls --all"),
            Instruction::Run(CommandForm::Shell("ls --all".into()))
        );
    }

    #[test]
    fn heredocs_refused() {
        assert_eq!(
            err("FROM a\nRUN <<EOF\necho\nEOF\n").message,
            "heredocs (<<EOF) are not supported"
        );
        assert_eq!(
            one("RUN cat <<< word"),
            Instruction::Run(CommandForm::Shell("cat <<< word".into()))
        );
    }

    #[test]
    fn copy_and_add() {
        assert_eq!(
            one("COPY a b/c dest/"),
            Instruction::Copy(CopySpec {
                sources: s(&["a", "b/c"]),
                dest: "dest/".into(),
                ..Default::default()
            })
        );
        assert_eq!(
            one("COPY --from=build --chown=app:app --chmod=0755 /out/bin /usr/bin/"),
            Instruction::Copy(CopySpec {
                sources: s(&["/out/bin"]),
                dest: "/usr/bin/".into(),
                from: Some("build".into()),
                chown: Some("app:app".into()),
                chmod: Some(0o755),
            })
        );
        assert_eq!(
            one("COPY [\"a b\", \"dest/\"]"),
            Instruction::Copy(CopySpec {
                sources: s(&["a b"]),
                dest: "dest/".into(),
                ..Default::default()
            })
        );
        assert_eq!(
            one("ADD --chown=1000 rootfs.tar.gz /"),
            Instruction::Add(CopySpec {
                sources: s(&["rootfs.tar.gz"]),
                dest: "/".into(),
                chown: Some("1000".into()),
                ..Default::default()
            })
        );
        assert_eq!(
            one("COPY --link --chmod=644 a /a"),
            Instruction::Copy(CopySpec {
                sources: s(&["a"]),
                dest: "/a".into(),
                chmod: Some(0o644),
                ..Default::default()
            })
        );
    }

    #[test]
    fn copy_errors() {
        assert_eq!(
            err("FROM a\nCOPY onlyone\n").message,
            "COPY requires at least two arguments (sources and a destination), but 1 given"
        );
        assert!(err("FROM a\nADD\n")
            .message
            .starts_with("ADD requires at least two"));
        let e = err("FROM a\nCOPY --foo=1 a b\n");
        assert_eq!(e.to_string(), "line 2: unknown flag --foo for COPY");
        assert_eq!(
            err("FROM a\nADD --from=x a b\n").message,
            "unknown flag --from for ADD"
        );
        for bad in ["abc", "8", "77777", "u+x", "-1", "0x1ff"] {
            let e = err(&format!("FROM a\nCOPY --chmod={bad} a b\n"));
            assert_eq!(
                e.message,
                format!("invalid --chmod value {bad:?}: expected an octal mode like 755"),
                "{bad}"
            );
        }
        assert_eq!(
            err("FROM a\nCOPY --chmod= a b\n").message,
            "missing a value on flag --chmod"
        );
        assert_eq!(
            err("FROM a\nCOPY --from a b\n").message,
            "missing a value on flag --from"
        );
        assert_eq!(
            err("FROM a\nCOPY --from=x --from=y a b\n").message,
            "duplicate flag --from"
        );
        assert!(err("FROM a\nCOPY --link=maybe a b\n")
            .message
            .starts_with("expecting boolean value"));
    }

    #[test]
    fn env_forms() {
        assert_eq!(
            one("ENV K=V K2=\"v 2\" K3='$x y' K4=a\\ b"),
            Instruction::Env(kv(&[
                ("K", "V"),
                ("K2", "\"v 2\""),
                ("K3", "'$x y'"),
                ("K4", "a\\ b"),
            ]))
        );
        assert_eq!(
            one("ENV K V w  x"),
            Instruction::Env(kv(&[("K", "V w  x")]))
        );
        assert_eq!(
            one("ENV Q=\"say \\\"hi\\\"\""),
            Instruction::Env(kv(&[("Q", "\"say \\\"hi\\\"\"")]))
        );
        assert_eq!(one("ENV E="), Instruction::Env(kv(&[("E", "")])));
    }

    #[test]
    fn env_errors() {
        assert_eq!(
            err("FROM a\nENV\n").message,
            "ENV requires at least one argument"
        );
        assert_eq!(
            err("FROM a\nENV K\n").message,
            "ENV must have two arguments"
        );
        assert_eq!(
            err("FROM a\nENV A=1 B\n").message,
            "syntax error - can't find = in \"B\". Must be of the form: name=value"
        );
        assert_eq!(
            err("FROM a\nENV =1\n").message,
            "ENV names can not be blank"
        );
    }

    #[test]
    fn quoted_values_expand_as_docker_does() {
        use crate::build::expand::expand;
        let Instruction::Env(pairs) = one("ENV A=\"v 2\" B='$HOME' C=\"$HOME/x\" D=a\\ b") else {
            panic!()
        };
        let lookup = |n: &str| (n == "HOME").then(|| "/root".to_string());
        let values: Vec<String> = pairs
            .iter()
            .map(|(_, v)| expand(v, &lookup, '\\').unwrap())
            .collect();
        assert_eq!(values, s(&["v 2", "$HOME", "/root/x", "a b"]));
    }

    #[test]
    fn label_forms() {
        assert_eq!(
            one("LABEL org.opencontainers.image.title=\"My app\" version=1.0 \"quoted key\"=v"),
            Instruction::Label(kv(&[
                ("org.opencontainers.image.title", "\"My app\""),
                ("version", "1.0"),
                ("\"quoted key\"", "v"),
            ]))
        );
        assert_eq!(
            one("LABEL maintainer someone@example.com"),
            Instruction::Label(kv(&[("maintainer", "someone@example.com")]))
        );
        assert_eq!(
            err("FROM a\nLABEL\n").message,
            "LABEL requires at least one argument"
        );
    }

    #[test]
    fn simple_instructions() {
        assert_eq!(
            one("WORKDIR /app dir"),
            Instruction::Workdir("/app dir".into())
        );
        assert_eq!(one("USER app:app"), Instruction::User("app:app".into()));
        assert_eq!(
            one("STOPSIGNAL SIGTERM"),
            Instruction::StopSignal("SIGTERM".into())
        );
        assert_eq!(
            one("MAINTAINER Jane <j@x.org>"),
            Instruction::Maintainer("Jane <j@x.org>".into())
        );
        assert_eq!(
            one("EXPOSE 80/tcp  53/udp 8080"),
            Instruction::Expose(s(&["80/tcp", "53/udp", "8080"]))
        );
    }

    #[test]
    fn simple_instruction_errors() {
        assert_eq!(
            err("FROM a\nWORKDIR\n").message,
            "WORKDIR requires exactly one argument"
        );
        assert_eq!(
            err("FROM a\nUSER\n").message,
            "USER requires exactly one argument"
        );
        assert_eq!(
            err("FROM a\nSTOPSIGNAL A B\n").message,
            "STOPSIGNAL requires exactly one argument"
        );
        assert_eq!(
            err("FROM a\nEXPOSE\n").message,
            "EXPOSE requires at least one argument"
        );
        assert_eq!(
            err("FROM a\nMAINTAINER\n").message,
            "MAINTAINER requires exactly one argument"
        );
        assert_eq!(
            err("FROM a\nWORKDIR --x=1 /a\n").message,
            "unknown flag --x for WORKDIR"
        );
    }

    #[test]
    fn volume_forms() {
        assert_eq!(one("VOLUME /a /b"), Instruction::Volume(s(&["/a", "/b"])));
        assert_eq!(
            one("VOLUME [\"/data\", \"/var/log\"]"),
            Instruction::Volume(s(&["/data", "/var/log"]))
        );
        assert_eq!(
            err("FROM a\nVOLUME [\"\"]\n").message,
            "VOLUME specified can not be an empty string"
        );
        assert_eq!(
            err("FROM a\nVOLUME\n").message,
            "VOLUME requires at least one argument"
        );
    }

    #[test]
    fn shell_instruction() {
        assert_eq!(
            one("SHELL [\"/bin/bash\", \"-o\", \"pipefail\", \"-c\"]"),
            Instruction::Shell(s(&["/bin/bash", "-o", "pipefail", "-c"]))
        );
        assert_eq!(
            err("FROM a\nSHELL /bin/bash -c\n").message,
            "SHELL requires the arguments to be in JSON form"
        );
        assert_eq!(
            err("FROM a\nSHELL []\n").message,
            "SHELL requires at least one argument"
        );
    }

    #[test]
    fn multi_stage_lines_and_texts() {
        let text = "\
# syntax=docker/dockerfile:1
ARG GO=1.22
FROM golang:${GO} AS build
WORKDIR /src
COPY . .
RUN go build -o /out/app \\
      ./cmd/app

FROM scratch
COPY --from=build /out/app /app
ENTRYPOINT [\"/app\"]
";
        let d = ok(text);
        assert_eq!(d.global_args, vec![("GO".into(), Some("1.22".into()))]);
        assert_eq!(d.stages.len(), 2);
        let lines: Vec<(usize, &str)> = d
            .stages
            .iter()
            .flat_map(|s| s.instructions.iter().map(|l| (l.line, l.text.as_str())))
            .collect();
        assert_eq!(
            lines,
            vec![
                (4, "WORKDIR /src"),
                (5, "COPY . ."),
                (6, "RUN go build -o /out/app ./cmd/app"),
                (10, "COPY --from=build /out/app /app"),
                (11, "ENTRYPOINT [\"/app\"]"),
            ]
        );
        assert_eq!(d.stages[1].line, 9);
        assert_eq!(d.stages[0].base, "golang:${GO}");
    }

    #[test]
    fn parse_words_keeps_quotes() {
        assert_eq!(
            parse_words("a=\"x y\" b='p q' c=d\\ e", '\\'),
            s(&["a=\"x y\"", "b='p q'", "c=d\\ e"])
        );
        assert_eq!(parse_words("  ", '\\'), Vec::<String>::new());
        assert_eq!(parse_words("\"\"", '\\'), s(&["\"\""]));
    }

    #[test]
    fn extract_flags_like_docker() {
        assert_eq!(
            extract_flags(" --a=1 --b=\"x y\"  rest of --line"),
            (s(&["--a=1", "--b=x y"]), "rest of --line")
        );
        assert_eq!(extract_flags("--only"), (s(&["--only"]), ""));
        assert_eq!(extract_flags("-- -x"), (vec![], " -x"));
    }

    #[test]
    fn garbage_never_panics() {
        let words = [
            "FROM",
            "from",
            "RUN",
            "COPY",
            "ADD",
            "ENV",
            "ARG",
            "LABEL",
            "CMD",
            "SHELL",
            "VOLUME",
            "EXPOSE",
            "USER",
            "WORKDIR",
            "AS",
            "--from=",
            "--chmod=",
            "--",
            "[",
            "]",
            "\"",
            "'",
            "\\",
            "`",
            "=",
            "#",
            "# escape=`",
            "\n",
            "\r\n",
            " ",
            "\t",
            "a",
            "é",
            "{",
            "$X",
        ];
        let mut rng = fastrand::Rng::with_seed(42);
        for _ in 0..600 {
            let n = rng.usize(0..30);
            let mut text = String::new();
            for _ in 0..n {
                text.push_str(words[rng.usize(0..words.len())]);
                if rng.bool() {
                    text.push(' ');
                }
            }
            let _ = parse(&text);
            let bytes: Vec<u8> = (0..rng.usize(0..60)).map(|_| rng.u8(..)).collect();
            let _ = parse(&String::from_utf8_lossy(&bytes));
        }
    }
}
