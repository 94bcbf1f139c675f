//! The pprof format (`perftools.profiles.Profile`, gzipped protobuf), read by `go tool pprof`,
//! Pyroscope and Grafana. The messages are declared with prost's derive; prost does the
//! encoding.

use std::{collections::HashMap, io::Write};

use anyhow::{Context, Result};

use crate::{
    output::report::{Report, SCHEMA},
    resolve::frame::Frame,
};

#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// Interned strings: index 0 is "" as the format requires.
#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Strings::default();
        s.get("");
        s
    }

    fn get(&mut self, v: &str) -> i64 {
        if let Some(&i) = self.index.get(v) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(v.to_string());
        self.index.insert(v.to_string(), i);
        i
    }
}

/// Builds the profile: sample types inuse_space/bytes, inuse_objects/count,
/// alloc_space/bytes, alloc_objects/count; one location per distinct frame.
pub fn profile(report: &Report) -> Profile {
    let mut strings = Strings::new();
    let sample_type = [
        ("inuse_space", "bytes"),
        ("inuse_objects", "count"),
        ("alloc_space", "bytes"),
        ("alloc_objects", "count"),
    ]
    .iter()
    .map(|(t, u)| ValueType {
        r#type: strings.get(t),
        unit: strings.get(u),
    })
    .collect();
    let mut functions: Vec<Function> = Vec::new();
    let mut function_ids: HashMap<(String, String), u64> = HashMap::new();
    let mut locations: Vec<Location> = Vec::new();
    let mut location_ids: HashMap<Frame, u64> = HashMap::new();
    let mut samples = Vec::new();
    for stack in &report.stacks {
        let mut ids = Vec::with_capacity(stack.frames.len());
        for frame in stack.frames.iter().rev() {
            let id = match location_ids.get(frame) {
                Some(&id) => id,
                None => {
                    // Native frames without a source file are filed under their module.
                    let file = frame
                        .file
                        .clone()
                        .or_else(|| frame.module.clone())
                        .unwrap_or_default();
                    let key = (frame.function.clone(), file.clone());
                    let function_id = match function_ids.get(&key) {
                        Some(&id) => id,
                        None => {
                            let id = functions.len() as u64 + 1;
                            functions.push(Function {
                                id,
                                name: strings.get(&frame.function),
                                system_name: strings.get(&frame.function),
                                filename: strings.get(&file),
                            });
                            function_ids.insert(key, id);
                            id
                        }
                    };
                    let id = locations.len() as u64 + 1;
                    locations.push(Location {
                        id,
                        line: vec![Line {
                            function_id,
                            line: frame.line.map_or(0, i64::from),
                        }],
                    });
                    location_ids.insert(frame.clone(), id);
                    id
                }
            };
            ids.push(id);
        }
        samples.push(Sample {
            location_id: ids,
            value: vec![
                stack.live_bytes as i64,
                stack.live_allocs as i64,
                stack.alloc_bytes as i64,
                stack.alloc_count as i64,
            ],
        });
    }
    let comment = vec![strings.get(&format!("{SCHEMA} report from leaktrace"))];
    let default_sample_type = strings.get("inuse_space");
    Profile {
        sample_type,
        sample: samples,
        location: locations,
        function: functions,
        string_table: strings.table,
        duration_nanos: (report.duration_s * 1e9) as i64,
        comment,
        default_sample_type,
    }
}

/// Writes the report as a gzipped pprof profile.
pub fn write_pprof(report: &Report, w: impl Write) -> Result<()> {
    use prost::Message;
    let bytes = profile(report).encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::default());
    gz.write_all(&bytes)
        .context("cannot write the pprof profile")?;
    gz.finish().context("cannot write the pprof profile")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gunzips and decodes a profile with `protoc`, an independent reader.
    fn protoc_decode(gz: &[u8]) -> String {
        use std::io::Read;
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(gz)
            .read_to_end(&mut raw)
            .unwrap();
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data");
        let mut child = std::process::Command::new("protoc")
            .arg(format!("--proto_path={}", data.display()))
            .args(["--decode=perftools.profiles.Profile", "profile.proto"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect(
                "protoc (Debian's protobuf-compiler, installed by ./dev setup) decodes profiles",
            );
        child.stdin.take().unwrap().write_all(&raw).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "protoc failed");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn protoc_reads_back_what_the_report_says() {
        let report = crate::output::report::tests::sample();
        let mut gz = Vec::new();
        write_pprof(&report, &mut gz).unwrap();
        let text = protoc_decode(&gz);
        let strings: Vec<String> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("string_table: "))
            .map(|s| s.trim_matches('"').to_string())
            .collect();
        assert_eq!(strings[0], "");
        for name in [
            "inuse_space",
            "inuse_objects",
            "alloc_space",
            "alloc_objects",
            "bytes",
            "count",
            "leak_here",
            "fixture.c",
        ] {
            assert!(
                strings.iter().any(|s| s == name),
                "{name} missing from {strings:?}"
            );
        }
        // Sample values: live bytes, live allocs, allocated bytes, allocations, per stack.
        let values: Vec<i64> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("value: "))
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(
            values,
            vec![4_096_000, 1000, 8_192_000, 2000, 3700, 1, 3700, 1]
        );
        let live: i64 = values.chunks(4).map(|c| c[0]).sum();
        assert_eq!(live as u64, report.totals.live_bytes);
        assert!(text.contains("duration_nanos: 3500000000"), "{text}");
        let golden =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/pprof-sample.txt");
        if std::env::var_os("LEAKTRACE_BLESS").is_some() {
            std::fs::write(&golden, &text).unwrap();
        }
        assert_eq!(
            text,
            std::fs::read_to_string(&golden).unwrap(),
            "LEAKTRACE_BLESS=1 rewrites the golden file"
        );
    }
}
