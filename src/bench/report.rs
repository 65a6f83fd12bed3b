//! Turning samples into medians, ratios, a terminal table and the JSON report.

use std::fs;
use std::path::{Path, PathBuf};

use comfy_table::presets::{ASCII_MARKDOWN, UTF8_FULL_CONDENSED};
use comfy_table::{Cell, CellAlignment, Table};
use serde::Serialize;

use super::chart;
use super::error::{io_err, Result};
use super::fixture::{mkdirs, FixtureSpec};
use super::workload::{Sample, Unit};

/// The reference backend of every ratio.
pub const KERNEL: &str = "overlay";
/// The no-union baseline.
pub const NATIVE: &str = "native";

/// What happened to one backend.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BackendStatus {
    /// Backend name.
    pub name: String,
    /// False when it was skipped.
    pub ran: bool,
    /// Why it was skipped, and which workloads failed on it.
    pub notes: Vec<String>,
}

/// The raw outcome of a benchmark, before statistics.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    /// Whether cold runs and the kernel backend were possible.
    pub root: bool,
    /// Timed runs per workload.
    pub runs: u32,
    /// Fixture sizes.
    pub spec: FixtureSpec,
    /// Every backend asked for, in order.
    pub backends: Vec<BackendStatus>,
    /// Every sample, with its backend's name.
    pub samples: Vec<(String, Sample)>,
    /// Remarks for the reader.
    pub notes: Vec<String>,
}

/// One metric on one backend.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Metric name.
    pub metric: String,
    /// Backend name.
    pub backend: String,
    /// What the numbers measure.
    pub unit: Unit,
    /// Median of the samples.
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Every sample, in run order.
    pub samples: Vec<f64>,
    /// Median divided by kernel overlayfs's median (time: lower is better; throughput:
    /// higher is better).
    pub vs_overlay: Option<f64>,
    /// Median divided by the native directory's median.
    pub vs_native: Option<f64>,
}

impl Row {
    /// The ratio to kernel overlayfs as a cost: above 1 is always worse, whatever the unit.
    pub fn cost_vs_overlay(&self) -> Option<f64> {
        let r = self.vs_overlay?;
        Some(if self.unit.higher_is_better() {
            1.0 / r
        } else {
            r
        })
    }
}

/// The finished report, as written to `results.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// strata's version.
    pub version: &'static str,
    /// Seconds since the epoch when the report was made.
    pub created_unix: u64,
    /// `uname -r`.
    pub kernel: String,
    /// CPUs available.
    pub cpus: usize,
    /// Whether it ran as root (cold runs, kernel overlayfs).
    pub root: bool,
    /// Timed runs per workload.
    pub runs: u32,
    /// Fixture sizes.
    pub fixture: FixtureSpec,
    /// What happened to each backend.
    pub backends: Vec<BackendStatus>,
    /// Metrics in report order, backends in column order.
    pub rows: Vec<Row>,
    /// Remarks for the reader.
    pub notes: Vec<String>,
}

impl Report {
    /// Computes medians, extremes and ratios, and adds the deep-vs-shallow find ratio.
    pub fn new(measured: Measured) -> Report {
        let mut metrics: Vec<(&'static str, Unit)> = Vec::new();
        for (_, s) in &measured.samples {
            if !metrics.iter().any(|(m, _)| *m == s.metric) {
                metrics.push((s.metric, s.unit));
            }
        }
        let mut rows = Vec::new();
        for (metric, unit) in metrics {
            for b in measured.backends.iter().filter(|b| b.ran) {
                let samples: Vec<f64> = measured
                    .samples
                    .iter()
                    .filter(|(name, s)| *name == b.name && s.metric == metric)
                    .map(|(_, s)| s.value)
                    .collect();
                if let Some(row) = Row::from_samples(metric, &b.name, unit, samples) {
                    rows.push(row);
                }
            }
        }
        add_depth_ratio(&mut rows);
        fill_ratios(&mut rows);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        Report {
            version: env!("CARGO_PKG_VERSION"),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            kernel,
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            root: measured.root,
            runs: measured.runs,
            fixture: measured.spec,
            backends: measured.backends,
            rows,
            notes: measured.notes,
        }
    }

    /// The table shown on the terminal: one line per metric and backend.
    pub fn table(&self) -> Table {
        self.table_styled(false)
    }

    /// The same table in Markdown, for READMEs and issues.
    pub fn markdown(&self) -> Table {
        self.table_styled(true)
    }

    fn table_styled(&self, markdown: bool) -> Table {
        let mut table = Table::new();
        table.load_style(if markdown {
            ASCII_MARKDOWN
        } else {
            UTF8_FULL_CONDENSED
        });
        table.set_header([
            "metric",
            "backend",
            "median",
            "min",
            "max",
            "unit",
            "vs overlay",
            "vs native",
        ]);
        for row in &self.rows {
            let ratio = |r: Option<f64>| {
                r.map(|r| format!("{}x", number(r)))
                    .unwrap_or_else(|| "-".into())
            };
            table.add_row(vec![
                Cell::new(&row.metric),
                Cell::new(&row.backend),
                Cell::new(number(row.median)).set_alignment(CellAlignment::Right),
                Cell::new(number(row.min)).set_alignment(CellAlignment::Right),
                Cell::new(number(row.max)).set_alignment(CellAlignment::Right),
                Cell::new(row.unit.label()),
                Cell::new(ratio(row.vs_overlay)).set_alignment(CellAlignment::Right),
                Cell::new(ratio(row.vs_native)).set_alignment(CellAlignment::Right),
            ]);
        }
        table
    }

    /// Backend notes and general remarks, one per line.
    pub fn remarks(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.notes.clone();
        for b in &self.backends {
            lines.extend(b.notes.iter().map(|n| format!("{}: {n}", b.name)));
        }
        lines
    }

    /// Writes `results.json`, `table.md` and `chart.svg` to `dir`, returning their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        mkdirs(dir)?;
        let json = dir.join("results.json");
        fs::write(&json, serde_json::to_vec_pretty(self)?).map_err(io_err("write", &json))?;
        let text = dir.join("table.md");
        let mut body = format!("{}\n\n", self.markdown());
        for line in self.remarks() {
            body.push_str(&format!("- {line}\n"));
        }
        fs::write(&text, body).map_err(io_err("write", &text))?;
        let svg = dir.join("chart.svg");
        fs::write(&svg, chart::render(self)).map_err(io_err("write", &svg))?;
        Ok(vec![json, text, svg])
    }
}

impl Row {
    fn from_samples(metric: &str, backend: &str, unit: Unit, mut samples: Vec<f64>) -> Option<Row> {
        if samples.is_empty() {
            return None;
        }
        let in_order = samples.clone();
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let median = if n % 2 == 1 {
            samples[n / 2]
        } else {
            (samples[n / 2 - 1] + samples[n / 2]) / 2.0
        };
        Some(Row {
            metric: metric.to_string(),
            backend: backend.to_string(),
            unit,
            median,
            min: samples[0],
            max: samples[n - 1],
            samples: in_order,
            vs_overlay: None,
            vs_native: None,
        })
    }
}

/// Adds, per backend, `find-deep-vs-shallow`: the deep stack's cold find time over the same
/// tree's in two layers (the "find over 100 layers vs 2 layers").
fn add_depth_ratio(rows: &mut Vec<Row>) {
    let mut extra = Vec::new();
    for deep in rows.iter().filter(|r| r.metric == "find-deep-cold") {
        let shallow = rows
            .iter()
            .find(|r| r.metric == "find-shallow-cold" && r.backend == deep.backend);
        if let Some(shallow) = shallow.filter(|s| s.median > 0.0) {
            let ratio = |a: f64, b: f64| a / b;
            extra.push(Row {
                metric: "find-deep-vs-shallow".into(),
                backend: deep.backend.clone(),
                unit: Unit::Ratio,
                median: ratio(deep.median, shallow.median),
                min: ratio(deep.min, shallow.max),
                max: ratio(deep.max, shallow.min),
                samples: Vec::new(),
                vs_overlay: None,
                vs_native: None,
            });
        }
    }
    rows.extend(extra);
}

fn fill_ratios(rows: &mut [Row]) {
    let reference = |rows: &[Row], metric: &str, backend: &str| {
        rows.iter()
            .find(|r| r.metric == metric && r.backend == backend)
            .map(|r| r.median)
            .filter(|m| *m > 0.0)
    };
    let refs: Vec<(Option<f64>, Option<f64>)> = rows
        .iter()
        .map(|r| {
            (
                reference(rows, &r.metric, KERNEL),
                reference(rows, &r.metric, NATIVE),
            )
        })
        .collect();
    for (row, (kernel, native)) in rows.iter_mut().zip(refs) {
        row.vs_overlay = kernel.map(|k| row.median / k);
        row.vs_native = native.map(|n| row.median / n);
    }
}

/// Three significant digits, without scientific notation for everyday magnitudes.
pub fn number(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.001 {
        format!("{v:.*}", (2.0 - a.log10().floor()) as usize)
    } else {
        format!("{v:.2e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(metric: &'static str, unit: Unit, value: f64) -> Sample {
        Sample {
            metric,
            unit,
            value,
        }
    }

    #[test]
    fn medians_and_ratios() {
        let mut m = Measured::default();
        for name in ["overlay", "native", "x"] {
            m.backends.push(BackendStatus {
                name: name.into(),
                ran: true,
                notes: vec![],
            });
        }
        for (b, v) in [
            ("overlay", 1.0),
            ("overlay", 3.0),
            ("overlay", 2.0),
            ("native", 0.5),
            ("x", 4.0),
        ] {
            m.samples
                .push((b.into(), sample("find-cold", Unit::Seconds, v)));
        }
        m.samples.push((
            "overlay".into(),
            sample("seqread-warm", Unit::MibPerSecond, 100.0),
        ));
        m.samples
            .push(("x".into(), sample("seqread-warm", Unit::MibPerSecond, 50.0)));
        let r = Report::new(m);
        let row = |metric: &str, b: &str| {
            r.rows
                .iter()
                .find(|x| x.metric == metric && x.backend == b)
                .unwrap()
                .clone()
        };
        let k = row("find-cold", "overlay");
        assert_eq!((k.median, k.min, k.max), (2.0, 1.0, 3.0));
        assert_eq!(row("find-cold", "x").vs_overlay, Some(2.0));
        assert_eq!(row("find-cold", "x").vs_native, Some(8.0));
        let s = row("seqread-warm", "x");
        assert_eq!(s.vs_overlay, Some(0.5));
        assert_eq!(s.cost_vs_overlay(), Some(2.0));
        assert!(s.vs_native.is_none());
    }

    #[test]
    fn numbers_have_three_digits() {
        assert_eq!(number(0.012345), "0.0123");
        assert_eq!(number(1.2345), "1.23");
        assert_eq!(number(1234.4), "1234");
    }
}
