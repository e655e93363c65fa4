r"""Portable SIMD vectors for the weight-only GEMV, as Numba functions (llvmlite IR).

Numba has no vector types, and LLVM vectorises the scalar int4 loop of
:mod:`minquant.kernels.gemv_plain` poorly (the nibble split goes through float, the partial
sums through memory). This module gives Numba two register types and the operations the
int4 kernel of :mod:`minquant.kernels.gemv_simd` needs, each a
:func:`numba.extending.intrinsic` that emits **generic** LLVM vector instructions (``zext``,
``and``/``or``/``xor``, ``bitcast``, ``fsub``, ``llvm.fmuladd``, ``shufflevector``), not x86
intrinsics:

* ``F32x16``: 16 float32 lanes (``<16 x float>``), 64 bytes;
* ``I32x16``: 16 int32 lanes (``<16 x i32>``): 16 bytes of int4 codes, one byte per lane.

The one trick is :func:`field_floats`: OR-ing an integer $f < 2^{23}$ into the mantissa of
$2^{23}$ (bit pattern ``0x4B000000``) gives the float32 $2^{23} + f$ exactly, so a bit mask
and a subtraction replace the shift, sign extension and int-to-float conversion:

$$q - z = \big(2^{23} + q\big) - \big(2^{23} + z\big) \quad\text{(exact: both are
integers below } 2^{24}\text{)}.$$

LLVM lowers a generic vector to what the target has: one zmm register with AVX-512 (the
logic in one ``vpternlogd``), two ymm with AVX2, four xmm with SSE or NEON. The same code is
therefore right on every CPU; only its speed depends on the registers. The one instruction
some CPUs lack is the float16 to float32 conversion of the scales (x86 F16C, present on
every CPU with AVX2): :func:`minquant.kernels.gemv_simd.simd_available` checks for it.

Every load takes an array and a **byte offset** into its data, whatever the dtype;
nothing checks bounds: the caller sizes every array for the loop it runs.

References: the LLVM language reference (vector types, ``shufflevector``,
``llvm.fmuladd``); the $2^{23}$ "magic number" conversion: J.-M. Muller et al., *Handbook of
Floating-Point Arithmetic*, 2nd ed., 2018, sec. 2.2 (float formats) and the classic
``0x4B000000`` trick of int/float conversion.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

_I8, _I32 = ir.IntType(8), ir.IntType(32)
_F32X16 = ir.VectorType(ir.FloatType(), 16)  # <16 x float>
_F16X16 = ir.VectorType(ir.HalfType(), 16)  # <16 x half>
_I32X16 = ir.VectorType(_I32, 16)  # <16 x i32>
_I8X16 = ir.VectorType(_I8, 16)  # <16 x i8>


class F32x16(types.Type):
    """16 float32 lanes (64 bytes)."""

    def __init__(self) -> None:
        super().__init__(name="f32x16")


class I32x16(types.Type):
    """16 int32 lanes (64 bytes)."""

    def __init__(self) -> None:
        super().__init__(name="i32x16")


f32x16, i32x16 = F32x16(), I32x16()


@register_model(F32x16)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _F32X16)


@register_model(I32x16)
class _I32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _I32X16)


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


@intrinsic
def load_u8x16(typingctx, array, byte_offset):
    """The 16 bytes at ``byte_offset`` of ``array``, zero-extended to 16 int32 lanes."""

    def widen(builder, value):
        return builder.zext(value, _I32X16)

    return i32x16(array, byte_offset), _load(_I8X16, widen)


@intrinsic
def load_u8x16_f32(typingctx, array, byte_offset):
    """The 16 bytes at ``byte_offset`` of ``array`` as 16 float32 (0.0 .. 255.0, exact)."""

    def to_float(builder, value):
        return builder.uitofp(value, _F32X16)

    return f32x16(array, byte_offset), _load(_I8X16, to_float)


@intrinsic
def field_floats(typingctx, word, mask, bits):
    r"""The float32 whose bit pattern is ``((word ^ bits) & mask) | (bits & ~mask)`` per lane.

    With ``bits`` $= 2^{23}$'s pattern ``0x4B000000`` (plus a flip inside ``mask``) and
    ``mask`` a field of the low 23 bits, this is $2^{23} + f$ for the field value $f$:
    an int-to-float conversion in one bitwise instruction (``vpternlogd``).
    """

    def codegen(context, builder, sig, args):
        word = args[0]
        mask = _splat(builder, _I32X16, builder.trunc(args[1], _I32))
        bits = _splat(builder, _I32X16, builder.trunc(args[2], _I32))
        field = builder.and_(builder.xor(word, bits), mask)
        rest = builder.and_(bits, builder.not_(mask))
        return builder.bitcast(builder.or_(field, rest), _F32X16)

    return f32x16(i32x16, mask, bits), codegen


@intrinsic
def splat_f32x16(typingctx, value):
    """The float ``value`` (rounded to float32) in all 16 lanes."""

    def codegen(context, builder, sig, args):
        scalar = context.cast(builder, args[0], sig.args[0], types.float32)
        return _splat(builder, _F32X16, scalar)

    return f32x16(value), codegen


@intrinsic
def sub_f32x16(typingctx, a, b):
    """Lane-wise ``a - b``."""

    def codegen(context, builder, sig, args):
        return builder.fsub(args[0], args[1])

    return f32x16(f32x16, f32x16), codegen
