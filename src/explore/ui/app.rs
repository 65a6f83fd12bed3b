//! The explorer's state and what each key does to it; no terminal here, so it is driven the
//! same way by the event loop and by tests.

use std::collections::HashSet;
use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::text::Line;
use regex::Regex;

use super::details::{self, Mode};
use super::rows::{self, Row, RowOptions, Sort};
use crate::explore::content;
use crate::explore::stack::Stack;
use crate::explore::tree::{NodeId, View};

/// Views kept besides the current two.
const VIEW_CACHE: usize = 4;

/// The panes, in Tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    /// The layer list.
    Layers,
    /// The file tree.
    Tree,
    /// The selected file's details.
    Details,
}

/// A line being typed at the bottom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// A path regex for the tree.
    Filter(String),
    /// Where to extract the selected path.
    Extract(String),
}

/// The explorer.
pub struct App {
    /// What is explored.
    pub stack: Stack,
    /// The selected layer.
    pub layer: usize,
    /// Merged view up to the selected layer.
    pub view: View,
    /// Merged view up to the layer below it.
    pub below: Option<View>,
    /// Views of other layers seen lately (moving one layer up or down reuses them).
    cache: Vec<View>,
    /// Bytes of regular files of each layer.
    pub layer_sizes: Vec<u64>,
    /// The focused pane.
    pub focus: Pane,
    /// Show only the selected layer's entries.
    pub changes_only: bool,
    /// Collapsed directories.
    pub collapsed: HashSet<NodeId>,
    /// Sibling order.
    pub sort: Sort,
    /// The path filter in force.
    pub filter: Option<Regex>,
    /// The tree rows.
    pub rows: Vec<Row>,
    /// Selected row.
    pub cursor: usize,
    /// First row shown.
    pub scroll: usize,
    /// Rows of the tree pane at the last draw (for paging).
    pub tree_height: usize,
    /// Details of the selected path.
    pub details: Vec<Line<'static>>,
    /// For which node, layer and mode `details` was made.
    details_key: Option<(NodeId, usize, Mode)>,
    /// Details content mode.
    pub mode: Mode,
    /// First details line shown.
    pub details_scroll: usize,
    /// The line being typed, if any.
    pub prompt: Option<Prompt>,
    /// A message for the status line.
    pub message: Option<String>,
    /// The help overlay is shown.
    pub help: bool,
    /// The user asked to quit.
    pub quit: bool,
}

impl App {
    /// The explorer of `stack`, at `layer`.
    pub fn new(stack: Stack, layer: usize) -> App {
        let layer_sizes = stack.layer_sizes();
        let view = stack.tree.view(layer);
        let below = (layer > 0).then(|| stack.tree.view(layer - 1));
        let mut app = App {
            stack,
            layer,
            view,
            below,
            cache: Vec::new(),
            layer_sizes,
            focus: Pane::Layers,
            changes_only: false,
            collapsed: HashSet::new(),
            sort: Sort::Name,
            filter: None,
            rows: Vec::new(),
            cursor: 0,
            scroll: 0,
            tree_height: 20,
            details: Vec::new(),
            details_key: None,
            mode: Mode::Content(0),
            details_scroll: 0,
            prompt: None,
            message: None,
            help: false,
            quit: false,
        };
        app.rebuild();
        app
    }

    /// The selected node, if any row is selected.
    pub fn selected(&self) -> Option<NodeId> {
        self.rows.get(self.cursor).map(|r| r.node)
    }

    /// Recompute the rows (after a layer, view, collapse, sort or filter change), keeping the
    /// selected path selected if it still has a row.
    pub fn rebuild(&mut self) {
        let keep = self.selected();
        let matches = self.filter.as_ref().map(|re| {
            rows::filter_matches(
                &self.stack.tree,
                &self.view,
                self.below.as_ref(),
                self.changes_only,
                re,
            )
        });
        self.rows = rows::rows(
            &self.stack.tree,
            &self.view,
            self.below.as_ref(),
            &RowOptions {
                changes_only: self.changes_only,
                collapsed: &self.collapsed,
                sort: self.sort,
                filter: self.filter.as_ref(),
            },
            matches.as_ref(),
        );
        self.cursor = keep
            .and_then(|k| self.rows.iter().position(|r| r.node == k))
            .unwrap_or(0)
            .min(self.rows.len().saturating_sub(1));
        self.refresh_details();
    }

    /// Select layer `l`.
    pub fn set_layer(&mut self, l: usize) {
        let l = l.min(self.stack.top());
        if l == self.layer {
            return;
        }
        self.layer = l;
        let view = self.cached_view(l);
        let below = (l > 0).then(|| self.cached_view(l - 1));
        let old = std::mem::replace(&mut self.view, view);
        self.cache.push(old);
        if let Some(b) = std::mem::replace(&mut self.below, below) {
            self.cache.push(b);
        }
        if self.cache.len() > VIEW_CACHE {
            self.cache.drain(..self.cache.len() - VIEW_CACHE);
        }
        self.rebuild();
    }

    /// The view up to `l`: a cached one, or computed.
    fn cached_view(&mut self, l: usize) -> View {
        if let Some(i) = self.cache.iter().position(|v| v.upto == l) {
            return self.cache.remove(i);
        }
        if self.view.upto == l {
            return self.view.clone();
        }
        match &self.below {
            Some(b) if b.upto == l => b.clone(),
            _ => self.stack.tree.view(l),
        }
    }

    /// Recompute the details if the selection or mode changed.
    pub fn refresh_details(&mut self) {
        let Some(node) = self.selected() else {
            self.details = vec![Line::from("(no files)")];
            self.details_key = None;
            return;
        };
        let key = (node, self.layer, self.mode);
        if self.details_key == Some(key) {
            return;
        }
        if self.details_key.map(|k| k.0) != Some(node) {
            self.details_scroll = 0;
        }
        self.details = details::lines(&self.stack, &self.view, node, self.mode);
        self.details_key = Some(key);
    }

    fn move_cursor(&mut self, delta: isize) {
        if self.rows.is_empty() {
            return;
        }
        let max = self.rows.len() as isize - 1;
        let c = (self.cursor as isize + delta).clamp(0, max) as usize;
        if c != self.cursor {
            self.cursor = c;
            self.mode = Mode::Content(0);
            self.refresh_details();
        }
    }

    /// Handle one key.
    pub fn key(&mut self, k: KeyEvent) {
        if let Some(p) = self.prompt.clone() {
            self.prompt_key(p, k);
            return;
        }
        self.message = None;
        if self.help {
            self.help = false;
            return;
        }
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        match k.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('c') if ctrl => self.quit = true,
            KeyCode::Char('?') => self.help = true,
            KeyCode::Tab => {
                self.focus = match self.focus {
                    Pane::Layers => Pane::Tree,
                    Pane::Tree => Pane::Details,
                    Pane::Details => Pane::Layers,
                }
            }
            KeyCode::BackTab => {
                self.focus = match self.focus {
                    Pane::Layers => Pane::Details,
                    Pane::Tree => Pane::Layers,
                    Pane::Details => Pane::Tree,
                }
            }
            KeyCode::Char('/') => self.prompt = Some(Prompt::Filter(String::new())),
            KeyCode::Char('c') => {
                self.changes_only = !self.changes_only;
                self.rebuild();
            }
            KeyCode::Char('s') => {
                self.sort = match self.sort {
                    Sort::Name => Sort::Size,
                    Sort::Size => Sort::Name,
                };
                self.rebuild();
            }
            KeyCode::Char('x') => {
                if let Some(n) = self.selected() {
                    let name = self.stack.tree.name(n).to_string_lossy().into_owned();
                    self.prompt = Some(Prompt::Extract(format!("./{name}")));
                }
            }
            KeyCode::Char('d') => {
                self.mode = match self.mode {
                    Mode::Diff => Mode::Content(0),
                    Mode::Content(_) => Mode::Diff,
                };
                self.details_scroll = 0;
                self.refresh_details();
            }
            KeyCode::Char(']') => {
                if let Mode::Content(p) = self.mode {
                    self.mode = Mode::Content(p + 1);
                    self.details_scroll = 0;
                    self.refresh_details();
                }
            }
            KeyCode::Char('[') => {
                if let Mode::Content(p) = self.mode {
                    self.mode = Mode::Content(p.saturating_sub(1));
                    self.details_scroll = 0;
                    self.refresh_details();
                }
            }
            _ => match self.focus {
                Pane::Layers => self.layers_key(k),
                Pane::Tree => self.tree_key(k),
                Pane::Details => self.details_key_press(k),
            },
        }
    }

    fn layers_key(&mut self, k: KeyEvent) {
        match k.code {
            KeyCode::Up | KeyCode::Char('k') => self.set_layer(self.layer.saturating_sub(1)),
            KeyCode::Down | KeyCode::Char('j') => self.set_layer(self.layer + 1),
            KeyCode::Home | KeyCode::Char('g') => self.set_layer(0),
            KeyCode::End | KeyCode::Char('G') => self.set_layer(self.stack.top()),
            KeyCode::Enter | KeyCode::Right | KeyCode::Char('l') => self.focus = Pane::Tree,
            _ => {}
        }
    }

    fn tree_key(&mut self, k: KeyEvent) {
        let page = self.tree_height.max(1) as isize;
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        match k.code {
            KeyCode::Up | KeyCode::Char('k') => self.move_cursor(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_cursor(1),
            KeyCode::PageUp => self.move_cursor(-page),
            KeyCode::PageDown => self.move_cursor(page),
            KeyCode::Char('u') if ctrl => self.move_cursor(-page / 2),
            KeyCode::Char('d') if ctrl => self.move_cursor(page / 2),
            KeyCode::Home | KeyCode::Char('g') => self.move_cursor(isize::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => self.move_cursor(isize::MAX / 2),
            KeyCode::Enter | KeyCode::Char(' ') => {
                if let Some(r) = self.rows.get(self.cursor).copied() {
                    if r.dir && !self.collapsed.remove(&r.node) {
                        self.collapsed.insert(r.node);
                    }
                    self.rebuild();
                }
            }
            KeyCode::Right | KeyCode::Char('l') => {
                if let Some(r) = self.rows.get(self.cursor).copied() {
                    if self.collapsed.remove(&r.node) {
                        self.rebuild();
                    } else {
                        self.focus = Pane::Details;
                    }
                }
            }
            KeyCode::Left | KeyCode::Char('h') => {
                if let Some(r) = self.rows.get(self.cursor).copied() {
                    if r.dir && !self.collapsed.contains(&r.node) {
                        self.collapsed.insert(r.node);
                        self.rebuild();
                    } else {
                        // To the parent's row.
                        let p = self.stack.tree.node(r.node).parent;
                        if let Some(i) = self.rows.iter().position(|x| x.node == p) {
                            self.move_cursor(i as isize - self.cursor as isize);
                        } else {
                            self.focus = Pane::Layers;
                        }
                    }
                }
            }
            KeyCode::Char('e') => {
                self.collapsed.clear();
                self.rebuild();
            }
            KeyCode::Char('z') => {
                // Collapse every directory.
                self.collapsed = self.rows.iter().filter(|r| r.dir).map(|r| r.node).collect();
                self.rebuild();
            }
            _ => {}
        }
    }

    fn details_key_press(&mut self, k: KeyEvent) {
        let max = self.details.len().saturating_sub(1);
        match k.code {
            KeyCode::Up | KeyCode::Char('k') => {
                self.details_scroll = self.details_scroll.saturating_sub(1)
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.details_scroll = (self.details_scroll + 1).min(max)
            }
            KeyCode::PageUp => self.details_scroll = self.details_scroll.saturating_sub(20),
            KeyCode::PageDown => self.details_scroll = (self.details_scroll + 20).min(max),
            KeyCode::Home | KeyCode::Char('g') => self.details_scroll = 0,
            KeyCode::End | KeyCode::Char('G') => self.details_scroll = max,
            KeyCode::Left | KeyCode::Char('h') => self.focus = Pane::Tree,
            _ => {}
        }
    }

    fn prompt_key(&mut self, p: Prompt, k: KeyEvent) {
        let (mut text, is_filter) = match &p {
            Prompt::Filter(t) => (t.clone(), true),
            Prompt::Extract(t) => (t.clone(), false),
        };
        match k.code {
            KeyCode::Esc => {
                self.prompt = None;
                if is_filter {
                    self.filter = None;
                    self.rebuild();
                }
                return;
            }
            KeyCode::Enter => {
                self.prompt = None;
                if is_filter {
                    self.apply_filter(&text);
                } else {
                    self.extract(&text);
                }
                return;
            }
            KeyCode::Backspace => {
                text.pop();
            }
            KeyCode::Char(c) => text.push(c),
            _ => {}
        }
        self.prompt = Some(if is_filter {
            Prompt::Filter(text)
        } else {
            Prompt::Extract(text)
        });
    }

    /// Filter the tree by a path regex (empty clears it).
    pub fn apply_filter(&mut self, text: &str) {
        if text.is_empty() {
            self.filter = None;
        } else {
            match Regex::new(text) {
                Ok(re) => self.filter = Some(re),
                Err(e) => {
                    self.message = Some(format!("bad regex: {e}"));
                    return;
                }
            }
        }
        self.cursor = 0;
        self.rebuild();
    }

    /// Copy the selected path (as the selected layer shows it) to `dest` on the host.
    pub fn extract(&mut self, dest: &str) {
        let Some(n) = self.selected() else {
            return;
        };
        let d = PathBuf::from(dest);
        self.message = Some(match content::extract(&self.stack, &self.view, n, &d) {
            Ok(0) => format!("extracted {} to {dest}", self.stack.tree.path(n)),
            Ok(s) => format!(
                "extracted {} to {dest} ({s} devices, pipes or sockets skipped)",
                self.stack.tree.path(n)
            ),
            Err(e) => format!("extract failed: {e}"),
        });
    }
}
