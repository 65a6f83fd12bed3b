//! The details pane's text for the selected path: its metadata, which layer provides it and
//! what it shadows, then its content (a page of text or hex; never the whole file) or a line
//! diff against the version it replaces.

use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};

use crate::explore::content::{self, DiffLine};
use crate::explore::stack::Stack;
use crate::explore::tree::{Entry, Kind, NodeId, Role, View, HIDDEN};

/// Bytes of a file shown per page.
pub const PAGE: usize = 16 * 1024;
/// Bytes of each side read for a diff.
pub const DIFF_BYTES: usize = 64 * 1024;

/// What the content part shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The file's content, page `n`.
    Content(u64),
    /// A diff against the version it replaces.
    Diff,
}

/// The lines of the details pane for `node` in `view`.
pub fn lines(stack: &Stack, view: &View, node: NodeId, mode: Mode) -> Vec<Line<'static>> {
    let tree = &stack.tree;
    let mut out: Vec<Line<'static>> = Vec::new();
    let bold = Style::default().add_modifier(Modifier::BOLD);
    out.push(Line::from(Span::styled(tree.path(node), bold)));
    let upto = view.upto;
    let prov = tree.provenance(node, upto);
    let shown: Option<Entry> = if prov.top != HIDDEN {
        Some(tree.node(node).versions[prov.top as usize])
    } else {
        None
    };
    match &shown {
        Some(e) => {
            out.push(Line::from(format!(
                "{}  mode {:04o}  owner {}:{}  size {}",
                kind_name(e.kind),
                e.mode,
                e.uid,
                e.gid,
                view.size[node as usize]
            )));
            if e.kind == Kind::Symlink {
                if let Ok(t) = content::link_target(stack, e.layer as usize, node) {
                    out.push(Line::from(format!("-> {}", String::from_utf8_lossy(&t))));
                }
            }
        }
        None => out.push(Line::from(Span::styled(
            format!("not present at layer {upto}"),
            Style::default().fg(Color::Red),
        ))),
    }
    for (e, role) in prov.roles(tree, upto) {
        let l = &stack.layers[e.layer as usize];
        let (what, color) = match role {
            Role::Provides => ("provided by", Color::Green),
            Role::Shadowed => ("shadows", Color::Yellow),
            Role::Removes => ("removed by", Color::Red),
            Role::CutOff => ("hidden in", Color::DarkGray),
            Role::Above => ("changed above in", Color::DarkGray),
        };
        let by: String = l
            .created_by
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(50)
            .collect();
        out.push(Line::from(vec![
            Span::styled(format!("{what:<16}"), Style::default().fg(color)),
            Span::raw(format!(
                "L{} {} {} {}  {by}",
                e.layer,
                l.short_name(),
                kind_name(e.kind),
                if e.kind == Kind::File {
                    e.size.to_string()
                } else {
                    String::new()
                }
            )),
        ]));
    }
    if let Some(c) = &prov.cut {
        out.push(Line::from(Span::styled(
            format!(
                "below L{}: cut off by {} ({:?} in L{})",
                prov.floor.min(upto as u16 + 1),
                tree.path(c.at),
                c.why,
                c.layer
            ),
            Style::default().fg(Color::DarkGray),
        )));
    }
    out.push(Line::from(""));
    let Some(e) = shown else {
        return out;
    };
    if e.kind == Kind::Dir {
        let n = tree.visible_children(view, node).count();
        out.push(Line::from(format!("{n} entries")));
        return out;
    }
    if e.kind != Kind::File {
        return out;
    }
    match mode {
        Mode::Content(page) => content_lines(stack, node, &e, page, &mut out),
        Mode::Diff => diff_lines(stack, &prov, node, &e, &mut out),
    }
    out
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::File => "file",
        Kind::Dir => "directory",
        Kind::Symlink => "symlink",
        Kind::CharDevice => "char device",
        Kind::BlockDevice => "block device",
        Kind::Fifo => "fifo",
        Kind::Socket => "socket",
        Kind::Whiteout => "whiteout",
    }
}

fn content_lines(stack: &Stack, node: NodeId, e: &Entry, page: u64, out: &mut Vec<Line<'static>>) {
    let pages = e.size.div_ceil(PAGE as u64).max(1);
    let page = page.min(pages - 1);
    let offset = page * PAGE as u64;
    let data = content::open(stack, e.layer as usize, node)
        .and_then(|f| content::read_page(&f, offset, PAGE));
    let data = match data {
        Ok(d) => d,
        Err(err) => {
            out.push(Line::from(Span::styled(
                err.to_string(),
                Style::default().fg(Color::Red),
            )));
            return;
        }
    };
    out.push(Line::from(Span::styled(
        format!(
            "-- page {}/{} (bytes {}-{} of {}; [ and ] turn pages, d diffs) --",
            page + 1,
            pages,
            offset,
            offset + data.len() as u64,
            e.size
        ),
        Style::default().fg(Color::DarkGray),
    )));
    if content::is_text(&data) {
        for l in String::from_utf8_lossy(&data).lines() {
            out.push(Line::from(l.replace('\t', "    ")));
        }
    } else {
        for l in content::hex_lines(&data, offset) {
            out.push(Line::from(l));
        }
    }
}

fn diff_lines(
    stack: &Stack,
    prov: &crate::explore::tree::Provenance,
    node: NodeId,
    e: &Entry,
    out: &mut Vec<Line<'static>>,
) {
    let tree = &stack.tree;
    let older = prov
        .roles(tree, e.layer as usize)
        .into_iter()
        .find(|(o, r)| *r == Role::Shadowed && o.kind == Kind::File && o.layer < e.layer)
        .map(|(o, _)| *o);
    let Some(o) = older else {
        out.push(Line::from(
            "-- no older version to compare with (d shows the content) --",
        ));
        return;
    };
    let read = |layer: usize| {
        content::open(stack, layer, node).and_then(|f| content::read_page(&f, 0, DIFF_BYTES))
    };
    let (old, new) = match (read(o.layer as usize), read(e.layer as usize)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(err), _) | (_, Err(err)) => {
            out.push(Line::from(err.to_string()));
            return;
        }
    };
    out.push(Line::from(Span::styled(
        format!(
            "-- diff L{} -> L{} (first {} KiB) --",
            o.layer,
            e.layer,
            DIFF_BYTES / 1024
        ),
        Style::default().fg(Color::DarkGray),
    )));
    if !content::is_text(&old) || !content::is_text(&new) {
        out.push(Line::from(if old == new {
            "binary files are the same"
        } else {
            "binary files differ"
        }));
        return;
    }
    let (a, b) = (String::from_utf8_lossy(&old), String::from_utf8_lossy(&new));
    for d in content::diff_lines(&a, &b) {
        out.push(match d {
            DiffLine::Same(l) => Line::from(format!("  {l}")),
            DiffLine::Old(l) => Line::from(Span::styled(
                format!("- {l}"),
                Style::default().fg(Color::Red),
            )),
            DiffLine::New(l) => Line::from(Span::styled(
                format!("+ {l}"),
                Style::default().fg(Color::Green),
            )),
        });
    }
}
