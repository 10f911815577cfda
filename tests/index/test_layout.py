"""hnswlib's private layout is the one the graph export reads; another layout fails loudly and clearly."""

from __future__ import annotations

from importlib import metadata

import numpy as np
import pytest

from ruvector_hnsw import HNSWIndex
from ruvector_hnsw.errors import IndexCorruptedError, LayoutError
from ruvector_hnsw.index.graph import STATE_KEYS, check_layout, graph_from_state

DIM, M = 3, 4
HNSWLIB = metadata.version("hnswlib")


@pytest.fixture(scope="module")
def tiny() -> HNSWIndex:
    idx = HNSWIndex(DIM, M=M, ef_construction=20, seed=5, num_threads=1)
    idx.add(np.random.default_rng(0).standard_normal((40, DIM)), ids=np.arange(40) + 1000)
    return idx


def test_state_dict_has_the_layout_the_export_reads(tiny: HNSWIndex) -> None:
    s = tiny.raw_state()
    assert STATE_KEYS <= set(s)
    n, max_m0, max_m = s["cur_element_count"], s["max_M0"], s["max_M"]
    assert (n, s["dim"], s["M"], max_m, max_m0, s["ser_version"]) == (40, DIM, M, M, 2 * M, 1)
    assert s["offset_level0"] == 0
    assert s["offset_data"] == 4 * max_m0 + 4  # 4-byte header (count + flags), max_M0 uint32 links
    assert s["label_offset"] == s["offset_data"] + 4 * DIM  # then the float32 vector
    assert s["size_data_per_element"] == s["label_offset"] + 8  # then the uint64 label
    assert s["size_links_per_element"] == 4 * max_m + 4
    levels = np.asarray(s["element_levels"])[:n]
    assert np.asarray(s["data_level0"]).nbytes == n * s["size_data_per_element"]
    assert np.asarray(s["link_lists"]).nbytes == int(levels.sum()) * s["size_links_per_element"]
    # the bytes really are laid out so: labels and vectors read at those offsets are hnswlib's own
    rec = np.asarray(s["data_level0"]).view(np.uint8).reshape(n, s["size_data_per_element"])
    labels = rec[:, s["label_offset"]:].copy().view(np.uint64).ravel()
    vectors = rec[:, s["offset_data"]: s["label_offset"]].copy().view(np.float32)
    np.testing.assert_array_equal(np.sort(labels), np.arange(40) + 1000)
    np.testing.assert_array_equal(vectors, tiny.get_vectors(labels.astype(np.int64)))
    counts = rec[:, 0:2].copy().view(np.uint16).ravel()
    assert 0 < counts.max() <= max_m0


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"offset_data": "+4"}, "offset_data"),
        ({"label_offset": "+8"}, "label_offset"),
        ({"size_links_per_element": "+4"}, "size_links_per_element"),
        ({"size_data_per_element": "+8"}, "size_data_per_element"),
        ({"max_M0": "+1"}, "max_M0"),
        ({"ser_version": "+1"}, "ser_version"),
        ({"offset_level0": "+16"}, "offset_level0"),
    ],
)
def test_altered_layout_raises_layout_error_naming_hnswlib(tiny: HNSWIndex, change, words) -> None:
    state = tiny.raw_state()
    for key, delta in change.items():
        state[key] = int(state[key]) + int(delta)
    with pytest.raises(LayoutError, match=words) as info:
        graph_from_state(state, "l2")
    assert f"hnswlib {HNSWLIB}" in str(info.value)
    assert isinstance(info.value, IndexCorruptedError)


def test_missing_key_raises_layout_error(tiny: HNSWIndex) -> None:
    state = tiny.raw_state()
    del state["link_lists"]
    with pytest.raises(LayoutError, match=f"hnswlib {HNSWLIB}.*link_lists"):
        check_layout(state)


def test_truncated_buffer_is_corruption_not_layout(tiny: HNSWIndex) -> None:
    state = tiny.raw_state()
    state["data_level0"] = np.asarray(state["data_level0"])[:-1]
    with pytest.raises(IndexCorruptedError, match="size") as info:
        graph_from_state(state, "l2")
    assert not isinstance(info.value, LayoutError)


def test_the_real_state_passes(tiny: HNSWIndex) -> None:
    check_layout(tiny.raw_state())
    assert len(graph_from_state(tiny.raw_state(), "l2")) == 40
