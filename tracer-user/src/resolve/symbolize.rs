//! Native symbolization with blazesym, from a snapshot of the target's mappings and file
//! descriptors held open on its binaries, so that stacks still resolve after the target exits
//! and for binaries that only exist inside a container's root.

use std::{
    collections::HashMap,
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use blazesym::symbolize::{
    source::{Elf, Source},
    Input, Symbolized, Symbolizer,
};

use crate::{
    resolve::frame::Frame,
    target::procmaps::{Mapping, ProcMaps},
};

struct Process {
    root: PathBuf,
    maps: ProcMaps,
}

pub struct Resolver {
    symbolizer: Symbolizer,
    processes: HashMap<u32, Process>,
    /// Open files by (target path, inode), kept for the tracer's lifetime.
    files: HashMap<(String, u64), Option<File>>,
    cache: HashMap<(u32, u64), Frame>,
    /// Frames by (file path, inode, file offset of the looked-up address): what one
    /// process resolved serves every other process running the same binary (workers), whose
    /// addresses differ by their load bias.
    by_file: HashMap<(String, u64, u64), Frame>,
    /// Addresses handed to the symbolizer so far.
    symbolized: u64,
    /// Functions known by their address in a process (pymalloc's, found in the interpreter's
    /// memory where the file has no symbol for them): (start, end, name), named before any
    /// symbol table is asked.
    known: HashMap<u32, Vec<(u64, u64, &'static str)>>,
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

impl Resolver {
    pub fn new() -> Self {
        Self {
            symbolizer: Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(false)
                .enable_demangling(true)
                .build(),
            processes: HashMap::new(),
            files: HashMap::new(),
            cache: HashMap::new(),
            by_file: HashMap::new(),
            symbolized: 0,
            known: HashMap::new(),
        }
    }

    /// Reads the process's mappings again and opens any new executable file. Keeps the last
    /// snapshot if the process is gone.
    pub fn refresh(&mut self, pid: u32) -> std::io::Result<()> {
        let maps = ProcMaps::read(pid)?;
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        for m in maps.iter().filter(|m| m.executable && m.is_file()) {
            let path = m.path.clone().expect("is_file has a path");
            self.files
                .entry((path, m.inode))
                .or_insert_with(|| File::open(crate::target::procmaps::openable_path(pid, m)).ok());
        }
        self.processes.insert(pid, Process { root, maps });
        Ok(())
    }

    /// Names `[start, end)` in process `pid` `name` from now on (addresses resolved before
    /// keep their frames).
    pub fn add_known(&mut self, pid: u32, start: u64, end: u64, name: &'static str) {
        let known = self.known.entry(pid).or_default();
        if !known.iter().any(|k| k.0 == start) {
            known.push((start, end, name));
            self.cache
                .retain(|(p, a), _| *p != pid || *a < start || *a > end);
        }
    }

    pub fn maps(&self, pid: u32) -> Option<&ProcMaps> {
        self.processes.get(&pid).map(|p| &p.maps)
    }

    /// The frame at `addr` in process `pid`. `is_return` marks a return address, which points
    /// after the call instruction: the call's own line is one byte earlier.
    pub fn frame(&mut self, pid: u32, addr: u64, is_return: bool) -> Frame {
        if let Some(f) = self.cache.get(&(pid, addr)) {
            return f.clone();
        }
        let lookup = if is_return {
            addr.saturating_sub(1)
        } else {
            addr
        };
        let file_key = self
            .processes
            .get(&pid)
            .and_then(|p| p.maps.find(lookup))
            .filter(|m| m.is_file())
            .and_then(|m| Some((m.path.clone()?, m.inode, m.file_offset(lookup))));
        if let Some(f) = file_key.as_ref().and_then(|k| self.by_file.get(k)) {
            let f = f.clone();
            self.cache.insert((pid, addr), f.clone());
            return f;
        }
        let frame = self.resolve(pid, addr, is_return);
        self.symbolized += 1;
        if let Some(k) = file_key {
            self.by_file.insert(k, frame.clone());
        }
        self.cache.insert((pid, addr), frame.clone());
        frame
    }

    /// Addresses symbolized so far (each once per binary).
    pub fn symbolized(&self) -> u64 {
        self.symbolized
    }

    fn resolve(&self, pid: u32, addr: u64, is_return: bool) -> Frame {
        let lookup = if is_return {
            addr.saturating_sub(1)
        } else {
            addr
        };
        let Some(process) = self.processes.get(&pid) else {
            return unknown(addr, None);
        };
        let Some(mapping) = process.maps.find(lookup) else {
            return unknown(addr, None);
        };
        let module = module_name(mapping);
        if let Some(&(_, _, name)) = self
            .known
            .get(&pid)
            .and_then(|k| k.iter().find(|k| lookup >= k.0 && lookup < k.1))
        {
            return Frame::native(name, module);
        }
        let Some(path) = self.elf_path(process, mapping) else {
            return unknown(addr, Some((mapping, module)));
        };
        let offset = mapping.file_offset(lookup);
        let src = Source::Elf(Elf::new(path));
        match self
            .symbolizer
            .symbolize_single(&src, Input::FileOffset(offset))
        {
            Ok(Symbolized::Sym(sym)) => {
                let (file, line) = match &sym.code_info {
                    Some(ci) => {
                        let file = match &ci.dir {
                            Some(dir) => dir.join(&*ci.file).to_string_lossy().into_owned(),
                            None => ci.file.to_string_lossy().into_owned(),
                        };
                        (Some(file), ci.line)
                    }
                    None => (None, None),
                };
                Frame {
                    function: sym.name.into_owned(),
                    file,
                    line,
                    module,
                    kind: crate::resolve::frame::FrameKind::Native,
                }
            }
            _ => unknown(addr, Some((mapping, module))),
        }
    }

    fn elf_path(&self, process: &Process, mapping: &Mapping) -> Option<PathBuf> {
        let path = mapping.path.as_ref()?;
        match self.files.get(&(path.clone(), mapping.inode)) {
            Some(Some(file)) => Some(PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))),
            Some(None) | None if mapping.is_file() => {
                let p = process.root.join(path.trim_start_matches('/'));
                p.exists().then_some(p)
            }
            _ => None,
        }
    }
}

fn module_name(m: &Mapping) -> Option<String> {
    let path = m.path.as_deref()?;
    Some(
        Path::new(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.to_string()),
    )
}

fn unknown(addr: u64, at: Option<(&Mapping, Option<String>)>) -> Frame {
    match at {
        Some((m, Some(module))) => {
            Frame::native(format!("{module}+{:#x}", m.file_offset(addr)), Some(module))
        }
        _ => Frame::native(format!("[unknown {addr:#x}]"), None),
    }
}
