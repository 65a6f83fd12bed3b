//! The SVG chart: per workload, one bar per backend showing its cost relative to the reference
//! (kernel overlayfs, or the native directory when the kernel could not run), on a log scale.
//! Bars to the right of 1x are slower than the reference, to the left faster; throughputs are
//! inverted so that right is always worse.

use std::fmt::Write;

use super::report::{number, Report, Row, KERNEL, NATIVE};
use super::workload::Unit;

const LABEL_W: f64 = 190.0;
const PLOT_W: f64 = 620.0;
const RIGHT_W: f64 = 70.0;
const BAR_H: f64 = 13.0;
const GROUP_GAP: f64 = 12.0;
const TOP: f64 = 86.0;
/// The scale runs from 1/LIMIT to LIMIT; longer bars are clipped and marked.
const LIMIT: f64 = 100.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
];

/// Renders the report's chart as a standalone SVG document.
pub fn render(report: &Report) -> String {
    let has_kernel = report.rows.iter().any(|r| r.backend == KERNEL);
    let reference = if has_kernel { KERNEL } else { NATIVE };
    let cost = |row: &Row| -> Option<f64> {
        let r = if has_kernel {
            row.vs_overlay
        } else {
            row.vs_native
        }?;
        Some(if row.unit.higher_is_better() {
            1.0 / r
        } else {
            r
        })
    };
    let backends: Vec<&str> = report
        .backends
        .iter()
        .filter(|b| b.ran && b.name != reference)
        .map(|b| b.name.as_str())
        .collect();
    let mut metrics: Vec<&str> = Vec::new();
    for row in &report.rows {
        if matches!(
            row.unit,
            Unit::Mib | Unit::Ratio | Unit::Requests | Unit::RequestsPerFile
        ) || metrics.contains(&row.metric.as_str())
        {
            continue;
        }
        if report
            .rows
            .iter()
            .any(|r| r.metric == row.metric && r.backend != reference && cost(r).is_some())
        {
            metrics.push(&row.metric);
        }
    }
    let group_h = backends.len().max(1) as f64 * BAR_H + GROUP_GAP;
    let height = TOP + metrics.len() as f64 * group_h + 50.0;
    let width = LABEL_W + PLOT_W + RIGHT_W;
    let x_of = |ratio: f64| {
        LABEL_W + (ratio.clamp(1.0 / LIMIT, LIMIT).log10() / LIMIT.log10() + 1.0) / 2.0 * PLOT_W
    };

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" font-size="16" font-weight="bold">strata bench: cost relative to {} (log scale, lower is better)</text>"#,
        8,
        if has_kernel {
            "kernel overlayfs"
        } else {
            "the native directory (kernel overlayfs did not run)"
        }
    );
    let _ = writeln!(
        svg,
        r#"<text x="8" y="40" fill="gray">time ratio; throughputs inverted ({reference} / backend); page cache in copies. Median of {} run(s); {} small files, big file {} MiB.</text>"#,
        report.runs,
        report.fixture.dirs as u64 * report.fixture.files_per_dir as u64,
        report.fixture.big_file_bytes >> 20
    );
    // Legend: each entry as wide as its name (about 7 px a character at this size), wrapped
    // onto a second line if the names are long.
    let (mut x, mut y) = (8.0, 52.0);
    for (i, name) in backends.iter().enumerate() {
        let w = 17.0 + 7.0 * name.chars().count() as f64 + 18.0;
        if x > 8.0 && x + w > width - 8.0 {
            (x, y) = (8.0, y + 17.0);
        }
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{y}" width="12" height="12" fill="{}"/>"#,
            COLOURS[i % COLOURS.len()]
        );
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}">{}</text>"#,
            x + 17.0,
            y + 10.0,
            escape(name)
        );
        x += w;
    }
    // Grid: one line per tick, the 1x line darker.
    let bottom = height - 40.0;
    for tick in [
        0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
    ] {
        let x = x_of(tick);
        let stroke = if tick == 1.0 { "black" } else { "lightgray" };
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{bottom}" stroke="{stroke}"/>"#,
            TOP - 8.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{}" text-anchor="middle" fill="gray">{tick}x</text>"#,
            bottom + 16.0
        );
    }
    for (g, metric) in metrics.iter().enumerate() {
        let y0 = TOP + g as f64 * group_h;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            LABEL_W - 8.0,
            y0 + backends.len() as f64 * BAR_H / 2.0 + 4.0,
            escape(metric)
        );
        for (i, name) in backends.iter().enumerate() {
            let Some(row) = report
                .rows
                .iter()
                .find(|r| r.metric == *metric && r.backend == *name)
            else {
                continue;
            };
            let Some(c) = cost(row) else { continue };
            let y = y0 + i as f64 * BAR_H;
            let (x1, x2) = (x_of(1.0), x_of(c));
            let (left, w) = if x2 >= x1 {
                (x1, x2 - x1)
            } else {
                (x2, x1 - x2)
            };
            let clipped = !(1.0 / LIMIT..=LIMIT).contains(&c);
            let _ = writeln!(
                svg,
                r#"<rect x="{left:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}: {} {} ({}x {})</title></rect>"#,
                w.max(1.0),
                BAR_H - 2.0,
                COLOURS[i % COLOURS.len()],
                escape(name),
                escape(metric),
                number(row.median),
                row.unit.label(),
                number(c),
                reference
            );
            // A bar clipped at the left edge gets its label beside the 1x line, clear of the names.
            let (tx, anchor) = if x2 >= x1 || c < 1.0 / LIMIT {
                ((if x2 >= x1 { x2 } else { x1 }) + 3.0, "start")
            } else {
                (x2 - 3.0, "end")
            };
            let _ = writeln!(
                svg,
                r#"<text x="{tx:.1}" y="{:.1}" font-size="10" text-anchor="{anchor}">{}{}x</text>"#,
                y + BAR_H - 4.0,
                if clipped { "clipped " } else { "" },
                number(c)
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::super::report::{BackendStatus, Measured};
    use super::super::workload::Sample;
    use super::*;

    #[test]
    fn legend_entries_do_not_overlap() {
        let names = [
            "overlay",
            "stratafs",
            "stratafs+passthrough=off",
            "stratafs+metacopy=on",
            "fuse-overlayfs",
            "unionfs-fuse",
            "native",
        ];
        let mut m = Measured::default();
        for name in names {
            m.backends.push(BackendStatus {
                name: name.into(),
                ran: true,
                notes: vec![],
            });
            m.samples.push((
                name.into(),
                Sample {
                    metric: "find-cold",
                    unit: Unit::Seconds,
                    value: 1.0,
                },
            ));
        }
        let svg = render(&Report::new(m));
        // (x, y, label) of each legend text, in order.
        let mut entries = Vec::new();
        for line in svg.lines() {
            let Some(rest) = line.strip_prefix(r#"<text x=""#) else {
                continue;
            };
            let mut parts = rest.splitn(2, r#"" y=""#);
            let x: f64 = parts.next().unwrap().parse().unwrap();
            let rest = parts.next().unwrap();
            let (y, label) = rest.split_once(r#"">"#).unwrap();
            let label = label.trim_end_matches("</text>");
            if names[1..].contains(&label) {
                entries.push((x, y.parse::<f64>().unwrap(), label.to_string()));
            }
        }
        assert_eq!(entries.len(), names.len() - 1, "{svg}");
        for pair in entries.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.1 == b.1 {
                assert!(
                    b.0 >= a.0 + 7.0 * a.2.len() as f64,
                    "{} at {} runs into {} at {}",
                    a.2,
                    a.0,
                    b.2,
                    b.0
                );
            }
        }
    }
}
