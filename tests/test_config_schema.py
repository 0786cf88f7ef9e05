"""Tests of the one schema of the model config (csrc/config_fields.h, issue 12 section 3).

The C struct tg_config, the extension's parser, its export (_C.Model.config) and
_C.config_fields() all come from one X-macro list; loader.build_config checks its result
against that list (tgllava.config_schema).  These tests check that the export has exactly
the schema's fields with the right Python types, that build_config produces only schema
keys and every key the modules need, that a stray or missing key fails clearly (in Python
and in the C parser), and that a loaded golden model's config equals the dict build_config
produced for it, field by field.
"""
import numpy as np
import pytest

import golden_util
from tgllava import _C, config_schema, configs, loader
from tgllava.errors import ShapeError, TgError

NEEDED = {"always", "has_fom or has_dp", "has_fom", "has_dp"}
PY_TYPES = {"int": int, "float": float}


# tg-qwen2-tiny in the full suite only: materializing its 0.5 GB of weights costs the fast tier 4 s, and the
# other two sets go through the same export and build_config code
SETS = [pytest.param(s, marks=pytest.mark.slow) if s == "tg-qwen2-tiny" else s for s in golden_util.SETS]


def built_config(name, dtype="float32"):
    """The dict build_config produces for golden set `name` (the one load() passes to the C core)."""
    llm, clip = golden_util.checkpoint(name)
    plan = loader.resolve_folders(llm, clip)
    return loader.build_config(plan["llm_config"], plan["clip_config"], plan["refs"], dtype, None,
                            plan["llm_config_path"], plan["clip_config_paths"])


def same_value(kind, a, b):
    """Equal as the C core stores it (float fields are C floats)."""
    return np.float32(a) == np.float32(b) if kind == "float" else a == b


def test_schema_rows():
    rows = _C.config_fields()
    names = [r[0] for r in rows]
    assert len(names) == len(set(names)) and len(rows) >= 47
    for name, kind, meaning, needed in rows:
        assert kind in PY_TYPES and needed in NEEDED and meaning.strip(), name
    assert list(config_schema.FIELDS) == names
    # one prefix per module, and the module flags / LLM fields are always needed
    for name, kind, meaning, needed in rows:
        if name.startswith("t_"):
            assert needed == "has_fom or has_dp", name
        elif name.startswith("q_"):
            assert needed == "has_fom", name
        elif name.startswith("p_"):
            assert needed == "has_dp", name
        else:
            assert needed == "always", name


@pytest.mark.parametrize("name", SETS)
def test_export_has_exactly_the_schema(name):
    cfg = golden_util.model(name)._core.config
    assert list(cfg) == list(config_schema.FIELDS)  # every field, in tg_config order
    for key, value in cfg.items():
        assert type(value) is PY_TYPES[config_schema.FIELDS[key].type], (key, value)


@pytest.mark.parametrize("name", SETS)
def test_loaded_config_equals_build_config(name):
    m = golden_util.model(name)
    built = built_config(name, m.dtype)
    assert set(built) <= set(config_schema.FIELDS)
    exported = m._core.config
    for key, field in config_schema.FIELDS.items():
        # a field build_config leaves out (not needed by this model's modules) is 0 in the C core
        want = built.get(key, 0)
        assert same_value(field.type, exported[key], want), (key, exported[key], want)
    assert m.sizes == exported


@pytest.mark.parametrize("name", SETS)
def test_build_config_keys_are_what_the_modules_need(name):
    built = built_config(name)
    needed = {k for k, f in config_schema.FIELDS.items() if config_schema.is_needed(f, built)}
    assert set(built) == needed
    if name.startswith("llava15"):
        assert not built["has_fom"] and not built["has_dp"]
        assert not any(k.startswith(("t_", "q_", "p_")) for k in built)
    else:
        assert built["has_fom"] and built["has_dp"] and built["t_vocab"] > 0


def test_build_config_with_a_stray_key_raises(monkeypatch):
    real = configs.vision_sizes

    def drifted(*args, **kwargs):
        return dict(real(*args, **kwargs), v_hidden_size=64)  # a key the C core has no field for

    monkeypatch.setattr(configs, "vision_sizes", drifted)
    with pytest.raises(TgError, match="v_hidden_size") as e:
        built_config("llava15-tiny")
    assert "config_fields" in str(e.value)


def test_check_refuses_stray_missing_and_mistyped_keys():
    good = built_config("tg-vicuna-tiny")
    assert config_schema.check(dict(good)) == good
    with pytest.raises(TgError, match="t_vocabulary"):
        config_schema.check(dict(good, t_vocabulary=49408))
    for key in ("hidden", "t_vocab", "q_queries", "p_latents", "dtype"):
        partial = {k: v for k, v in good.items() if k != key}
        with pytest.raises(TgError, match=key):
            config_schema.check(partial)
    with pytest.raises(ShapeError, match="hidden"):
        config_schema.check(dict(good, hidden=16.5))
    with pytest.raises(ShapeError, match="has_fom"):
        config_schema.check(dict(good, has_fom=True))
    # a plain LLaVA needs no text tower, Q-former or perceiver field
    plain = {k: v for k, v in good.items() if not k.startswith(("t_", "q_", "p_"))}
    config_schema.check(dict(plain, has_fom=0, has_dp=0))
    with pytest.raises(TgError, match="q_layers"):
        config_schema.check(dict(plain, has_fom=1, has_dp=0, **{k: good[k] for k in good if k.startswith("t_")}))


def test_c_parser_follows_the_schema():
    good = built_config("tg-vicuna-tiny")
    core = _C.Model(good, "cpu")  # registers the tensors, allocates no weight
    again = _C.Model(core.config, "cpu")  # the complete export parses back to the same config
    assert again.config == core.config
    with pytest.raises(ShapeError, match="unknown field 'bogus'"):
        _C.Model(dict(good, bogus=1), "cpu")
    with pytest.raises(ShapeError, match="missing field hidden"):
        _C.Model({k: v for k, v in good.items() if k != "hidden"}, "cpu")
    with pytest.raises(ShapeError, match="missing field p_latents"):
        _C.Model({k: v for k, v in good.items() if k != "p_latents"}, "cpu")
    with pytest.raises(ShapeError, match="hidden must be an integer"):
        _C.Model(dict(good, hidden="16"), "cpu")
    with pytest.raises(ShapeError, match="range of a C int"):
        _C.Model(dict(good, hidden=1 << 40), "cpu")
    with pytest.raises(ShapeError, match="rms_eps must be a number"):
        _C.Model(dict(good, rms_eps=None), "cpu")
    # TG fields may be left out of a plain LLaVA config (they are 0 in the core)
    plain = _C.Model(built_config("llava15-tiny"), "cpu").config
    assert all(plain[k] == 0 for k in plain if k.startswith(("t_", "q_", "p_")))


def test_text_tower_ids_are_bounded_by_the_exported_vocabulary():
    m = golden_util.model("tg-vicuna-tiny")
    V = m.sizes["t_vocab"]
    m.text_tower(np.array([0, V - 1]))
    with pytest.raises(ShapeError, match=rf"outside \[0, {V}\)"):
        m.text_tower(np.array([0, V]))
