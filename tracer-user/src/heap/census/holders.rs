//! Where the types that grew most are held: a walk from the roots (module globals and class
//! attributes, in owners' order, biggest first) that carries each object's path, and counts,
//! for every container whose direct children include objects of a target type, those objects
//! under (type, container path, container type).
//!
//! Paths: the root's (`module:name`, `module:Class.attr`), then `.attr` for an instance
//! attribute (its `__dict__`'s key, its managed values' key, or its slot's member name;
//! `.<slot>` where the name cannot be read) and `[*]` for an item of a list, tuple or set, and
//! for a key or a value of a dict that is not an instance's `__dict__` (a dict keyed by request
//! ids gives one path, not one per key). An object is claimed by the first path that reaches
//! it (roots in owners' order, breadth first within a root), so each is counted once.
//!
//! Bounded as the census is: `--max-depth` per path, the census's time budget, and at most
//! [`MAX_VISITS`] objects; reads that fail are skipped and counted. It runs after the last
//! census, on a graph that may have moved a little since.

use std::collections::{HashMap, VecDeque};

use super::{is_dunder, AddrSet, Kind, Root, TypeInfo, Walker};
use crate::heap::layout::{
    DICT_KEYS, DICT_USED, DICT_VALUES, MEMBER_OBJECT, MEMBER_SIZE, SET_USED, TP_BASE, TP_MEMBERS,
    TYPE_SUBCLASS,
};

/// Objects visited by one holder walk at most.
pub const MAX_VISITS: u64 = 2_000_000;
/// Distinct paths kept at most (paths collapse at `[*]`, so this is generous).
const MAX_PATHS: usize = 100_000;
/// Containers kept per type.
pub const PER_TYPE: usize = 3;
/// Types looked for: the ones that grew most.
pub const TYPES: usize = 5;

/// Objects of one type held directly by the containers at one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub type_name: String,
    /// The containers' path (module:name, then `.attr` and `[*]` steps).
    pub path: String,
    /// The containers' type.
    pub container: String,
    /// Items of the containers at this path, summed (null for instances).
    pub len: Option<u64>,
    /// Objects of `type_name` they hold directly.
    pub count: u64,
    /// Containers at this path holding some.
    pub containers: u64,
}

/// What one holder walk found.
#[derive(Clone, Debug, Default)]
pub struct Holders {
    /// Per type (in the order asked), its [`PER_TYPE`] containers by count.
    pub rows: Vec<Holder>,
    pub skipped_reads: u64,
    pub objects: u64,
    /// Why the walk is not complete (a limit hit), if it is not.
    pub incomplete: Option<String>,
}

/// The types to look for: the [`TYPES`] whose bytes grew most from `first` to `last` (growth
/// greater than zero). One census has no growth to explain, and gives none.
pub fn grown_types(first: &super::Census, last: &super::Census) -> Vec<String> {
    let mut grown: Vec<(i128, &String)> = last
        .types
        .iter()
        .map(|(name, s)| {
            let before = first.types.get(name).map_or(0, |t| t.bytes);
            (s.bytes as i128 - before as i128, name)
        })
        .filter(|&(g, _)| g > 0)
        .collect();
    grown.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    grown
        .into_iter()
        .take(TYPES)
        .map(|(_, n)| n.clone())
        .collect()
}

/// A container being walked: its path and type (indices into the walk's tables) and length.
#[derive(Clone, Copy)]
struct Parent {
    path: u32,
    container: u32,
    addr: u64,
    len: Option<u64>,
}

#[derive(Default)]
struct Tally {
    count: u64,
    containers: u64,
    len: Option<u64>,
}

/// Interned strings (paths, type names).
#[derive(Default)]
struct Strings {
    ids: HashMap<String, u32>,
    all: Vec<String>,
}

impl Strings {
    fn id(&mut self, s: String) -> Option<u32> {
        if let Some(&i) = self.ids.get(&s) {
            return Some(i);
        }
        if self.all.len() >= MAX_PATHS {
            return None;
        }
        let i = self.all.len() as u32;
        self.all.push(s.clone());
        self.ids.insert(s, i);
        Some(i)
    }
}

impl Walker<'_> {
    /// The holders of the types `targets` from the roots found on the GC lists at `heads`,
    /// walked in the order of `order` (owner paths, biggest first; roots it does not name come
    /// after, in the order found).
    pub fn holder_walk(mut self, heads: &[u64], targets: &[String], order: &[String]) -> Holders {
        let mut out = Holders::default();
        if targets.is_empty() {
            return out;
        }
        let mut tracked = Vec::new();
        for &h in heads {
            tracked.extend(self.walk_gc_list(h));
        }
        let mut roots = self.root_values(tracked);
        let rank: HashMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_str(), i))
            .collect();
        // Stable: roots that `order` does not name keep the order they were found in.
        roots.sort_by_key(|(p, _)| rank.get(p.as_str()).copied().unwrap_or(usize::MAX));

        let mut paths = Strings::default();
        let mut tnames = Strings::default();
        let mut tally: HashMap<(usize, u32, u32), Tally> = HashMap::new();
        let mut seen_containers: HashMap<(usize, u32, u32), AddrSet> = HashMap::new();
        let mut visited = AddrSet::default();
        let mut visits = 0u64;
        let mut slot_names: HashMap<u64, Vec<(u64, String)>> = HashMap::new();
        'roots: for (root_path, v) in roots {
            let Some(rp) = paths.id(root_path) else {
                break;
            };
            let mut queue: VecDeque<(u64, u32, u32, Option<Parent>)> = VecDeque::new();
            queue.push_back((v, rp, 0, None));
            while let Some((addr, path, depth, parent)) = queue.pop_front() {
                if visits >= MAX_VISITS {
                    self.stop(format!(
                        "{MAX_VISITS} objects visited: holder counts are lower bounds"
                    ));
                    break 'roots;
                }
                if visits.is_multiple_of(4096)
                    && (self.halted || self.start.elapsed().as_secs_f64() > self.lim.time_budget_s)
                {
                    self.stop(format!(
                        "--time-budget {} s reached: holder counts are lower bounds",
                        self.lim.time_budget_s
                    ));
                    break 'roots;
                }
                if !visited.insert(addr) {
                    continue;
                }
                visits += 1;
                let Some((o, ti)) = self.object(addr) else {
                    continue;
                };
                let mut note = |name: &str, p: Parent| {
                    if let Some(t) = targets.iter().position(|t| t == name) {
                        let key = (t, p.path, p.container);
                        let e = tally.entry(key).or_default();
                        e.count += 1;
                        if seen_containers.entry(key).or_default().insert(p.addr) {
                            e.containers += 1;
                            e.len = match (e.len, p.len) {
                                (Some(a), Some(b)) => Some(a.saturating_add(b)),
                                (a, b) => a.or(b),
                            };
                        }
                    }
                };
                if let Some(p) = parent {
                    note(&ti.name, p);
                }
                let mut own_dict = None;
                let children = self.labelled_parts(&o, &ti, &mut slot_names, &mut own_dict);
                // An instance's `__dict__` (3.8-3.10, or materialized): its entries are the
                // instance's children, and the dict itself is held by the instance.
                if let Some(d) = own_dict.filter(|&d| visited.insert(d)) {
                    visits += 1;
                    if let (Some((_, dt)), Some(container)) =
                        (self.object(d), tnames.id(ti.name.clone()))
                    {
                        let me = Parent {
                            path,
                            container,
                            addr,
                            len: None,
                        };
                        note(&dt.name, me);
                    }
                }
                if children.is_empty() {
                    continue;
                }
                if depth >= self.lim.max_depth {
                    self.stop(format!(
                        "--max-depth {} reached: holder counts are lower bounds",
                        self.lim.max_depth
                    ));
                    continue;
                }
                let Some(container) = tnames.id(ti.name.clone()) else {
                    continue;
                };
                let me = Parent {
                    path,
                    container,
                    addr,
                    len: match ti.kind {
                        Kind::Dict => Some(o.word(DICT_USED)),
                        Kind::List | Kind::Tuple => Some(o.size_field),
                        Kind::Set => Some(o.word(SET_USED)),
                        _ => None,
                    },
                };
                for (label, c) in children {
                    if visited.contains(&c) {
                        continue;
                    }
                    let here = &paths.all[path as usize];
                    let Some(cp) = paths.id(format!("{here}{label}")) else {
                        self.stop(format!(
                            "{MAX_PATHS} distinct paths: holder counts are lower bounds"
                        ));
                        continue;
                    };
                    queue.push_back((c, cp, depth + 1, Some(me)));
                }
            }
        }
        let mut rows: Vec<(usize, Holder)> = tally
            .into_iter()
            .map(|((t, p, c), n)| {
                (
                    t,
                    Holder {
                        type_name: targets[t].clone(),
                        path: paths.all[p as usize].clone(),
                        container: tnames.all[c as usize].clone(),
                        len: n.len,
                        count: n.count,
                        containers: n.containers,
                    },
                )
            })
            .collect();
        // Per type, the containers under the roots that come first in `order` (the roots that
        // grew most) first, then by count: a type's objects in a root that did not grow (an
        // interpreter table of strings) must not crowd out the container that grew.
        let root_rank = |path: &str| {
            path.char_indices()
                .filter(|&(_, c)| c == '.' || c == '[')
                .map(|(i, _)| i)
                .chain(std::iter::once(path.len()))
                .filter_map(|i| rank.get(&path[..i]).copied())
                .min()
                .unwrap_or(usize::MAX)
        };
        rows.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(root_rank(&a.1.path).cmp(&root_rank(&b.1.path)))
                .then(b.1.count.cmp(&a.1.count))
                .then(a.1.path.cmp(&b.1.path))
        });
        let mut kept = vec![0usize; targets.len()];
        out.rows = rows
            .into_iter()
            .filter(|(t, _)| {
                kept[*t] += 1;
                kept[*t] <= PER_TYPE
            })
            .map(|(_, h)| h)
            .collect();
        out.skipped_reads = self.skipped.get();
        out.objects = visits;
        out.incomplete = self.incomplete;
        out
    }

    /// The roots as [`Walker::census`] finds them ([`Walker::root_prefix`]): each module's
    /// globals and each class's attributes that are not dunders, with their paths.
    fn root_values(&mut self, tracked: Vec<Root>) -> Vec<(String, u64)> {
        let mut roots = Vec::new();
        for root in tracked {
            let Some((prefix, dict)) = self.root_prefix(&root) else {
                continue;
            };
            for (k, v) in self
                .dict_entries(dict)
                .map(|d| d.entries)
                .unwrap_or_default()
            {
                if let Some(key) = self.str_value(k).filter(|k| !is_dunder(k)) {
                    roots.push((format!("{prefix}{key}"), v));
                }
            }
        }
        roots
    }

    /// An object's children with the step each adds to the path: as [`Walker::parts`] finds
    /// them (modules and classes are roots of their own, not followed), labelled; an
    /// instance's `__dict__`, whose entries are among them, in `own_dict`.
    fn labelled_parts(
        &mut self,
        o: &super::Obj,
        ti: &TypeInfo,
        slot_names: &mut HashMap<u64, Vec<(u64, String)>>,
        own_dict: &mut Option<u64>,
    ) -> Vec<(String, u64)> {
        let star = |v: Vec<u64>| v.into_iter().map(|c| ("[*]".to_string(), c)).collect();
        match ti.kind {
            Kind::Dict => {
                let Some(d) = self.dict_read(o.word(DICT_KEYS), o.word(DICT_VALUES), o.addr, true)
                else {
                    return Vec::new();
                };
                star(d.entries.iter().flat_map(|&(k, v)| [k, v]).collect())
            }
            Kind::List | Kind::Tuple | Kind::Set => star(self.items(o, ti)),
            Kind::Str | Kind::Int | Kind::Module => Vec::new(),
            Kind::Other => {
                if ti.flags & TYPE_SUBCLASS != 0 {
                    return Vec::new();
                }
                let attrs = self.instance_attrs(o, ti);
                // `instance_attrs` gives the instance's `__dict__` alone, or its managed
                // values as (key, value) pairs: the dict's entries are the instance's own.
                let pairs: Vec<(u64, u64)> = match attrs.as_slice() {
                    [dict] => {
                        *own_dict = Some(*dict);
                        self.dict_entries(*dict)
                            .map(|d| d.entries)
                            .unwrap_or_default()
                    }
                    _ => attrs.chunks_exact(2).map(|p| (p[0], p[1])).collect(),
                };
                let mut out: Vec<(String, u64)> = pairs
                    .into_iter()
                    .map(|(k, v)| {
                        let name = self.str_value(k).unwrap_or_else(|| "<attr>".to_string());
                        (format!(".{name}"), v)
                    })
                    .collect();
                out.extend(self.named_slot_values(o, ti, slot_names));
                out
            }
        }
    }

    /// An instance's slot values, each with `.member` (`.<slot>` where its name is unknown).
    fn named_slot_values(
        &mut self,
        o: &super::Obj,
        ti: &TypeInfo,
        cache: &mut HashMap<u64, Vec<(u64, String)>>,
    ) -> Vec<(String, u64)> {
        let Some(&last) = ti.slots.last() else {
            return Vec::new();
        };
        let Some(b) = self.read(o.addr, (last + 8) as usize) else {
            return Vec::new();
        };
        if let std::collections::hash_map::Entry::Vacant(e) = cache.entry(ti.addr) {
            e.insert(self.member_names(ti.addr));
        }
        let names = &cache[&ti.addr];
        ti.slots
            .iter()
            .filter_map(|&off| {
                let v = u64::from_le_bytes(b[off as usize..off as usize + 8].try_into().unwrap());
                (v != 0 && v.is_multiple_of(8)).then(|| {
                    let name = names
                        .iter()
                        .find(|(o, _)| *o == off)
                        .map_or("<slot>", |(_, n)| n.as_str());
                    (format!(".{name}"), v)
                })
            })
            .collect()
    }

    /// (offset, name) of the object members of the class at `ty` and its bases (a few deep).
    fn member_names(&mut self, mut ty: u64) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for _ in 0..super::named::MAX_BASES {
            let Some([members]) = self.words::<1>(ty.wrapping_add(TP_MEMBERS)) else {
                break;
            };
            if members != 0 && members.is_multiple_of(8) {
                let b = self
                    .read(members, super::MAX_SLOTS * MEMBER_SIZE as usize)
                    .or_else(|| self.read(members, 8 * MEMBER_SIZE as usize));
                if let Some(b) = b {
                    for m in b.chunks_exact(MEMBER_SIZE as usize) {
                        let name = u64::from_le_bytes(m[0..8].try_into().unwrap());
                        if name == 0 {
                            break;
                        }
                        let kind = i32::from_le_bytes(m[8..12].try_into().unwrap());
                        let off = i64::from_le_bytes(m[16..24].try_into().unwrap());
                        if MEMBER_OBJECT.contains(&kind) && off >= 16 {
                            if let Some(n) = self.c_string(name) {
                                out.push((off as u64, n));
                            }
                        }
                    }
                }
            }
            match self.words::<1>(ty.wrapping_add(TP_BASE)) {
                Some([b]) if b != 0 && b != ty => ty = b,
                _ => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
