//! The output formats and the one `match` that writes a report in each of them.

use std::io::Write;

use anyhow::Result;

use crate::output::report::{Flame, Report};

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Svg,
    Folded,
    Json,
    /// gzipped protobuf (`perftools.profiles.Profile`): go tool pprof, Pyroscope, Grafana.
    Pprof,
}

impl Format {
    /// The file extension for this format.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Svg => "svg",
            Format::Folded => "folded",
            Format::Json => "json",
            Format::Pprof => "pb.gz",
        }
    }

    /// The format implied by a file name, if its extension names one.
    pub fn from_path(path: &std::path::Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "svg" => Some(Format::Svg),
            "folded" | "txt" | "collapsed" => Some(Format::Folded),
            "json" => Some(Format::Json),
            "pprof" | "pb" | "gz" => Some(Format::Pprof),
            _ => None,
        }
    }
}

impl Report {
    pub fn write(&self, format: Format, w: impl Write) -> Result<()> {
        self.write_as(format, Flame::Live, w)
    }

    /// Writes the report; `flame` chooses what SVG and folded output measure.
    pub fn write_as(&self, format: Format, flame: Flame, w: impl Write) -> Result<()> {
        match format {
            Format::Json => self.write_json(w),
            Format::Svg => self.write_svg_by(flame, w),
            Format::Pprof => crate::output::pprof::write_pprof(self, w),
            Format::Folded => {
                let mut w = w;
                w.write_all(self.folded_by(flame).as_bytes())?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::report::{tests::sample, MAX_FOLDED_TOTAL};

    #[test]
    fn formats_from_extension() {
        use std::path::Path;
        assert_eq!(
            Format::from_path(Path::new("a/leaks.svg")),
            Some(Format::Svg)
        );
        assert_eq!(Format::from_path(Path::new("x.JSON")), Some(Format::Json));
        assert_eq!(
            Format::from_path(Path::new("x.folded")),
            Some(Format::Folded)
        );
        assert_eq!(Format::from_path(Path::new("x")), None);
    }

    /// From the fuzz target `report_json`: numbers no tracer writes, every format still
    /// renders (inferno adds the folded values up in `usize`).
    #[test]
    fn huge_numbers_render() {
        let mut r = sample();
        let twin = r.stacks[0].clone();
        r.stacks.push(twin);
        for s in &mut r.stacks {
            s.live_bytes = u64::MAX;
            s.added_bytes = u64::MAX;
            s.trend = Some("growing".to_string());
        }
        r.totals.live_bytes = u64::MAX;
        r.duration_s = f64::MAX;
        for flame in [Flame::Live, Flame::Growth] {
            let folded = r.folded_by(flame);
            let sum: u64 = folded
                .lines()
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .sum();
            assert!(sum <= MAX_FOLDED_TOTAL + r.stacks.len() as u64, "{sum}");
            for format in [Format::Json, Format::Folded, Format::Svg, Format::Pprof] {
                r.write_as(format, flame, std::io::sink()).unwrap();
            }
        }
    }
}
