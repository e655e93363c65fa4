r"""SIMD registers and int8 dot-product instructions as Numba functions (llvmlite IR).

Numba has no vector types, so LLVM chooses the instructions of a plain loop itself, and for an
int8 GEMM it never chooses the dot-product instructions (see ``docs/performance.md``). This
module gives Numba two register types and the handful of instructions an int8 micro-kernel
needs, each a :func:`numba.extending.intrinsic` that emits one LLVM x86 intrinsic:

* ``Zmm``, a 512-bit register seen as 16 int32 lanes (AVX-512), and ``Ymm``, a 256-bit register
  seen as 8 int32 lanes (AVX2). A lane holds 4 bytes = 4 consecutive values of k.
* ``zmm_dpbusd(acc, a, b)``: AVX-512 VNNI ``vpdpbusd``. Per lane $j$,

  $$\mathrm{acc}_j \mathrel{+}= \sum_{t=0}^{3} a_{4j+t}\, b_{4j+t}, \qquad a \text{ uint8},\
  b \text{ int8},$$

  64 multiply-adds in one instruction, exact (no intermediate saturation; the int32 sum wraps).
* ``ymm_maddubs(a, b)``: AVX2 ``vpmaddubsw``: 16 int16 lanes
  $\mathrm{sat}_{16}(a_{2j} b_{2j} + a_{2j+1} b_{2j+1})$, uint8 x int8. The pair sum can reach
  $2 \cdot 255 \cdot 128 = 65280$ and **saturates** to int16 [-32768, 32767].
* ``ymm_madd16(x, y)``: AVX2 ``vpmaddwd``: 8 int32 lanes $x_{2j} y_{2j} + x_{2j+1} y_{2j+1}$
  of int16 pairs; with $y = 1$ it adds neighbouring int16 lanes.
* loads, a broadcast of 4 bytes to every lane, an int32 add and stores.

Every load and store takes an array and a **byte offset** into its data, whatever the dtype
(so ``4 * j`` addresses int32 element ``j``); nothing checks bounds: the callers in
:mod:`minquant.kernels.vnni` size every array for the tiles they compute.

Compiling a function that uses ``zmm_dpbusd`` needs a CPU with AVX-512 VNNI (LLVM refuses to
select the instruction otherwise), so :mod:`minquant.kernels.vnni` only calls such a kernel after
checking the host's features. Nothing here compiles at import.

References: Intel 64 and IA-32 Architectures Software Developer's Manual, vol. 2 (VPDPBUSD,
PMADDUBSW, PMADDWD); the LLVM language reference (vector types, ``shufflevector``).
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

_I8, _I16, _I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
_ZMM = ir.VectorType(_I32, 16)  # <16 x i32>
_YMM = ir.VectorType(_I32, 8)  # <8 x i32>
_YMM_BYTES = ir.VectorType(_I8, 32)  # <32 x i8>, the view vpmaddubsw takes
_YMM_WORDS = ir.VectorType(_I16, 16)  # <16 x i16>, the view vpmaddwd takes


class Zmm(types.Type):
    """A 512-bit SIMD register: 16 lanes of int32 (or 64 bytes, 4 per lane)."""

    def __init__(self) -> None:
        super().__init__(name="zmm")


class Ymm(types.Type):
    """A 256-bit SIMD register: 8 lanes of int32 (or 32 bytes, or 16 int16)."""

    def __init__(self) -> None:
        super().__init__(name="ymm")


zmm, ymm = Zmm(), Ymm()


@register_model(Zmm)
class _ZmmModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _ZMM)


@register_model(Ymm)
class _YmmModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _YMM)


def _address(context, builder, array_type, array, byte_offset, pointee):
    """Pointer to ``pointee`` at ``byte_offset`` bytes into the data of a Numba array."""
    data = context.make_array(array_type)(context, builder, array).data
    as_bytes = builder.bitcast(data, _I8.as_pointer())
    return builder.bitcast(builder.gep(as_bytes, [byte_offset]), pointee.as_pointer())


def _load(vector_type):
    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], args[1], vector_type)
        # NOTE: align=1, an unaligned load (vmovdqu): rows of A start at any byte.
        return builder.load(ptr, align=1)

    return codegen


def _broadcast4(vector_type):
    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], args[1], _I32)
        word = builder.load(ptr, align=1)  # 4 bytes, read as one int32
        lane0 = builder.insert_element(ir.Constant(vector_type, None), word, _I32(0))
        # shufflevector with an all-zero mask copies lane 0 everywhere: vpbroadcastd
        return builder.shuffle_vector(lane0, lane0, ir.Constant(vector_type, None))

    return codegen


def _store(vector_type):
    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], args[1], vector_type)
        builder.store(args[2], ptr, align=1)
        return context.get_dummy_value()

    return codegen


def _call(builder, name, return_type, arg_types, args):
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(return_type, arg_types), name
    )
    return builder.call(fn, args)


# ---- 512-bit (AVX-512 VNNI) ------------------------------------------------------------------


@intrinsic
def zmm_load(typingctx, array, byte_offset):
    """The 64 bytes at ``byte_offset`` of ``array`` as a zmm register (``vmovdqu32``)."""
    return zmm(array, byte_offset), _load(_ZMM)


@intrinsic
def zmm_broadcast4(typingctx, array, byte_offset):
    """The 4 bytes at ``byte_offset`` copied into all 16 lanes (``vpbroadcastd``)."""
    return zmm(array, byte_offset), _broadcast4(_ZMM)


@intrinsic
def zmm_dpbusd(typingctx, acc, a_u8, b_s8):
    """``acc + dot4(a_u8, b_s8)`` per int32 lane: 64 uint8 x int8 multiply-adds (``vpdpbusd``)."""

    def codegen(context, builder, sig, args):
        return _call(builder, "llvm.x86.avx512.vpdpbusd.512", _ZMM, [_ZMM] * 3, args)

    return zmm(zmm, zmm, zmm), codegen


@intrinsic
def zmm_store(typingctx, array, byte_offset, value):
    """Write the 64 bytes of ``value`` at ``byte_offset`` of ``array``."""
    return types.none(array, byte_offset, zmm), _store(_ZMM)


# ---- 256-bit (AVX2) --------------------------------------------------------------------------


@intrinsic
def ymm_load(typingctx, array, byte_offset):
    """The 32 bytes at ``byte_offset`` of ``array`` as a ymm register (``vmovdqu``)."""
    return ymm(array, byte_offset), _load(_YMM)


@intrinsic
def ymm_broadcast4(typingctx, array, byte_offset):
    """The 4 bytes at ``byte_offset`` copied into all 8 lanes (``vpbroadcastd``)."""
    return ymm(array, byte_offset), _broadcast4(_YMM)


@intrinsic
def ymm_maddubs(typingctx, a_u8, b_s8):
    """16 int16 lanes ``sat16(a[2j] b[2j] + a[2j+1] b[2j+1])``, uint8 x int8 (``vpmaddubsw``)."""

    def codegen(context, builder, sig, args):
        a, b = (builder.bitcast(x, _YMM_BYTES) for x in args)
        name = "llvm.x86.avx2.pmadd.ub.sw"
        words = _call(builder, name, _YMM_WORDS, [_YMM_BYTES] * 2, [a, b])
        return builder.bitcast(words, _YMM)

    return ymm(ymm, ymm), codegen


@intrinsic
def ymm_madd16(typingctx, x_i16, y_i16):
    """8 int32 lanes ``x[2j] y[2j] + x[2j+1] y[2j+1]`` of int16 pairs (``vpmaddwd``)."""

    def codegen(context, builder, sig, args):
        x, y = (builder.bitcast(v, _YMM_WORDS) for v in args)
        return _call(builder, "llvm.x86.avx2.pmadd.wd", _YMM, [_YMM_WORDS] * 2, [x, y])

    return ymm(ymm, ymm), codegen


@intrinsic
def ymm_ones16(typingctx):
    """16 int16 lanes equal to 1: ``vpmaddwd`` by it adds neighbouring int16 lanes."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(ir.Constant(_YMM_WORDS, [_I16(1)] * 16), _YMM)

    return ymm(), codegen


@intrinsic
def ymm_add32(typingctx, x, y):
    """Lane-wise int32 sum, wrapping (``vpaddd``)."""

    def codegen(context, builder, sig, args):
        return builder.add(args[0], args[1])

    return ymm(ymm, ymm), codegen


@intrinsic
def ymm_store(typingctx, array, byte_offset, value):
    """Write the 32 bytes of ``value`` at ``byte_offset`` of ``array``."""
    return types.none(array, byte_offset, ymm), _store(_YMM)
