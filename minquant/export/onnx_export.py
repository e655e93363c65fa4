r"""The integer CNN as an ONNX graph, for ONNX Runtime or any ONNX backend.

``form="integer"``: integer operators, the model's own arithmetic.
``ConvInteger`` / ``MatMulInteger`` compute the exact int32 accumulator
$\sum_k (x_{q,k} - z_x)\, w_{q,nk}$ (padding with $z_x$, as minquant), then the
requantization is spelled out with float operators:

* ``requant="float"``: ``Cast(float32) + b/a``, ``* a/s_y``, ``Round``, ``+ z_y``, ``Clip``,
  ``Cast(int8)``: every operation the one float32 operation of
  :func:`minquant.kernels.requantize_float`, so every code is identical;
* ``requant="fixedpoint"``: ``+ b_q`` in int32, then ``Cast(float64)``,
  ``* M`` with $M = M_0\, 2^{shift - 31}$ (exact in float64), ``Round``, ``+ z_y``,
  ``Clip``, ``Cast(int8)``. TFLite's single-rounding multiply rounds ties up (toward
  $+\infty$), ONNX's ``Round`` to even: the two differ only where $acc \cdot M$ is a tie, by
  one code (gemmlowp's double rounding also differs where its first rounding moves the second).

``form="qdq"``: what ONNX Runtime's own quantizer emits (its x86 default, U8S8): int8
weights and an int32 bias (scale $s_x s_w$) pass through ``DequantizeLinear`` into float
``Conv`` / ``Gemm`` / ``Relu`` / ``MaxPool``; each activation goes through ``QuantizeLinear``
then ``DequantizeLinear`` with its scale and zero point, as uint8 codes (minquant's int8
codes + 128, zero point + 128: the same real values). A runtime may fuse a DQ-op-Q group
into an integer kernel (ONNX Runtime on x86 fuses it into ``QLinearConv`` / ``QGemm`` for
uint8 activations only, with a float32 requantization and an int32 bias): the codes then
differ from minquant's by at most one step, and only where the rounding is close.

``form="float"``: the float model (``qmodel.float_model``, BatchNorm folded) with float32
operators, the baseline to compare sizes and speed with.

Every graph takes ``X`` float32 (N, C, H, W) and returns ``logits`` float32; the quantized
forms also return ``logits_q`` (int8, uint8 for QDQ); the quantized input is the tensor
``input_q``, the codes after step ``i`` the tensor ``step{i}_q``.

References: ONNX operators ``ConvInteger``, ``MatMulInteger``, ``QuantizeLinear``,
``DequantizeLinear`` (opset 13); ONNX Runtime, "Quantize ONNX models" (QDQ format).
"""

import pathlib

import numpy as np

from minquant import nn
from minquant.export import ONNX_FORMS
from minquant.kernels.requant import float_requant_params
from minquant.qnn import (
    FixedPointRequant,
    QuantizedConv2d,
    QuantizedFlatten,
    QuantizedLinear,
    QuantizedMaxPool2d,
    QuantizedModel,
    QuantizedReLU,
)

__all__ = ["OPSET", "to_onnx"]
#: Opset 13: per-axis QuantizeLinear/DequantizeLinear, int8 MaxPool and Clip.
OPSET = 13
#: IR version 8 (ONNX 1.10): read by every ONNX Runtime since 1.10.
IR_VERSION = 8


def _import_onnx():
    try:
        import onnx
    except ImportError as err:
        raise ImportError(
            "to_onnx needs the onnx package, which is not installed: "
            "pip install 'minquant[dev]' (or pip install onnx)"
        ) from err
    return onnx


class _Graph:
    """Nodes and initializers of the graph being built, with unique tensor names."""

    def __init__(self, onnx, unsigned: bool) -> None:
        self.onnx, self.helper = onnx, onnx.helper
        self.nodes, self.initializers = [], []
        self._count = 0
        self.unsigned = unsigned  # activations as uint8 codes (the int8 codes + 128)

    def code(self, q: int) -> np.integer:
        """An activation code (or zero point) in the graph's activation type."""
        # NOTE: uint8 code = int8 code + 128 with zero point + 128: the same scale, the
        # same real values (the quint8 convention of the observers, see minquant.ptq).
        return np.uint8(q + 128) if self.unsigned else np.int8(q)

    def const(self, name: str, value: np.ndarray) -> str:
        name = f"{name}_{len(self.initializers)}"
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        if output is None:
            self._count += 1
            output = f"{op_type.lower()}_{self._count}"
        self.nodes.append(self.helper.make_node(op_type, inputs, [output], **attrs))
        return output


def _channel_shape(module: QuantizedConv2d | QuantizedLinear) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector over the layer's output."""
    n = module.out_features
    return (1, n, 1, 1) if isinstance(module, QuantizedConv2d) else (1, n)


def _accumulate(g: _Graph, module, x: str, i: int) -> str:
    """The exact int32 accumulator sum_k (x_q - z_x) w_q of a Conv2d or Linear."""
    x_zp = g.const(f"step{i}_x_zero_point", g.code(module.input_qparams.zero_point))
    w_zp = g.const(f"step{i}_w_zero_point", np.int8(0))
    if isinstance(module, QuantizedConv2d):
        k, s, p = module.kernel_size, module.stride, module.padding
        w_q = module.w_t.T.reshape(module.out_channels, module.in_channels, k, k)  # (O, C, k, k)
        w = g.const(f"step{i}_w_q", np.ascontiguousarray(w_q))
        # NOTE: ConvInteger pads x - z_x with zeros, i.e. x with z_x: minquant's padding.
        return g.op(
            "ConvInteger", [x, w, x_zp, w_zp], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4
        )
    w = g.const(f"step{i}_w_t", np.ascontiguousarray(module.w_t))  # (K, N)
    return g.op("MatMulInteger", [x, w, x_zp, w_zp])


def _round_clamp(g: _Graph, y: str, requant, dtype: type, i: int) -> str:
    """rint(y) + z_y, clamped to the requantizer's range, as int8 (ties to even)."""
    zp = g.const(f"step{i}_y_zero_point", dtype(requant.output_qparams.zero_point))
    lo = g.const(f"step{i}_qmin", dtype(requant.qmin))  # the fused ReLU is this clamp
    hi = g.const(f"step{i}_qmax", dtype(requant.qmax))
    y = g.op("Add", [g.op("Round", [y]), zp])
    return g.op("Cast", [g.op("Clip", [y, lo, hi])], to=g.onnx.TensorProto.INT8)


def _integer_gemm(g: _Graph, module, x: str, i: int) -> str:
    acc = _accumulate(g, module, x, i)  # int32
    requant, shape = module.requant, _channel_shape(module)
    if isinstance(requant, FixedPointRequant):
        bias_q = g.const(f"step{i}_bias_q", requant.bias_q.reshape(shape))  # int32
        acc = g.op("Add", [acc, bias_q])
        # NOTE: M0 has 31 significant bits: exact in float64 (not in float32), and so is
        # M0 * 2^(shift - 31). The float64 product acc * M is then rounded once.
        real = requant.multiplier.astype(np.float64) * np.exp2(
            requant.shift.astype(np.float64) - 31
        )
        m = g.const(f"step{i}_multiplier", real.reshape(shape))  # float64
        y = g.op("Mul", [g.op("Cast", [acc], to=g.onnx.TensorProto.DOUBLE), m])
        return _round_clamp(g, y, requant, np.float64, i)
    empty = np.empty((0, module.out_features), np.int32)
    out_scale = requant.output_qparams.scale
    bias_over_scale, multiplier = float_requant_params(
        empty, requant.bias, requant.acc_scale, out_scale
    )
    b = g.const(f"step{i}_bias_over_scale", bias_over_scale.reshape(shape))  # float32
    m = g.const(f"step{i}_multiplier", multiplier.reshape(shape))  # float32
    y = g.op("Add", [g.op("Cast", [acc], to=g.onnx.TensorProto.FLOAT), b])
    return _round_clamp(g, g.op("Mul", [y, m]), requant, np.float32, i)


def _qdq_gemm(g: _Graph, module, x_q: str, i: int, per_channel: bool) -> str:
    """DQ(x), DQ(w), DQ(bias) -> float Conv/Gemm (+ Relu) -> Q: ONNX Runtime's QDQ pattern."""
    x_qp = module.input_qparams
    x = _dequantize(g, x_q, x_qp.scale, x_qp.zero_point, f"step{i}_x")
    w_q = module.w_t.T  # (out, K)
    acc_scale = np.float32(x_qp.scale) * module.w_scale  # (out,) float32, s_x s_w
    requant = module.requant
    if isinstance(requant, FixedPointRequant):
        bias_q = requant.bias_q
    else:
        bias = np.zeros(module.out_features, np.float32) if requant.bias is None else requant.bias
        # NOTE: ONNX Runtime's quantizer stores the bias as int32 at scale s_x s_w (ties to
        # even), as QLinearConv requires; the float version's float bias is rounded here.
        bias_q = np.rint(bias.astype(np.float64) / acc_scale).astype(np.int32)
    axis_args = {"axis": 0} if per_channel else {}
    scale = module.w_scale if per_channel else module.w_scale[:1].reshape(())
    zero = np.zeros(scale.shape, np.int8)
    if isinstance(module, QuantizedConv2d):
        k = module.kernel_size
        w_q = w_q.reshape(module.out_channels, module.in_channels, k, k)  # (O, C, k, k)
    w = g.op(
        "DequantizeLinear",
        [g.const(f"step{i}_w_q", np.ascontiguousarray(w_q)), g.const("w_scale", scale),
         g.const("w_zero_point", zero)],
        **axis_args,
    )  # fmt: skip
    bias_scale = acc_scale if per_channel else acc_scale[:1].reshape(())
    b = g.op(
        "DequantizeLinear",
        [g.const(f"step{i}_bias_q", bias_q), g.const("bias_scale", bias_scale),
         g.const("bias_zero_point", np.zeros(bias_scale.shape, np.int32))],
        **axis_args,
    )  # fmt: skip
    if isinstance(module, QuantizedConv2d):
        s, p = module.stride, module.padding
        y = g.op("Conv", [x, w, b], kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)
    else:
        y = g.op("Gemm", [x, w, b], transB=1)
    if module.relu:
        y = g.op("Relu", [y])
    y_qp = module.output_qparams
    return _quantize(g, y, y_qp.scale, y_qp.zero_point, f"step{i}_y")


def _quantize(
    g: _Graph, x: str, scale: float, zero_point: int, name: str, output: str | None = None
) -> str:
    s = g.const(f"{name}_scale", np.float32(scale))
    zp = g.const(f"{name}_zero_point", g.code(zero_point))
    return g.op("QuantizeLinear", [x, s, zp], output=output)


def _dequantize(
    g: _Graph, x_q: str, scale: float, zero_point: int, name: str, output: str | None = None
) -> str:
    s = g.const(f"{name}_scale", np.float32(scale))
    zp = g.const(f"{name}_zero_point", g.code(zero_point))
    return g.op("DequantizeLinear", [x_q, s, zp], output=output)


def _code_step(g: _Graph, module, x_q: str, i: int) -> str:
    """Steps without arithmetic run on the codes in both forms."""
    if isinstance(module, QuantizedMaxPool2d):
        k, s = module.kernel_size, module.stride
        return g.op("MaxPool", [x_q], kernel_shape=[k, k], strides=[s, s])
    if isinstance(module, QuantizedFlatten):
        return g.op("Flatten", [x_q], axis=1)
    if isinstance(module, QuantizedReLU):
        lo = g.const(f"step{i}_zero_point", g.code(module.zero_point))
        return g.op("Clip", [x_q, lo, g.const(f"step{i}_qmax", g.code(127))])
    raise TypeError(f"to_onnx: step {i} is a {type(module).__name__}, which has no ONNX form")


def _input_shape(qmodel: QuantizedModel) -> list | None:
    """Shape of X: (N, C, H, W) before a first Conv2d, (N, in) before a Linear, else unknown."""
    first = qmodel.steps[0].module
    if isinstance(first, QuantizedConv2d):
        return ["N", first.in_channels, "H", "W"]
    if isinstance(first, QuantizedLinear):
        return ["N", first.in_features]
    return None


def _float_graph(g: _Graph, qmodel: QuantizedModel) -> str:
    """The float model (BatchNorm folded) as float32 Conv/Gemm/Relu/MaxPool/Flatten."""
    x = "X"
    for i, layer in enumerate(qmodel.float_model):
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            w = g.const(f"layer{i}_weight", layer.weight.data.astype(np.float32))
            inputs = [x, w]
            if layer.bias is not None:
                inputs.append(g.const(f"layer{i}_bias", layer.bias.data.astype(np.float32)))
            if isinstance(layer, nn.Conv2d):
                k, s, p = layer.kernel_size, layer.stride, layer.padding
                x = g.op("Conv", inputs, kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)
            else:
                x = g.op("Gemm", inputs, transB=1)
        elif isinstance(layer, nn.ReLU):
            x = g.op("Relu", [x])
        elif isinstance(layer, nn.MaxPool2d):
            k, s = layer.kernel_size, layer.stride
            x = g.op("MaxPool", [x], kernel_shape=[k, k], strides=[s, s])
        elif isinstance(layer, nn.Flatten):
            x = g.op("Flatten", [x], axis=1)
        else:
            raise TypeError(f"to_onnx: layer {i} is a {type(layer).__name__}, not exportable")
    return g.op("Identity", [x], output="logits")


def _quantized_graph(g: _Graph, qmodel: QuantizedModel, form: str) -> str:
    """Quantize, every step (named ``step{i}_q``), ``logits_q``, Dequantize to ``logits``."""
    in_qp = qmodel.quantize.qparams
    x_q = _quantize(g, "X", in_qp.scale, in_qp.zero_point, "input", output="input_q")
    for i, step in enumerate(qmodel.steps):
        module = step.module
        if not isinstance(module, (QuantizedConv2d, QuantizedLinear)):
            y_q = _code_step(g, module, x_q, i)
        elif form == "integer":
            y_q = _integer_gemm(g, module, x_q, i)
        else:
            y_q = _qdq_gemm(g, module, x_q, i, qmodel.config.per_channel)
        x_q = g.op("Identity", [y_q], output=f"step{i}_q")
    g.op("Identity", [x_q], output="logits_q")
    out_qp = qmodel.output_qparams
    return _dequantize(g, x_q, out_qp.scale, out_qp.zero_point, "output", output="logits")


def to_onnx(qmodel: QuantizedModel, path: str | pathlib.Path, form: str = "integer"):
    r"""Write ``qmodel`` to exactly ``path`` as an ONNX model; returns the ``onnx.ModelProto``.

    ``form`` is ``"integer"`` (ConvInteger/MatMulInteger + requantization, minquant's own
    arithmetic, int8 activations), ``"qdq"`` (QuantizeLinear/DequantizeLinear around float
    operators, uint8 activations as ONNX Runtime's quantizer emits them: the int8 codes
    + 128) or ``"float"`` (the float model ``qmodel.float_model``, the baseline). The
    model passes ``onnx.checker.check_model`` before it is written. Input ``X`` float32
    (N, C, H, W); outputs ``logits`` float32 (N, classes) and, quantized forms only,
    ``logits_q`` (int8, or uint8 for ``"qdq"``).

    >>> from minquant import models
    >>> from minquant.data import load_mnist
    >>> from minquant.ptq import quantize_model
    >>> X, _ = load_mnist("test")
    >>> qmodel = quantize_model(models.load_pretrained("small_cnn"), X[:200], requant="float")
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "small_cnn.onnx"
    >>> proto = to_onnx(qmodel, path, form="integer")
    >>> sorted({node.op_type for node in proto.graph.node} & {"ConvInteger", "MatMulInteger"})
    ['ConvInteger', 'MatMulInteger']
    """
    if form not in ONNX_FORMS:
        raise ValueError(f"form must be one of {ONNX_FORMS}, got {form!r}")
    if not isinstance(qmodel, QuantizedModel):
        raise TypeError(f"to_onnx: qmodel must be a QuantizedModel, got {type(qmodel).__name__}")
    onnx = _import_onnx()
    tensor, helper = onnx.TensorProto, onnx.helper
    g = _Graph(onnx, unsigned=form == "qdq")
    n_classes = qmodel.steps[-1].module.out_features
    if form == "float":
        outputs = [helper.make_tensor_value_info(_float_graph(g, qmodel), tensor.FLOAT, None)]
    else:
        code_type = tensor.UINT8 if g.unsigned else tensor.INT8
        outputs = [
            helper.make_tensor_value_info(_quantized_graph(g, qmodel, form), tensor.FLOAT, None),
            helper.make_tensor_value_info("logits_q", code_type, None),
        ]
    for output in outputs:
        output.type.tensor_type.shape.dim.add().dim_param = "N"
        output.type.tensor_type.shape.dim.add().dim_value = n_classes
    inputs = [helper.make_tensor_value_info("X", tensor.FLOAT, _input_shape(qmodel))]
    graph = helper.make_graph(
        g.nodes, f"minquant_{form}", inputs, outputs, initializer=g.initializers
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="minquant",
        doc_string=repr(qmodel),
    )
    onnx.checker.check_model(model, full_check=True)
    pathlib.Path(path).write_bytes(model.SerializeToString())
    return model
