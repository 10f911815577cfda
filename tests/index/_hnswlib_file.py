"""An independent, deliberately plain parser of hnswlib's ``save_index`` file (hnswlib 0.8.0).

Written from hnswlib's ``saveIndex``: a 96-byte header, ``data_level0`` for every element, then
per element a uint32 byte count followed by that many bytes of upper-layer link blocks.
Used by the tests only, so the library's vectorised reader is checked against a second route.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field


@dataclass
class ParsedIndex:
    count: int
    max_level: int
    entry_internal: int
    max_m: int
    max_m0: int
    labels: list[int] = field(default_factory=list)          # by internal id
    levels: list[int] = field(default_factory=list)          # by internal id
    deleted: list[bool] = field(default_factory=list)
    links: list[dict[int, list[int]]] = field(default_factory=list)  # internal id -> {layer: [internal ids]}


def parse_hnswlib_file(path: str) -> ParsedIndex:
    with open(path, "rb") as fh:
        raw = fh.read()
    head = struct.unpack_from("<QQQQQQiIQQQdQ", raw, 0)
    (_off0, _max_el, count, size_el, label_off, _offset_data, max_level, entry, max_m, max_m0, _m, _mult,
     _efc) = head
    pos = 96
    parsed = ParsedIndex(count=count, max_level=max_level, entry_internal=entry, max_m=max_m, max_m0=max_m0)
    level0 = raw[pos : pos + count * size_el]
    pos += count * size_el
    for i in range(count):
        rec = level0[i * size_el : (i + 1) * size_el]
        n0 = struct.unpack_from("<H", rec, 0)[0]
        deleted = bool(rec[2] & 0x01)
        ids0 = list(struct.unpack_from(f"<{n0}I", rec, 4))
        label = struct.unpack_from("<Q", rec, label_off)[0]
        parsed.labels.append(label)
        parsed.deleted.append(deleted)
        parsed.links.append({0: ids0})
    block = 4 + 4 * max_m
    for i in range(count):
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        levels = size // block
        parsed.levels.append(levels)
        for layer in range(1, levels + 1):
            start = pos + (layer - 1) * block
            n_l = struct.unpack_from("<H", raw, start)[0]
            parsed.links[i][layer] = list(struct.unpack_from(f"<{n_l}I", raw, start + 4))
        pos += size
    assert pos == len(raw), "trailing bytes in hnswlib file"
    return parsed
