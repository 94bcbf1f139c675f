"""Writes the line-table golden file for the running interpreter.

Usage: python3.X dump_lines.py [OUTPUT]   (default: lines-3.X.json next to this script)

Compiles sample_module.py (never executes it) and, for every code object in it (recursively,
depth first through co_consts), records the raw line table and the line the interpreter itself
assigns to each 2-byte code unit of the bytecode:

* 3.10+: the ranges reported by code.co_lines() (the same walk PyCode_Addr2Line does).
* 3.8/3.9: dis.findlinestarts() expanded to every code unit (each offset takes the line of the
  last line start at or before it, which is what PyCode_Addr2Line computes from co_lnotab).

A line of null means the interpreter reports no line for that offset.
"""
import dis
import json
import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))


def code_objects(code):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from code_objects(const)


def lines_for(code):
    size = len(code.co_code)
    if sys.version_info >= (3, 10):
        out = {}
        for start, end, line in code.co_lines():
            for offset in range(start, end, 2):
                out[offset] = line
        return [[offset, out[offset]] for offset in sorted(out)]
    starts = list(dis.findlinestarts(code))
    out = []
    current = None
    k = 0
    for offset in range(0, size, 2):
        while k < len(starts) and starts[k][0] <= offset:
            current = starts[k][1]
            k += 1
        out.append([offset, current])
    return out


def main():
    minor = "%d.%d" % sys.version_info[:2]
    output = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "lines-%s.json" % minor)
    with open(os.path.join(HERE, "sample_module.py")) as f:
        source = f.read()
    module = compile(source, "sample_module.py", "exec")
    entries = []
    for code in code_objects(module):
        table = code.co_linetable if sys.version_info >= (3, 10) else code.co_lnotab
        entries.append({
            "name": code.co_name,
            "qualname": getattr(code, "co_qualname", code.co_name),
            "firstlineno": code.co_firstlineno,
            "code_len": len(code.co_code),
            "table": table.hex(),
            "lines": lines_for(code),
        })
    with open(output, "w") as f:
        f.write('{"python": %s,\n "code_objects": [\n' % json.dumps(sys.version.split()[0]))
        f.write(",\n".join(json.dumps(e, separators=(",", ":")) for e in entries))
        f.write("\n]}\n")


if __name__ == "__main__":
    main()
