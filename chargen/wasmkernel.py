"""The exported sampler's matrix-vector product as a WebAssembly module with 128-bit SIMD, assembled
here byte by byte (no toolchain): `chargen export --js/--html` embeds it, and the sampler falls back
to plain JavaScript where WebAssembly SIMD is missing (browsers before 2021, Safari before 16.4).

    gemv(w, rows, cols, x, out):   out[j] = sum_k w[j * cols + k] * x[k]   for j < rows

All five arguments are i32: w, x and out are byte offsets into the imported memory (env.mem) of
float32 arrays; cols is a multiple of 16. Four f32x4 accumulators take 16 columns a turn (so the
adds do not wait on each other), summed (a0 + a1) + (a2 + a3), then lanes (0 + 1) + (2 + 3).
"""

from __future__ import annotations

import base64

I32, V128 = 0x7F, 0x7B
# Parameters 0-4: w, rows, cols, x, out; then the locals.
W, ROWS, COLS, X, OUT = range(5)
J, K, WP, ROWBYTES = range(5, 9)  # i32 locals
A = range(9, 13)  # v128 accumulators


def _uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        done = (n == 0 and not byte & 0x40) or (n == -1 and byte & 0x40)
        out.append(byte | (0 if done else 0x80))
        if done:
            return bytes(out)


def _vec(items: list[bytes]) -> bytes:
    return _uleb(len(items)) + b"".join(items)


def _name(text: str) -> bytes:
    return _uleb(len(text)) + text.encode()


def _section(sid: int, body: bytes) -> bytes:
    return bytes([sid]) + _uleb(len(body)) + body


def get(i: int) -> bytes:
    return b"\x20" + _uleb(i)


def set_(i: int) -> bytes:
    return b"\x21" + _uleb(i)


def i32(n: int) -> bytes:
    return b"\x41" + _sleb(n)


def simd(op: int, *imm: bytes) -> bytes:
    return b"\xfd" + _uleb(op) + b"".join(imm)


ADD, MUL, GE_U, SHL = b"\x6a", b"\x6c", b"\x4f", b"\x74"
BLOCK, LOOP, END = b"\x02\x40", b"\x03\x40", b"\x0b"
V128_LOAD, F32X4_SPLAT, F32X4_EXTRACT, F32X4_ADD, F32X4_MUL = 0x00, 0x13, 0x1F, 0xE4, 0xE6
F32_CONST0, F32_ADD, F32_STORE = b"\x43\x00\x00\x00\x00", b"\x92", b"\x38"


def _memarg(offset: int, align: int = 2) -> bytes:
    return _uleb(align) + _uleb(offset)


def br(depth: int) -> bytes:
    return b"\x0c" + _uleb(depth)


def br_if(depth: int) -> bytes:
    return b"\x0d" + _uleb(depth)


def _gemv_body() -> bytes:
    zero = F32_CONST0 + simd(F32X4_SPLAT)
    turn = b""  # a_i += w[wp + k + 16 i] * x[x + k + 16 i], i = 0..3
    for i, acc in enumerate(A):
        turn += (get(acc) + get(WP) + get(K) + ADD + simd(V128_LOAD, _memarg(16 * i))
                 + get(X) + get(K) + ADD + simd(V128_LOAD, _memarg(16 * i)) + simd(F32X4_MUL)
                 + simd(F32X4_ADD) + set_(acc))
    total = (get(A[0]) + get(A[1]) + simd(F32X4_ADD) + get(A[2]) + get(A[3]) + simd(F32X4_ADD) + simd(F32X4_ADD)
             + set_(A[0]))
    lanes = (get(A[0]) + simd(F32X4_EXTRACT, b"\x00") + get(A[0]) + simd(F32X4_EXTRACT, b"\x01") + F32_ADD
             + get(A[0]) + simd(F32X4_EXTRACT, b"\x02") + get(A[0]) + simd(F32X4_EXTRACT, b"\x03") + F32_ADD + F32_ADD)
    code = (
        get(COLS) + i32(2) + SHL + set_(ROWBYTES) + i32(0) + set_(J)
        + BLOCK + LOOP  # over the rows
        + get(J) + get(ROWS) + GE_U + br_if(1)
        + b"".join(zero + set_(a) for a in A)
        + get(W) + get(J) + get(ROWBYTES) + MUL + ADD + set_(WP) + i32(0) + set_(K)
        + BLOCK + LOOP  # over the columns, 16 a turn
        + get(K) + get(ROWBYTES) + GE_U + br_if(1)
        + turn
        + get(K) + i32(64) + ADD + set_(K) + br(0)
        + END + END
        + total
        + get(OUT) + get(J) + i32(2) + SHL + ADD + lanes + F32_STORE + _memarg(0)
        + get(J) + i32(1) + ADD + set_(J) + br(0)
        + END + END
    )
    locals_ = _vec([_uleb(4) + bytes([I32]), _uleb(4) + bytes([V128])])
    body = locals_ + code + END
    return _uleb(len(body)) + body


def kernel() -> bytes:
    """The WebAssembly module's bytes."""
    functype = b"\x60" + _vec([bytes([I32])] * 5) + _vec([])
    memory_import = _name("env") + _name("mem") + b"\x02" + b"\x00" + _uleb(1)  # memory, at least one page
    return (b"\x00asm" + b"\x01\x00\x00\x00"
            + _section(1, _vec([functype]))
            + _section(2, _vec([memory_import]))
            + _section(3, _vec([_uleb(0)]))
            + _section(7, _vec([_name("gemv") + b"\x00" + _uleb(0)]))
            + _section(10, _vec([_gemv_body()])))


def kernel_base64() -> str:
    return base64.b64encode(kernel()).decode("ascii")
