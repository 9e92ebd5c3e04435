"""The train state as orbax saves it: typed PRNG keys as uint32 key data, abstract restore targets, and the
comparison of a template with the saved tree's metadata (one line per leaf that differs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["abstract", "compare_to_saved", "is_key", "key_data", "key_impl", "savable"]


def is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def key_impl(x: Any) -> Any:
    """Key implementation of a typed key array or of a ShapeDtypeStruct with a key dtype."""
    if isinstance(x, jax.Array):
        return jax.random.key_impl(x)
    found = []
    jax.eval_shape(lambda k: (found.append(jax.random.key_impl(k)), 0)[1], x)
    return found[0]


def key_data(x: Any) -> Any:
    """uint32 key data of a typed key array; a ShapeDtypeStruct of it for an abstract key."""
    if isinstance(x, jax.Array):
        return jax.random.key_data(x)
    data = jax.eval_shape(jax.random.key_data, x)
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=getattr(x, "sharding", None))


def savable(tree: Any) -> Any:
    """The pytree with typed PRNG keys replaced by their uint32 key data."""
    return jax.tree.map(lambda x: key_data(x) if is_key(x) else x, tree)


def abstract(template: Any) -> Any:
    """Restore target for orbax: shapes/dtypes/shardings of the (key-data converted) template."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, savable(template))


def _path_name(path: Sequence[Any]) -> str:
    """Orbax's leaf name: key path elements joined with '.'."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return ".".join(parts)


def _describe(shape: Any, dtype: Any) -> str:
    return f"{np.dtype(dtype).name}{tuple(shape)}"


def compare_to_saved(template: Any, saved: Mapping[str, tuple[tuple[int, ...], Any, bool]]) -> list[str]:
    """Differences between the template leaves (already key-data converted) and the saved leaves
    (name -> (shape, dtype, saved as a Python scalar)); Python scalars are compared by kind only."""
    problems = []
    seen = set()
    for path, x in jax.tree_util.tree_flatten_with_path(template)[0]:
        name = _path_name(path)
        seen.add(name)
        if name not in saved:
            problems.append(f"{name}: in the template, not in the checkpoint")
            continue
        shape, dtype, scalar = saved[name]
        if scalar:
            if np.dtype(getattr(x, "dtype", np.asarray(x).dtype)).kind != np.dtype(dtype).kind:
                problems.append(f"{name}: checkpoint Python scalar {np.dtype(dtype).name}, template {x!r}")
        elif hasattr(x, "dtype") and hasattr(x, "shape"):
            if tuple(x.shape) != tuple(shape) or np.dtype(x.dtype) != np.dtype(dtype):
                problems.append(
                    f"{name}: checkpoint {_describe(shape, dtype)}, template {_describe(x.shape, x.dtype)}"
                )
        else:
            problems.append(f"{name}: checkpoint {_describe(shape, dtype)}, template Python {type(x).__name__}")
    problems += [f"{name}: in the checkpoint, not in the template" for name in sorted(set(saved) - seen)]
    return problems
