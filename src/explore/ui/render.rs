//! Drawing the explorer: layers and details on the left, the file tree on the right, a
//! status line (or the prompt being typed) at the bottom, and the help overlay.

use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};
use ratatui::Frame;

use super::app::{App, Pane, Prompt};
use super::details::Mode;
use super::rows::{self, Sort};
use crate::explore::ci::human_bytes;
use crate::explore::content;
use crate::explore::tree::{mode_string, Change, Kind};

/// The keys, as the help overlay lists them.
pub const HELP: &[(&str, &str)] = &[
    ("Tab / Shift-Tab", "next / previous pane"),
    ("j k / Up Down", "move (layers: select the layer)"),
    ("g G / Home End", "first / last"),
    ("PgUp PgDn, ^u ^d", "page"),
    ("Enter / Space", "collapse or expand a directory"),
    ("h l / Left Right", "collapse / expand, or go to the parent"),
    ("z / e", "collapse all / expand all"),
    ("c", "this layer's changes only / everything merged"),
    ("s", "sort by name / by size"),
    ("/", "filter paths by regex (Enter applies, Esc clears)"),
    ("d", "content / diff against the version it replaces"),
    ("[ ]", "previous / next page of the file"),
    ("x", "extract the file or directory to a host path"),
    ("?", "this help"),
    ("q / ^c", "quit"),
];

fn pane_block(title: String, focused: bool) -> Block<'static> {
    let style = if focused {
        Style::default()
            .fg(Color::Cyan)
            .add_modifier(Modifier::BOLD)
    } else {
        Style::default()
    };
    Block::default()
        .borders(Borders::ALL)
        .border_style(style)
        .title(Span::styled(title, style))
}

/// Draw everything.
pub fn draw(f: &mut Frame<'_>, app: &mut App) {
    let area = f.area();
    let outer = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Min(3), Constraint::Length(1)])
        .split(area);
    let cols = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(45), Constraint::Percentage(55)])
        .split(outer[0]);
    let layers_h = (app.stack.layers.len() as u16 + 2)
        .min(cols[0].height / 2)
        .max(3);
    let left = Layout::default()
        .direction(Direction::Vertical)
        .constraints([Constraint::Length(layers_h), Constraint::Min(3)])
        .split(cols[0]);
    draw_layers(f, app, left[0]);
    draw_details(f, app, left[1]);
    draw_tree(f, app, cols[1]);
    draw_status(f, app, outer[1]);
    if app.help {
        draw_help(f, area);
    }
}

fn draw_layers(f: &mut Frame<'_>, app: &App, area: Rect) {
    let inner_h = area.height.saturating_sub(2) as usize;
    let first = app.layer.saturating_sub(inner_h.saturating_sub(1));
    let width = area.width.saturating_sub(2) as usize;
    let lines: Vec<Line> = app
        .stack
        .layers
        .iter()
        .enumerate()
        .skip(first)
        .take(inner_h)
        .map(|(i, l)| {
            let by = l.created_by.as_deref().unwrap_or("");
            let mut text = format!(
                "L{i:<3} {:<12} {:>8}  {}{}",
                l.short_name().chars().take(12).collect::<String>(),
                human_bytes(app.layer_sizes[i]),
                if l.upper { "[upper] " } else { "" },
                by
            );
            text = text.chars().take(width).collect();
            let mut style = Style::default();
            if i == app.layer {
                style = style.add_modifier(Modifier::REVERSED);
            }
            Line::from(Span::styled(text, style))
        })
        .collect();
    let title = format!(" Layers ({}) ", app.stack.layers.len());
    f.render_widget(
        Paragraph::new(lines).block(pane_block(title, app.focus == Pane::Layers)),
        area,
    );
}

fn draw_details(f: &mut Frame<'_>, app: &App, area: Rect) {
    let title = match app.mode {
        Mode::Content(_) => " Details ".to_string(),
        Mode::Diff => " Details (diff) ".to_string(),
    };
    let p = Paragraph::new(app.details.clone())
        .block(pane_block(title, app.focus == Pane::Details))
        .scroll((app.details_scroll.min(u16::MAX as usize) as u16, 0));
    f.render_widget(p, area);
}

fn draw_tree(f: &mut Frame<'_>, app: &mut App, area: Rect) {
    let inner_h = area.height.saturating_sub(3) as usize;
    app.tree_height = inner_h.max(1);
    if app.cursor < app.scroll {
        app.scroll = app.cursor;
    } else if app.cursor >= app.scroll + app.tree_height {
        app.scroll = app.cursor + 1 - app.tree_height;
    }
    let tree = &app.stack.tree;
    let width = area.width.saturating_sub(2) as usize;
    let mut lines: Vec<Line> = vec![Line::from(Span::styled(
        format!(
            "{:<1} {:<10} {:>11} {:>8}  Name",
            "", "Mode", "Uid:Gid", "Size"
        ),
        Style::default().add_modifier(Modifier::UNDERLINED),
    ))];
    for (i, r) in app
        .rows
        .iter()
        .enumerate()
        .skip(app.scroll)
        .take(app.tree_height)
    {
        let e = tree
            .visible(&app.view, r.node)
            .or_else(|| tree.at_layer(r.node, app.layer))
            .copied();
        let removed = r.mark == Some(Change::Removed);
        // A deleted path shows what it deleted.
        let e = if removed {
            tree.node(r.node)
                .versions
                .iter()
                .rev()
                .find(|v| v.kind != Kind::Whiteout && (v.layer as usize) < app.layer)
                .copied()
                .or(e)
        } else {
            e
        };
        let Some(e) = e else { continue };
        let (mark, color) = match r.mark {
            Some(Change::Added) => ('A', Color::Green),
            Some(Change::Modified) => ('C', Color::Yellow),
            Some(Change::Removed) => ('D', Color::Red),
            None => (' ', Color::Reset),
        };
        let fold = if !r.dir {
            "  "
        } else if app.collapsed.contains(&r.node) {
            "▸ "
        } else {
            "▾ "
        };
        let mut name = format!(
            "{}{fold}{}",
            "  ".repeat(r.depth as usize),
            tree.name(r.node).to_string_lossy()
        );
        if e.kind == Kind::Symlink && !removed {
            if let Ok(t) = content::link_target(&app.stack, e.layer as usize, r.node) {
                name.push_str(" → ");
                name.push_str(&String::from_utf8_lossy(&t));
            }
        }
        if tree.at_layer(r.node, app.layer).is_some_and(|x| x.opaque) {
            name.push_str("  (opaque)");
        }
        let size = if e.kind == Kind::Dir && !removed {
            rows::size_of(tree, &app.view, r.node)
        } else {
            e.size
        };
        let text = format!(
            "{mark} {} {:>11} {:>8}  {name}",
            mode_string(e.kind, e.mode),
            format!("{}:{}", e.uid, e.gid),
            human_bytes(size),
        );
        let text: String = text.chars().take(width).collect();
        let mut style = Style::default().fg(color);
        if i == app.cursor {
            style = style.add_modifier(Modifier::REVERSED);
        }
        lines.push(Line::from(Span::styled(text, style)));
    }
    let what = if app.changes_only {
        format!("changes in L{}", app.layer)
    } else {
        format!("merged up to L{}", app.layer)
    };
    let mut title = format!(
        " Files: {what}, by {} ",
        match app.sort {
            Sort::Name => "name",
            Sort::Size => "size",
        }
    );
    if let Some(re) = &app.filter {
        title.push_str(&format!("[filter /{}/] ", re.as_str()));
    }
    title.push_str(&format!("({} rows) ", app.rows.len()));
    f.render_widget(
        Paragraph::new(lines).block(pane_block(title, app.focus == Pane::Tree)),
        area,
    );
}

fn draw_status(f: &mut Frame<'_>, app: &App, area: Rect) {
    let line = match &app.prompt {
        Some(Prompt::Filter(t)) => Line::from(format!("filter (regex): {t}▏")),
        Some(Prompt::Extract(t)) => Line::from(format!("extract to: {t}▏")),
        None => match &app.message {
            Some(m) => Line::from(Span::styled(m.clone(), Style::default().fg(Color::Yellow))),
            None => Line::from(Span::styled(
                format!(
                    " {}  Tab pane  c changes/merged  s sort  / filter  x extract  ? help  q quit",
                    app.stack.name
                ),
                Style::default().fg(Color::DarkGray),
            )),
        },
    };
    f.render_widget(Paragraph::new(line), area);
}

fn draw_help(f: &mut Frame<'_>, area: Rect) {
    let w = 70.min(area.width);
    let h = (HELP.len() as u16 + 4).min(area.height);
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(k, v)| Line::from(format!("  {k:<20} {v}")))
        .chain(std::iter::once(Line::from("  (any key closes this)")))
        .collect();
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(pane_block(" Keys ".into(), true)),
        r,
    );
}
