r"""Granularity: which elements of a tensor share one ``scale`` and ``zero_point``.

Three granularities, from coarse to fine:

* **per tensor** (``axis=None``): one pair for the whole tensor;
* **per channel** (``axis=a``): one pair per slice along axis ``a``, so ``scale`` has shape
  ``(x.shape[a],)``;
* **per group** (``axis=a, group_size=g``): axis ``a`` is cut into $G = n_a / g$
  contiguous groups of ``g`` elements, and every group of every other index has its own
  pair: ``scale`` has ``x.shape`` with axis ``a`` replaced by ``G``. A weight ``w`` of
  shape (out, in) with ``axis=1, group_size=64`` has scales of shape (out, in // 64):

$$\hat{w}_{o,i} = s_{o,\lfloor i/g \rfloor}\,\big(w_{q,\,o,i} - z_{o,\lfloor i/g \rfloor}\big).$$

Groups are what make 4-bit (and lower) weights of language models usable: one outlier only
spoils the resolution of its own ``g`` neighbours instead of its whole output channel.
This module holds the shape logic only; :mod:`minquant.quant` does the arithmetic.

References:

* G. Park et al., "LUT-GEMM" / "nuQmm", 2022 (arXiv:2206.09557), and E. Frantar et al.,
  "GPTQ", ICLR 2023 (arXiv:2210.17323): group-wise weight quantization for LLMs.
* ``torch.ao.quantization.fx._decomposed.quantize_per_channel_group``: the same layout
  for a 2-D weight grouped along its last axis.
"""

import numpy as np


def check_axis(axis: int, ndim: int) -> int:
    """``axis`` as a non-negative index into ``ndim`` dimensions, or a ``ValueError``.

    >>> check_axis(-1, 3)
    2
    """
    if (
        not isinstance(axis, (int, np.integer))
        or isinstance(axis, bool)
        or not -ndim <= axis < ndim
    ):
        raise ValueError(
            f"axis must be an int in [{-ndim}, {ndim - 1}] for ndim={ndim}, got {axis!r}"
        )
    return int(axis) % ndim


def num_groups(length: int, group_size: int) -> int:
    """How many groups of ``group_size`` elements an axis of ``length`` elements holds.

    >>> num_groups(256, 64)
    4
    >>> num_groups(100, 64)
    Traceback (most recent call last):
    ...
    ValueError: the grouped axis has 100 elements, which is not divisible by group_size=64
    """
    if not isinstance(group_size, (int, np.integer)) or isinstance(group_size, bool):
        raise TypeError(f"group_size must be an int or None, got {type(group_size).__name__}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if length % group_size:
        raise ValueError(
            f"the grouped axis has {length} elements, which is not divisible by "
            f"group_size={group_size}"
        )
    return length // int(group_size)


def qparams_shape(
    shape: tuple[int, ...], axis: int | None, group_size: int | None
) -> tuple[int, ...]:
    """The shape of ``scale`` and ``zero_point`` for a tensor of ``shape``.

    >>> qparams_shape((8, 256), axis=None, group_size=None)  # per tensor
    (1,)
    >>> qparams_shape((8, 256), axis=0, group_size=None)     # per channel
    (8,)
    >>> qparams_shape((8, 256), axis=1, group_size=64)       # per group
    (8, 4)
    """
    shape = tuple(int(n) for n in shape)
    if axis is None:
        if group_size is not None:
            raise ValueError(f"group_size={group_size} needs an axis to group along, got axis=None")
        return (1,)
    axis = check_axis(axis, len(shape))
    if group_size is None:
        return (shape[axis],)
    groups = num_groups(shape[axis], group_size)
    return (*shape[:axis], groups, *shape[axis + 1 :])


def expand_groups(p: np.ndarray, axis: int, group_size: int) -> np.ndarray:
    """Repeat each per-group value ``group_size`` times along ``axis``: shape of ``x`` back.

    >>> expand_groups(np.array([[1.0, 2.0]]), axis=1, group_size=3)
    array([[1., 1., 1., 2., 2., 2.]])
    """
    return np.repeat(p, group_size, axis=axis)


def group_min_max(
    x: np.ndarray, axis: int | None, group_size: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Minimum and maximum of every quantization unit of ``x``, shaped :func:`qparams_shape`.

    The unit is the whole tensor (``axis=None``), each slice along ``axis``
    (``group_size=None``), or each group of ``group_size`` consecutive elements along
    ``axis``. An empty ``x`` has no minimum: ``ValueError``.

    >>> x = np.array([[1, -2, 3, 4], [5, 6, -8, 1]])
    >>> lo, hi = group_min_max(x, axis=1, group_size=2)  # (2, 2) each
    >>> lo.tolist(), hi.tolist()
    ([[-2, 3], [5, -8]], [[1, 4], [6, 1]])
    """
    x = np.asarray(x)
    if x.size == 0:
        raise ValueError(f"x must not be empty, got shape {x.shape}")
    if axis is None:
        qparams_shape(x.shape, axis, group_size)  # raises if group_size is set
        return np.atleast_1d(x.min()), np.atleast_1d(x.max())
    axis = check_axis(axis, x.ndim)
    moved = np.moveaxis(x, axis, -1)  # (..., n) the channel/group axis last
    if group_size is None:
        flat = moved.reshape(-1, moved.shape[-1])  # (rest, C)
        return flat.min(axis=0), flat.max(axis=0)
    groups = num_groups(x.shape[axis], group_size)
    grouped = moved.reshape((*moved.shape[:-1], groups, group_size))  # (..., G, g)
    lo = np.moveaxis(grouped.min(axis=-1), -1, axis)  # x.shape with n -> G
    hi = np.moveaxis(grouped.max(axis=-1), -1, axis)
    return lo, hi
