r"""Save and load the language model with weight-only layers, kind ``weight_only_lm``.

A :class:`~minquant.nn.TransformerLM` as :func:`minquant.llm.quantize_weights` returns it
(any ``method``: RTN, GPTQ, AWQ give the same layers): every matrix is a
:class:`~minquant.llm.weight_only.WeightOnlyLinear` or an ordinary float ``Linear``. A
float model (no layer quantized) is the special case with no weight-only layer. A file
holds, for the model's parameter names (``tok_embeddings.weight``,
``layers.0.attn_norm.weight``, ... as ``state_dict`` names them):

* every float parameter (embeddings, norms, any ``Linear`` left float, biases) as float32;
* for each weight-only layer ``L`` (e.g. ``layers.0.attn.wq``):

  - ``L.codes``: the codes $q$ (out, in), C order, as one little-endian bit stream of
    ``bits``-bit fields (:func:`minquant.packing.pack_bits`; two's complement when
    symmetric): $\lceil \text{out} \cdot \text{in} \cdot b / 8 \rceil$ bytes;
  - ``L.scale`` float16 (out, in / g) and, when asymmetric, ``L.zero_point`` uint8
    (out, in / g): the arrays the layer holds;

and in the metadata the :class:`~minquant.nn.TransformerConfig` and, per weight-only
layer, its ``in_features``, ``out_features``, ``bits``, ``group_size``, ``symmetric``.

$$\hat{W}_{o,i} = s_{o,\lfloor i/g \rfloor}\,\big(q_{o,i} - z_{o,\lfloor i/g \rfloor}\big)$$

is all a reader in another language needs. The codes are stored in this plain bit stream,
not in the byte order the GEMV kernel reads (``WeightOnlyLinear.packed``, interleaved for
SIMD; :func:`minquant.kernels.gemv.pack_weight`): the kernel's order may change with the
kernel, a file's must not. Saving unpacks the layer's codes, loading packs them again for
this minquant's kernel, so the round trip is bit-exact (same codes, scales, zero points:
same logits). The file is as large as the weights really are: the codes at their bit
width, float16 scales, uint8 zero points.

Not stored: the key-value cache (a loaded model starts with caches disabled) and
gradients. Any other layer (e.g. a ``FormatLinear`` of ``quantize_weights(format=...)``)
is refused by :func:`to_arrays` with a ``TypeError``.

>>> import tempfile, pathlib
>>> import minquant as mq
>>> config = TransformerConfig(vocab_size=10, dim=64, n_layers=1, n_heads=2, hidden_dim=128)
>>> lm = TransformerLM(config, rng=np.random.default_rng(0))
>>> qlm = mq.llm.quantize_weights(lm, bits=4, group_size=32)
>>> path = pathlib.Path(tempfile.mkdtemp()) / "lm_w4.npz"
>>> qlm.save(path)
>>> tokens = np.array([[1, 2, 3, 4]])
>>> bool(np.array_equal(mq.load(path)(tokens), qlm(tokens)))
True
"""

import dataclasses

import numpy as np

from minquant.export.npz import FileFormatError
from minquant.kernels.gemv import pack_weight, unpack_weight
from minquant.llm.weight_only import WeightOnlyLinear
from minquant.nn import Linear, Module, TransformerConfig, TransformerLM
from minquant.packing import pack_bits, unpack_bits

__all__ = ["OBJECT_TYPE", "from_arrays", "to_arrays"]

OBJECT_TYPE = TransformerLM


def _init_rng() -> np.random.Generator:
    # NOTE: only fills the initial weights of the rebuilt model, which the stored ones overwrite.
    return np.random.default_rng(0)


def _check_structure(model: TransformerLM) -> dict[str, WeightOnlyLinear]:
    """The weight-only layers by name; a ``TypeError`` for a layer this kind cannot hold."""
    reference = dict(TransformerLM(model.config, rng=_init_rng()).named_modules())
    modules = dict(model.named_modules())
    for name in sorted(set(reference) ^ set(modules)):
        where = "lacks" if name in reference else "has an extra"
        raise TypeError(
            f"save: the model {where} module {name!r}: a weight_only_lm file holds a "
            "TransformerLM as its config builds it"
        )
    weight_only = {}
    for name, module in modules.items():
        expected = type(reference[name])
        if isinstance(module, WeightOnlyLinear) and expected is Linear:
            weight_only[name] = module
        elif type(module) is not expected:
            raise TypeError(
                f"save: layer {name!r} is a {type(module).__name__}; a weight_only_lm file "
                f"holds a {expected.__name__} or a WeightOnlyLinear there"
            )
    return weight_only


def to_arrays(model: TransformerLM) -> tuple[dict, dict[str, np.ndarray]]:
    """``(meta, arrays)`` of a language model with weight-only layers (see the module doc)."""
    weight_only = _check_structure(model)
    arrays = {}
    for name, param in model.named_parameters():
        if param.data.dtype != np.float32:
            raise TypeError(
                f"save: parameter {name!r} is {param.data.dtype}; a weight_only_lm file holds "
                "float32 parameters (model.to(np.float32) first)"
            )
        arrays[name] = param.data
    layers = {}
    for name, layer in weight_only.items():
        # NOTE: stored as a plain bit stream, not in the kernel's interleaved byte order.
        codes = unpack_weight(
            layer.packed, layer.num_bits, layer.group_size, layer.in_features, layer.signed
        )  # (out, in)
        arrays[f"{name}.codes"] = pack_bits(codes, layer.num_bits, layer.signed)  # (bytes,)
        arrays[f"{name}.scale"] = layer.scale  # (out, in / g) float16
        if layer.zero_point is not None:
            arrays[f"{name}.zero_point"] = layer.zero_point  # (out, in / g) uint8
        layers[name] = {
            "in_features": layer.in_features,
            "out_features": layer.out_features,
            "bits": layer.num_bits,
            "group_size": layer.group_size,
            "symmetric": bool(layer.signed),
            "has_bias": layer.bias is not None,
        }
    # NOTE: json writes norm_eps and rope_base as their shortest repr: they come back exact.
    meta = {"config": dataclasses.asdict(model.config), "weight_only": layers}
    return meta, arrays


def _parent(model: Module, name: str) -> tuple[Module, str]:
    *path, attr = name.split(".")
    module = model
    for part in path:
        module = getattr(module, part)
    return module, attr


def _load_layer(name: str, layer: dict, arrays: dict[str, np.ndarray]) -> WeightOnlyLinear:
    out_features, in_features = layer["out_features"], layer["in_features"]
    bits, group_size, symmetric = layer["bits"], layer["group_size"], layer["symmetric"]
    codes = unpack_bits(arrays[f"{name}.codes"], bits, (out_features, in_features), symmetric)
    packed = pack_weight(codes, bits, group_size, signed=symmetric)  # the kernel's order
    zero_point = None if symmetric else arrays[f"{name}.zero_point"]  # (out, G) uint8
    bias = arrays[f"{name}.bias"] if layer["has_bias"] else None  # (out,) float32
    scale = arrays[f"{name}.scale"]  # (out, G) float16
    return WeightOnlyLinear(
        packed, scale, zero_point, bias, in_features, bits, group_size, symmetric
    )


def from_arrays(meta: dict, arrays: dict[str, np.ndarray]) -> TransformerLM:
    """The :class:`~minquant.nn.TransformerLM` that :func:`to_arrays` described (eval mode)."""
    fields = [field.name for field in dataclasses.fields(TransformerConfig)]
    missing = sorted(set(fields) - set(meta.get("config", {})))
    if missing:
        # NOTE: every field has a default; a missing one would silently build another model.
        raise FileFormatError(f"load: the model's config lacks the field(s) {missing}")
    try:
        model = TransformerLM(TransformerConfig(**meta["config"]), rng=_init_rng())
        modules = dict(model.named_modules())
        for name, layer in meta["weight_only"].items():
            linear = modules.get(name)
            shape = (layer["out_features"], layer["in_features"])
            if not isinstance(linear, Linear) or linear.weight.shape != shape:
                raise FileFormatError(
                    f"load: the weight-only layer {name!r} {shape} is not a Linear of that "
                    "shape in the model the config builds"
                )
            try:
                qlayer = _load_layer(name, layer, arrays)
            except (ValueError, TypeError) as err:
                raise FileFormatError(f"load: weight-only layer {name!r}: {err}") from err
            parent, attr = _parent(model, name)
            setattr(parent, attr, qlayer)
    except KeyError as err:
        raise FileFormatError(f"load: the file lacks the field or array {err}") from err
    except TypeError as err:
        raise FileFormatError(f"load: the metadata does not match this version: {err}") from err
    state = {name: arrays.get(name) for name, _ in model.named_parameters()}
    missing = sorted(name for name, value in state.items() if value is None)
    if missing:
        raise FileFormatError(f"load: the file lacks the parameter(s) {missing}")
    for name, value in state.items():
        if value.dtype != np.float32:
            raise FileFormatError(f"load: parameter {name!r} is {value.dtype}, not float32")
    try:
        model.load_state_dict(state)
    except ValueError as err:
        raise FileFormatError(f"load: {err}") from err
    return model.eval()
