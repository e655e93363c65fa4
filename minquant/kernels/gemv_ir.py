r"""Portable SIMD vectors for the weight-only GEMV, as Numba functions (llvmlite IR).

Numba has no vector types, and LLVM vectorises the scalar int4 loop of
:mod:`minquant.kernels.gemv` poorly (the nibble split goes through float, the partial sums
through memory). This module gives Numba two register types and the operations the int4
kernel of :mod:`minquant.kernels.gemv_simd` needs, each a :func:`numba.extending.intrinsic`
that emits **generic** LLVM vector instructions (``and``, ``lshr``, ``sitofp``,
``llvm.fmuladd``, ``shufflevector``), not x86 intrinsics:

* ``F32x16``: 16 float32 lanes (``<16 x float>``), 64 bytes;
* ``I8x32``: 32 int8 lanes (``<32 x i8>``), 32 bytes: 32 packed int4 bytes = 64 codes.

LLVM lowers a generic vector to what the target has: one zmm register with AVX-512 (when
the function asks for 512-bit vectors, see :data:`VECTOR_WIDTH_ATTR`), two ymm with AVX2,
four xmm with SSE or NEON. The same code is therefore right on every CPU; only its speed
depends on the registers. The one instruction some CPUs lack is the float16 to float32
conversion of the scales (x86 F16C, present on every CPU with AVX2):
:func:`minquant.kernels.gemv_simd.simd_available` checks for it.

Every load takes an array and a **byte offset** into its data, whatever the dtype;
nothing checks bounds: the caller sizes every array for the loop it runs.

References: the LLVM language reference (vector types, ``shufflevector``, ``llvm.fmuladd``,
the ``min-legal-vector-width`` function attribute); Intel 64 and IA-32 Architectures
Optimization Reference Manual (512-bit vectors and frequency).
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

_I8, _I32 = ir.IntType(8), ir.IntType(32)
_F32X16 = ir.VectorType(ir.FloatType(), 16)  # <16 x float>
_F16X16 = ir.VectorType(ir.HalfType(), 16)  # <16 x half>
_I8X32 = ir.VectorType(_I8, 32)  # <32 x i8>
_I8X16 = ir.VectorType(_I8, 16)  # <16 x i8>


class F32x16(types.Type):
    """16 float32 lanes (64 bytes)."""

    def __init__(self) -> None:
        super().__init__(name="f32x16")


class I8x32(types.Type):
    """32 int8 lanes (32 bytes)."""

    def __init__(self) -> None:
        super().__init__(name="i8x32")


f32x16, i8x32 = F32x16(), I8x32()


@register_model(F32x16)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _F32X16)


@register_model(I8x32)
class _I8x32Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _I8X32)


def _address(context, builder, array_type, array, byte_offset, pointee):
    """Pointer to ``pointee`` at ``byte_offset`` bytes into the data of a Numba array."""
    data = context.make_array(array_type)(context, builder, array).data
    as_bytes = builder.bitcast(data, _I8.as_pointer())
    return builder.bitcast(builder.gep(as_bytes, [byte_offset]), pointee.as_pointer())


def _load(vector_type, convert=None):
    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], args[1], vector_type)
        # NOTE: align=1, an unaligned load: NumPy only guarantees the alignment of the dtype.
        value = builder.load(ptr, align=1)
        return value if convert is None else convert(builder, value)

    return codegen


def _splat(builder, vector_type, scalar):
    """``scalar`` copied into every lane (insertelement, then an all-zero shuffle)."""
    lane0 = builder.insert_element(ir.Constant(vector_type, None), scalar, _I32(0))
    zeros = ir.Constant(ir.VectorType(_I32, vector_type.count), None)
    return builder.shuffle_vector(lane0, lane0, zeros)


@intrinsic
def load_f32x16(typingctx, array, byte_offset):
    """The 16 float32 at ``byte_offset`` of ``array``."""
    return f32x16(array, byte_offset), _load(_F32X16)


@intrinsic
def load_f16x16(typingctx, array, byte_offset):
    """The 16 float16 at ``byte_offset`` of ``array``, converted exactly to float32."""

    def to_float(builder, halves):
        return builder.fpext(builder.bitcast(halves, _F16X16), _F32X16)

    return f32x16(array, byte_offset), _load(ir.VectorType(ir.IntType(16), 16), to_float)


@intrinsic
def load_i8x32(typingctx, array, byte_offset):
    """The 32 bytes at ``byte_offset`` of ``array``."""
    return i8x32(array, byte_offset), _load(_I8X32)


@intrinsic
def splat_i8x32(typingctx, value):
    """The low byte of the integer ``value`` in all 32 lanes."""

    def codegen(context, builder, sig, args):
        return _splat(builder, _I8X32, builder.trunc(args[0], _I8))

    return i8x32(value), codegen


@intrinsic
def xor_i8x32(typingctx, a, b):
    """Lane-wise ``a ^ b``."""

    def codegen(context, builder, sig, args):
        return builder.xor(args[0], args[1])

    return i8x32(i8x32, i8x32), codegen


def _nibble(high):
    def codegen(context, builder, sig, args):
        byte, zero = args
        if high:
            field = builder.lshr(byte, _splat(builder, _I8X32, _I8(4)))
        else:
            field = builder.and_(byte, _splat(builder, _I8X32, _I8(15)))
        # NOTE: field in [0, 15] and zero in [0, 15 + 8]: the int8 difference is exact.
        return builder.sub(field, zero)

    return codegen


@intrinsic
def low_nibbles(typingctx, byte, zero):
    """``(byte & 15) - zero`` per lane (int8; the caller keeps it in range)."""
    return i8x32(i8x32, i8x32), _nibble(high=False)


@intrinsic
def high_nibbles(typingctx, byte, zero):
    """``(byte >> 4) - zero`` per lane (logical shift; int8)."""
    return i8x32(i8x32, i8x32), _nibble(high=True)


def _to_float(first):
    def codegen(context, builder, sig, args):
        half = ir.Constant(ir.VectorType(_I32, 16), [_I32(first + i) for i in range(16)])
        part = builder.shuffle_vector(args[0], args[0], half)  # <16 x i8>
        return builder.sitofp(part, _F32X16)  # exact: |v| < 2^24

    return codegen


@intrinsic
def float_lanes_0_15(typingctx, v):
    """Lanes 0-15 of an ``I8x32`` as 16 float32 (sign-extended, then converted)."""
    return f32x16(i8x32), _to_float(0)


@intrinsic
def float_lanes_16_31(typingctx, v):
    """Lanes 16-31 of an ``I8x32`` as 16 float32."""
    return f32x16(i8x32), _to_float(16)


@intrinsic
def muladd_f32x16(typingctx, a, b, c):
    """``a * b + c`` per lane, fused where the CPU has FMA (``llvm.fmuladd``)."""

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_F32X16, [_F32X16] * 3), "llvm.fmuladd.v16f32"
        )
        return builder.call(fn, args)

    return f32x16(f32x16, f32x16, f32x16), codegen


@intrinsic
def add_f32x16(typingctx, a, b):
    """Lane-wise ``a + b``."""

    def codegen(context, builder, sig, args):
        return builder.fadd(args[0], args[1])

    return f32x16(f32x16, f32x16), codegen


@intrinsic
def zeros_f32x16(typingctx):
    """16 lanes of 0.0."""

    def codegen(context, builder, sig, args):
        return ir.Constant(_F32X16, None)

    return f32x16(), codegen


@intrinsic
def sum_f32x16(typingctx, v):
    """The sum of the 16 lanes, as a tree: (lanes i + i+8), then + i+4, + i+2, + i+1."""

    def codegen(context, builder, sig, args):
        value, width = args[0], 16
        while width > 1:
            width //= 2
            lanes = ir.VectorType(_I32, width)
            low = builder.shuffle_vector(value, value, ir.Constant(lanes, list(range(width))))
            high = builder.shuffle_vector(
                value, value, ir.Constant(lanes, list(range(width, 2 * width)))
            )
            value = builder.fadd(low, high)
        return builder.extract_element(value, _I32(0))

    return types.float32(f32x16), codegen
