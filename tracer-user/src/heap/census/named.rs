//! The names users search for, read during the census: asyncio tasks (coroutine, state, the
//! global that holds them), database connections, loggers (and `logging`'s registry of them),
//! threads, and `lru_cache` entries per cached function.
//!
//! The objects are picked out as the census counts them (by their type's name or a base's,
//! [`by_name`]); their C fields are read with the per-version offsets of [`ObjOffsets`], each
//! value checked before it is believed (a task's state must be one of the three, its coroutine
//! an object whose type is a coroutine, a cache a dict), and a value that fails is skipped and
//! counted like any other read.

use std::collections::{HashMap, HashSet};

use super::{Kind, Walker};
use crate::heap::layout::{DICT_KEYS, DICT_USED, DICT_VALUES};

/// What a named object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Named {
    /// `_asyncio.Task` or a subclass.
    Task,
    /// `functools._lru_cache_wrapper`.
    Lru,
    /// A psycopg/asyncpg connection, an SQLAlchemy session.
    Connection,
    /// `sqlite3.Connection`, whose handle says whether it is open.
    Sqlite,
    /// psycopg 3's `Connection`/`AsyncConnection`, whose `_closed` attribute says whether
    /// `close()` was called.
    Psycopg,
    /// `logging.Logger` or a subclass (`RootLogger`).
    Logger,
    /// `threading.Thread` or a subclass (`_MainThread`, `Timer`).
    Thread,
}

/// The class a type name stands for, if it is one of the named ones.
pub fn by_name(name: &str) -> Option<Named> {
    let (module, class) = name.rsplit_once('.').unwrap_or(("", name));
    let top = module.split('.').next().unwrap_or("");
    match name {
        "_asyncio.Task" => Some(Named::Task),
        "functools._lru_cache_wrapper" => Some(Named::Lru),
        "sqlite3.Connection" => Some(Named::Sqlite),
        "logging.Logger" => Some(Named::Logger),
        "threading.Thread" => Some(Named::Thread),
        _ if top == "psycopg" && class.ends_with("Connection") => Some(Named::Psycopg),
        _ if (top.starts_with("psycopg") || top == "asyncpg")
            && class.to_ascii_lowercase().ends_with("connection") =>
        {
            Some(Named::Connection)
        }
        _ if top == "sqlalchemy" && class.ends_with("Session") => Some(Named::Connection),
        _ => None,
    }
}

/// Offsets of the C fields read, measured per version by `tools/pyoffsets/objects.py` (the
/// interpreter finds the one word of its own objects holding a value known from Python).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjOffsets {
    /// `TaskObj.task_fut_state` (an `int`: 0 pending, 1 cancelled, 2 finished).
    pub task_state: u64,
    /// `TaskObj.task_coro`.
    pub task_coro: u64,
    /// `PyCoroObject.cr_qualname`.
    pub coro_qualname: u64,
    /// `lru_cache_object.cache` (a dict).
    pub lru_cache: u64,
}

/// The offsets of CPython 3.`minor`.
pub fn obj_offsets(minor: u32) -> Option<ObjOffsets> {
    let (task_state, task_coro, coro_qualname) = match minor {
        8 => (72, 112, 56),
        9 => (80, 152, 56),
        10 => (88, 160, 48),
        11 => (88, 136, 40),
        12 => (88, 136, 32),
        13 => (96, 120, 32),
        14 => (104, 128, 32),
        15 => (104, 128, 32),
        _ => return None,
    };
    Some(ObjOffsets {
        task_state,
        task_coro,
        coro_qualname,
        // The same on 3.8-3.15.
        lru_cache: 72,
    })
}

/// Tasks of one coroutine, state and holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskGroup {
    pub coroutine: String,
    /// "pending" or "done".
    pub state: &'static str,
    pub count: u64,
    /// The owner path of the container that holds them (`module:GLOBAL`), if one was found.
    pub holder: Option<String>,
}

/// Objects of one type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeCount {
    pub type_name: String,
    pub count: u64,
    /// Of them, the connections still open, where the census can tell (`sqlite3`).
    pub open: Option<u64>,
}

/// One cached function's entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LruCache {
    /// `module.qualname` of the wrapped function.
    pub function: String,
    pub entries: u64,
    /// Wrappers of that name (usually 1).
    pub wrappers: u64,
}

/// The names users search for, in one census.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub tasks: Vec<TaskGroup>,
    pub connections: Vec<TypeCount>,
    pub threads: Vec<TypeCount>,
    pub loggers: u64,
    /// `logging:Logger.manager.loggerDict` and its length, if `logging` is loaded.
    pub logger_dict: Option<(String, u64)>,
    pub lru_caches: Vec<LruCache>,
}

/// What the census collects for [`Names`] as it counts objects: tasks, lru_cache wrappers
/// and sqlite3 connections, by address (connections, loggers and threads are counted from
/// the per-type counts at the end).
#[derive(Debug, Default)]
pub struct Found {
    objects: Vec<(Named, u64)>,
}

/// `pysqlite_Connection.db` (the `sqlite3 *` handle, NULL once closed): the first field after
/// the object's head on 3.8-3.15.
const SQLITE_DB: u64 = 16;

/// Objects of one kind remembered by address at most (the rest are counted, not read).
const MAX_FOUND: usize = 1_000_000;
/// Bases followed from a type to find a named class.
pub(super) const MAX_BASES: usize = 32;
/// Containers (and instances' attributes) followed from a global to find who holds a task.
const HOLDER_DEPTH: u32 = 4;
/// Objects read while looking for the holders of tasks.
const HOLDER_READS: u64 = 200_000;
impl Found {
    pub(super) fn note(&mut self, n: Named, addr: u64) {
        if n != Named::Connection
            && n != Named::Logger
            && n != Named::Thread
            && self.objects.len() < MAX_FOUND
        {
            self.objects.push((n, addr));
        }
    }
}

fn sorted(mut v: Vec<TypeCount>) -> Vec<TypeCount> {
    v.sort_by(|a, b| b.count.cmp(&a.count).then(a.type_name.cmp(&b.type_name)));
    v
}

impl Walker<'_> {
    /// The named class of a type called `name` whose base is `base`: its own name, else its
    /// base's (read through the type cache, so a base is read, and named, once; at most
    /// [`MAX_BASES`] bases deep, which also ends a cycle of bases in torn memory).
    pub(super) fn named_of(&mut self, name: &str, base: u64) -> Option<Named> {
        if let Some(n) = by_name(name) {
            return Some(n);
        }
        if base == 0 || self.base_depth as usize >= MAX_BASES {
            return None;
        }
        self.base_depth += 1;
        let n = self.type_info(base).and_then(|t| t.named);
        self.base_depth -= 1;
        n
    }

    /// Reads the tasks, caches and `logging`'s registry found so far; `roots` are the census's
    /// globals and class attributes (path, object).
    pub(super) fn read_names(&mut self, roots: &[(String, u64)]) -> Names {
        let mut names = Names::default();
        let Some(off) = obj_offsets(self.hl.minor) else {
            return names;
        };
        let found = std::mem::take(&mut self.found.objects);
        let tasks: Vec<u64> = found
            .iter()
            .filter(|(n, _)| *n == Named::Task)
            .map(|&(_, a)| a)
            .collect();
        let holders = if tasks.is_empty() {
            HashMap::new()
        } else {
            self.holders(roots, &tasks.iter().copied().collect())
        };
        let mut groups: HashMap<(String, &'static str, Option<String>), u64> = HashMap::new();
        for &t in &tasks {
            if let Some((coro, state)) = self.task(t, &off) {
                *groups
                    .entry((coro, state, holders.get(&t).cloned()))
                    .or_default() += 1;
            } else {
                self.skip();
            }
        }
        names.tasks = groups
            .into_iter()
            .map(|((coroutine, state, holder), count)| TaskGroup {
                coroutine,
                state,
                count,
                holder,
            })
            .collect();
        names.tasks.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(a.coroutine.cmp(&b.coroutine))
                .then(a.state.cmp(b.state))
                .then(a.holder.cmp(&b.holder))
        });
        let mut lru: HashMap<String, (u64, u64)> = HashMap::new();
        for &(_, w) in found.iter().filter(|(n, _)| *n == Named::Lru) {
            match self.lru(w, &off) {
                Some((name, entries)) => {
                    let e = lru.entry(name).or_default();
                    e.0 += entries;
                    e.1 += 1;
                }
                None => self.skip(),
            }
        }
        names.lru_caches = lru
            .into_iter()
            .map(|(function, (entries, wrappers))| LruCache {
                function,
                entries,
                wrappers,
            })
            .collect();
        names
            .lru_caches
            .sort_by(|a, b| b.entries.cmp(&a.entries).then(a.function.cmp(&b.function)));
        // Connections are read with the others at the end (3.8-3.10's are not on the GC's
        // lists: the owners' walks find them).
        self.found.objects.extend(
            found
                .iter()
                .filter(|(n, _)| matches!(n, Named::Sqlite | Named::Psycopg)),
        );
        const REGISTRY: &str = "logging:Logger.manager";
        if let Some(&(_, manager)) = roots.iter().find(|(p, _)| p == REGISTRY) {
            match self
                .attr(manager, "loggerDict")
                .and_then(|d| self.dict_len(d))
            {
                Some(len) => names.logger_dict = Some((format!("{REGISTRY}.loggerDict"), len)),
                None => self.skip(),
            }
        }
        names
    }

    /// Connections, loggers and threads, from the per-type counts of the whole census.
    pub(super) fn finish_names(&mut self, mut names: Names) -> Names {
        let mut open_by_type: HashMap<String, u64> = HashMap::new();
        let found = std::mem::take(&mut self.found.objects);
        for &(n, c) in &found {
            let open = match n {
                Named::Sqlite => self.words::<1>(c + SQLITE_DB).map(|[db]| db != 0),
                // `_closed` is set by `close()`; a connection the server dropped is still
                // counted open (psycopg calls it `broken`).
                Named::Psycopg => self
                    .attr(c, "_closed")
                    .and_then(|b| self.bool_value(b))
                    .map(|closed| !closed),
                _ => continue,
            };
            match (self.type_of(c), open) {
                (Some(t), Some(open)) => {
                    *open_by_type.entry(t.name.clone()).or_default() += u64::from(open)
                }
                _ => self.skip(),
            }
        }
        let mut counts: HashMap<(Named, String), u64> = HashMap::new();
        for p in self.stats.values() {
            if let Some(n) = p.ti.named {
                *counts.entry((n, p.ti.name.clone())).or_default() += p.stat.count;
            }
        }
        let mut conns = Vec::new();
        let mut threads = Vec::new();
        for ((n, type_name), count) in counts {
            let open = matches!(n, Named::Sqlite | Named::Psycopg)
                .then(|| open_by_type.get(&type_name).copied().unwrap_or(0));
            let row = TypeCount {
                type_name,
                count,
                open,
            };
            match n {
                Named::Connection | Named::Sqlite | Named::Psycopg => conns.push(row),
                Named::Thread => threads.push(row),
                Named::Logger => names.loggers += count,
                Named::Task | Named::Lru => {}
            }
        }
        names.connections = sorted(conns);
        names.threads = sorted(threads);
        names
    }

    /// A task's coroutine qualname and state, if both make sense.
    fn task(&mut self, t: u64, off: &ObjOffsets) -> Option<(String, &'static str)> {
        let state = self.read(t + off.task_state, 4)?;
        let state = match i32::from_le_bytes(state.try_into().ok()?) {
            0 => "pending",
            1 | 2 => "done",
            _ => return None,
        };
        let coro = self.words::<1>(t + off.task_coro)?[0];
        if coro == 0 {
            // 3.12+ eager tasks that completed at once keep no coroutine.
            return Some(("(none)".to_string(), state));
        }
        let ti = self.type_of(coro)?;
        if ti.name != "coroutine" {
            return None;
        }
        let q = self.words::<1>(coro + off.coro_qualname)?[0];
        Some((self.str_value(q)?, state))
    }

    /// A wrapper's function name (`module.qualname`, from the attributes `functools.wraps`
    /// copied into the wrapper's own dict, else the type of what it wraps) and its cache's
    /// length.
    fn lru(&mut self, w: u64, off: &ObjOffsets) -> Option<(String, u64)> {
        let cache = self.words::<1>(w + off.lru_cache)?[0];
        let entries = self.dict_len(cache)?;
        let q = self.attr(w, "__qualname__").and_then(|q| self.str_value(q));
        let m = self.attr(w, "__module__").and_then(|m| self.str_value(m));
        let name = match (q, m) {
            (Some(q), Some(m)) => format!("{m}.{q}"),
            (Some(q), None) => q,
            // A cache around an object that has no `__qualname__` (3.11+: every
            // `sqlite3.Connection` keeps its statement cache as an lru_cache of itself).
            _ => match self.attr(w, "__wrapped__").and_then(|o| self.type_of(o)) {
                Some(t) => format!("(a {} object)", t.name),
                None => "?".to_string(),
            },
        };
        Some((name, entries))
    }

    /// The value of a `bool` object: `ob_digit[0]` (at 24 on 3.8-3.15: after the var-object
    /// head on 3.8-3.11, after `lv_tag` on 3.12+) is 1 for `True`, 0 for `False`.
    fn bool_value(&mut self, b: u64) -> Option<bool> {
        if self.type_of(b)?.name != "bool" {
            return None;
        }
        match u32::from_le_bytes(self.read(b + 24, 4)?.try_into().ok()?) {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    /// A dict's length, if `d` is a dict.
    fn dict_len(&mut self, d: u64) -> Option<u64> {
        let (o, ti) = self.object(d)?;
        (ti.kind == Kind::Dict && o.word(DICT_USED) < 1 << 40).then(|| o.word(DICT_USED))
    }

    /// The instance attribute `name` of `obj`, through the census's reader of instance
    /// attributes (a `__dict__`, split or inline values, per version).
    fn attr(&mut self, obj: u64, name: &str) -> Option<u64> {
        let (o, ti) = self.object(obj)?;
        let attrs = self.instance_attrs(&o, &ti);
        if let [dict] = attrs[..] {
            return self.dict_get_str(dict, name);
        }
        for kv in attrs.chunks_exact(2) {
            if self.str_value(kv[0]).as_deref() == Some(name) {
                return Some(kv[1]);
            }
        }
        None
    }

    /// Which global or class attribute holds each task: the first root whose containers (at
    /// most [`HOLDER_DEPTH`] deep) hold it; bounded by [`HOLDER_READS`] objects read.
    fn holders(&mut self, roots: &[(String, u64)], tasks: &HashSet<u64>) -> HashMap<u64, String> {
        let mut out = HashMap::new();
        let mut reads = 0u64;
        for (path, root) in roots {
            if out.len() == tasks.len() || reads >= HOLDER_READS {
                break;
            }
            let mut seen = HashSet::new();
            let mut stack = vec![(*root, 0u32)];
            while let Some((addr, depth)) = stack.pop() {
                if tasks.contains(&addr) {
                    out.entry(addr).or_insert_with(|| path.clone());
                    continue;
                }
                if depth >= HOLDER_DEPTH || !seen.insert(addr) || reads >= HOLDER_READS {
                    continue;
                }
                reads += 1;
                let Some((o, ti)) = self.object(addr) else {
                    continue;
                };
                let children: Vec<u64> = match ti.kind {
                    Kind::Dict => self
                        .dict_read(o.word(DICT_KEYS), o.word(DICT_VALUES), addr, true)
                        .map(|d| d.entries.into_iter().flat_map(|(k, v)| [k, v]).collect())
                        .unwrap_or_default(),
                    Kind::List | Kind::Tuple | Kind::Set => self.items(&o, &ti),
                    Kind::Other => self.instance_attrs(&o, &ti),
                    _ => Vec::new(),
                };
                stack.extend(children.into_iter().map(|c| (c, depth + 1)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::{
        census::{Bytes, Limits},
        layout::{heap_layout, TP_BASE},
    };

    const BASE: u64 = 0x10000;

    fn put(m: &mut [u8], at: u64, v: u64) {
        m[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// 3.12 memory from [`BASE`]: a GC list (head at 0) of one task (GC header at 0x40) of
    /// state `state` whose coroutine (at 0x200) has the type named `coro_type` and the
    /// qualname "poll_gateway" (a str at 0x300); types at 0x400 (task), 0x800 (coroutine),
    /// 0xa00 (str), their names at 0x600, 0x700, 0x780. The same bytes are the fuzz seed
    /// `one-task-3.12` (fuzz/make-seeds.sh).
    fn one_task(state: u32, coro_type: &str) -> Bytes {
        let mut m = vec![0u8; 0xc00];
        let a = |off: u64| BASE + off;
        put(&mut m, 0, a(0x40));
        put(&mut m, 8, a(0x40));
        put(&mut m, 0x40, a(0));
        put(&mut m, 0x48, a(0));
        // The task: refcnt, type, then fut_state at 88 and task_coro at 136.
        put(&mut m, 0x50, 1);
        put(&mut m, 0x58, a(0x400));
        m[0x50 + 88..0x50 + 92].copy_from_slice(&state.to_le_bytes());
        put(&mut m, 0x50 + 136, a(0x200));
        // The coroutine and its cr_qualname at 32.
        put(&mut m, 0x200, 1);
        put(&mut m, 0x208, a(0x800));
        put(&mut m, 0x200 + 32, a(0x300));
        // A compact ASCII str of 12 characters.
        put(&mut m, 0x300, 1);
        put(&mut m, 0x308, a(0xa00));
        put(&mut m, 0x310, 12);
        put(&mut m, 0x320, (1 << 5) | (1 << 6) | (1 << 2));
        m[0x328..0x334].copy_from_slice(b"poll_gateway");
        for (ty, name, at, size) in [
            (0x400, "_asyncio.Task", 0x600, 176),
            (0x800, coro_type, 0x700, 96),
            (0xa00, "str", 0x780, 40),
        ] {
            put(&mut m, ty + 24, a(at));
            put(&mut m, ty + 32, size);
            m[at as usize..at as usize + name.len()].copy_from_slice(name.as_bytes());
        }
        Bytes {
            base: BASE,
            data: m,
        }
    }

    fn census_of(src: &Bytes) -> super::super::Census {
        let hl = heap_layout(12, &crate::python::layout::v3_12::LAYOUT).unwrap();
        super::super::Walker::new(src, &hl, Limits::default()).census(&[BASE])
    }

    #[test]
    fn a_task_is_read_by_coroutine_and_state() {
        let c = census_of(&one_task(0, "coroutine"));
        assert_eq!(c.objects, 1);
        assert_eq!(c.skipped_reads, 0);
        assert_eq!(
            c.names.tasks,
            vec![TaskGroup {
                coroutine: "poll_gateway".into(),
                state: "pending",
                count: 1,
                holder: None,
            }]
        );
        let c = census_of(&one_task(2, "coroutine"));
        assert_eq!(c.names.tasks[0].state, "done");
    }

    #[test]
    fn a_task_whose_fields_make_no_sense_is_skipped_and_counted() {
        // A state outside the enum, then a "coroutine" that is something else.
        for src in [one_task(3, "coroutine"), one_task(0, "dict")] {
            let c = census_of(&src);
            assert_eq!(c.objects, 1, "the task still counts under its type");
            assert!(c.names.tasks.is_empty(), "{:?}", c.names.tasks);
            assert_eq!(c.skipped_reads, 1);
        }
    }

    #[test]
    fn a_cycle_of_bases_ends() {
        // The coroutine's type and str's name each other as `tp_base`: looking for a named
        // base stops after MAX_BASES, and the task is still read.
        let mut src = one_task(0, "coroutine");
        put(&mut src.data, 0x800 + TP_BASE, BASE + 0xa00);
        put(&mut src.data, 0xa00 + TP_BASE, BASE + 0x800);
        let c = census_of(&src);
        assert_eq!(c.objects, 1);
        assert_eq!(c.names.tasks.len(), 1, "{:?}", c.names.tasks);
        assert_eq!(c.names.tasks[0].coroutine, "poll_gateway");
    }

    #[test]
    fn named_classes_by_type_name() {
        assert_eq!(by_name("_asyncio.Task"), Some(Named::Task));
        assert_eq!(by_name("asyncio.tasks.Task"), None);
        assert_eq!(by_name("functools._lru_cache_wrapper"), Some(Named::Lru));
        assert_eq!(by_name("sqlite3.Connection"), Some(Named::Sqlite));
        assert_eq!(by_name("sqlite3.Cursor"), None);
        assert_eq!(by_name("psycopg.Connection"), Some(Named::Psycopg));
        assert_eq!(by_name("psycopg.AsyncConnection"), Some(Named::Psycopg));
        assert_eq!(by_name("psycopg_pool.ConnectionPool"), None);
        assert_eq!(
            by_name("psycopg2.extensions.connection"),
            Some(Named::Connection)
        );
        assert_eq!(by_name("psycopg.Cursor"), None);
        assert_eq!(
            by_name("asyncpg.connection.Connection"),
            Some(Named::Connection)
        );
        assert_eq!(
            by_name("sqlalchemy.orm.session.Session"),
            Some(Named::Connection)
        );
        assert_eq!(
            by_name("sqlalchemy.ext.asyncio.session.AsyncSession"),
            Some(Named::Connection)
        );
        assert_eq!(by_name("app.Session"), None);
        assert_eq!(by_name("logging.Logger"), Some(Named::Logger));
        assert_eq!(by_name("logging.PlaceHolder"), None);
        assert_eq!(by_name("threading.Thread"), Some(Named::Thread));
        assert_eq!(by_name("Thread"), None);
    }

    #[test]
    fn every_census_version_has_object_offsets() {
        for minor in 8..=15 {
            let o = obj_offsets(minor).expect("3.8-3.15");
            // The coroutine field follows the Future's head, the state is inside it.
            assert!(o.task_state < o.task_coro, "3.{minor}");
        }
        assert_eq!(obj_offsets(7), None);
        assert_eq!(obj_offsets(16), None);
    }
}
