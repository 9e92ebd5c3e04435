"""The config machinery: strict YAML -> dataclass loading, overrides and read tracking."""

import dataclasses

import pytest

from jtd3.config import (
    ConfigError,
    ConfigNode,
    apply_overrides,
    check,
    choice,
    from_dict,
    leaf_keys,
    nested,
    param,
    to_dict,
    track_reads,
)


@dataclasses.dataclass(frozen=True)
class Inner(ConfigNode):
    lr: float = param(3e-4, "learning rate")
    sizes: tuple[int, ...] = param((256, 256))

    def __post_init__(self):
        check(self.lr > 0, "inner.lr", self.lr, "> 0")


@dataclasses.dataclass(frozen=True)
class Outer(ConfigNode):
    norm: str = choice("layernorm", ("none", "layernorm", "batchnorm", "hybrid"))
    steps: int = 10
    flag: bool = False
    maybe: float | None = None
    inner: Inner = nested(Inner)


def test_defaults_and_round_trip():
    cfg = from_dict(Outer, {})
    assert cfg == Outer()
    assert from_dict(Outer, to_dict(cfg)) == cfg
    assert to_dict(cfg)["inner"]["sizes"] == [256, 256]


def test_types_are_converted_and_checked():
    cfg = from_dict(Outer, {"inner": {"lr": "1e-4", "sizes": [64]}, "maybe": 2})
    assert cfg.inner.lr == 1e-4 and cfg.inner.sizes == (64,) and cfg.maybe == 2.0
    with pytest.raises(ConfigError, match=r"'steps' = 'ten'.*integer"):
        from_dict(Outer, {"steps": "ten"})
    with pytest.raises(ConfigError, match="'flag'"):
        from_dict(Outer, {"flag": 1})
    with pytest.raises(ConfigError, match=r"inner.lr.*> 0"):
        from_dict(Outer, {"inner": {"lr": -1.0}})


def test_unknown_key_and_bad_choice_are_named():
    with pytest.raises(ConfigError, match=r"inner\.lrr.*valid keys: lr, sizes"):
        from_dict(Outer, {"inner": {"lrr": 1.0}})
    with pytest.raises(ConfigError, match=r"'norm' = 'groupnorm'.*'none', 'layernorm', 'batchnorm', 'hybrid'"):
        from_dict(Outer, {"norm": "groupnorm"})


def test_overrides():
    d = apply_overrides({"inner": {"lr": 1.0}}, ["inner.sizes=[32, 32]", "steps=5", "norm=none"], Outer)
    cfg = from_dict(Outer, d)
    assert cfg.inner.sizes == (32, 32) and cfg.steps == 5 and cfg.norm == "none" and cfg.inner.lr == 1.0
    with pytest.raises(ConfigError, match="unknown config key 'inner.lrr'"):
        apply_overrides({}, ["inner.lrr=1"], Outer)
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["steps"], Outer)


def test_read_tracking_ignores_hash_and_repr():
    cfg = Outer()
    with track_reads() as reads:
        hash(cfg), repr(cfg), cfg == Outer(), to_dict(cfg), dataclasses.replace(cfg, steps=3)
        assert reads == set()  # hashing, printing, comparing, saving and copying are not the code using a key
        _ = cfg.inner.lr
    assert reads == {("Outer", "inner"), ("Inner", "lr")}
    assert set(leaf_keys(Outer)) == {"norm", "steps", "flag", "maybe", "inner.lr", "inner.sizes"}


@dataclasses.dataclass(frozen=True)
class Nested(ConfigNode):
    boxes: tuple[tuple[float, float, float], ...] = param(((1.0, 2.0, 3.0),))
    pair: tuple[int, str] = param((1, "a"))


def test_nested_and_fixed_length_tuples():
    cfg = from_dict(Nested, {"boxes": [[1, 2, 3], [4.5, 5, 6]], "pair": [2, "b"]})
    assert cfg.boxes == ((1.0, 2.0, 3.0), (4.5, 5.0, 6.0)) and cfg.pair == (2, "b")
    with pytest.raises(ConfigError, match=r"boxes\[1\]"):
        from_dict(Nested, {"boxes": [[1, 2, 3], [1, 2]]})
    with pytest.raises(ConfigError, match=r"pair\[0\]"):
        from_dict(Nested, {"pair": ["x", "b"]})


def test_read_tracking_hook_exists_only_while_tracking():
    from jtd3.envs.config import EnvConfig

    cfg = EnvConfig()
    assert "__getattribute__" not in ConfigNode.__dict__  # plain attribute access on the hot paths
    with pytest.raises(RuntimeError):
        with track_reads() as outer:
            with track_reads():
                assert "__getattribute__" in ConfigNode.__dict__
            assert "__getattribute__" in ConfigNode.__dict__  # the outer tracking still records
            _ = cfg.scenario
            raise RuntimeError("a failing body still removes the hook")
    assert ("EnvConfig", "scenario") in outer
    assert "__getattribute__" not in ConfigNode.__dict__
