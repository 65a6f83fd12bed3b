//! The CI check: dive's three rules (lowest efficiency, highest wasted bytes, highest user
//! wasted percent) with dive's defaults, from flags or a `.dive-ci` file (both the
//! `lowest-efficiency` and the older `lowestEfficiency` spellings), and the report.

use super::efficiency::Analysis;
use super::{Error, Result};

/// Rule values as given (flags or file): a number, a size, or `disabled`/`off`/`false`/empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleValues {
    /// `lowest-efficiency`: a ratio 0..=1.
    pub lowest_efficiency: Option<String>,
    /// `highest-wasted-bytes`: a size (`20MB`, `1GiB`, `1000`).
    pub highest_wasted_bytes: Option<String>,
    /// `highest-user-wasted-percent`: a ratio 0..=1.
    pub highest_user_wasted_percent: Option<String>,
}

impl RuleValues {
    /// dive's defaults: efficiency at least 0.9, user wasted at most 0.1, wasted bytes off.
    pub fn dive_defaults() -> RuleValues {
        RuleValues {
            lowest_efficiency: Some("0.9".into()),
            highest_wasted_bytes: Some("disabled".into()),
            highest_user_wasted_percent: Some("0.1".into()),
        }
    }

    /// These values, with the ones `over` sets replacing them.
    pub fn overridden_by(self, over: RuleValues) -> RuleValues {
        RuleValues {
            lowest_efficiency: over.lowest_efficiency.or(self.lowest_efficiency),
            highest_wasted_bytes: over.highest_wasted_bytes.or(self.highest_wasted_bytes),
            highest_user_wasted_percent: over
                .highest_user_wasted_percent
                .or(self.highest_user_wasted_percent),
        }
    }

    /// The rules of a `.dive-ci` file: the `key: value` lines under `rules:` (YAML as dive's
    /// files write it; comments and other sections are ignored).
    pub fn parse_config(text: &str, what: &str) -> Result<RuleValues> {
        let mut out = RuleValues::default();
        let mut in_rules = false;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split(" #").next().unwrap_or("");
            if line.trim_start().starts_with('#') || line.trim().is_empty() || line.trim() == "---"
            {
                continue;
            }
            let indented = line.starts_with(' ') || line.starts_with('\t');
            if !indented {
                in_rules = line.trim_end() == "rules:";
                continue;
            }
            if !in_rules {
                continue;
            }
            let Some((k, v)) = line.trim().split_once(':') else {
                return Err(Error::Invalid(format!(
                    "{what}:{}: expected KEY: VALUE under rules:",
                    i + 1
                )));
            };
            let v = v.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
            match k.trim() {
                "lowest-efficiency" | "lowestEfficiency" => out.lowest_efficiency = Some(v),
                "highest-wasted-bytes" | "highestWastedBytes" => out.highest_wasted_bytes = Some(v),
                "highest-user-wasted-percent" | "highestUserWastedPercent" => {
                    out.highest_user_wasted_percent = Some(v)
                }
                // Plugin rules (`plugin/rule: error`) are dive's; nothing to check here.
                k if k.contains('/') => {}
                k => {
                    return Err(Error::Invalid(format!(
                        "{what}:{}: unknown rule {k:?} (lowest-efficiency, \
                         highest-wasted-bytes, highest-user-wasted-percent)",
                        i + 1
                    )))
                }
            }
        }
        Ok(out)
    }
}

/// Parsed thresholds (`None`: the rule is disabled), with the values as given.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// The values as given (shown when a rule passes, as dive shows them).
    pub given: RuleValues,
    /// Fail when efficiency is below this.
    pub lowest_efficiency: Option<f64>,
    /// Fail when wasted bytes are above this.
    pub highest_wasted_bytes: Option<u64>,
    /// Fail when wasted bytes over user bytes are above this.
    pub highest_user_wasted_percent: Option<f64>,
}

fn disabled(v: &Option<String>) -> bool {
    matches!(
        v.as_deref().map(str::trim),
        None | Some("" | "disabled" | "off" | "false")
    )
}

fn ratio(key: &str, v: &Option<String>) -> Result<Option<f64>> {
    if disabled(v) {
        return Ok(None);
    }
    let s = v.as_deref().unwrap_or_default().trim();
    let x: f64 = s
        .parse()
        .map_err(|_| Error::Invalid(format!("invalid {key} value {s:?}: not a number")))?;
    if !(0.0..=1.0).contains(&x) {
        return Err(Error::Invalid(format!(
            "{key} value {s} is outside the allowed range 0-1"
        )));
    }
    Ok(Some(x))
}

/// A byte size as dive (go-humanize) reads it: `1000`, `20MB` (SI), `20MiB` (binary), case
/// and spaces aside.
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| Error::Invalid(format!("invalid size {s:?}")))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "ki" | "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mi" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "ti" | "tib" => 1024f64.powi(4),
        u => {
            return Err(Error::Invalid(format!(
                "invalid size {s:?}: unknown unit {u:?}"
            )))
        }
    };
    Ok((n * mult) as u64)
}

impl Rules {
    /// Parse `v`; a bad value is an error naming the rule.
    pub fn parse(v: &RuleValues) -> Result<Rules> {
        Ok(Rules {
            given: v.clone(),
            lowest_efficiency: ratio("lowest-efficiency", &v.lowest_efficiency)?,
            highest_wasted_bytes: if disabled(&v.highest_wasted_bytes) {
                None
            } else {
                Some(parse_bytes(
                    v.highest_wasted_bytes.as_deref().unwrap_or_default(),
                )?)
            },
            highest_user_wasted_percent: ratio(
                "highest-user-wasted-percent",
                &v.highest_user_wasted_percent,
            )?,
        })
    }
}

/// How one rule came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Within its threshold.
    Pass,
    /// Beyond its threshold.
    Fail,
    /// Disabled.
    Skip,
}

/// One rule's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// dive's name of the rule.
    pub rule: &'static str,
    /// Pass, fail or skip.
    pub status: Status,
    /// What was compared.
    pub message: String,
}

/// Evaluate `rules` on `a` (the outcomes in dive's order: by rule name).
pub fn evaluate(a: &Analysis, rules: &Rules) -> Vec<Outcome> {
    let mut out = Vec::new();
    out.push(match rules.highest_user_wasted_percent {
        None => skip("highestUserWastedPercent"),
        Some(t) if a.user_wasted_percent > t => Outcome {
            rule: "highestUserWastedPercent",
            status: Status::Fail,
            message: format!(
                "too many bytes wasted, relative to the user bytes added (%-user-wasted-bytes={:.2} > threshold={t})",
                a.user_wasted_percent
            ),
        },
        Some(_) => pass("highestUserWastedPercent", &rules.given.highest_user_wasted_percent),
    });
    out.push(match rules.highest_wasted_bytes {
        None => skip("highestWastedBytes"),
        Some(t) if a.wasted_bytes > t => Outcome {
            rule: "highestWastedBytes",
            status: Status::Fail,
            message: format!(
                "too many bytes wasted (wasted-bytes={} > threshold={t})",
                a.wasted_bytes
            ),
        },
        Some(_) => pass("highestWastedBytes", &rules.given.highest_wasted_bytes),
    });
    out.push(match rules.lowest_efficiency {
        None => skip("lowestEfficiency"),
        Some(t) if t > a.efficiency => Outcome {
            rule: "lowestEfficiency",
            status: Status::Fail,
            message: format!(
                "image efficiency is too low (efficiency={:.2} < threshold={t})",
                a.efficiency
            ),
        },
        Some(_) => pass("lowestEfficiency", &rules.given.lowest_efficiency),
    });
    out
}

fn skip(rule: &'static str) -> Outcome {
    Outcome {
        rule,
        status: Status::Skip,
        message: "disabled".into(),
    }
}

fn pass(rule: &'static str, given: &Option<String>) -> Outcome {
    Outcome {
        rule,
        status: Status::Pass,
        message: given.as_deref().unwrap_or_default().trim().to_string(),
    }
}

/// Whether no rule failed.
pub fn passed(outcomes: &[Outcome]) -> bool {
    outcomes.iter().all(|o| o.status != Status::Fail)
}

/// A size as go-humanize's `Bytes` writes it (SI units, one decimal under 10).
pub fn human_bytes(n: u64) -> String {
    if n < 10 {
        return format!("{n} B");
    }
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = ((n as f64).ln() / 1000f64.ln()).floor() as usize;
    let e = e.min(units.len() - 1);
    let v = (n as f64 / 1000f64.powi(e as i32) * 10.0 + 0.5).floor() / 10.0;
    if v < 10.0 {
        format!("{v:.1} {}", units[e])
    } else {
        format!("{v:.0} {}", units[e])
    }
}

/// The text report, laid out as dive's: analysis, inefficient files (the `top` largest),
/// evaluation and the verdict.
pub fn render(name: &str, a: &Analysis, outcomes: &[Outcome], top: usize) -> String {
    let mut s = format!("  Using image: {name}\n\nAnalysis:\n");
    let (wasted_h, user_pct) = if a.wasted_bytes > 0 {
        (
            format!(" ({})", human_bytes(a.wasted_bytes)),
            format!("{:.2} %", a.user_wasted_percent * 100.0),
        )
    } else {
        (String::new(), "0 %".into())
    };
    s += &format!("  {:<19}{:.2} %\n", "efficiency:", a.efficiency * 100.0);
    s += &format!(
        "  {:<19}{} bytes{wasted_h}\n",
        "wastedBytes:", a.wasted_bytes
    );
    s += &format!("  {:<19}{user_pct}\n\n", "userWastedPercent:");
    if a.inefficiencies.is_empty() {
        s += "Inefficient Files: (None)\n";
    } else {
        s += "Inefficient Files:\n";
        s += &format!("  {:<5}  {:<12}  File Path\n", "Count", "Wasted Space");
        for i in a.inefficiencies.iter().take(top) {
            s += &format!(
                "  {:<5}  {:<12}  {}\n",
                i.count,
                human_bytes(i.wasted),
                i.path
            );
        }
        if a.inefficiencies.len() > top {
            s += &format!("  ... and {} more\n", a.inefficiencies.len() - top);
        }
    }
    s += "\nEvaluation:\n";
    for o in outcomes {
        let st = match o.status {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        };
        s += &format!("  {st}  {} ({})\n", o.rule, o.message);
    }
    let count = |x: Status| outcomes.iter().filter(|o| o.status == x).count();
    let mut tally = Vec::new();
    for (n, st) in [
        ("pass", Status::Pass),
        ("fail", Status::Fail),
        ("skip", Status::Skip),
    ] {
        if count(st) > 0 {
            tally.push(format!("{n}:{}", count(st)));
        }
    }
    s += &format!(
        "\n{} [{}]\n",
        if passed(outcomes) { "PASS" } else { "FAIL" },
        tally.join(" ")
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dive_ci_files_in_both_spellings() {
        let legacy = "---\nplugins:\n  - p\n\nrules:\n  # comment\n  lowestEfficiency: 0.95\n  highestWastedBytes: 20Mb\n  highestUserWastedPercent: 0.5\n  plugin1/rule1: error\n";
        let v = RuleValues::parse_config(legacy, ".dive-ci").unwrap();
        let r = Rules::parse(&v).unwrap();
        assert_eq!(r.lowest_efficiency, Some(0.95));
        assert_eq!(r.highest_wasted_bytes, Some(20_000_000));
        assert_eq!(r.highest_user_wasted_percent, Some(0.5));
        let v = RuleValues::parse_config(
            "rules:\n  lowest-efficiency: \"0.8\"\n  highest-wasted-bytes: disabled\n",
            "f",
        )
        .unwrap();
        let r = Rules::parse(&RuleValues::dive_defaults().overridden_by(v)).unwrap();
        assert_eq!(r.lowest_efficiency, Some(0.8));
        assert_eq!(r.highest_wasted_bytes, None);
        assert_eq!(r.highest_user_wasted_percent, Some(0.1));
        assert!(RuleValues::parse_config("rules:\n  nope: 1\n", "f").is_err());
        assert!(Rules::parse(&RuleValues {
            lowest_efficiency: Some("1.5".into()),
            ..Default::default()
        })
        .is_err());
    }

    #[test]
    fn sizes_as_humanize() {
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert_eq!(parse_bytes("20MB").unwrap(), 20_000_000);
        assert_eq!(parse_bytes("1 KiB").unwrap(), 1024);
        assert_eq!(parse_bytes("1.5kb").unwrap(), 1500);
        assert!(parse_bytes("12XB").is_err());
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(535), "535 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
        assert_eq!(human_bytes(20_000_000), "20 MB");
    }

    #[test]
    fn thresholds() {
        let a = Analysis {
            efficiency: 0.8,
            size_bytes: 100,
            user_size_bytes: 50,
            wasted_bytes: 10,
            user_wasted_percent: 0.2,
            inefficiencies: vec![],
        };
        let r = Rules::parse(&RuleValues::dive_defaults()).unwrap();
        let o = evaluate(&a, &r);
        assert!(!passed(&o));
        assert_eq!(
            o.iter().map(|o| o.status).collect::<Vec<_>>(),
            [Status::Fail, Status::Skip, Status::Fail]
        );
        let lax = Rules {
            given: RuleValues::default(),
            lowest_efficiency: Some(0.8),
            highest_wasted_bytes: Some(10),
            highest_user_wasted_percent: Some(0.2),
        };
        assert!(passed(&evaluate(&a, &lax)));
        let text = render("img", &a, &evaluate(&a, &r), 10);
        assert!(text.contains("  efficiency:        80.00 %\n"), "{text}");
        assert!(text.contains("\nFAIL [fail:2 skip:1]\n"), "{text}");
    }
}
