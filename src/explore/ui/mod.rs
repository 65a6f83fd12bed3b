//! The terminal UI of `strata explore` (ratatui on crossterm): layers, file tree and details
//! panes. The terminal is restored on exit, on error and on panic (ratatui's hook); a resize
//! redraws at the new size.

pub mod app;
pub mod details;
pub mod render;
pub mod rows;

use crossterm::event::{self, Event, KeyEventKind};

use super::stack::Stack;
use super::{io_err, Result};
use app::App;

/// Run the explorer on `stack`, starting at `layer`, until the user quits.
pub fn run(stack: Stack, layer: usize) -> Result<()> {
    let mut app = App::new(stack, layer);
    let mut terminal = ratatui::try_init().map_err(io_err("set up the terminal"))?;
    let result = (|| -> Result<()> {
        while !app.quit {
            terminal
                .draw(|f| render::draw(f, &mut app))
                .map_err(io_err("draw"))?;
            match event::read().map_err(io_err("read the terminal"))? {
                Event::Key(k) if k.kind != KeyEventKind::Release => app.key(k),
                // The next draw fits the new size.
                Event::Resize(_, _) => {}
                _ => {}
            }
        }
        Ok(())
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::app::{App, Pane};
    use super::*;
    use crate::explore::stack::Layer;
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use std::fs;

    fn key(app: &mut App, c: KeyCode) {
        app.key(KeyEvent::new(c, KeyModifiers::NONE));
    }

    fn typed(app: &mut App, s: &str) {
        for c in s.chars() {
            key(app, KeyCode::Char(c));
        }
    }

    fn screen(app: &mut App) -> String {
        let mut t = Terminal::new(TestBackend::new(140, 40)).unwrap();
        t.draw(|f| render::draw(f, app)).unwrap();
        let buf = t.backend().buffer().clone();
        let mut s = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                s.push_str(buf[(x, y)].symbol());
            }
            s.push('\n');
        }
        s
    }

    /// The file tree pane of a screen (the right 55% of 140 columns).
    fn tree_pane(s: &str) -> String {
        s.lines()
            .map(|l| l.chars().skip(63).collect::<String>() + "\n")
            .collect()
    }

    /// L0: /etc/conf "one\ntwo\n", /bin/tool (binary), /gone; L1: /etc/conf changed,
    /// /app/hello.sh added, /gone deleted.
    fn app(d: &std::path::Path) -> App {
        let (l0, l1) = (d.join("l0"), d.join("l1"));
        fs::create_dir_all(l0.join("etc")).unwrap();
        fs::create_dir_all(l0.join("bin")).unwrap();
        fs::write(l0.join("etc/conf"), "one\ntwo\n").unwrap();
        fs::write(l0.join("bin/tool"), [0u8, 1, 2, 0x41]).unwrap();
        fs::write(l0.join("gone"), "bye").unwrap();
        fs::create_dir_all(l1.join("etc")).unwrap();
        fs::create_dir_all(l1.join("app")).unwrap();
        fs::write(l1.join("etc/conf"), "one\nTWO\n").unwrap();
        fs::write(l1.join("app/hello.sh"), "#!/bin/sh\necho hi\n").unwrap();
        fs::write(l1.join(".wh.gone"), "").unwrap();
        let mut layers = vec![Layer::open(&l0).unwrap(), Layer::open(&l1).unwrap()];
        layers[1].created_by = Some("COPY hello.sh /app/".into());
        layers[1].digest = Some("sha256:0123456789abcdef".into());
        App::new(Stack::read("test-image".into(), layers).unwrap(), 1)
    }

    #[test]
    fn layers_pane_shows_digest_size_and_instruction() {
        let d = tempfile::tempdir().unwrap();
        let mut a = app(d.path());
        let s = screen(&mut a);
        assert!(s.contains("Layers (2)"), "{s}");
        assert!(s.contains("L1   0123456789ab"), "{s}");
        assert!(s.contains("COPY hello.sh /app/"), "{s}");
    }

    #[test]
    fn tree_pane_marks_added_changed_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let mut a = app(d.path());
        let s = tree_pane(&screen(&mut a));
        assert!(s.contains("merged up to L1"), "{s}");
        let line = |name: &str| {
            s.lines()
                .find(|l| l.contains(name))
                .unwrap_or("")
                .to_string()
        };
        assert!(line("hello.sh").contains("│A -rw"), "{s}");
        assert!(line("conf").contains("│C -rw"), "{s}");
        assert!(line("gone").contains("│D -rw"), "{s}");
        assert!(line(" tool").contains("│  -rw"), "{s}");
        // Changes only: the unchanged /bin/tool is gone.
        key(&mut a, KeyCode::Char('c'));
        let s = tree_pane(&screen(&mut a));
        assert!(s.contains("changes in L1"), "{s}");
        assert!(!s.contains(" tool"), "{s}");
        assert!(s.contains("hello.sh"), "{s}");
        // Layer 0 seen from the layers pane: everything added.
        key(&mut a, KeyCode::Char('c'));
        key(&mut a, KeyCode::Up);
        let s = tree_pane(&screen(&mut a));
        assert!(s.contains("merged up to L0"), "{s}");
        assert!(!s.contains("hello.sh"), "{s}");
    }

    #[test]
    fn filter_sort_and_collapse() {
        let d = tempfile::tempdir().unwrap();
        let mut a = app(d.path());
        key(&mut a, KeyCode::Char('/'));
        typed(&mut a, "hel+o");
        assert!(screen(&mut a).contains("filter (regex): hel+o"));
        key(&mut a, KeyCode::Enter);
        let s = tree_pane(&screen(&mut a));
        assert!(s.contains("[filter /hel+o/]"), "{s}");
        assert!(s.contains("hello.sh") && !s.contains("conf"), "{s}");
        key(&mut a, KeyCode::Char('/'));
        key(&mut a, KeyCode::Esc);
        assert!(screen(&mut a).contains("conf"));
        // Collapse /app: its file disappears.
        a.focus = Pane::Tree;
        assert_eq!(a.stack.tree.path(a.selected().unwrap()), "/app");
        key(&mut a, KeyCode::Enter);
        let s = tree_pane(&screen(&mut a));
        assert!(s.contains("▸ app") && !s.contains("hello.sh"), "{s}");
        key(&mut a, KeyCode::Char('s'));
        assert!(screen(&mut a).contains("by size"));
        key(&mut a, KeyCode::Char('?'));
        assert!(screen(&mut a).contains("filter paths by regex"));
    }

    #[test]
    fn details_show_provenance_content_hex_and_diff() {
        let d = tempfile::tempdir().unwrap();
        let mut a = app(d.path());
        a.focus = Pane::Tree;
        let pos = |a: &App, p: &str| a.rows.iter().position(|r| a.stack.tree.path(r.node) == p);
        let conf = pos(&a, "/etc/conf").unwrap();
        a.cursor = conf;
        a.refresh_details();
        let s = screen(&mut a);
        assert!(s.contains("provided by     L1"), "{s}");
        assert!(s.contains("shadows         L0"), "{s}");
        assert!(s.contains("TWO"), "{s}");
        key(&mut a, KeyCode::Char('d'));
        let s = screen(&mut a);
        assert!(s.contains("- two") && s.contains("+ TWO"), "{s}");
        let tool = pos(&a, "/bin/tool").unwrap();
        a.cursor = tool;
        a.mode = details::Mode::Content(0);
        a.refresh_details();
        let s = screen(&mut a);
        assert!(s.contains("00000000  00 01 02 41"), "{s}");
        // Extract it to the host.
        let dest = d.path().join("out-tool");
        a.extract(dest.to_str().unwrap());
        assert_eq!(fs::read(&dest).unwrap(), [0u8, 1, 2, 0x41]);
        // Never over an existing file.
        a.extract(dest.to_str().unwrap());
        assert!(a.message.as_deref().unwrap().starts_with("extract failed"));
    }
}
