//! What a person sees while tracing: plain periodic tables, or `leaktrace top`'s live view.

use std::io::{IsTerminal, Write};

use anyhow::Result;
use ratatui::{
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Cell, Paragraph, Row as TableRow, Sparkline, Table},
    DefaultTerminal,
};

use crate::{
    analysis::{
        aggregate::FEW_SAMPLES,
        interval::{Row, Snapshot},
    },
    output::report::human_bytes,
};

/// How a table shows an estimate: `~` before the live bytes and count, and `(1 sample)` after
/// the stack, when fewer than [`FEW_SAMPLES`] recorded allocations stand behind
/// them; nothing otherwise (exact figures, or enough samples).
pub struct Marks {
    pub prefix: &'static str,
    pub suffix: String,
}

pub fn marks(samples: Option<u64>) -> Marks {
    match samples {
        Some(n) if n < FEW_SAMPLES => Marks {
            prefix: "~",
            suffix: format!(" ({n} sample{})", if n == 1 { "" } else { "s" }),
        },
        _ => Marks {
            prefix: "",
            suffix: String::new(),
        },
    }
}

/// One table line: live bytes, count, growth, trend, stack (the form tables, `top` without a
/// terminal and the summary share).
pub fn table_line(
    live_bytes: u64,
    live_allocs: u64,
    growth: Option<f64>,
    trend: Option<&str>,
    samples: Option<u64>,
    label: &str,
) -> String {
    let m = marks(samples);
    format!(
        "  {:>10} {:>8} {:>12} {:>9}  {label}{}",
        format!("{}{}", m.prefix, human_bytes(live_bytes)),
        format!("{}{live_allocs}", m.prefix),
        human_rate(growth),
        trend.unwrap_or("-"),
        m.suffix
    )
}

/// The one line said under a growth ranking that the pymalloc arena stack leads (`label` and
/// `growth` of the first row): what it means and which command shows more.
pub fn arena_hint(label: &str, growth: Option<f64>, pid: u32) -> Option<String> {
    (label.contains("[pymalloc arenas") && growth.is_some_and(|g| g > 0.0)).then(|| {
        format!(
            "  ^ pymalloc's arenas grow fastest: objects of 512 B or less are piling up; `leaktrace heap {pid} --duration 30` names who holds them, `leaktrace attach {pid} --pymalloc --duration 30` the code that makes them"
        )
    })
}

/// How stacks are ranked in tables and views (`--sort`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// Fastest-growing first (what keeps growing is a leak).
    Growth,
    /// Most live bytes first.
    Live,
}

impl SortBy {
    fn toggled(self) -> SortBy {
        match self {
            SortBy::Growth => SortBy::Live,
            SortBy::Live => SortBy::Growth,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SortBy::Growth => "growth",
            SortBy::Live => "live bytes",
        }
    }
}

/// Orders rows: by growth (stacks without a measured growth last) or by live bytes; ties by
/// live bytes, then label, so the order is stable.
pub fn sort_rows(rows: &mut [Row], by: SortBy) {
    rows.sort_by(|a, b| {
        let by_live = b
            .live_bytes
            .cmp(&a.live_bytes)
            .then_with(|| a.label.cmp(&b.label));
        match by {
            SortBy::Live => by_live,
            SortBy::Growth => {
                let g = |r: &Row| r.growth_bytes_per_s.unwrap_or(f64::NEG_INFINITY);
                g(b).total_cmp(&g(a)).then(by_live)
            }
        }
    });
}

/// `+1.2 MiB/s`, `-300 B/s`, or `-` when unmeasured.
pub fn human_rate(rate: Option<f64>) -> String {
    match rate {
        None => "-".to_string(),
        Some(r) => {
            let sign = if r < 0.0 { "-" } else { "+" };
            format!("{sign}{}/s", human_bytes(r.abs().round() as u64))
        }
    }
}

/// What the person asked for with a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Quit,
}

pub trait View {
    /// Shows a new interval.
    fn show(&mut self, snapshot: Snapshot) -> Result<()>;
    /// Handles pending key presses without blocking.
    fn poll_keys(&mut self) -> Result<Option<Key>>;
    /// Leaves the screen as it was found.
    fn close(&mut self) {}
}

/// Periodic plain tables on stdout.
pub struct TextView {
    pub top: usize,
    pub sort: SortBy,
    /// The target, for the commands the arena hint names.
    pub pid: u32,
}

impl View for TextView {
    fn show(&mut self, mut s: Snapshot) -> Result<()> {
        sort_rows(&mut s.rows, self.sort);
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "[{:>6.1}s] live {} in {} allocations | seen {} allocs, {} frees | dropped {}",
            s.elapsed_s,
            human_bytes(s.live_bytes),
            s.live_allocs,
            s.allocs_seen,
            s.frees_seen,
            s.dropped
        )?;
        for r in s.rows.iter().take(self.top) {
            writeln!(
                out,
                "{}",
                table_line(
                    r.live_bytes,
                    r.live_allocs,
                    r.growth_bytes_per_s,
                    r.trend,
                    r.samples,
                    &r.label
                )
            )?;
        }
        if let Some(hint) = s
            .rows
            .first()
            .filter(|_| self.sort == SortBy::Growth)
            .and_then(|r| arena_hint(&r.label, r.growth_bytes_per_s, self.pid))
        {
            writeln!(out, "{hint}")?;
        }
        out.flush()?;
        Ok(())
    }

    fn poll_keys(&mut self) -> Result<Option<Key>> {
        Ok(None)
    }
}

/// `leaktrace top`: a full-screen view refreshed every interval.
pub struct TuiView {
    terminal: Option<DefaultTerminal>,
    pid: u32,
    top: usize,
    sort: SortBy,
    frozen: bool,
    /// What is on screen (kept while frozen).
    shown: Snapshot,
    /// Total live bytes at every interval, for the sparkline.
    history: Vec<u64>,
}

impl TuiView {
    pub fn new(pid: u32, top: usize, sort: SortBy) -> Self {
        Self {
            terminal: Some(ratatui::init()),
            pid,
            top,
            sort,
            frozen: false,
            shown: Snapshot::default(),
            history: Vec::new(),
        }
    }

    fn draw(&mut self) -> Result<()> {
        let Some(terminal) = self.terminal.as_mut() else {
            return Ok(());
        };
        let mut s = self.shown.clone();
        sort_rows(&mut s.rows, self.sort);
        let history = self.history.clone();
        let (pid, top, sort, frozen) = (self.pid, self.top, self.sort, self.frozen);
        terminal.draw(|f| {
            let [head, spark, table, help] = Layout::vertical([
                Constraint::Length(3),
                Constraint::Length(5),
                Constraint::Min(3),
                Constraint::Length(1),
            ])
            .areas(f.area());
            let title = format!(
                " leaktrace top: pid {pid}{} ",
                if frozen { " (frozen)" } else { "" }
            );
            f.render_widget(
                Paragraph::new(format!(
                    "{:.0}s traced | live {} in {} allocations | seen {} allocs, {} frees | dropped {}",
                    s.elapsed_s,
                    human_bytes(s.live_bytes),
                    s.live_allocs,
                    s.allocs_seen,
                    s.frees_seen,
                    s.dropped
                ))
                .block(Block::default().borders(Borders::ALL).title(title)),
                head,
            );
            f.render_widget(
                Sparkline::default()
                    .block(Block::default().borders(Borders::ALL).title(" total live bytes "))
                    .data(&history),
                spark,
            );
            let rows: Vec<TableRow> = s
                .rows
                .iter()
                .take(top)
                .map(|r| {
                    let m = marks(r.samples);
                    TableRow::new(vec![
                        Cell::from(format!("{}{}", m.prefix, human_bytes(r.live_bytes))),
                        Cell::from(format!("{}{}", m.prefix, r.live_allocs)),
                        Cell::from(human_rate(r.growth_bytes_per_s)),
                        Cell::from(r.trend.unwrap_or("-")),
                        Cell::from(format!("{}{}", r.label, m.suffix)),
                    ])
                })
                .collect();
            f.render_widget(
                Table::new(
                    rows,
                    [
                        Constraint::Length(10),
                        Constraint::Length(8),
                        Constraint::Length(12),
                        Constraint::Length(10),
                        Constraint::Min(20),
                    ],
                )
                .header(
                    TableRow::new(vec!["LIVE", "ALLOCS", "GROWTH", "TREND", "STACK (innermost first)"])
                        .style(Style::default().add_modifier(Modifier::BOLD)),
                )
                .block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(format!(" stacks by {} ", sort.name())),
                ),
                table,
            );
            let hint = s
                .rows
                .first()
                .filter(|_| sort == SortBy::Growth)
                .and_then(|r| arena_hint(&r.label, r.growth_bytes_per_s, pid));
            f.render_widget(
                Line::from(hint.unwrap_or_else(|| {
                    " q quit   s sort by growth/live   f freeze/unfreeze".to_string()
                })),
                help,
            );
        })?;
        Ok(())
    }
}

impl View for TuiView {
    fn show(&mut self, snapshot: Snapshot) -> Result<()> {
        if self.frozen {
            return Ok(());
        }
        self.history.push(snapshot.live_bytes);
        if self.history.len() > 512 {
            self.history.remove(0);
        }
        self.shown = snapshot;
        self.draw()
    }

    fn poll_keys(&mut self) -> Result<Option<Key>> {
        while event::poll(std::time::Duration::ZERO)? {
            let Event::Key(k) = event::read()? else {
                continue;
            };
            if k.kind != KeyEventKind::Press {
                continue;
            }
            match k.code {
                KeyCode::Char('q') | KeyCode::Esc => return Ok(Some(Key::Quit)),
                KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                    return Ok(Some(Key::Quit));
                }
                KeyCode::Char('s') => {
                    self.sort = self.sort.toggled();
                    self.draw()?;
                }
                KeyCode::Char('f') | KeyCode::Char(' ') => {
                    self.frozen = !self.frozen;
                    self.draw()?;
                }
                _ => {}
            }
        }
        Ok(None)
    }

    fn close(&mut self) {
        if self.terminal.take().is_some() {
            ratatui::restore();
        }
    }
}

impl Drop for TuiView {
    fn drop(&mut self) {
        self.close();
    }
}

/// The view for `top`: full screen on a terminal, plain tables otherwise.
pub fn for_top(pid: u32, top: usize, sort: SortBy) -> Box<dyn View> {
    if std::io::stdout().is_terminal() {
        Box::new(TuiView::new(pid, top, sort))
    } else {
        Box::new(TextView { top, sort, pid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, live: u64, growth: Option<f64>) -> Row {
        Row {
            label: label.into(),
            live_bytes: live,
            live_allocs: 1,
            growth_bytes_per_s: growth,
            trend: None,
            samples: None,
        }
    }

    #[test]
    fn sorts_by_growth_or_live() {
        let mut rows = vec![
            row("cache", 900, Some(0.0)),
            row("leak", 100, Some(50.0)),
            row("unknown", 500, None),
            row("shrinking", 300, Some(-5.0)),
        ];
        sort_rows(&mut rows, SortBy::Growth);
        let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["leak", "cache", "shrinking", "unknown"]);
        sort_rows(&mut rows, SortBy::Live);
        let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["cache", "unknown", "shrinking", "leak"]);
    }

    #[test]
    fn estimates_from_few_samples_are_marked() {
        // One sampled 16-byte block at --sample-bytes 512K stands for 524296 bytes in 32769
        // allocations: never shown bare.
        let one = table_line(
            524_296,
            32_769,
            None,
            Some("uncertain"),
            Some(1),
            "leak [malloc]",
        );
        assert!(
            one.contains("~512.0 KiB") && one.contains("~32769"),
            "{one}"
        );
        assert!(one.ends_with("leak [malloc] (1 sample)"), "{one}");
        let few = table_line(10, 2, None, None, Some(4), "x");
        assert!(few.ends_with("x (4 samples)"), "{few}");
        for samples in [None, Some(5), Some(1000)] {
            let line = table_line(524_296, 32_769, None, None, samples, "leak");
            assert!(!line.contains('~') && line.ends_with("leak"), "{line}");
        }
    }

    #[test]
    fn arena_hint_only_when_arenas_lead_and_grow() {
        let arenas =
            "[pymalloc arenas: objects of 512 B or less, attributed one by one with --pymalloc]";
        let h = arena_hint(arenas, Some(4096.0), 42).unwrap();
        assert!(
            h.contains("leaktrace heap 42") && h.contains("--pymalloc"),
            "{h}"
        );
        assert_eq!(arena_hint(arenas, Some(0.0), 42), None);
        assert_eq!(arena_hint(arenas, None, 42), None);
        assert_eq!(arena_hint("leaky (app.py:3) [malloc]", Some(1e6), 42), None);
    }

    #[test]
    fn rates_for_people() {
        assert_eq!(human_rate(None), "-");
        assert_eq!(human_rate(Some(2048.0)), "+2.0 KiB/s");
        assert_eq!(human_rate(Some(-300.0)), "-300 B/s");
    }
}
