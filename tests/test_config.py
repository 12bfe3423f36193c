"""Config from metadata: values come from the file, inconsistent ones are refused (RELIABILITY row 18)."""

import pytest

from perro_pastor.config import Config
from perro_pastor.errors import ModelFormatError

GOOD = {"general.architecture": "llama", "llama.embedding_length": 576, "llama.block_count": 30,
        "llama.feed_forward_length": 1536, "llama.attention.head_count": 9,
        "llama.attention.head_count_kv": 3, "llama.context_length": 8192, "llama.vocab_size": 49152,
        "llama.rope.freq_base": 100000.0, "llama.attention.layer_norm_rms_epsilon": 1e-5}


def make(**changes):
    md = dict(GOOD)
    md.update(changes)
    return Config.from_metadata(md, "m.gguf")


def test_values_come_from_metadata():
    cfg = make(**{"llama.attention.sliding_window": 4096})
    assert (cfg.dim, cfg.n_layers, cfg.head_size, cfg.kv_dim, cfg.kv_mul) == (576, 30, 64, 192, 3)
    assert cfg.rope_base == 100000.0 and cfg.sliding_window == 4096 and cfg.rms_eps == 1e-5


@pytest.mark.parametrize("changes,fragment", [
    ({"general.architecture": "gpt2"}, "unsupported architecture 'gpt2'"),
    ({"general.architecture": None}, "unsupported architecture None"),
    ({"llama.attention.head_count": 7}, "not divisible by head_count 7"),
    ({"llama.attention.head_count_kv": 2}, "not a multiple of head_count_kv 2"),
    ({"llama.block_count": 10**6}, "block_count = 1000000"),
    ({"llama.context_length": 2**40}, "context_length = 1099511627776"),
    ({"llama.embedding_length": 0}, "embedding_length = 0"),
    ({"llama.embedding_length": "576"}, "must be an integer"),
    ({"llama.rope.freq_base": float("nan")}, "finite number"),
    ({"llama.rope.scaling.type": "yarn"}, "unsupported rope scaling type 'yarn'"),
    ({"llama.attention.head_count_kv": 0}, "head_count_kv = 0"),
    ({"llama.vocab_size": "many"}, "vocab_size must be an integer"),
    ({"llama.vocab_size": 0}, "vocab_size = 0"),
])
def test_inconsistent_hparams_are_refused(changes, fragment):
    with pytest.raises(ModelFormatError, match="m.gguf") as err:
        make(**changes)
    assert fragment in str(err.value)


def test_missing_key_is_named():
    md = dict(GOOD)
    del md["llama.block_count"]
    with pytest.raises(ModelFormatError, match="missing metadata key llama.block_count"):
        Config.from_metadata(md, "m.gguf")
