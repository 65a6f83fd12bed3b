//! The Dockerfile as data: stages of instructions, each remembering its source line.

/// A command given in shell form (`RUN echo hi`) or exec form (`RUN ["echo", "hi"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandForm {
    /// Shell form: the text after the keyword, continuations joined, run by the `SHELL`.
    Shell(String),
    /// Exec form: the JSON array of strings.
    Exec(Vec<String>),
}

/// `COPY`/`ADD` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopySpec {
    /// Sources (context-relative paths, globs allowed; for `--from`, paths in that stage/image).
    pub sources: Vec<String>,
    /// Destination in the image (relative paths are relative to `WORKDIR`).
    pub dest: String,
    /// `--from=STAGE|IMAGE`.
    pub from: Option<String>,
    /// `--chown=USER[:GROUP]`.
    pub chown: Option<String>,
    /// `--chmod=MODE` (octal).
    pub chmod: Option<u32>,
}

/// One instruction. Arguments are kept *unexpanded* (`$VAR` substitution happens in the
/// builder, which knows the ARG/ENV values at that point), except where noted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// `RUN`.
    Run(CommandForm),
    /// `COPY`.
    Copy(CopySpec),
    /// `ADD` (local tars unpacked; URLs refused).
    Add(CopySpec),
    /// `WORKDIR path`.
    Workdir(String),
    /// `ENV K=V ...` or legacy `ENV K V`: pairs in order, as written (`expand` removes quotes).
    Env(Vec<(String, String)>),
    /// `ARG NAME[=default]` (several allowed on one line; defaults as written).
    Arg(Vec<(String, Option<String>)>),
    /// `CMD`.
    Cmd(CommandForm),
    /// `ENTRYPOINT`.
    Entrypoint(CommandForm),
    /// `EXPOSE 80/tcp 53/udp`: the words as written.
    Expose(Vec<String>),
    /// `LABEL k=v ...`: pairs in order, as written (`expand` removes quotes, as docker does).
    Label(Vec<(String, String)>),
    /// `USER name[:group]`.
    User(String),
    /// `VOLUME ["/a"]` or `VOLUME /a /b`.
    Volume(Vec<String>),
    /// `SHELL ["sh", "-c"]` (exec form only).
    Shell(Vec<String>),
    /// `STOPSIGNAL sig`.
    StopSignal(String),
    /// `MAINTAINER name` (deprecated; recorded as a label by docker).
    Maintainer(String),
}

/// An instruction and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// 1-based line number of the instruction's first line.
    pub line: usize,
    /// The instruction's text as written (continuations joined), for history and messages.
    pub text: String,
    /// The parsed instruction.
    pub instruction: Instruction,
}

/// One `FROM` and the instructions up to the next `FROM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// The `FROM` argument, unexpanded (`scratch`, `name:tag`, `oci:PATH[:TAG]`, `$BASE`).
    pub base: String,
    /// `AS name`, lower-cased.
    pub name: Option<String>,
    /// `--platform=...` if given (recorded, not acted upon).
    pub platform: Option<String>,
    /// Line of the `FROM`.
    pub line: usize,
    /// Instructions of the stage in order.
    pub instructions: Vec<Located>,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// `ARG`s before the first `FROM` (usable in `FROM` lines), in order.
    pub global_args: Vec<(String, Option<String>)>,
    /// The stages, in order.
    pub stages: Vec<Stage>,
    /// The escape character (`\` unless `# escape=` says otherwise).
    pub escape: char,
}
