"""The ``ruvector-hnsw`` command line, run in-process on tiny data."""

from __future__ import annotations

import json
import re
import textwrap

import numpy as np
import pytest

from ruvector_hnsw.cli import main
from ruvector_hnsw.datasets import load, read_fvecs, write_fvecs


def _one_error_line(err: str, *fragments: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


@pytest.fixture
def vecs(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((400, 8)).astype(np.float32)
    q = rng.standard_normal((15, 8)).astype(np.float32)
    write_fvecs(tmp_path / "base.fvecs", base)
    write_fvecs(tmp_path / "q.fvecs", q)
    return tmp_path, base, q


def test_help_reads_well(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("build", "query", "info", "eval", "bench", "demo", "examples:"):
        assert word in out
    assert main(["eval", "--help"]) == 0
    assert "--methods" in capsys.readouterr().out
    assert main([]) == 2  # no command: help, non-zero


def test_build_query_info_round_trip(vecs, capsys):
    d, base, q = vecs
    idx = d / "i.rvh"
    assert main(["build", str(d / "base.fvecs"), "-o", str(idx), "--seed", "3", "--ef", "200", "--threads", "1"]) == 0
    assert "400 vectors" in capsys.readouterr().out

    assert main(["query", str(idx), str(d / "q.fvecs"), "-k", "5", "-o", str(d / "r.npz")]) == 0
    with np.load(d / "r.npz") as z:
        ids, dists = z["ids"], z["distances"]
    assert ids.shape == (15, 5) and ids.dtype == np.int64 and dists.dtype == np.float32
    d2 = ((q[:, None, :].astype(np.float64) - base[None]) ** 2).sum(-1)  # numpy reference, squared L2
    ref = np.argsort(d2, axis=1)[:, :5]
    recall = np.mean([len(set(ids[i]) & set(ref[i])) / 5 for i in range(15)])
    assert recall >= 0.95
    np.testing.assert_allclose(dists, np.take_along_axis(d2, ids, axis=1), rtol=1e-4, atol=1e-5)

    # stdout (tsv) agrees with the file
    capsys.readouterr()
    assert main(["query", str(idx), str(d / "q.fvecs"), "-k", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 15
    first = lines[0].split("\t")
    assert first[0] == "0" and [int(t) for t in first[1].split()] == ids[0].tolist()
    assert main(["query", str(idx), str(d / "q.fvecs"), "-k", "2", "--format", "json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["ids"] == ids[:, :2].tolist()

    # .npy output: ids + distances beside
    assert main(["query", str(idx), str(d / "q.fvecs"), "-k", "5", "-o", str(d / "r.npy")]) == 0
    np.testing.assert_array_equal(np.load(d / "r.npy"), ids)
    np.testing.assert_array_equal(np.load(d / "r_distances.npy"), dists)

    capsys.readouterr()
    assert main(["info", str(idx)]) == 0
    out = capsys.readouterr().out
    assert "400 vectors x 8 dims" in out and "mean deg" in out
    assert main(["info", str(idx), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 400 and info["dim"] == 8 and info["ef"] == 200
    assert sum(info["graph"]["levels_histogram"]) == 400
    assert info["graph"]["layers"][0]["nodes"] == 400


def test_build_from_dataset_name_uses_its_metric(tmp_path, capsys):
    assert main(["build", "clusters:tiny", "-o", str(tmp_path / "c.rvh"), "--threads", "1"]) == 0
    assert "space=cosine" in capsys.readouterr().out


def _numpy_map_at_r(ds) -> float:
    sims = ds.queries.astype(np.float64) @ ds.base.astype(np.float64).T  # unit rows: cosine
    order = np.argsort(-sims, axis=1, kind="stable")
    aps = []
    for i in range(ds.n_queries):
        r = int((ds.base_labels == ds.query_labels[i]).sum())
        rel = ds.base_labels[order[i, :r]] == ds.query_labels[i]
        aps.append((np.cumsum(rel) / np.arange(1, r + 1) * rel).sum() / r)
    return float(np.mean(aps))


def test_eval_contract(tmp_path, capsys):
    out_json, out_png = tmp_path / "o.json", tmp_path / "o.png"
    rc = main([
        "eval", "--dataset", "clusters", "--size", "tiny", "--methods", "exact,hnsw,alpha_qe,dba",
        "--k", "10", "--ef", "64", "--seed", "0", "--json", str(out_json), "--plot", str(out_png),
        "--latency-queries", "10", "--threads", "1",
    ])
    assert rc == 0
    out = capsys.readouterr().out
    for name in ("exact", "hnsw", "alpha_qe", "dba"):
        assert name in out
    doc = json.loads(out_json.read_text())
    assert doc["dataset"]["name"] == "clusters" and doc["dataset"]["n_base"] == 1500
    rows = {r["method"]: r for r in doc["results"]}
    assert set(rows) == {"exact", "hnsw", "alpha_qe", "dba"}
    for r in rows.values():
        for key in ("map_at_r", "p_at_1", "recall_at_10", "qps", "p50_ms", "p95_ms"):
            assert key in r
    ref = _numpy_map_at_r(load("clusters", size="tiny", seed=0, gt_k=0))
    assert rows["exact"]["map_at_r"] == pytest.approx(ref, abs=1e-6)
    assert rows["exact"]["recall_at_10"] == pytest.approx(1.0)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    # three panels side by side (mAP@100, mAP@R, ANN recall@10): the figure is about three times as wide as tall
    h, w = matplotlib.image.imread(out_png).shape[:2]
    assert w > 3.2 * h, (w, h)


def test_eval_on_file_dataset(tmp_path, capsys):
    rng = np.random.default_rng(1)
    write_fvecs(tmp_path / "toy_base.fvecs", rng.standard_normal((300, 6)))
    write_fvecs(tmp_path / "toy_query.fvecs", rng.standard_normal((12, 6)))
    rc = main(["eval", "--dataset", str(tmp_path / "toy_base.fvecs"), "--methods", "exact,hnsw:ef=16",
               "--json", str(tmp_path / "r.json"), "--latency-queries", "0"])
    assert rc == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    rows = {r["method"]: r for r in doc["results"]}
    assert rows["exact"]["map_at_r"] is None  # unlabelled: labelled metrics are null
    assert rows["exact"]["recall_at_10"] == pytest.approx(1.0)
    assert "hnsw:ef=16" in rows


def test_demo_tiny(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    rc = main(["demo", "--size", "tiny", "--out-dir", str(out_dir), "--latency-queries", "5",
               "--methods", "exact,hnsw,alpha_qe,dba", "--threads", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "[5/5]" in out and "graph:" in out
    for name in ("index.rvh", "graph.npz", "results.json", "results.png"):
        assert (out_dir / name).stat().st_size > 0
    with np.load(out_dir / "graph.npz") as g:
        assert g["labels"].shape == (1500,)
        indptr = g["layer0_indptr"]
        assert indptr.shape == (1501,) and indptr[-1] == g["layer0_indices"].shape[0]
        assert g["layer0_distances"].shape == g["layer0_indices"].shape


def test_bench_runs_scripts(tmp_path, capsys):
    bdir = tmp_path / "benchmarks"
    bdir.mkdir()
    (bdir / "bench_fake.py").write_text(textwrap.dedent("""
        import argparse, json
        ap = argparse.ArgumentParser()
        ap.add_argument("--quick", action="store_true")
        ap.add_argument("--json")
        a = ap.parse_args()
        print("fake quick" if a.quick else "fake full")
        if a.json:
            json.dump({"speed_ratio": 1.25, "n": 3}, open(a.json, "w"))
    """))
    rc = main(["bench", "--dir", str(bdir), "--quick", "--out-dir", str(tmp_path / "o")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "fake quick" in out and "speed_ratio=1.25" in out
    (bdir / "bench_broken.py").write_text("raise SystemExit(3)\n")
    assert main(["bench", "--dir", str(bdir), "--only", "broken"]) == 1
    assert main(["bench", "--dir", str(bdir), "--only", "nothere"]) == 2


def test_bench_finds_the_source_checkout(monkeypatch, tmp_path):
    from ruvector_hnsw import cli

    repo = cli._PACKAGE_DIR.parent
    assert cli._find_benchmarks(None) == repo / "benchmarks"  # the tests run from a checkout
    monkeypatch.chdir(tmp_path)
    assert cli._find_benchmarks(None) == repo / "benchmarks"  # found from the package, not the cwd


def test_bench_from_an_installed_wheel_needs_a_checkout(monkeypatch, tmp_path, capsys):
    from ruvector_hnsw import cli

    site = tmp_path / "site-packages"  # how a wheel install looks: no pyproject, no benchmarks/ next to it
    (site / "ruvector_hnsw").mkdir(parents=True)
    (site / "benchmarks").mkdir()  # another distribution's top-level "benchmarks" must not be picked up
    (site / "benchmarks" / "bench_other.py").write_text("raise SystemExit(7)\n")
    monkeypatch.setattr(cli, "_PACKAGE_DIR", site / "ruvector_hnsw")
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--quick"]) == 2
    _one_error_line(capsys.readouterr().err, "source checkout", "benchmarks/bench_", "--dir", "sdist")
    # run from inside a checkout (or an unpacked sdist), the cwd's benchmarks are used
    checkout = tmp_path / "src"
    (checkout / "benchmarks").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text('[project]\nname = "ruvector-hnsw"\n')
    (checkout / "benchmarks" / "bench_fake.py").write_text("print('fake ran')\n")
    monkeypatch.chdir(checkout)
    assert main(["bench"]) == 0
    assert "fake ran" in capsys.readouterr().out
    assert main(["bench", "--dir", str(tmp_path / "nowhere")]) == 2
    _one_error_line(capsys.readouterr().err, "nowhere")


def test_user_errors_one_line(vecs, tmp_path, capsys):
    d, _, _ = vecs
    idx = d / "i.rvh"
    assert main(["build", str(d / "base.fvecs"), "-o", str(idx), "--threads", "1"]) == 0
    capsys.readouterr()

    assert main(["build", str(d / "missing.fvecs"), "-o", str(d / "x.rvh")]) == 2
    _one_error_line(capsys.readouterr().err, "missing.fvecs", "No such file")

    raw = (d / "base.fvecs").read_bytes()
    (d / "trunc.fvecs").write_bytes(raw[:-5])
    assert main(["build", str(d / "trunc.fvecs"), "-o", str(d / "x.rvh")]) == 2
    _one_error_line(capsys.readouterr().err, "trunc.fvecs", "truncated")

    write_fvecs(d / "q5.fvecs", np.ones((3, 5)))
    assert main(["query", str(idx), str(d / "q5.fvecs")]) == 2
    _one_error_line(capsys.readouterr().err, "dimension")

    (d / "bad.rvh").write_bytes(idx.read_bytes()[:100])
    assert main(["info", str(d / "bad.rvh")]) == 2
    _one_error_line(capsys.readouterr().err, "bad.rvh")

    assert main(["eval", "--dataset", "clusters:tiny", "--methods", "exact,nosuch"]) == 2
    _one_error_line(capsys.readouterr().err, "nosuch")

    assert main(["eval", "--dataset", "nonsense", "--methods", "exact"]) == 2
    _one_error_line(capsys.readouterr().err, "nonsense")

    assert main(["query", str(idx), str(d / "q.fvecs"), "-o", str(d / "r.txt")]) == 2
    _one_error_line(capsys.readouterr().err, ".npz")

    (d / "v.csv").write_text("1,2\n")
    assert main(["build", str(d / "v.csv"), "-o", str(d / "x.rvh")]) == 2
    _one_error_line(capsys.readouterr().err, "unsupported")

    # argparse usage errors also exit 2 (argparse prints usage + one error line)
    assert main(["build", str(d / "base.fvecs"), "-o", str(d / "x.rvh"), "--M", "zero"]) == 2


def test_verbose_shows_traceback(vecs, capsys):
    d, _, _ = vecs
    assert main(["--verbose", "build", str(d / "missing.fvecs"), "-o", str(d / "x.rvh")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")
    assert main(["build", str(d / "missing.fvecs"), "-o", str(d / "x.rvh"), "-v"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_train_round_trip(tmp_path, capsys):
    from ruvector_hnsw.index import HNSWIndex
    from ruvector_hnsw.search import AttentionSearch

    out = tmp_path / "models" / "lg"
    rc = main(["train", "--dataset", "clusters:tiny", "--mechanism", "local_global", "--epochs", "2",
               "--candidates", "60", "--expand", "1", "--out", str(out), "--threads", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "epoch 1/2" in text and "epoch 2/2" in text and "s per epoch" in text
    assert "evaluation queries are not used" in text
    index = HNSWIndex.load(tmp_path / "models" / "lg.rvh")
    model = AttentionSearch.load(out, index)
    assert model.fitted and model.mechanism_name == "local_global" and model.candidates == 60
    doc = json.loads((tmp_path / "models" / "lg.history.json").read_text())
    ds = load("clusters:tiny", seed=0, gt_k=0)
    assert doc["training_queries"]["n_train_queries"] == ds.n_train_queries
    assert doc["training_queries"]["train_source"] == "dataset"
    assert len(doc["epochs"]) == len(doc["history"]["epoch"]) >= 1
    for rec in doc["epochs"]:
        assert {"epoch", "train_loss", "val_map_at_r", "epoch_time_s"} <= set(rec)
        assert rec["epoch_time_s"] > 0
    assert (tmp_path / "models" / "lg.curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # evaluate the saved model on the saved index
    rc = main(["eval", "--dataset", "clusters:tiny", "--methods", "hnsw", "--model", str(out),
               "--index", str(tmp_path / "models" / "lg.rvh"), "--json", str(tmp_path / "e.json"),
               "--latency-queries", "0", "--threads", "1"])
    assert rc == 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "e.json").read_text())["results"]}
    assert rows[f"model:path={out}"]["map_at_r"] > rows["hnsw"]["map_at_r"]

    # user errors stay one line
    capsys.readouterr()
    assert main(["train", "--dataset", "clusters:tiny", "--out", str(tmp_path / "x"), "--index",
                 str(tmp_path / "nothere.rvh")]) == 2
    _one_error_line(capsys.readouterr().err, "nothere.rvh")


def test_eval_splits_training_queries_off_a_file_dataset(tmp_path, capsys):
    rng = np.random.default_rng(2)
    centers = rng.standard_normal((5, 8)) * 3
    bl, ql = np.repeat(np.arange(5), 60), rng.integers(0, 5, 80)
    base = centers[bl] + rng.standard_normal((300, 8))
    queries = centers[ql] + rng.standard_normal((80, 8))
    np.savez(tmp_path / "lab.npz", base=base.astype(np.float32), queries=queries.astype(np.float32),
             base_labels=bl, query_labels=ql)
    rc = main(["eval", "--dataset", str(tmp_path / "lab.npz"), "--methods", "hnsw,linear_proj:epochs=2",
               "--train-queries", "30", "--json", str(tmp_path / "r.json"), "--latency-queries", "0",
               "--threads", "1"])
    assert rc == 0
    assert "moved 30 of the evaluation queries" in capsys.readouterr().out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["dataset"]["n_queries"] == 50  # evaluated on the other 50
    lp = {r["method"]: r for r in doc["results"]}["linear_proj:epochs=2"]
    assert lp["n_queries"] == 50 and lp["params"]["train_source"] == "split_queries"
    assert lp["params"]["n_train_queries"] == 30

    # train on the same split, then evaluate the saved model: the same 50 evaluation queries
    model = tmp_path / "m"
    assert main(["train", "--dataset", str(tmp_path / "lab.npz"), "--train-queries", "30", "--epochs", "1",
                 "--out", str(model), "--no-plot", "--threads", "1"]) == 0
    hist = json.loads((tmp_path / "m.history.json").read_text())
    assert hist["training_queries"]["train_source"] == "split_queries"
    assert hist["training_queries"]["n_train_queries"] == 30
    assert main(["eval", "--dataset", str(tmp_path / "lab.npz"), "--train-queries", "30", "--methods", "hnsw",
                 "--model", str(model), "--index", str(tmp_path / "m.rvh"), "--json", str(tmp_path / "r2.json"),
                 "--latency-queries", "0", "--threads", "1"]) == 0
    doc2 = json.loads((tmp_path / "r2.json").read_text())
    assert doc2["dataset"]["n_queries"] == 50
    assert doc2["settings"]["training_queries"]["train_source"] == "split_queries"


def test_demo_tiny_trains_then_reranks(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    rc = main(["demo", "--size", "tiny", "--out-dir", str(out_dir), "--latency-queries", "5", "--threads", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "s per epoch" in out
    rows = {r["method"]: r for r in json.loads((out_dir / "results.json").read_text())["results"]}
    assert {"exact", "hnsw", "alpha_qe", "dba"} <= set(rows)
    trained = [name for name in rows if name.startswith(("local_global", "linear_proj"))]
    assert len(trained) == 2
    for name in trained:
        assert rows[name]["map_at_r"] > rows["hnsw"]["map_at_r"]
        assert rows[name]["map_at_100"] is not None


def test_eval_hide_seen_reaches_the_split(tmp_path, capsys):
    out_json = tmp_path / "h.json"
    rc = main(["eval", "--dataset", "clusters", "--size", "tiny", "--protocol", "unseen", "--hide-seen", "0.5",
               "--methods", "hnsw", "--ef", "64", "--json", str(out_json), "--latency-queries", "0",
               "--threads", "1"])
    assert rc == 0
    assert "of the seen classes' too" in capsys.readouterr().out
    doc = json.loads(out_json.read_text())
    split = doc["dataset"]["params"]["class_split"]
    assert split["hide_seen"] == 0.5 and doc["settings"]["hide_seen"] == 0.5
    full = load("clusters", size="tiny", seed=0)
    n_unseen_items = int(np.isin(full.base_labels, split["unseen_classes"]).sum())
    assert split["n_base_hidden"] == n_unseen_items + round(0.5 * (full.n_base - n_unseen_items))


def test_eval_protocols(tmp_path, capsys):
    out_json = tmp_path / "u.json"
    rc = main(["eval", "--dataset", "clusters", "--size", "tiny", "--protocol", "unseen", "--unseen-fraction", "0.4",
               "--methods", "hnsw,diffusion,linear_proj:epochs=1", "--ef", "64", "--seed", "3", "--json",
               str(out_json), "--latency-queries", "0", "--threads", "1"])
    assert rc == 0
    assert "unseen-class protocol" in capsys.readouterr().out
    doc = json.loads(out_json.read_text())
    split = doc["dataset"]["params"]["class_split"]
    assert split["seed"] == 3 and split["unseen_fraction"] == 0.4 and doc["settings"]["protocol"] == "unseen"
    assert split["hide_seen"] == 0.0 and doc["settings"]["hide_seen"] == 0.0
    full = load("clusters", size="tiny", seed=3)
    n_classes = int(np.unique(full.base_labels).size)
    assert len(split["unseen_classes"]) == round(0.4 * n_classes)
    assert doc["dataset"]["n_queries"] == int(np.isin(full.query_labels, split["unseen_classes"]).sum())
    rows = {r["method"]: r for r in doc["results"]}
    assert rows["linear_proj:epochs=1"]["params"]["protocol"] == "unseen"
    assert rows["linear_proj:epochs=1"]["params"]["class_split"]["unseen_classes"] == split["unseen_classes"]
    # the classifier cannot rank unseen classes: a one-line error before anything is built
    rc = main(["eval", "--dataset", "clusters", "--size", "tiny", "--protocol", "unseen", "--methods",
               "hnsw,label_classifier", "--latency-queries", "0"])
    assert rc == 2
    _one_error_line(capsys.readouterr().err, "label_classifier", "seen-class protocol")
    # the default protocol is 'seen' and keeps every evaluation query
    rc = main(["eval", "--dataset", "clusters", "--size", "tiny", "--methods", "hnsw", "--json", str(out_json),
               "--latency-queries", "0", "--threads", "1", "--seed", "3"])
    assert rc == 0
    doc = json.loads(out_json.read_text())
    assert doc["settings"]["protocol"] == "seen" and "class_split" not in doc["dataset"]["params"]
    assert doc["dataset"]["n_queries"] == full.n_queries


# ---------------------------------------------------------------------------- your own files
_NAMES = np.array(["ant", "bee", "cat", "dog", "eel", "fox"])


@pytest.fixture
def files(tmp_path):
    """Labelled items and queries as a user would have them: .fvecs/.npy vectors, text labels (strings)."""
    rng = np.random.default_rng(5)
    centers = rng.standard_normal((6, 12)) * 2.0
    bl, ql, el = rng.integers(0, 6, 400), rng.integers(0, 6, 90), rng.integers(0, 6, 30)
    base = (centers[bl] + rng.standard_normal((400, 12))).astype(np.float32)
    learn = (centers[ql] + rng.standard_normal((90, 12))).astype(np.float32)
    evalq = (centers[el] + rng.standard_normal((30, 12))).astype(np.float32)
    write_fvecs(tmp_path / "base.fvecs", base)
    np.save(tmp_path / "learn.npy", learn)
    write_fvecs(tmp_path / "eval.fvecs", evalq)
    (tmp_path / "base_labels.txt").write_text("\n".join(_NAMES[bl]) + "\n")
    (tmp_path / "learn_labels.txt").write_text("\n".join(_NAMES[ql]) + "\n")
    return tmp_path, base, bl, learn, ql, evalq


def _train_files_args(d, out, *extra):
    return ["train", "--vectors", str(d / "base.fvecs"), "--labels", str(d / "base_labels.txt"),
            "--queries", str(d / "learn.npy"), "--query-labels", str(d / "learn_labels.txt"), "--epochs", "1",
            "--candidates", "40", "--out", str(out), "--no-plot", "--threads", "1", *extra]


def test_build_train_on_files_query_model_equals_the_library(files, capsys):
    from ruvector_hnsw.index import HNSWIndex
    from ruvector_hnsw.search import AttentionSearch

    d, *_ = files
    idx = d / "i.rvh"
    assert main(["build", str(d / "base.fvecs"), "-o", str(idx), "--threads", "1"]) == 0
    assert main(_train_files_args(d, d / "m", "--index", str(idx))) == 0
    out = capsys.readouterr().out
    assert "6 string labels" in out and f"loaded index {idx}" in out and f"query {idx}" in out
    assert not (d / "m.rvh").exists()  # trained against the given index: none built
    hist = json.loads((d / "m.history.json").read_text())
    assert hist["training_queries"]["label_vocabulary"] == sorted(_NAMES.tolist())
    assert hist["training_queries"]["n_train_queries"] == 90 and hist["index"] == str(idx)

    assert main(["query", str(idx), str(d / "eval.fvecs"), "--model", str(d / "m"), "-k", "10",
                 "-o", str(d / "r.npz"), "--threads", "1"]) == 0
    with np.load(d / "r.npz") as z:
        ids, scores = z["ids"], z["scores"]
    model = AttentionSearch.load(d / "m", HNSWIndex.load(idx), num_threads=1)
    assert model.fitted and model.candidates == 40
    ref_ids, ref_scores = model.search(np.asarray(read_fvecs(d / "eval.fvecs")), k=10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)
    hnsw_ids, _ = HNSWIndex.load(idx).search(read_fvecs(d / "eval.fvecs"), k=10)
    assert not np.array_equal(ids, hnsw_ids)  # re-ranked, not the plain HNSW lists

    # stdout and .npy outputs carry the same results; knob overrides reach the search
    capsys.readouterr()
    assert main(["query", str(idx), str(d / "eval.fvecs"), "--model", str(d / "m"), "-k", "3", "--format", "json",
                 "--threads", "1"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["ids"] == ids[:, :3].tolist() and np.allclose(js["scores"], scores[:, :3])
    assert main(["query", str(idx), str(d / "eval.fvecs"), "--model", str(d / "m"), "-k", "10", "--expand", "0",
                 "--candidates", "20", "-o", str(d / "r0.npy"), "--threads", "1"]) == 0
    ref0 = model.search(read_fvecs(d / "eval.fvecs"), k=10, expand=0, candidates=20)
    np.testing.assert_array_equal(np.load(d / "r0.npy"), ref0[0])
    np.testing.assert_array_equal(np.load(d / "r0_scores.npy"), ref0[1])


def test_train_on_files_builds_its_index(files, capsys):
    from ruvector_hnsw.index import HNSWIndex

    d, base, *_ = files
    assert main(_train_files_args(d, d / "models" / "own", "--metric", "cosine", "--seed", "4")) == 0
    assert "built HNSW index over 400 vectors (space=cosine)" in capsys.readouterr().out
    index = HNSWIndex.load(d / "models" / "own.rvh")
    assert len(index) == 400 and index.space == "cosine" and index.seed == 4
    unit = base[:5] / np.linalg.norm(base[:5], axis=1, keepdims=True)
    np.testing.assert_allclose(index.get_vectors(np.arange(5)), unit, rtol=0, atol=1e-6)  # item i = row i
    assert main(["query", str(d / "models" / "own.rvh"), str(d / "eval.fvecs"), "--model", str(d / "models" / "own"),
                 "-o", str(d / "r.npz"), "--threads", "1"]) == 0


def _capture_fit(monkeypatch):
    from ruvector_hnsw.search import AttentionSearch

    seen: dict = {}
    original = AttentionSearch.fit

    def spy(self, train_queries, labels=None, query_labels=None, **kw):
        seen.update(queries=np.asarray(train_queries), labels=labels, query_labels=query_labels, **kw)
        return original(self, train_queries, labels, query_labels, **kw)

    monkeypatch.setattr(AttentionSearch, "fit", spy)
    return seen


def test_train_on_files_passes_what_the_files_say(files, monkeypatch, capsys):
    d, _, bl, learn, ql, _ = files
    seen = _capture_fit(monkeypatch)
    odd = np.where(ql % 2 == 0, ql + 1, ql)  # the queries use half of the names: one vocabulary must serve both
    (d / "odd_labels.txt").write_text("\n".join(_NAMES[odd]) + "\n")
    args = _train_files_args(d, d / "m")
    args[args.index("--query-labels") + 1] = str(d / "odd_labels.txt")
    assert main(args) == 0
    np.testing.assert_array_equal(seen["queries"], learn)
    lab, qlab = seen["labels"], seen["query_labels"]
    # string labels mapped to ints consistently: equal ints exactly where the names are equal
    np.testing.assert_array_equal(lab[:, None] == qlab[None, :], bl[:, None] == odd[None, :])
    assert seen["positives"] is None

    # positives as text (one id list per line, a blank line = none), with --n-train (a seeded subset)
    lines = [" ".join(map(str, np.flatnonzero(bl == q)[:5])) for q in ql]
    lines[1] = ""
    (d / "pos.txt").write_text("\n".join(lines) + "\n")
    assert main(["train", "--vectors", str(d / "base.fvecs"), "--queries", str(d / "learn.npy"), "--positives",
                 str(d / "pos.txt"), "--epochs", "1", "--out", str(d / "p"), "--no-plot", "--threads", "1",
                 "--n-train", "60"]) == 0
    pos = seen["positives"]
    assert seen["labels"] is None and pos.shape == (60, 5) and seen["queries"].shape == (60, 12)
    rows = [int(np.flatnonzero((learn == q).all(1))[0]) for q in seen["queries"]]
    for r, got in zip(rows, pos, strict=True):
        want = [int(t) for t in lines[r].split()]
        assert got[got >= 0].tolist() == want
    assert json.loads((d / "p.history.json").read_text())["training_queries"]["relevance"] == "positives"
    # .npy positives, -1 padded
    np.save(d / "pos.npy", np.array([np.flatnonzero(bl == q)[:3] for q in ql]))
    assert main(["train", "--vectors", str(d / "base.fvecs"), "--queries", str(d / "learn.npy"), "--positives",
                 str(d / "pos.npy"), "--epochs", "1", "--out", str(d / "p2"), "--no-plot", "--threads", "1"]) == 0
    assert seen["positives"].shape == (90, 3)


def test_train_toolkit_flags_reach_fit(files, monkeypatch, capsys):
    from ruvector_hnsw.training import Curriculum

    d, *_ = files
    seen = _capture_fit(monkeypatch)
    assert main(_train_files_args(d, d / "k", "--loss", "triplet", "--margin", "0.3", "--miner", "semihard",
                                  "--curriculum", "1/0.2/4", "--regularizer", "laplacian", "--reg-weight", "0.5",
                                  "--optimizer", "adamw")) == 0
    assert (seen["loss"], seen["margin"], seen["miner"], seen["optimizer"]) == ("triplet", 0.3, "semihard", "adamw")
    assert (seen["regularizer"], seen["reg_weight"], seen["curriculum"]) == ("laplacian", 0.5, "1/0.2/4")
    doc = json.loads((d / "k.history.json").read_text())
    assert doc["settings"]["loss"] == "triplet" and doc["history"]["train_terms"][0].keys() >= {"triplet",
                                                                                                 "laplacian"}
    assert Curriculum.parse("1/0.2/4+2/0.07/16").to_list()[1]["num_negatives"] == 16
    capsys.readouterr()
    assert main(_train_files_args(d, d / "k2", "--curriculum", "1/0.2")) == 2
    _one_error_line(capsys.readouterr().err, "curriculum")


def test_train_on_files_errors(files, capsys):
    d, *_ = files
    (d / "short.txt").write_text("ant\nbee\n")
    (d / "broken.npy").write_bytes(b"\x93NUMPY garbage")
    (d / "pos_bad.txt").write_text("1 2\n" * 89 + "1 99999\n")
    (d / "pos_short.txt").write_text("1 2\n" * 10)
    base = ["--vectors", str(d / "base.fvecs"), "--queries", str(d / "learn.npy")]
    labels = ["--labels", str(d / "base_labels.txt"), "--query-labels", str(d / "learn_labels.txt")]
    cases = [
        (["--labels", str(d / "short.txt"), "--query-labels", str(d / "learn_labels.txt")],
         ("short.txt", "2 labels", "400 vectors")),
        (["--labels", str(d / "base_labels.txt"), "--query-labels", str(d / "short.txt")],
         ("short.txt", "2 labels", "90 queries")),
        (["--labels", str(d / "broken.npy"), "--query-labels", str(d / "learn_labels.txt")], ("broken.npy",)),
        (["--labels", str(d / "nothere.txt"), "--query-labels", str(d / "learn_labels.txt")],
         ("nothere.txt", "No such file")),
        (["--positives", str(d / "pos_short.txt")], ("pos_short.txt", "10 lines", "90 queries")),
        (["--positives", str(d / "pos_bad.txt")], ("99999", "not in the index")),
        ([*labels, "--positives", str(d / "pos_bad.txt")], ("either --positives",)),
        (["--labels", str(d / "base_labels.txt")], ("--query-labels",)),
    ]
    for extra, fragments in cases:
        assert main(["train", *base, *extra, "--out", str(d / "x"), "--no-plot", "--epochs", "1"]) == 2, extra
        _one_error_line(capsys.readouterr().err, *fragments)
    assert main(["train", "--dataset", "clusters:tiny", *base, *labels, "--out", str(d / "x")]) == 2
    _one_error_line(capsys.readouterr().err, "--dataset or your own files", "--vectors")
    assert main(["train", "--vectors", str(d / "base.fvecs"), *labels, "--out", str(d / "x")]) == 2
    _one_error_line(capsys.readouterr().err, "--queries")
    assert main(["train", "--out", str(d / "x")]) == 2
    _one_error_line(capsys.readouterr().err, "--dataset", "--vectors")
    write_fvecs(d / "q7.fvecs", np.ones((90, 7)))
    assert main(["train", "--vectors", str(d / "base.fvecs"), "--queries", str(d / "q7.fvecs"), *labels,
                 "--out", str(d / "x")]) == 2
    _one_error_line(capsys.readouterr().err, "dimension 7")
    assert not (d / "x.npz").exists()


def test_query_model_refuses_another_index(files, capsys):
    d, *_ = files
    assert main(_train_files_args(d, d / "m")) == 0
    rng = np.random.default_rng(9)
    write_fvecs(d / "other_items.fvecs", rng.standard_normal((400, 12)))
    write_fvecs(d / "d10.fvecs", rng.standard_normal((400, 10)))
    write_fvecs(d / "q10.fvecs", rng.standard_normal((5, 10)))
    for name, src, extra in (("items.rvh", "other_items.fvecs", []), ("dim.rvh", "d10.fvecs", []),
                             ("space.rvh", "base.fvecs", ["--space", "ip"]),
                             ("fewer.rvh", "base.fvecs", ["--max-rows", "399"]),
                             ("relinked.rvh", "base.fvecs", ["--seed", "77", "--M", "8"])):
        assert main(["build", str(d / src), "-o", str(d / name), "--threads", "1", *extra]) == 0
    capsys.readouterr()
    cases = {"items.rvh": ("other items",), "dim.rvh": ("dim=12", "dim=10"), "space.rvh": ("space='l2'", "'ip'"),
             "fewer.rvh": ("400 items", "399")}
    for name, fragments in cases.items():
        q = "q10.fvecs" if name == "dim.rvh" else "eval.fvecs"
        assert main(["query", str(d / name), str(d / q), "--model", str(d / "m"), "-o", str(d / "r.npz")]) == 2
        _one_error_line(capsys.readouterr().err, str(d / "m"), *fragments)
    assert not (d / "r.npz").exists()
    # the same items under other links (another seed and M): the model belongs to it
    assert main(["query", str(d / "relinked.rvh"), str(d / "eval.fvecs"), "--model", str(d / "m"), "-k", "4",
                 "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["query", str(d / "m.rvh"), str(d / "eval.fvecs"), "--model", str(d / "nothere")]) == 2
    _one_error_line(capsys.readouterr().err, "nothere")
    assert main(["query", str(d / "m.rvh"), str(d / "eval.fvecs"), "--model", str(d / "m"), "--ef", "50"]) == 2
    _one_error_line(capsys.readouterr().err, "--candidates")
    assert main(["query", str(d / "m.rvh"), str(d / "eval.fvecs"), "--expand", "0"]) == 2
    _one_error_line(capsys.readouterr().err, "--model")


# ---------------------------------------------------------------------------- info --plot, progress


def test_info_plot_writes_a_png(vecs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    import matplotlib.image as mpimg
    d, _, _ = vecs
    assert main(["build", str(d / "base.fvecs"), "-o", str(d / "i.rvh"), "--threads", "1"]) == 0
    png = d / "graph.png"
    assert main(["info", str(d / "i.rvh"), "--plot", str(png)]) == 0
    assert f"wrote {png}" in capsys.readouterr().out
    raw = png.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 20_000
    img = mpimg.imread(png)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 3 * img.shape[0]  # three panels side by side
    rgb = img[..., :3].reshape(-1, 3)
    assert (rgb.std(axis=0) > 0.05).all()
    assert len(np.unique((rgb * 255).astype(np.uint8), axis=0)) > 50  # drawn, not a blank canvas
    # --json keeps stdout JSON
    assert main(["info", str(d / "i.rvh"), "--json", "--plot", str(d / "g2.png")]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 400 and (d / "g2.png").exists()


def test_info_plot_layout_is_the_upper_layers(vecs):
    from ruvector_hnsw.eval import upper_layout
    from ruvector_hnsw.index import HNSWIndex

    _, base, _ = vecs
    index = HNSWIndex(8, M=4, seed=1, num_threads=1)
    index.add(base)
    g = index.graph()
    rows, xy, links = upper_layout(g)
    np.testing.assert_array_equal(rows, np.flatnonzero(g.levels >= 1))
    centred = base[rows].astype(np.float64) - base[rows].mean(0)
    _, s, _ = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.sort(np.linalg.svd(xy, compute_uv=False))[::-1], s[:2], rtol=1e-6)
    assert [layer for layer, _ in links] == list(range(1, g.num_layers))
    for layer, pairs in links:
        indptr, nbr = g.layer(layer)
        want = {(int(g.labels[r]), int(v)) for r in rows for v in nbr[indptr[r]:indptr[r + 1]]}
        got = {(int(g.labels[rows[a]]), int(g.labels[rows[b]])) for a, b in pairs}
        assert got == want and len(pairs) == len(want)


def test_info_plot_without_matplotlib(vecs, monkeypatch, capsys):
    import sys

    d, _, _ = vecs
    assert main(["build", str(d / "base.fvecs"), "-o", str(d / "i.rvh"), "--threads", "1"]) == 0
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["info", str(d / "i.rvh"), "--plot", str(d / "g.png")]) == 2
    _one_error_line(capsys.readouterr().err, "matplotlib", "ruvector-hnsw[plot]")


def test_progress_switch(monkeypatch):
    from ruvector_hnsw import cli

    parser = cli.build_parser()
    monkeypatch.setattr(cli.sys, "stderr", type("Tty", (), {"isatty": lambda self: True})())
    assert cli._progress_enabled(parser.parse_args(["info", "x"]))  # auto on a terminal
    assert not cli._progress_enabled(parser.parse_args(["info", "x", "--no-progress"]))
    assert not cli._progress_enabled(parser.parse_args(["--no-progress", "info", "x"]))
    monkeypatch.setattr(cli.sys, "stderr", type("Pipe", (), {"isatty": lambda self: False})())
    assert not cli._progress_enabled(parser.parse_args(["info", "x"]))  # auto, not a terminal
    assert cli._progress_enabled(parser.parse_args(["info", "x", "--progress", "always"]))


def test_progress_bars_show_rates_and_keep_results(files, capsys):
    pytest.importorskip("tqdm")
    from ruvector_hnsw.index import HNSWIndex

    d, *_ = files
    rng = np.random.default_rng(3)
    write_fvecs(d / "big.fvecs", rng.standard_normal((4100, 12)))
    assert main(["build", str(d / "big.fvecs"), "-o", str(d / "big.rvh"), "--threads", "1", "--M", "4",
                 "--ef-construction", "20", "--progress", "always"]) == 0
    assert re.search(r"vec/s|s/vec", capsys.readouterr().err)  # a bar with its rate
    assert main(["build", str(d / "big.fvecs"), "-o", str(d / "big2.rvh"), "--threads", "1", "--M", "4",
                 "--ef-construction", "20", "--no-progress"]) == 0
    assert "vec" not in capsys.readouterr().err
    q = rng.standard_normal((600, 12)).astype(np.float32)  # 600 queries: searched in chunks under a bar
    np.save(d / "q600.npy", q)
    assert main(["query", str(d / "big.rvh"), str(d / "q600.npy"), "-k", "7", "-o", str(d / "r.npz"),
                 "--threads", "1", "--progress", "always"]) == 0
    assert re.search(r"query/s|s/query", capsys.readouterr().err)
    ref = HNSWIndex.load(d / "big.rvh").search(q, k=7)
    with np.load(d / "r.npz") as z:
        np.testing.assert_array_equal(z["ids"], ref[0])
        np.testing.assert_array_equal(z["distances"], ref[1])
    # training shows the trainer's bar (batches, with a rate)
    assert main([*_train_files_args(d, d / "m"), "--progress", "always"]) == 0
    assert re.search(r"batch/s|s/batch", capsys.readouterr().err)


def test_analyze_prints_the_report_and_writes_json(vecs, tmp_path, capsys):
    from ruvector_hnsw.diagnostics import GeometryReport
    from ruvector_hnsw.index import HNSWIndex

    d, _, _ = vecs
    idx = d / "i.rvh"
    assert main(["build", str(d / "base.fvecs"), "-o", str(idx), "--threads", "1"]) == 0
    capsys.readouterr()
    out_json = tmp_path / "report.json"
    assert main(["analyze", str(idx), "--sample", "100", "--seed", "2", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    expected = GeometryReport.analyze(HNSWIndex.load(idx), sample=100, seed=2)
    assert expected.format() in out and "400 vectors x 8 dims" in out
    assert json.loads(out_json.read_text()) == json.loads(json.dumps(expected.to_dict()))

    for argv, fragment in (
        (["analyze", str(d / "missing.rvh")], "missing.rvh"),
        (["analyze", str(idx), "--sample", "0"], "--sample"),
        (["analyze", str(idx), "--sample", "-3"], "--sample"),
        (["analyze", str(idx), "--json", str(tmp_path / "r.txt")], ".json"),
        (["analyze", str(idx), "--json", str(tmp_path / "no" / "r.json")], "No such directory"),
        (["analyze", str(d / "base.fvecs")], "base.fvecs"),
    ):
        assert main(argv) == 2, argv
        _one_error_line(capsys.readouterr().err, fragment)


def test_code_dtype_flags(tmp_path, capsys, monkeypatch):
    from ruvector_hnsw import cli
    from ruvector_hnsw.index import HNSWIndex
    from ruvector_hnsw.search import AttentionSearch
    from ruvector_hnsw.search.quant import CODE_DTYPES

    assert cli._CODE_DTYPES == CODE_DTYPES
    out = tmp_path / "lg8"
    assert main(["train", "--dataset", "clusters:tiny", "--epochs", "1", "--candidates", "40", "--code-dtype", "int8",
                 "--out", str(out), "--threads", "1", "--no-plot"]) == 0
    model = AttentionSearch.load(out, HNSWIndex.load(tmp_path / "lg8.rvh"))
    assert model.code_dtype == "int8" and model.database_state().codes.store.raw.dtype == np.int8
    doc = json.loads((tmp_path / "lg8.history.json").read_text())
    assert doc["settings"]["code_dtype"] == "int8"
    capsys.readouterr()
    assert main(["train", "--dataset", "clusters:tiny", "--code-dtype", "int4", "--out", str(tmp_path / "x")]) == 2
    assert "int4" in capsys.readouterr().err
    # eval: the flag reaches every attention method that does not set its own
    assert cli._with_code_dtype("hnsw,local_global:epochs=1,rope:code_dtype=float32", "float16") == (
        "hnsw,local_global:epochs=1:code_dtype=float16,rope:code_dtype=float32")
    assert main(["eval", "--dataset", "clusters:tiny", "--methods", "local_global:epochs=1", "--code-dtype", "int8",
                 "--json", str(tmp_path / "e.json"), "--latency-queries", "0", "--threads", "1"]) == 0
    rows = json.loads((tmp_path / "e.json").read_text())["results"]
    assert rows[0]["params"]["code_dtype"] == "int8"
