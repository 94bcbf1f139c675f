//! Stage 4, resolution: a recorded stack key (native stack id, caller, Python stack hash) into
//! [`frame::Frame`]s people read. Native addresses through the target's mappings and ELF
//! symbols (blazesym), Python (code object, instruction) pairs through the interpreter's
//! layout and line tables. [`frame`] is the frame type every later stage uses.
//!
//! May call: `error`, `target`, `python`, `probes` (to read stacks from the maps).

pub mod frame;
pub mod python;
pub mod stacks;
pub mod symbolize;
