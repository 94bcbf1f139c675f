//! The report: the `leaktrace/v1` JSON schema and its renderings (folded stacks, SVG).
//! [`super::format`] picks a rendering by format (and adds pprof).

use std::{collections::BTreeMap, io::Write};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{analysis::aggregate::StackReport, resolve::frame::Frame};

pub const SCHEMA: &str = "leaktrace/v1";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub pids: Vec<u32>,
    pub exe: String,
    pub python: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub live_bytes: u64,
    pub live_allocs: u64,
    pub allocs_seen: u64,
    pub frees_seen: u64,
    /// Allocations that could not be tracked (a map full, lost events): `alloc_map_full +
    /// pending_map_full + mmap_events_lost`.
    pub dropped: u64,
}

/// What a flamegraph measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Flame {
    /// Live bytes of every stack.
    Live,
    /// Bytes added during the window by stacks whose trend is `growing`.
    Growth,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub target: Target,
    pub mode: String,
    pub duration_s: f64,
    pub totals: Totals,
    pub stacks: Vec<StackReport>,
    // Additions to v1 (fields are only ever added).
    /// Allocations younger than this were left out.
    #[serde(default)]
    pub min_age_s: f64,
    /// False exactly when the numbers are lower bounds: `totals.dropped` is not zero (an
    /// allocation made while traced is missing), or, in growth mode, pages may count less
    /// than they map (README: the rule).
    #[serde(default = "yes")]
    pub complete: bool,
    /// Every loss and activity counter from the kernel side, by name.
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    /// Things the reader must know (target exited early, stacks truncated, ...).
    #[serde(default)]
    pub notes: Vec<String>,
    /// `--mode sampled`: mean bytes between samples (absent in exact mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_bytes: Option<u64>,
    /// `attach --heap`: the censuses of the target's objects at the start and the end, a
    /// `leaktrace-heap/v1` report (kept as JSON here: `heap/` renders it, and comes after
    /// `output/` in the crate's stages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heap: Option<serde_json::Value>,
}

fn yes() -> bool {
    true
}

/// Most bytes one report's folded lines (and so its flamegraph) add up to: 2^60, far above
/// any address space (x86-64 has 2^57 bytes with 5-level paging), so only a corrupt or
/// hand-made report is clamped, and two of them still sum within a u64 in a diff.
pub const MAX_FOLDED_TOTAL: u64 = 1 << 60;

/// Largest JSON report `leaktrace report` and `leaktrace diff` read back. A report holds at
/// most one entry per kernel stack slot, each with at most a few hundred frames: far below this.
pub const MAX_REPORT_BYTES: u64 = 1 << 30;

/// Why a text is not a report this leaktrace reads.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    NotJson(#[from] serde_json::Error),
    #[error("schema `{0}`; this leaktrace reads `{SCHEMA}`")]
    Schema(String),
}

impl Report {
    /// Parses a saved `leaktrace/v1` JSON report (what `leaktrace report` and `diff` read).
    pub fn from_json(text: &str) -> Result<Report, ReadError> {
        let report: Report = serde_json::from_str(text)?;
        if report.schema != SCHEMA {
            return Err(ReadError::Schema(report.schema));
        }
        Ok(report)
    }
}

impl Report {
    /// `frame;frame;frame BYTES` lines of live bytes, outermost first, sorted for
    /// deterministic output.
    pub fn folded(&self) -> String {
        self.folded_by(Flame::Live)
    }

    /// Folded lines of what `flame` measures.
    pub fn folded_by(&self, flame: Flame) -> String {
        let value = |s: &StackReport| match flame {
            Flame::Live => s.live_bytes,
            Flame::Growth if s.trend.as_deref() == Some("growing") => s.added_bytes,
            Flame::Growth => 0,
        };
        // Renderers add these up (inferno in `usize`, a diff adds two reports): a report read
        // back may hold any u64, so the values of one report never sum past the budget.
        let mut budget = MAX_FOLDED_TOTAL;
        let mut lines: Vec<String> = self
            .stacks
            .iter()
            .filter(|s| value(s) > 0)
            .map(|s| {
                let path: Vec<String> = s.frames.iter().map(Frame::label).collect();
                let v = value(s).min(budget).max(1);
                budget = budget.saturating_sub(v);
                format!("{} {}", path.join(";"), v)
            })
            .collect();
        lines.sort();
        let mut out = lines.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        out
    }

    pub fn write_json(&self, w: impl Write) -> Result<()> {
        serde_json::to_writer_pretty(w, self).context("cannot write the JSON report")
    }

    pub fn write_svg(&self, w: impl Write) -> Result<()> {
        self.write_svg_by(Flame::Live, w)
    }

    pub fn write_svg_by(&self, flame: Flame, mut w: impl Write) -> Result<()> {
        let folded = self.folded_by(flame);
        let what = match flame {
            Flame::Live => "Surviving allocations",
            Flame::Growth => "Growth of growing stacks",
        };
        // Sampled mode: the totals are estimates, from this many recorded allocations.
        let (estimated, samples) = match self.sample_bytes {
            Some(_) => {
                let counts: Vec<u64> = self.stacks.iter().filter_map(|s| s.live_samples).collect();
                let k: u64 = counts.iter().sum();
                let from = match (counts.is_empty(), k) {
                    // A report written before sample counts were kept.
                    (true, _) => ", estimated".to_string(),
                    (false, 1) => ", estimated from 1 sample".to_string(),
                    (false, k) => format!(", estimated from {k} samples"),
                };
                ("~", from)
            }
            None => ("", String::new()),
        };
        let title = format!(
            "{what}: {}{} in {}{} allocations{} (pid {})",
            estimated,
            human_bytes(self.totals.live_bytes),
            estimated,
            self.totals.live_allocs,
            samples,
            self.target
                .pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        if folded.is_empty() {
            // inferno refuses an empty profile; say plainly that nothing survived.
            write!(
                w,
                r#"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="60" xmlns="http://www.w3.org/2000/svg">
<text x="600" y="24" text-anchor="middle" font-family="Verdana" font-size="17">{}</text>
<text x="600" y="48" text-anchor="middle" font-family="Verdana" font-size="12">{}</text>
</svg>
"#,
                xml_escape(&title),
                match flame {
                    Flame::Live => format!(
                        "No allocation older than {} s was alive at the end of tracing.",
                        self.min_age_s
                    ),
                    Flame::Growth => "No stack kept growing during the window.".to_string(),
                }
            )?;
            return Ok(());
        }
        let mut opts = inferno::flamegraph::Options::default();
        opts.title = title;
        opts.subtitle = (!self.complete)
            .then(|| "Some allocations were not tracked: numbers are lower bounds".to_string());
        opts.count_name = "bytes".to_string();
        opts.colors =
            inferno::flamegraph::Palette::Basic(inferno::flamegraph::color::BasicPalette::Mem);
        inferno::flamegraph::from_lines(&mut opts, folded.lines(), &mut w)
            .context("cannot render the flamegraph")
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `12.3 MiB`, for people.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::resolve::frame::FrameKind;

    pub fn sample() -> Report {
        let f = |function: &str, file: Option<&str>, line: Option<u32>| Frame {
            function: function.into(),
            file: file.map(Into::into),
            line,
            module: Some("fixture".into()),
            kind: FrameKind::Native,
        };
        Report {
            schema: SCHEMA.into(),
            target: Target {
                pids: vec![42],
                exe: "/usr/bin/fixture".into(),
                python: None,
            },
            mode: "exact".into(),
            sample_bytes: None,
            duration_s: 3.5,
            totals: Totals {
                live_bytes: 4_096_000 + 3700,
                live_allocs: 1001,
                allocs_seen: 3001,
                frees_seen: 2000,
                dropped: 0,
            },
            stacks: vec![
                StackReport {
                    frames: vec![
                        f("main", Some("fixture.c"), Some(40)),
                        f("leak_here", Some("fixture.c"), Some(12)),
                        f("malloc", None, None),
                    ],
                    live_bytes: 4_096_000,
                    live_allocs: 1000,
                    oldest_age_s: 2.0,
                    growth_bytes_per_s: Some(1000.0),
                    alloc_bytes: 8_192_000,
                    alloc_count: 2000,
                    trend: Some("growing".into()),
                    added_bytes: 2_048_000,
                    live_samples: None,
                    growth_samples: None,
                    growth_stderr_bytes_per_s: None,
                },
                StackReport {
                    frames: vec![
                        f("main", Some("fixture.c"), Some(41)),
                        f("calloc_here;odd", Some("fixture.c"), Some(20)),
                        f("calloc", None, None),
                    ],
                    live_bytes: 3700,
                    live_allocs: 1,
                    oldest_age_s: 1.5,
                    growth_bytes_per_s: None,
                    alloc_bytes: 3700,
                    alloc_count: 1,
                    trend: None,
                    added_bytes: 0,
                    live_samples: None,
                    growth_samples: None,
                    growth_stderr_bytes_per_s: None,
                },
            ],
            min_age_s: 1.0,
            complete: true,
            counters: BTreeMap::from([("allocs_seen".into(), 3001)]),
            notes: vec![],
            heap: None,
        }
    }

    #[test]
    fn folded_is_outermost_first_sorted_and_escaped() {
        assert_eq!(
            sample().folded(),
            "main (fixture.c:40);leak_here (fixture.c:12);malloc 4096000\n\
             main (fixture.c:41);calloc_here:odd (fixture.c:20);calloc 3700\n"
        );
    }

    #[test]
    fn json_round_trips_and_has_the_v1_fields() {
        let report = sample();
        let mut buf = Vec::new();
        report.write_json(&mut buf).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["schema"], "leaktrace/v1");
        assert_eq!(v["target"]["pids"][0], 42);
        assert!(v["target"]["python"].is_null());
        for key in [
            "live_bytes",
            "live_allocs",
            "allocs_seen",
            "frees_seen",
            "dropped",
        ] {
            assert!(v["totals"][key].is_u64(), "totals.{key}");
        }
        let frame = &v["stacks"][0]["frames"][1];
        assert_eq!(frame["function"], "leak_here");
        assert_eq!(frame["line"], 12);
        assert_eq!(frame["kind"], "native");
        assert!(v["stacks"][1]["growth_bytes_per_s"].is_null());
        let back: Report = serde_json::from_slice(&buf).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn svg_renders_with_bytes() {
        let mut buf = Vec::new();
        sample().write_svg(&mut buf).unwrap();
        let svg = String::from_utf8(buf).unwrap();
        assert!(svg.contains("<svg"));
        assert!(svg.contains("leak_here (fixture.c:12)"));
        assert!(svg.contains("bytes"));
    }

    #[test]
    fn empty_svg_says_nothing_survived() {
        let mut report = sample();
        report.stacks.clear();
        let mut buf = Vec::new();
        report.write_svg(&mut buf).unwrap();
        assert!(String::from_utf8(buf)
            .unwrap()
            .contains("No allocation older than 1 s"));
    }

    /// Compares `actual` with `tests/data/NAME`; `LEAKTRACE_BLESS=1` rewrites the file. On a
    /// mismatch the actual output is left next to it as `NAME.actual`.
    fn golden(name: &str, actual: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data")
            .join(name);
        if std::env::var_os("LEAKTRACE_BLESS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (LEAKTRACE_BLESS=1 creates it)", path.display()));
        if expected != actual {
            let out = path.with_extension(format!(
                "{}.actual",
                path.extension().unwrap().to_str().unwrap()
            ));
            std::fs::write(&out, actual).unwrap();
            panic!(
                "{} differs; actual output in {}",
                path.display(),
                out.display()
            );
        }
    }

    #[test]
    fn golden_folded_and_json() {
        let report = sample();
        golden("report.folded", &report.folded());
        let mut json = Vec::new();
        report.write_json(&mut json).unwrap();
        golden("report.json", &String::from_utf8(json).unwrap());
    }

    /// From the fuzz target `report_json`: one folded line per stack, whatever the names.
    #[test]
    fn folded_names_cannot_break_lines() {
        let mut r = sample();
        r.stacks[0].frames[0].function = "a\nb;c\r".to_string();
        r.stacks[0].frames[0].file = Some("x;\ny.py".to_string());
        let folded = r.folded();
        assert_eq!(folded.lines().count(), r.stacks.len(), "{folded}");
        assert!(folded.contains("a b:c  (x: y.py"), "{folded}");
    }

    #[test]
    fn growth_flame_keeps_only_what_growing_stacks_added() {
        assert_eq!(
            sample().folded_by(Flame::Growth),
            "main (fixture.c:40);leak_here (fixture.c:12);malloc 2048000\n"
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(4_096_000), "3.9 MiB");
    }
}
