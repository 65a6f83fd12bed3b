//! Layer verbs: explore (the UI, or `--ci`), ls, cat, which, and `diff IMAGE IMAGE`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use strata::explore::ci::{self, RuleValues, Rules};
use strata::explore::source::{split_lowerdir, Source};
use strata::explore::tree::{mode_string, Kind, Role, HIDDEN, ROOT};
use strata::explore::{compare, content, efficiency, Stack};

/// Layer verbs.
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Explore the layers of an image, container, archive or overlay stack in a terminal UI;
    /// or, with --ci, check its efficiency as dive does.
    Explore(ExploreArgs),
    /// List the files of an image as seen at a layer: IMAGE[:/PATH].
    Ls {
        /// Seen from this layer (0 is the bottom) [default: the top].
        #[arg(long)]
        layer: Option<usize>,
        /// List everything beneath PATH.
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Only what that layer changed: A (added), C (changed), D (deleted by a whiteout).
        #[arg(long)]
        changes: bool,
        /// IMAGE, IMAGE:/PATH, a container, or an archive path.
        target: String,
    },
    /// Print a file of an image as seen at a layer.
    Cat {
        /// Seen from this layer (0 is the bottom) [default: the top].
        #[arg(long)]
        layer: Option<usize>,
        image: String,
        path: String,
    },
    /// Show which layer provides a path, and the versions it shadows or that removed it.
    Which {
        /// Seen from this layer (0 is the bottom) [default: the top].
        #[arg(long)]
        layer: Option<usize>,
        image: String,
        path: String,
    },
}

/// `strata explore` flags.
#[derive(clap::Args)]
pub struct ExploreArgs {
    /// Image (any reference form), container, OCI archive, docker-save archive or OCI layout
    /// directory. Not with --lower or --mount.
    #[arg(required_unless_present_any = ["lower", "mount"], conflicts_with_all = ["lower", "mount"])]
    source: Option<String>,
    /// Raw layer directories, top first, as overlayfs and stratafs take `lowerdir=`.
    #[arg(long, conflicts_with = "mount")]
    lower: Option<String>,
    /// The writable layer of a raw stack (with --lower).
    #[arg(long, requires = "lower")]
    upper: Option<PathBuf>,
    /// Explore the layers of the overlay (kernel, stratafs, fuse-overlayfs) mounted here.
    #[arg(long)]
    mount: Option<PathBuf>,
    /// Start at this layer (0 is the bottom) [default: the top].
    #[arg(long)]
    layer: Option<usize>,
    /// No UI: print dive's efficiency report and fail (exit 1) when a rule fails.
    #[arg(long)]
    ci: bool,
    /// With --ci: the report as JSON.
    #[arg(long, requires = "ci")]
    json: bool,
    /// With --ci: rules file (dive's `.dive-ci` format) [default: ./.dive-ci if present].
    #[arg(long = "ci-config", requires = "ci")]
    ci_config: Option<PathBuf>,
    /// Fail when efficiency (0-1) is below this [dive's default 0.9]; `disabled` turns it off.
    #[arg(long = "lowest-efficiency", requires = "ci")]
    lowest_efficiency: Option<String>,
    /// Fail when wasted bytes exceed this (`20MB`, `1GiB`) [default: disabled].
    #[arg(long = "highest-wasted-bytes", requires = "ci")]
    highest_wasted_bytes: Option<String>,
    /// Fail when wasted bytes over the bytes of all but the first layer (0-1) exceed this
    /// [dive's default 0.1].
    #[arg(long = "highest-user-wasted-percent", requires = "ci")]
    highest_user_wasted_percent: Option<String>,
    /// With --ci: how many inefficient paths to list (0 for all).
    #[arg(long, default_value_t = 20, requires = "ci")]
    top: usize,
}

/// Exit code when a CI rule fails (as dive).
const CI_FAILED: i32 = 1;

/// Run one layer verb. Output cut short by its reader (`| head`) is not an error.
pub fn run(root: &Path, cmd: Cmd) -> Result<i32> {
    let _userns = strata::container::userns::enter(root)?;
    quiet_broken_pipe(run_verb(root, cmd))
}

fn quiet_broken_pipe(r: Result<i32>) -> Result<i32> {
    match r {
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            Ok(0)
        }
        r => r,
    }
}

fn run_verb(root: &Path, cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Explore(a) => explore(root, a),
        Cmd::Ls {
            layer,
            recursive,
            changes,
            target,
        } => {
            let (name, path) = split_target(&target);
            let stack = open(root, name)?;
            ls(&stack, path.unwrap_or("/"), layer, recursive, changes)?;
            Ok(0)
        }
        Cmd::Cat { layer, image, path } => {
            let stack = open(root, &image)?;
            cat(&stack, &path, layer)?;
            Ok(0)
        }
        Cmd::Which { layer, image, path } => {
            let stack = open(root, &image)?;
            which(&stack, &path, layer)
        }
    }
}

/// `strata diff IMAGE IMAGE`: what the second changes relative to the first.
pub fn diff_images(root: &Path, a: &str, b: &str) -> Result<i32> {
    let _userns = strata::container::userns::enter(root)?;
    quiet_broken_pipe(diff_stacks(root, a, b))
}

fn diff_stacks(root: &Path, a: &str, b: &str) -> Result<i32> {
    let (sa, sb) = (open(root, a)?, open(root, b)?);
    let c = compare::compare(&sa, &sb)?;
    println!(
        "# {} and {} share {} of their {} and {} layers",
        sa.name,
        sb.name,
        c.shared_layers,
        sa.layers.len(),
        sb.layers.len()
    );
    let mut out = std::io::stdout().lock();
    for d in &c.differences {
        let size = match (d.old_size, d.new_size) {
            (Some(o), Some(n)) if o != n => {
                format!("{} -> {}", ci::human_bytes(o), ci::human_bytes(n))
            }
            (_, Some(n)) => ci::human_bytes(n),
            (Some(o), None) => ci::human_bytes(o),
            (None, None) => "-".into(),
        };
        writeln!(out, "{} {} ({size})", d.kind, d.path)?;
    }
    Ok(0)
}

/// `IMAGE:/PATH` split at the first `:/` (a tag never has a `/` after its colon).
fn split_target(t: &str) -> (&str, Option<&str>) {
    match t.find(":/") {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    }
}

fn open(root: &Path, name: &str) -> Result<Stack> {
    let src = Source::guess(root, name)?;
    src.open(root).with_context(|| format!("read {name}"))
}

fn layer_of(stack: &Stack, layer: Option<usize>) -> Result<usize> {
    match layer {
        None => Ok(stack.top()),
        Some(n) if n <= stack.top() => Ok(n),
        Some(n) => bail!(
            "{}: no layer {n} (it has {} layers, 0 to {})",
            stack.name,
            stack.layers.len(),
            stack.top()
        ),
    }
}

fn ls(
    stack: &Stack,
    path: &str,
    layer: Option<usize>,
    recursive: bool,
    changes: bool,
) -> Result<()> {
    let upto = layer_of(stack, layer)?;
    let tree = &stack.tree;
    let view = tree.view(upto);
    let node = tree
        .lookup(path)
        .ok_or_else(|| anyhow::anyhow!("{path}: no such file in {}", stack.name))?;
    let mut out = std::io::stdout().lock();
    if changes {
        let below = (upto > 0).then(|| tree.view(upto - 1));
        let mut todo = vec![node];
        while let Some(n) = todo.pop() {
            if let Some(c) = tree.change(&view, below.as_ref(), n).filter(|_| n != ROOT) {
                let e = tree.at_layer(n, upto).expect("changed in the layer");
                let size = if e.kind == Kind::File {
                    e.size.to_string()
                } else {
                    "-".into()
                };
                writeln!(out, "{} {} {size}", c.letter(), tree.path(n))?;
            }
            let mut kids: Vec<_> = tree
                .node(n)
                .children
                .iter()
                .copied()
                .filter(|c| tree.at_layer(*c, upto).is_some())
                .collect();
            kids.reverse();
            todo.extend(kids);
        }
        return Ok(());
    }
    if view.top[node as usize] == HIDDEN {
        bail!("{path}: no such file in {} at layer {upto}", stack.name);
    }
    let line = |n| -> Result<String> {
        let e = tree.visible(&view, n).expect("visible");
        let mut s = format!(
            "{} {:>5}:{:<5} {:>12} L{:<3} {}",
            mode_string(e.kind, e.mode),
            e.uid,
            e.gid,
            view.size[n as usize],
            e.layer,
            tree.path(n)
        );
        if e.kind == Kind::Symlink {
            let t = content::link_target(stack, e.layer as usize, n)?;
            s.push_str(" -> ");
            s.push_str(&String::from_utf8_lossy(&t));
        }
        Ok(s)
    };
    let is_dir = tree
        .visible(&view, node)
        .is_some_and(|e| e.kind == Kind::Dir);
    if !is_dir {
        writeln!(out, "{}", line(node)?)?;
        return Ok(());
    }
    let mut todo: Vec<u32> = tree.visible_children(&view, node).collect();
    todo.reverse();
    while let Some(n) = todo.pop() {
        writeln!(out, "{}", line(n)?)?;
        if recursive {
            let mut kids: Vec<u32> = tree.visible_children(&view, n).collect();
            kids.reverse();
            todo.extend(kids);
        }
    }
    Ok(())
}

fn cat(stack: &Stack, path: &str, layer: Option<usize>) -> Result<()> {
    let upto = layer_of(stack, layer)?;
    let tree = &stack.tree;
    let view = tree.view(upto);
    let node = tree.lookup(path);
    let Some(e) = node.and_then(|n| tree.visible(&view, n)) else {
        bail!("{path}: no such file in {} at layer {upto}", stack.name);
    };
    let node = node.expect("found");
    match e.kind {
        Kind::File => {
            let mut f = content::open(stack, e.layer as usize, node)?;
            let mut out = std::io::stdout().lock();
            std::io::copy(&mut f, &mut out).with_context(|| format!("read {path}"))?;
            Ok(())
        }
        Kind::Symlink => {
            let t = content::link_target(stack, e.layer as usize, node)?;
            bail!(
                "{path} is a symbolic link to {} (cat that path)",
                String::from_utf8_lossy(&t)
            )
        }
        Kind::Dir => bail!("{path} is a directory (see strata ls)"),
        _ => bail!("{path} is not a regular file"),
    }
}

fn which(stack: &Stack, path: &str, layer: Option<usize>) -> Result<i32> {
    let upto = layer_of(stack, layer)?;
    let tree = &stack.tree;
    let Some(node) = tree.lookup(path) else {
        bail!("{path}: no layer of {} has it", stack.name);
    };
    let p = tree.provenance(node, upto);
    let visible = p.top != HIDDEN;
    println!(
        "{} {} at layer {upto} of {}",
        tree.path(node),
        if visible {
            "is provided"
        } else {
            "is not present"
        },
        stack.name
    );
    for (e, role) in p.roles(tree, upto) {
        let l = &stack.layers[e.layer as usize];
        let role = match role {
            Role::Provides => "provides",
            Role::Shadowed => "shadowed",
            Role::Removes => "removes",
            Role::CutOff => "cut off",
            Role::Above => "above",
        };
        let by = l.created_by.as_deref().unwrap_or("");
        let by: String = by.chars().take(60).collect();
        println!(
            "  L{:<3} {:<12} {role:<9} {} {:>10}  {by}",
            e.layer,
            l.short_name(),
            mode_string(e.kind, e.mode),
            e.size
        );
    }
    if let Some(c) = &p.cut {
        let why = match c.why {
            strata::explore::tree::CutReason::Opaque => "is an opaque directory",
            strata::explore::tree::CutReason::Whiteout => "is deleted by a whiteout",
            strata::explore::tree::CutReason::Replaced => "is replaced by a non-directory",
        };
        println!(
            "  below layer {}: nothing shows through, {} {why} in layer {}",
            p.floor.min(upto as u16 + 1),
            tree.path(c.at),
            c.layer
        );
    }
    Ok(if visible { 0 } else { 1 })
}

fn explore(root: &Path, a: ExploreArgs) -> Result<i32> {
    let src = if let Some(l) = &a.lower {
        Source::Dirs {
            lower: split_lowerdir(l),
            upper: a.upper.clone(),
        }
    } else if let Some(m) = &a.mount {
        Source::Mount(m.clone())
    } else {
        Source::guess(root, a.source.as_deref().expect("clap requires a source"))?
    };
    let stack = src.open(root)?;
    if a.ci {
        return ci_check(&stack, &a);
    }
    let start = layer_of(&stack, a.layer)?;
    strata::explore::ui::run(stack, start)?;
    Ok(0)
}

fn ci_check(stack: &Stack, a: &ExploreArgs) -> Result<i32> {
    let file = match &a.ci_config {
        Some(p) => Some(p.clone()),
        None => Some(PathBuf::from(".dive-ci")).filter(|p| p.is_file()),
    };
    let mut values = RuleValues::dive_defaults();
    if let Some(f) = &file {
        let text = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
        values = values.overridden_by(RuleValues::parse_config(&text, &f.display().to_string())?);
    }
    values = values.overridden_by(RuleValues {
        lowest_efficiency: a.lowest_efficiency.clone(),
        highest_wasted_bytes: a.highest_wasted_bytes.clone(),
        highest_user_wasted_percent: a.highest_user_wasted_percent.clone(),
    });
    let rules = Rules::parse(&values)?;
    let analysis = efficiency::analyze(stack);
    let outcomes = ci::evaluate(&analysis, &rules);
    let pass = ci::passed(&outcomes);
    if a.json {
        let v = serde_json::json!({
            "image": stack.name,
            "layers": stack.layers.len(),
            "efficiency": analysis.efficiency,
            "sizeBytes": analysis.size_bytes,
            "userSizeBytes": analysis.user_size_bytes,
            "wastedBytes": analysis.wasted_bytes,
            "userWastedPercent": analysis.user_wasted_percent,
            "inefficientFiles": analysis.inefficiencies.iter().take(if a.top == 0 { usize::MAX } else { a.top }).map(|i| serde_json::json!({
                "count": i.count, "sizeBytes": i.wasted, "file": i.path,
            })).collect::<Vec<_>>(),
            "rules": outcomes,
            "pass": pass,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let top = if a.top == 0 { usize::MAX } else { a.top };
        print!("{}", ci::render(&stack.name, &analysis, &outcomes, top));
    }
    Ok(if pass { 0 } else { CI_FAILED })
}
