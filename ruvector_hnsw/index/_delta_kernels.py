"""numba kernels that check and compare hnswlib graph buffers row by row.

Same layout and conventions as :mod:`ruvector_hnsw.index._graph_kernels` (``rec`` level-0
records as uint32 words, ``up`` upper-layer blocks, ``first_block`` per node). The comparison
is semantic where raw bytes could differ without a change: link slots past the neighbour count
and header bits other than the deleted mark are ignored; vectors and labels compare bit for bit.

Change flags: one uint8 per row, the bits below (a row past the previous snapshot carries :data:`ALL`).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ruvector_hnsw.index._graph_kernels import COUNT_MASK

LINKS0 = 1  # layer-0 links (count or ids)
UPPER = 2  # links on a layer >= 1 (or the set of layers: the level)
DELETED = 4  # the deleted mark
VECTOR = 8  # the stored vector
LABEL = 16  # the label
LEVEL = 32  # the top layer
HUBS0 = 64  # the hubs (level >= 1) among the layer-0 links, in link order (set with LINKS0 only)
NEW = 128  # a row past the previous snapshot
ATTRS = DELETED | VECTOR | LABEL | LEVEL  # what a row that links to this one reads of it
ALL = 255

_DELETED_BIT = 1 << 16  # the deleted mark in a record's first word (byte 2, bit 0)


@nb.njit(cache=True)
def first_bad_record(rec: np.ndarray, rows: np.ndarray, max_m0: int, n: int) -> int:
    """First row among ``rows`` whose layer-0 count exceeds ``max_m0`` or that links to an id
    ``>= n``; -1 when all are sound."""
    for r in range(rows.shape[0]):
        i = rows[r]
        cnt = rec[i, 0] & COUNT_MASK
        if cnt > max_m0:
            return i
        for e in range(cnt):
            if rec[i, 1 + e] >= n:
                return i
    return -1


@nb.njit(cache=True)
def first_bad_blocks(up: np.ndarray, first_block: np.ndarray, levels: np.ndarray, rows: np.ndarray,
                     max_m: int, n: int) -> int:
    """First row among ``rows`` with an upper-layer block whose count exceeds ``max_m`` or that
    links to an id ``>= n``; -1 when all are sound."""
    for r in range(rows.shape[0]):
        i = rows[r]
        for blk in range(first_block[i], first_block[i] + levels[i]):
            cnt = up[blk, 0] & COUNT_MASK
            if cnt > max_m:
                return i
            for e in range(cnt):
                if up[blk, 1 + e] >= n:
                    return i
    return -1


@nb.njit(cache=True)
def record_flags(new: np.ndarray, old: np.ndarray, n_old: int, voff: int, dim: int, loff: int) -> np.ndarray:
    """Flags (:data:`LINKS0`, :data:`DELETED`, :data:`VECTOR`, :data:`LABEL`) of rows ``0 .. n_old - 1``
    whose level-0 record differs between ``old`` and ``new`` (same record width)."""
    flags = np.zeros(n_old, dtype=np.uint8)
    words = new.shape[1]
    for i in range(n_old):
        diff = np.uint32(0)
        for t in range(words):  # fast path: the whole record, no early exit (vectorises)
            diff |= new[i, t] ^ old[i, t]
        if diff == 0:
            continue
        f = 0
        a0 = new[i, 0]
        b0 = old[i, 0]
        cnt = a0 & COUNT_MASK
        if cnt != (b0 & COUNT_MASK):
            f |= LINKS0
        else:
            for e in range(cnt):
                if new[i, 1 + e] != old[i, 1 + e]:
                    f |= LINKS0
                    break
        if (a0 & _DELETED_BIT) != (b0 & _DELETED_BIT):
            f |= DELETED
        for t in range(voff, voff + dim):
            if new[i, t] != old[i, t]:
                f |= VECTOR
                break
        if new[i, loff] != old[i, loff] or new[i, loff + 1] != old[i, loff + 1]:
            f |= LABEL
        flags[i] = f
    return flags


@nb.njit(cache=True)
def block_flags(new_up: np.ndarray, new_first: np.ndarray, new_levels: np.ndarray, old_up: np.ndarray,
                old_first: np.ndarray, old_levels: np.ndarray, flags: np.ndarray) -> None:
    """Add :data:`UPPER` (and :data:`LEVEL`) to ``flags`` (rows ``0 .. len(flags) - 1``) where the
    level or an upper-layer link block differs."""
    for i in range(flags.shape[0]):
        lv = new_levels[i]
        if lv != old_levels[i]:
            flags[i] |= UPPER | LEVEL
            continue
        a0 = new_first[i]
        b0 = old_first[i]
        for layer in range(lv):
            a = a0 + layer
            b = b0 + layer
            cnt = new_up[a, 0] & COUNT_MASK
            same = cnt == (old_up[b, 0] & COUNT_MASK)
            e = 0
            while same and e < cnt:
                same = new_up[a, 1 + e] == old_up[b, 1 + e]
                e += 1
            if not same:
                flags[i] |= UPPER
                break


@nb.njit(cache=True)
def hub_sequence_flags(new: np.ndarray, new_levels: np.ndarray, old: np.ndarray, old_levels: np.ndarray,
                       flags: np.ndarray) -> None:
    """Add :data:`HUBS0` to the rows with :data:`LINKS0` whose layer-0 hubs (links to nodes of
    level >= 1, each snapshot with its own levels) differ, as a sequence."""
    for i in range(flags.shape[0]):
        if not flags[i] & LINKS0:
            continue
        ca = new[i, 0] & COUNT_MASK
        cb = old[i, 0] & COUNT_MASK
        a = 0
        b = 0
        while True:
            while a < ca and new_levels[new[i, 1 + a]] < 1:
                a += 1
            while b < cb and old_levels[old[i, 1 + b]] < 1:
                b += 1
            if a == ca or b == cb:
                if a != ca or b != cb:
                    flags[i] |= HUBS0
                break
            if new[i, 1 + a] != old[i, 1 + b]:
                flags[i] |= HUBS0
                break
            a += 1
            b += 1


# bits of the per-row summary the candidate search reads for a linked row (rows of the previous
# snapshot only: a new row is reached only through links that changed, which the referrer's own
# flags already carry)
_S_ATTRS = 1  # ATTRS changed
_S_LEVEL = 2  # LEVEL changed
_S_HUBS0 = 4  # HUBS0 changed
_S_HUB_LINKS = 8  # level >= 1 with at least one upper-layer link (structure, any row)
_S_HUB_READ = 16  # a hub whose upper links changed or point to a row with _S_ATTRS


@nb.njit(cache=True)
def neighborhood_candidates(rec: np.ndarray, up: np.ndarray, first_block: np.ndarray, levels: np.ndarray,
                            flags: np.ndarray, with_global: bool) -> np.ndarray:
    """Rows whose neighbourhood may have changed, as a bool mask, given every row's change flags.

    A row is a candidate when something it reads changed (see ``_graph_kernels.neighborhoods``):

    1. its own flags are set (a new row included);
    2. a layer-0 neighbour's deleted mark, vector, label or level changed;

    and when ``with_global``:

    3. (level >= 1) one of its upper-layer links points to a row whose ATTRS changed;
    4. (level 0) a hub among its layer-0 neighbours had its upper links changed, or links up
       to a row whose ATTRS changed;
    5. (level 0, no hub with an upper link among its layer-0 neighbours: the 3-hop rule) a
       neighbour ``w`` whose sequence of hubs changed (HUBS0), or a row linked from a neighbour
       whose level changed or that is a hub as in 4.

    A new row is linked only from rows whose links changed, so it counts through their flags
    (1, HUBS0, UPPER) and contributes no summary bits of its own. Links and levels are read from
    the snapshot that owns ``rec``/``up``; reading either snapshot gives the same set (a row
    outside 1-4 reads identical links, levels and hubs in both). Cost: one pass over the upper
    blocks and one over the layer-0 links, O(E), plus a second read of the 3-hop rows' links.
    """
    n = flags.shape[0]
    summary = np.zeros(n, dtype=np.uint8)
    for i in range(n):
        f = flags[i]
        if f & NEW:
            continue
        s = 0
        if f & ATTRS:
            s |= _S_ATTRS
        if f & LEVEL:
            s |= _S_LEVEL
        if f & HUBS0:
            s |= _S_HUBS0
        if f & UPPER and levels[i] >= 1:
            s |= _S_HUB_READ
        summary[i] = s
    # hubs: do they have upper links, and does one point to a row whose ATTRS changed?
    for i in range(n):
        lv = levels[i]
        if lv < 1:
            continue
        s = summary[i]
        for blk in range(first_block[i], first_block[i] + lv):
            cnt = up[blk, 0] & COUNT_MASK
            if cnt:
                s |= _S_HUB_LINKS
            for e in range(cnt):
                if summary[up[blk, 1 + e]] & _S_ATTRS:
                    s |= _S_HUB_READ
                    break
        if flags[i] & NEW:
            s &= _S_HUB_LINKS
        summary[i] = s
    # what each row reads of its layer-0 neighbours, ORed (one sequential pass over the records)
    seen = np.zeros(n, dtype=np.uint8)
    for v in range(n):
        acc = 0
        for e in range(rec[v, 0] & COUNT_MASK):
            acc |= summary[rec[v, 1 + e]]
        seen[v] = acc
    out = np.zeros(n, dtype=np.bool_)
    for v in range(n):
        acc = seen[v]
        if flags[v] or acc & _S_ATTRS:
            out[v] = True
        elif not with_global:
            continue
        elif levels[v] >= 1:
            # an own upper link to a row whose ATTRS changed (own link changes are in flags[v])
            out[v] = (summary[v] & _S_HUB_READ) != 0
        elif acc & _S_HUB_READ:
            out[v] = True
        elif not acc & _S_HUB_LINKS:
            # the 3-hop rule: through each neighbour w, the hubs among w's links (their order,
            # levels and upper links, and the ATTRS of those links' targets)
            for e in range(rec[v, 0] & COUNT_MASK):
                w = rec[v, 1 + e]
                if summary[w] & _S_HUBS0 or seen[w] & (_S_LEVEL | _S_HUB_READ):
                    out[v] = True
                    break
    return out
