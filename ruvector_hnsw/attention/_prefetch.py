"""A numba intrinsic that asks the CPU to fetch a table row ahead of its use (``llvm.prefetch``).

Gather kernels read rows of a large table in id order; each row is a cache miss the core can only
overlap with a few others. Issuing :func:`prefetch_row` for an item a few positions ahead lets
the memory system fetch it while the current item is computed. A prefetch is a hint: it never
faults, changes no value and is dropped by the CPU when it cannot serve it.
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir  # type: ignore[import-untyped]
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["prefetch_row", "prefetch_table_row"]


@intrinsic
def prefetch_row(typingctx: Any, arr: Any, row: Any, col: Any) -> Any:
    """Prefetch (read, all cache levels) the cache line holding ``arr[row, col]`` of a 2-D array."""
    if not (isinstance(arr, types.Array) and arr.ndim == 2 and isinstance(row, types.Integer)
            and isinstance(col, types.Integer)):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer2(
            context, builder, data=ary.data, shape=cgutils.unpack_tuple(builder, ary.shape),
            strides=cgutils.unpack_tuple(builder, ary.strides), layout=aryty.layout,
            inds=[args[1], args[2]],
        )
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # rw = 0 (read), locality = 3 (keep in every level), cache type = 1 (data)
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(arr, row, col), codegen


@njit(cache=True, nogil=True, inline="always")
def prefetch_table_row(T, r):  # pragma: no cover - jit
    """Prefetch every 64-byte line of row ``r`` of the C-contiguous table ``T``."""
    step = max(1, 64 // T.itemsize)
    for c in range(0, T.shape[1], step):
        prefetch_row(T, r, c)  # type: ignore[call-arg]
