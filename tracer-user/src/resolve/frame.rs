//! A frame of a resolved stack, as every later stage and the `leaktrace/v1` report see it.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    Native,
    Python,
    /// `--per-process`: the outermost frame names the process (`pid 1234`).
    Process,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub module: Option<String>,
    pub kind: FrameKind,
}

impl Frame {
    pub fn native(function: impl Into<String>, module: Option<String>) -> Self {
        Frame {
            function: function.into(),
            file: None,
            line: None,
            module,
            kind: FrameKind::Native,
        }
    }

    /// `function (file:line)`, the form inferno's palettes and py-spy use.
    /// Folded output separates frames with `;` and stacks with line breaks, and any name
    /// can hold them (a Python file name, a report read back): they become `:` and spaces.
    pub fn label(&self) -> String {
        let label = match (&self.file, self.line) {
            (Some(file), Some(line)) => format!("{} ({file}:{line})", self.function),
            (Some(file), None) => format!("{} ({file})", self.function),
            _ => self.function.clone(),
        };
        label.replace(';', ":").replace(['\n', '\r'], " ")
    }
}
