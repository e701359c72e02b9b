"""The exported sampler's matrix-vector product as a WebAssembly module with 128-bit SIMD, assembled
here byte by byte (no toolchain): `chargen export --js/--html` embeds it, and the sampler falls back
to plain JavaScript where WebAssembly SIMD is missing (browsers before 2021, Safari before 16.4).

    gemm(w, rows, cols, x, n, out):   out[v * rows + j] = sum_k w[j * cols + k] * x[v * cols + k]
                                      for j < rows, v < n

    sigmoid(ptr, n), tanh(ptr, n): in place over n float32 at ptr (n a multiple of 4)

The arguments are i32: w, x, out and ptr are byte offsets into the imported memory (env.mem) of
float32 arrays; rows is a multiple of 4, cols of 16 (the rows and columns past the matrix's are
zeros). Four rows go at once, each weight loaded once for two vectors (then for the last one
alone, where n is odd): an f32x4 accumulator for each row and vector takes 4 columns a turn, its
lanes summed (0 + 1) + (2 + 3), so a vector's products are the same bits whichever vector it is
paired with, or none (eight accumulators keep the adds from waiting on each other: 1.6x the
rate of one vector's). The
nonlinearities go through a float32 exp four lanes at a time (Cephes' expf polynomial), about as
accurate as numpy's float32 tanh, which chargen's numpy twin uses.
"""

from __future__ import annotations

I32, V128 = 0x7F, 0x7B
# Parameters 0-5: w, rows, cols, x, n, out; then the locals.
W, ROWS, COLS, X, N, OUT = range(6)
J, VEC, K, ROWBYTES, XP = range(6, 11)  # i32 locals
WP = range(11, 15)  # i32: the four rows' start
ACC = [range(15, 19), range(19, 23)]  # v128: ACC[vector][row]
WT, XT = range(23, 27), range(27, 29)  # v128: a turn's weights (a row each) and vectors


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


ADD, MUL, LT_U, GT_U, GE_U, SHL = b"\x6a", b"\x6c", b"\x49", b"\x4b", b"\x4f", b"\x74"
BLOCK, LOOP, IF, END = b"\x02\x40", b"\x03\x40", b"\x04\x40", b"\x0b"
V128_LOAD, F32X4_SPLAT, F32X4_EXTRACT, F32X4_ADD, F32X4_MUL = 0x00, 0x13, 0x1F, 0xE4, 0xE6
F32_CONST0, F32_ADD, F32_STORE = b"\x43\x00\x00\x00\x00", b"\x92", b"\x38"


def _memarg(offset: int, align: int = 2) -> bytes:
    return _uleb(align) + _uleb(offset)


def br(depth: int) -> bytes:
    return b"\x0c" + _uleb(depth)


def br_if(depth: int) -> bytes:
    return b"\x0d" + _uleb(depth)


def _block(vectors: int) -> bytes:
    """Rows J..J+3 times `vectors` (1 or 2) vectors from XP (each ROWBYTES apart), into out."""
    zero = F32_CONST0 + simd(F32X4_SPLAT)
    turn = b"".join(get(WP[r]) + get(K) + ADD + simd(V128_LOAD, _memarg(0)) + set_(WT[r]) for r in range(4))
    for v in range(vectors):
        turn += get(XP) + (get(ROWBYTES) + ADD if v else b"") + get(K) + ADD + simd(V128_LOAD, _memarg(0)) + set_(XT[v])
        for r in range(4):  # acc += w * x
            turn += get(ACC[v][r]) + get(WT[r]) + get(XT[v]) + simd(F32X4_MUL) + simd(F32X4_ADD) + set_(ACC[v][r])
    store = b""
    for v in range(vectors):
        for r in range(4):  # out[(VEC + v) * rows + J + r] = lanes (0 + 1) + (2 + 3)
            a = ACC[v][r]
            lanes = (get(a) + simd(F32X4_EXTRACT, b"\x00") + get(a) + simd(F32X4_EXTRACT, b"\x01") + F32_ADD
                     + get(a) + simd(F32X4_EXTRACT, b"\x02") + get(a) + simd(F32X4_EXTRACT, b"\x03") + F32_ADD + F32_ADD)
            store += (get(OUT) + get(VEC) + i32(v) + ADD + get(ROWS) + MUL + get(J) + ADD + i32(r) + ADD + i32(2) + SHL
                      + ADD + lanes + F32_STORE + _memarg(0))
    return (b"".join(zero + set_(ACC[v][r]) for v in range(vectors) for r in range(4))
            + get(X) + get(VEC) + get(ROWBYTES) + MUL + ADD + set_(XP) + i32(0) + set_(K)
            + BLOCK + LOOP  # over the columns, 4 a turn
            + get(K) + get(ROWBYTES) + GE_U + br_if(1)
            + turn
            + get(K) + i32(16) + ADD + set_(K) + br(0)
            + END + END
            + store)


def _gemm_body() -> bytes:
    code = (
        get(COLS) + i32(2) + SHL + set_(ROWBYTES) + i32(0) + set_(J)
        + BLOCK + LOOP  # over the rows, 4 at a time
        + get(J) + get(ROWS) + GE_U + br_if(1)
        + b"".join(get(W) + get(J) + i32(r) + ADD + get(ROWBYTES) + MUL + ADD + set_(WP[r]) for r in range(4))
        + i32(0) + set_(VEC)
        + BLOCK + LOOP  # over the vectors, two at a time
        + get(VEC) + i32(2) + ADD + get(N) + GT_U + br_if(1)  # (VEC + 2 > N)
        + _block(2)
        + get(VEC) + i32(2) + ADD + set_(VEC) + br(0)
        + END + END
        + get(VEC) + get(N) + LT_U + IF + _block(1) + END  # (the last one alone)
        + get(J) + i32(4) + ADD + set_(J) + br(0)
        + END + END
    )
    locals_ = _vec([_uleb(9) + bytes([I32]), _uleb(14) + bytes([V128])])
    body = locals_ + code + END
    return _uleb(len(body)) + body


# --- the gates' nonlinearities: exp on four float32 lanes at once ---------------------------------

F32X4_ABS, F32X4_NEG, F32X4_SUB, F32X4_DIV, F32X4_MIN, F32X4_MAX, F32X4_NEAREST = 0xE0, 0xE1, 0xE5, 0xE7, 0xE8, 0xE9, 0x6A
V128_AND, V128_OR = 0x4E, 0x50
I32X4_SPLAT, I32X4_TRUNC_SAT_F32X4_S, I32X4_ADD, I32X4_SHL, V128_STORE = 0x11, 0xF8, 0xAE, 0xAB, 0x0B
CALL = b"\x10"
# Cephes' expf: x = n ln2 + r with |r| <= ln2/2 (ln2 in two parts), exp(r) by its polynomial of degree
# 7, 2^n put together from its bits; about 1 ulp in float32 over [-87.3, 88.3] (clamped outside).
EXP_LO, EXP_HI, LOG2E, LN2_HI, LN2_LO = -87.3, 88.3, 1.44269504088896341, 0.693359375, -2.12194440e-4
EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def f32x4(value: float) -> bytes:
    import struct

    return b"\x43" + struct.pack("<f", value) + simd(F32X4_SPLAT)


def _exp4_body() -> bytes:
    x, n, r, p = 0, 1, 2, 3  # the argument, then three v128 locals
    code = (get(x) + f32x4(EXP_LO) + simd(F32X4_MAX) + f32x4(EXP_HI) + simd(F32X4_MIN) + set_(x)
            + get(x) + f32x4(LOG2E) + simd(F32X4_MUL) + simd(F32X4_NEAREST) + set_(n)
            + get(x) + get(n) + f32x4(LN2_HI) + simd(F32X4_MUL) + simd(F32X4_SUB)
            + get(n) + f32x4(LN2_LO) + simd(F32X4_MUL) + simd(F32X4_SUB) + set_(r)
            + f32x4(EXP_POLY[0]) + set_(p))
    for c in EXP_POLY[1:]:
        code += get(p) + get(r) + simd(F32X4_MUL) + f32x4(c) + simd(F32X4_ADD) + set_(p)
    code += (get(p) + get(r) + simd(F32X4_MUL) + get(r) + simd(F32X4_MUL) + get(r) + simd(F32X4_ADD)
             + f32x4(1.0) + simd(F32X4_ADD)  # p r^2 + r + 1
             + get(n) + simd(I32X4_TRUNC_SAT_F32X4_S) + i32(127) + simd(I32X4_SPLAT) + simd(I32X4_ADD)
             + i32(23) + simd(I32X4_SHL)  # 2^n as float32 bits
             + simd(F32X4_MUL))
    body = _vec([_uleb(3) + bytes([V128])]) + code + END
    return _uleb(len(body)) + body


def _map_body(kind: str) -> bytes:
    """In place over n float32 at ptr (n a multiple of 4): x -> 1/(1 + exp(-x)) for "sigmoid";
    x -> sign(x) (1 - e)/(1 + e) with e = exp(-2|x|) for "tanh" (no cancellation near 0 beyond e's
    own rounding: about 3e-8 absolute there, 1 ulp elsewhere)."""
    ptr, n, i, end, x, e = 0, 1, 2, 3, 4, 5
    exp = CALL + _uleb(EXP4)
    if kind == "sigmoid":
        value = (f32x4(1.0) + get(x) + simd(F32X4_NEG) + exp + f32x4(1.0) + simd(F32X4_ADD) + simd(F32X4_DIV))
    else:
        value = (get(x) + simd(F32X4_ABS) + f32x4(-2.0) + simd(F32X4_MUL) + exp + set_(e)
                 + f32x4(1.0) + get(e) + simd(F32X4_SUB) + f32x4(1.0) + get(e) + simd(F32X4_ADD) + simd(F32X4_DIV)
                 + get(x) + i32(-(1 << 31)) + simd(I32X4_SPLAT) + simd(V128_AND) + simd(V128_OR))
    code = (get(n) + i32(2) + SHL + set_(end) + i32(0) + set_(i)
            + BLOCK + LOOP + get(i) + get(end) + GE_U + br_if(1)
            + get(ptr) + get(i) + ADD + simd(V128_LOAD, _memarg(0)) + set_(x)
            + get(ptr) + get(i) + ADD + value + simd(V128_STORE, _memarg(0))
            + get(i) + i32(16) + ADD + set_(i) + br(0) + END + END)
    body = _vec([_uleb(2) + bytes([I32]), _uleb(2) + bytes([V128])]) + code + END
    return _uleb(len(body)) + body


GEMM, EXP4, SIGMOID, TANH = range(4)  # function indices


def kernel() -> bytes:
    """The WebAssembly module's bytes: gemm, sigmoid(ptr, n) and tanh(ptr, n) exported."""
    gemm_type = b"\x60" + _vec([bytes([I32])] * 6) + _vec([])
    exp_type = b"\x60" + _vec([bytes([V128])]) + _vec([bytes([V128])])
    map_type = b"\x60" + _vec([bytes([I32])] * 2) + _vec([])
    memory_import = _name("env") + _name("mem") + b"\x02" + b"\x00" + _uleb(1)  # memory, at least one page
    exports = [_name("gemm") + b"\x00" + _uleb(GEMM), _name("sigmoid") + b"\x00" + _uleb(SIGMOID),
               _name("tanh") + b"\x00" + _uleb(TANH)]
    return (b"\x00asm" + b"\x01\x00\x00\x00"
            + _section(1, _vec([gemm_type, exp_type, map_type]))
            + _section(2, _vec([memory_import]))
            + _section(3, _vec([_uleb(0), _uleb(1), _uleb(2), _uleb(2)]))
            + _section(7, _vec(exports))
            + _section(10, _vec([_gemm_body(), _exp4_body(), _map_body("sigmoid"), _map_body("tanh")])))

