"""Fixed sample compiled (never run) by dump_lines.py to produce line-table golden files."""
import functools


def decorator(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapper


@decorator
def simple(a, b):
    c = a + b
    return c * 2


class Widget:
    """A class body is a code object too."""

    scale = 3

    def __init__(self, items):
        self.items = list(items)

    @property
    def total(self):
        return sum(
            item * self.scale
            for item in self.items
            if item > 0
        )

    @staticmethod
    def make(n):
        return Widget(range(n))


def loops(n):
    total = 0
    for i in range(n):
        if i % 3 == 0:
            continue
        while total < i:
            total += 1
    else:
        total -= 1
    return total


def long_body(x):
    # The loop body is far more than 255 bytes of bytecode, so jumps and table deltas are long.
    for i in range(x):
        x = x + 0 * i - (x // 1)
        x = x + 1 * i - (x // 2)
        x = x + 2 * i - (x // 3)
        x = x + 3 * i - (x // 4)
        x = x + 4 * i - (x // 5)
        x = x + 5 * i - (x // 6)
        x = x + 6 * i - (x // 7)
        x = x + 7 * i - (x // 8)
        x = x + 8 * i - (x // 9)
        x = x + 9 * i - (x // 10)
        x = x + 10 * i - (x // 11)
        x = x + 11 * i - (x // 12)
        x = x + 12 * i - (x // 13)
        x = x + 13 * i - (x // 14)
        x = x + 14 * i - (x // 15)
        x = x + 15 * i - (x // 16)
        x = x + 16 * i - (x // 17)
        x = x + 17 * i - (x // 18)
        x = x + 18 * i - (x // 19)
        x = x + 19 * i - (x // 20)
        x = x + 20 * i - (x // 21)
        x = x + 21 * i - (x // 22)
        x = x + 22 * i - (x // 23)
        x = x + 23 * i - (x // 24)
        x = x + 24 * i - (x // 25)
        x = x + 25 * i - (x // 26)
        x = x + 26 * i - (x // 27)
        x = x + 27 * i - (x // 28)
        x = x + 28 * i - (x // 29)
        x = x + 29 * i - (x // 30)
        x = x + 30 * i - (x // 31)
        x = x + 31 * i - (x // 32)
        x = x + 32 * i - (x // 33)
        x = x + 33 * i - (x // 34)
        x = x + 34 * i - (x // 35)
        x = x + 35 * i - (x // 36)
        x = x + 36 * i - (x // 37)
        x = x + 37 * i - (x // 38)
        x = x + 38 * i - (x // 39)
        x = x + 39 * i - (x // 40)
        x = x + 40 * i - (x // 41)
        x = x + 41 * i - (x // 42)
        x = x + 42 * i - (x // 43)
        x = x + 43 * i - (x // 44)
        x = x + 44 * i - (x // 45)
        x = x + 45 * i - (x // 46)
        x = x + 46 * i - (x // 47)
        x = x + 47 * i - (x // 48)
        x = x + 48 * i - (x // 49)
        x = x + 49 * i - (x // 50)
        x = x + 50 * i - (x // 51)
        x = x + 51 * i - (x // 52)
        x = x + 52 * i - (x // 53)
        x = x + 53 * i - (x // 54)
        x = x + 54 * i - (x // 55)
        x = x + 55 * i - (x // 56)
        x = x + 56 * i - (x // 57)
        x = x + 57 * i - (x // 58)
        x = x + 58 * i - (x // 59)
        x = x + 59 * i - (x // 60)
    y = (x + 0, x + 1, x + 2, x + 3, x + 4, x + 5, x + 6, x + 7, x + 8, x + 9, x + 10, x + 11, x + 12, x + 13, x + 14, x + 15, x + 16, x + 17, x + 18, x + 19, x + 20, x + 21, x + 22, x + 23, x + 24, x + 25, x + 26, x + 27, x + 28, x + 29, x + 30, x + 31, x + 32, x + 33, x + 34, x + 35, x + 36, x + 37, x + 38, x + 39, x + 40, x + 41, x + 42, x + 43, x + 44, x + 45, x + 46, x + 47, x + 48, x + 49, x + 50, x + 51, x + 52, x + 53, x + 54, x + 55, x + 56, x + 57, x + 58, x + 59, x + 60, x + 61, x + 62, x + 63, x + 64, x + 65, x + 66, x + 67, x + 68, x + 69, x + 70, x + 71, x + 72, x + 73, x + 74, x + 75, x + 76, x + 77, x + 78, x + 79)  # one line, >255 bytes of code
    return x, y


def big_gap(y):
    a = y + 1
    # filler line 0 to open a gap of more than 127 lines
    # filler line 1 to open a gap of more than 127 lines
    # filler line 2 to open a gap of more than 127 lines
    # filler line 3 to open a gap of more than 127 lines
    # filler line 4 to open a gap of more than 127 lines
    # filler line 5 to open a gap of more than 127 lines
    # filler line 6 to open a gap of more than 127 lines
    # filler line 7 to open a gap of more than 127 lines
    # filler line 8 to open a gap of more than 127 lines
    # filler line 9 to open a gap of more than 127 lines
    # filler line 10 to open a gap of more than 127 lines
    # filler line 11 to open a gap of more than 127 lines
    # filler line 12 to open a gap of more than 127 lines
    # filler line 13 to open a gap of more than 127 lines
    # filler line 14 to open a gap of more than 127 lines
    # filler line 15 to open a gap of more than 127 lines
    # filler line 16 to open a gap of more than 127 lines
    # filler line 17 to open a gap of more than 127 lines
    # filler line 18 to open a gap of more than 127 lines
    # filler line 19 to open a gap of more than 127 lines
    # filler line 20 to open a gap of more than 127 lines
    # filler line 21 to open a gap of more than 127 lines
    # filler line 22 to open a gap of more than 127 lines
    # filler line 23 to open a gap of more than 127 lines
    # filler line 24 to open a gap of more than 127 lines
    # filler line 25 to open a gap of more than 127 lines
    # filler line 26 to open a gap of more than 127 lines
    # filler line 27 to open a gap of more than 127 lines
    # filler line 28 to open a gap of more than 127 lines
    # filler line 29 to open a gap of more than 127 lines
    # filler line 30 to open a gap of more than 127 lines
    # filler line 31 to open a gap of more than 127 lines
    # filler line 32 to open a gap of more than 127 lines
    # filler line 33 to open a gap of more than 127 lines
    # filler line 34 to open a gap of more than 127 lines
    # filler line 35 to open a gap of more than 127 lines
    # filler line 36 to open a gap of more than 127 lines
    # filler line 37 to open a gap of more than 127 lines
    # filler line 38 to open a gap of more than 127 lines
    # filler line 39 to open a gap of more than 127 lines
    # filler line 40 to open a gap of more than 127 lines
    # filler line 41 to open a gap of more than 127 lines
    # filler line 42 to open a gap of more than 127 lines
    # filler line 43 to open a gap of more than 127 lines
    # filler line 44 to open a gap of more than 127 lines
    # filler line 45 to open a gap of more than 127 lines
    # filler line 46 to open a gap of more than 127 lines
    # filler line 47 to open a gap of more than 127 lines
    # filler line 48 to open a gap of more than 127 lines
    # filler line 49 to open a gap of more than 127 lines
    # filler line 50 to open a gap of more than 127 lines
    # filler line 51 to open a gap of more than 127 lines
    # filler line 52 to open a gap of more than 127 lines
    # filler line 53 to open a gap of more than 127 lines
    # filler line 54 to open a gap of more than 127 lines
    # filler line 55 to open a gap of more than 127 lines
    # filler line 56 to open a gap of more than 127 lines
    # filler line 57 to open a gap of more than 127 lines
    # filler line 58 to open a gap of more than 127 lines
    # filler line 59 to open a gap of more than 127 lines
    # filler line 60 to open a gap of more than 127 lines
    # filler line 61 to open a gap of more than 127 lines
    # filler line 62 to open a gap of more than 127 lines
    # filler line 63 to open a gap of more than 127 lines
    # filler line 64 to open a gap of more than 127 lines
    # filler line 65 to open a gap of more than 127 lines
    # filler line 66 to open a gap of more than 127 lines
    # filler line 67 to open a gap of more than 127 lines
    # filler line 68 to open a gap of more than 127 lines
    # filler line 69 to open a gap of more than 127 lines
    # filler line 70 to open a gap of more than 127 lines
    # filler line 71 to open a gap of more than 127 lines
    # filler line 72 to open a gap of more than 127 lines
    # filler line 73 to open a gap of more than 127 lines
    # filler line 74 to open a gap of more than 127 lines
    # filler line 75 to open a gap of more than 127 lines
    # filler line 76 to open a gap of more than 127 lines
    # filler line 77 to open a gap of more than 127 lines
    # filler line 78 to open a gap of more than 127 lines
    # filler line 79 to open a gap of more than 127 lines
    # filler line 80 to open a gap of more than 127 lines
    # filler line 81 to open a gap of more than 127 lines
    # filler line 82 to open a gap of more than 127 lines
    # filler line 83 to open a gap of more than 127 lines
    # filler line 84 to open a gap of more than 127 lines
    # filler line 85 to open a gap of more than 127 lines
    # filler line 86 to open a gap of more than 127 lines
    # filler line 87 to open a gap of more than 127 lines
    # filler line 88 to open a gap of more than 127 lines
    # filler line 89 to open a gap of more than 127 lines
    # filler line 90 to open a gap of more than 127 lines
    # filler line 91 to open a gap of more than 127 lines
    # filler line 92 to open a gap of more than 127 lines
    # filler line 93 to open a gap of more than 127 lines
    # filler line 94 to open a gap of more than 127 lines
    # filler line 95 to open a gap of more than 127 lines
    # filler line 96 to open a gap of more than 127 lines
    # filler line 97 to open a gap of more than 127 lines
    # filler line 98 to open a gap of more than 127 lines
    # filler line 99 to open a gap of more than 127 lines
    # filler line 100 to open a gap of more than 127 lines
    # filler line 101 to open a gap of more than 127 lines
    # filler line 102 to open a gap of more than 127 lines
    # filler line 103 to open a gap of more than 127 lines
    # filler line 104 to open a gap of more than 127 lines
    # filler line 105 to open a gap of more than 127 lines
    # filler line 106 to open a gap of more than 127 lines
    # filler line 107 to open a gap of more than 127 lines
    # filler line 108 to open a gap of more than 127 lines
    # filler line 109 to open a gap of more than 127 lines
    # filler line 110 to open a gap of more than 127 lines
    # filler line 111 to open a gap of more than 127 lines
    # filler line 112 to open a gap of more than 127 lines
    # filler line 113 to open a gap of more than 127 lines
    # filler line 114 to open a gap of more than 127 lines
    # filler line 115 to open a gap of more than 127 lines
    # filler line 116 to open a gap of more than 127 lines
    # filler line 117 to open a gap of more than 127 lines
    # filler line 118 to open a gap of more than 127 lines
    # filler line 119 to open a gap of more than 127 lines
    # filler line 120 to open a gap of more than 127 lines
    # filler line 121 to open a gap of more than 127 lines
    # filler line 122 to open a gap of more than 127 lines
    # filler line 123 to open a gap of more than 127 lines
    # filler line 124 to open a gap of more than 127 lines
    # filler line 125 to open a gap of more than 127 lines
    # filler line 126 to open a gap of more than 127 lines
    # filler line 127 to open a gap of more than 127 lines
    # filler line 128 to open a gap of more than 127 lines
    # filler line 129 to open a gap of more than 127 lines
    # filler line 130 to open a gap of more than 127 lines
    # filler line 131 to open a gap of more than 127 lines
    # filler line 132 to open a gap of more than 127 lines
    # filler line 133 to open a gap of more than 127 lines
    # filler line 134 to open a gap of more than 127 lines
    # filler line 135 to open a gap of more than 127 lines
    # filler line 136 to open a gap of more than 127 lines
    # filler line 137 to open a gap of more than 127 lines
    # filler line 138 to open a gap of more than 127 lines
    # filler line 139 to open a gap of more than 127 lines
    # filler line 140 to open a gap of more than 127 lines
    # filler line 141 to open a gap of more than 127 lines
    # filler line 142 to open a gap of more than 127 lines
    # filler line 143 to open a gap of more than 127 lines
    # filler line 144 to open a gap of more than 127 lines
    # filler line 145 to open a gap of more than 127 lines
    # filler line 146 to open a gap of more than 127 lines
    # filler line 147 to open a gap of more than 127 lines
    # filler line 148 to open a gap of more than 127 lines
    # filler line 149 to open a gap of more than 127 lines
    b = a * 2












































































































































































































































































































    c = (b
         +
         a)
    return c


def backwards(p, q):
    # Multi-line call: argument lines are evaluated after the callee line, then the call
    # itself is attributed back to the first line (negative line deltas).
    result = max(
        p,
        q,
        p + q,
    )
    values = [
        p
        for p in range(q)
    ]
    return result, values


def exceptions(d, key):
    try:
        value = d[key]
    except KeyError:
        value = None
    except (TypeError, ValueError) as exc:
        raise RuntimeError("bad key") from exc
    else:
        value = value or 0
    finally:
        d.clear()
    return value


def comprehensions(rows):
    squares = [r * r for r in rows]
    evens = {r for r in rows if r % 2 == 0}
    index = {r: i for i, r in enumerate(rows)}
    gen = (r + 1 for r in rows)
    key = lambda r: (-r,
                     r)
    return sorted(squares, key=key), evens, index, list(gen)


def generator(n):
    for i in range(n):
        yield i
        yield from range(i)


async def coroutine(aw):
    await aw
    async with aw as ctx:
        return ctx


def nested(a):
    def inner(b):
        def innermost(c):
            return a + b + c
        return innermost
    return inner


total = simple(1, 2) + loops(10)
