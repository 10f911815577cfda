"""Every attention mechanism is an eval method; a name a training-free baseline holds gets ``_attention``."""

from ruvector_hnsw import eval as ev
from ruvector_hnsw.attention import MECHANISMS
from ruvector_hnsw.eval.methods import parse_method_spec


def test_every_mechanism_has_an_eval_method_and_names_do_not_collide() -> None:
    assert sorted(ev.ATTENTION_METHODS.values()) == sorted(MECHANISMS)
    assert ev.ATTENTION_METHODS["diffusion_attention"] == "diffusion"
    assert "diffusion" not in ev.TRAINED_METHODS  # the training-free diffusion re-ranking keeps its name
    assert {"local_global", "diffusion_attention", "mixed_curvature"} <= ev.TRAINED_METHODS
    assert parse_method_spec("diffusion_attention:epochs=1") == ("diffusion_attention", {"epochs": 1})
