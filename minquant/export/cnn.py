r"""Save and load the integer CNN (:class:`~minquant.qnn.QuantizedModel`), kind ``quantized_cnn``.

What a file holds, per Conv2d/Linear step ``i`` (``i.`` prefixes the array names):

* ``i.w_packed``: the weight codes at ``weight_bits`` bits each, packed as a little-endian
  bit stream (``b`` two's-complement bits per code, first code in the lowest bits; for
  4 bits exactly :func:`minquant.packing.pack_int4`, for 8 bits the int8 codes themselves);
* ``i.w_scale`` float32 (out,), ``i.bias`` float32 (out,) when the layer has one;
* the requantizer's arrays: ``i.multiplier`` int32 / ``i.shift`` int8 / ``i.bias_folded``
  int32 (``"fixedpoint"``) or ``i.acc_scale`` float32 / ``i.zp_correction`` int32
  (``"float"``): what an integer-only runtime reads, kept so that a reader in another
  language needs no floating point to run the model;

and in the metadata the :class:`~minquant.qnn.model.QuantConfig`, the input's and every
step's output scale, zero point and range, each step's type and hyper-parameters.

Loading rebuilds every layer with its constructor from (codes, weight scale, float bias,
qparams) and then checks that the requantizer arrays it computes are the stored ones, bit
for bit: a file from a minquant that requantizes differently is an error, not a different
model. The float model is not stored: the loaded model's ``float_model`` holds the
dequantized weights $w_q s_w$ (so ``simulate`` is unchanged; ``layer_report`` then measures
against the dequantized weights, not the original float ones).
"""

import copy

import numpy as np

from minquant import nn
from minquant.export.npz import FileFormatError
from minquant.packing import pack_int4, unpack_int4
from minquant.qnn import (
    QParams,
    QuantizedConv2d,
    QuantizedFlatten,
    QuantizedLinear,
    QuantizedMaxPool2d,
    QuantizedModel,
    QuantizedReLU,
    Step,
)
from minquant.qnn.model import QuantConfig

__all__ = ["OBJECT_TYPE", "from_arrays", "pack_codes", "to_arrays", "unpack_codes"]

OBJECT_TYPE = QuantizedModel


def _init_rng() -> np.random.Generator:
    # NOTE: only fills the float layers' initial weights, which the stored ones overwrite.
    return np.random.default_rng(0)


def pack_codes(w_q: np.ndarray, bits: int) -> np.ndarray:
    r"""Signed codes at ``bits`` bits each, packed little-endian: uint8 $\lceil n b / 8\rceil$.

    Code $i$ occupies bits $[i b, (i + 1) b)$ of the stream, as its $b$-bit two's complement.
    8 bits keep the int8 codes (flattened); 4 bits is :func:`~minquant.packing.pack_int4`.

    >>> pack_codes(np.array([1, -2, -1], dtype=np.int8), 2)   # 01 | 10 << 2 | 11 << 4
    array([57], dtype=uint8)
    >>> unpack_codes(np.array([57], dtype=np.uint8), 2, (3,))
    array([ 1, -2, -1], dtype=int8)
    """
    w_q = np.asarray(w_q)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if w_q.size and (w_q.min() < qmin or w_q.max() > qmax):
        raise ValueError(
            f"weight codes in [{w_q.min()}, {w_q.max()}] do not fit {bits} bits ([{qmin}, {qmax}])"
        )
    if bits == 8:
        return w_q.astype(np.int8).ravel()  # (n,)
    if bits == 4:
        return pack_int4(w_q)  # (ceil(n / 2),)
    fields = (w_q.ravel().astype(np.int16) & (2**bits - 1)).astype(np.uint8)  # (n,)
    bit_planes = (fields[:, None] >> np.arange(bits, dtype=np.uint8)) & 1  # (n, bits) LSB first
    return np.packbits(bit_planes.ravel(), bitorder="little")  # (ceil(n b / 8),)


def unpack_codes(packed: np.ndarray, bits: int, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`pack_codes`: int8 codes of ``shape``."""
    count = int(np.prod(shape))
    if bits == 8:
        return packed.astype(np.int8).reshape(shape)
    if bits == 4:
        return unpack_int4(packed, shape)
    bit_planes = np.unpackbits(packed, count=count * bits, bitorder="little")  # (n * bits,)
    weights = (1 << np.arange(bits, dtype=np.int16)).astype(np.int16)  # (bits,)
    fields = bit_planes.reshape(count, bits).astype(np.int16) @ weights  # (n,) in [0, 2^b)
    # NOTE: two's complement: a field with its top bit set stands for field - 2^b.
    values = np.where(fields >= 2 ** (bits - 1), fields - 2**bits, fields)  # (n,)
    return values.astype(np.int8).reshape(shape)


def _qparams_meta(qp: QParams) -> dict:
    # NOTE: json writes a float as its shortest round-trip repr: the scale comes back exact.
    return {"scale": qp.scale, "zero_point": qp.zero_point, "qmin": qp.qmin, "qmax": qp.qmax}


def _gemm_step(i: int, step: Step, bits: int) -> tuple[dict, dict[str, np.ndarray]]:
    module = step.module
    w_q = np.ascontiguousarray(module.w_t.T)  # (out, K) int8
    if isinstance(module, QuantizedConv2d):
        shape = [module.out_channels, module.in_channels, module.kernel_size, module.kernel_size]
        layer = {"stride": module.stride, "padding": module.padding}
    else:
        shape = [module.out_features, module.in_features]
        layer = {}
    float_layer = step.float_layers[0]
    layer.update(
        type=type(module).__name__,
        weight_shape=shape,
        relu=module.relu,
        has_bias=float_layer.bias is not None,
        input_qparams=_qparams_meta(module.input_qparams),
    )
    arrays = {
        f"{i}.w_packed": pack_codes(w_q, bits),
        f"{i}.w_scale": module.w_scale.astype(np.float32),
    }
    if float_layer.bias is not None:
        arrays[f"{i}.bias"] = float_layer.bias.data.astype(np.float32)
    arrays.update({f"{i}.{name}": a for name, a in module.requant.arrays().items()})
    return layer, arrays


def to_arrays(qmodel: QuantizedModel) -> tuple[dict, dict[str, np.ndarray]]:
    """``(meta, arrays)`` of a :class:`~minquant.qnn.QuantizedModel` (see the module doc)."""
    config = qmodel.config
    steps, arrays = [], {}
    for i, step in enumerate(qmodel.steps):
        module = step.module
        if isinstance(module, (QuantizedConv2d, QuantizedLinear)):
            layer, layer_arrays = _gemm_step(i, step, config.weight_bits)
            arrays.update(layer_arrays)
        elif isinstance(module, QuantizedMaxPool2d):
            layer = {"type": "QuantizedMaxPool2d", "kernel_size": module.kernel_size}
            layer["stride"] = module.stride
        elif isinstance(module, (QuantizedFlatten, QuantizedReLU)):
            layer = {"type": type(module).__name__}
        else:
            raise TypeError(f"save: step {i} is a {type(module).__name__}, which has no saver")
        layer["output_qparams"] = _qparams_meta(step.qparams)
        steps.append(layer)
    meta = {
        "config": {name: getattr(config, name) for name in config.__dataclass_fields__},
        "input_qparams": _qparams_meta(qmodel.quantize.qparams),
        "steps": steps,
    }
    return meta, arrays


def _check_requant(i: int, module: object, arrays: dict[str, np.ndarray]) -> None:
    for name, rebuilt in module.requant.arrays().items():
        stored = arrays.get(f"{i}.{name}")
        if stored is None or stored.dtype != rebuilt.dtype or not np.array_equal(stored, rebuilt):
            raise FileFormatError(
                f"load: step {i}: the stored requantizer array {name!r} differs from the one "
                "recomputed from the weights and qparams (a file from an incompatible version)"
            )


def _load_gemm(i: int, layer: dict, config: QuantConfig, arrays: dict) -> Step:
    shape = tuple(layer["weight_shape"])
    w_q = unpack_codes(arrays[f"{i}.w_packed"], config.weight_bits, shape)  # int8 (out, ...)
    w_scale = arrays[f"{i}.w_scale"]  # (out,) float32
    bias = arrays[f"{i}.bias"] if layer["has_bias"] else None
    x_qp, y_qp = QParams(**layer["input_qparams"]), QParams(**layer["output_qparams"])
    gemm_args = (w_q, w_scale, bias, x_qp, y_qp)
    mode = (config.requant, config.rounding)
    if layer["type"] == "QuantizedConv2d":
        stride, padding = layer["stride"], layer["padding"]
        module = QuantizedConv2d(*gemm_args, stride, padding, layer["relu"], *mode)
        float_layer = nn.Conv2d(
            shape[1], shape[0], shape[2], stride, padding, bias is not None, rng=_init_rng()
        )
    else:
        module = QuantizedLinear(*gemm_args, layer["relu"], *mode)
        float_layer = nn.Linear(shape[1], shape[0], bias is not None, rng=_init_rng())
    _check_requant(i, module, arrays)
    axis_scale = w_scale.reshape(-1, *[1] * (len(shape) - 1))  # (out, 1, ...)
    float_layer.weight = nn.Parameter(w_q.astype(np.float32) * axis_scale)
    if bias is not None:
        float_layer.bias = nn.Parameter(bias.copy())
    sim = copy.deepcopy(float_layer)
    sim_bias = module.requant.simulated_bias()
    if sim_bias is not None:
        # NOTE: the fixed-point simulation adds the int32 bias b_q s_x s_w, as convert_group.
        sim.bias = nn.Parameter(sim_bias)
    float_layers = [float_layer] + ([nn.ReLU()] if layer["relu"] else [])
    return Step(float_layers=float_layers, module=module, sim_layer=sim, qparams=y_qp)


def from_arrays(meta: dict, arrays: dict[str, np.ndarray]) -> QuantizedModel:
    """The :class:`~minquant.qnn.QuantizedModel` that :func:`to_arrays` described."""
    try:
        config = QuantConfig(**meta["config"])
        input_qp = QParams(**meta["input_qparams"])
        steps = []
        for i, layer in enumerate(meta["steps"]):
            kind = layer["type"]
            y_qp = QParams(**layer["output_qparams"])
            if kind in ("QuantizedConv2d", "QuantizedLinear"):
                step = _load_gemm(i, layer, config, arrays)
            elif kind == "QuantizedMaxPool2d":
                module = QuantizedMaxPool2d(layer["kernel_size"], layer["stride"])
                float_layer = nn.MaxPool2d(layer["kernel_size"], layer["stride"])
                step = Step([float_layer], module, None, y_qp)
            elif kind == "QuantizedFlatten":
                step = Step([nn.Flatten()], QuantizedFlatten(), None, y_qp)
            elif kind == "QuantizedReLU":
                step = Step([nn.ReLU()], QuantizedReLU(y_qp.zero_point), None, y_qp)
            else:
                raise FileFormatError(
                    f"load: step {i} has an unknown layer type {kind!r}; this minquant knows "
                    "QuantizedConv2d, QuantizedLinear, QuantizedMaxPool2d, QuantizedFlatten, "
                    "QuantizedReLU"
                )
            steps.append(step)
    except KeyError as err:
        raise FileFormatError(f"load: the metadata lacks the field {err}") from err
    except TypeError as err:
        raise FileFormatError(f"load: the metadata does not match this version: {err}") from err
    float_model = nn.Sequential(*[layer for step in steps for layer in step.float_layers])
    return QuantizedModel(steps, input_qp, float_model.eval(), config)
