// chargen's sampler in JavaScript: the network step, the counter-based random numbers and the
// decoding rules of chargen.sampling, ported line for line so that the same options and seed give
// the same samples as `chargen sample`, and chargen.sampling.search's exact best-first search, so
// that `top` lists what `chargen sample --top` lists (tests/test_webexport.py holds the two to it,
// under Node and in Chromium). `chargen export --js` puts `const MODEL = {...}` (weights, vocabulary, defaults)
// above this file and an `export` line below it; `--html` runs it in a Web Worker.
//
// Numbers: weights decode to float32 values (as chargen's numpy twin holds them); the products and
// the gates' nonlinearities are float32 (WebAssembly SIMD) or float64 (plain JavaScript), the rest
// float64. The logits then agree with numpy's float32 ones to about 1e-6, and a sample differs only
// if a random number falls within that distance of a boundary of the cumulative distribution
// (none did in the tests nor in 20,000 names of the bundled model). Probabilities, top-k/top-p and
// the inverse-CDF draw follow chargen.sampling.engine in float64, operation for operation.

"use strict";

class ChargenError extends Error {
  constructor(message) { super(message); this.name = "ChargenError"; }
}

// --- decoding the weights ------------------------------------------------------------------

// webexport.as_text's Base85: each 5 characters 4 bytes (big-endian), a last group of k + 1
// characters k bytes (read as if padded with the last digit, as base64.b85decode reads it).
const B85 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;.=>?@^_\x60{|}~";  // (\x60: a backquote)
const DIGIT = new Uint8Array(128);
for (let i = 0; i < B85.length; i++) DIGIT[B85.charCodeAt(i)] = i;

function bytesOf(text) {
  const n = text.length, out = new Uint8Array(Math.floor(n / 5) * 4 + Math.max(0, (n % 5) - 1));
  for (let i = 0, o = 0; i < n; i += 5, o += 4) {
    let v = 0;
    for (let k = i; k < i + 5; k++) v = v * 85 + (k < n ? DIGIT[text.charCodeAt(k)] : 84);
    for (let k = 0; k < 4 && o + k < out.length; k++) out[o + k] = (v >>> (24 - 8 * k)) & 255;  // (v < 2 ** 32)
  }
  return out;
}

function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
  if (e === 0) return sign * f * 2 ** -24;
  if (e === 31) return f ? NaN : sign * Infinity;
  return sign * (1 + f / 1024) * 2 ** (e - 15);
}

// A tensor as a Float64Array of float32 values: f32 as stored, f16 widened, i8 times its row's scale
// (rounded to float32, as numpy computes q.astype(float32) * scale).
function decodeTensor(t) {
  const n = t.shape.reduce((a, b) => a * b, 1);
  const bytes = bytesOf(t.data);
  const out = new Float64Array(n);
  if (t.enc === "f32") {
    out.set(new Float32Array(bytes.buffer, 0, n));
  } else if (t.enc === "f16") {
    const v = new Uint16Array(bytes.buffer, 0, n);
    for (let i = 0; i < n; i++) out[i] = halfToFloat(v[i]);
  } else if (t.enc === "i8") {
    const q = new Int8Array(bytes.buffer, 0, n);
    const scale = new Float32Array(bytesOf(t.scale).buffer);
    const cols = n / t.shape[0];
    for (let r = 0; r < t.shape[0]; r++) {
      for (let c = 0; c < cols; c++) out[r * cols + c] = Math.fround(q[r * cols + c] * scale[r]);
    }
  } else {
    throw new ChargenError(`unknown tensor encoding ${t.enc}`);
  }
  return out;
}

// --- the network: torch's nn.LSTM / nn.GRU / nn.RNN equations ----------------------------------

// Matrix products over one Float32Array `f` that holds the weight matrices (rows padded to a
// multiple of 4 and each row to 16 columns with zeros) and the vectors they multiply: in
// WebAssembly with 128-bit SIMD where the engine has it (KERNEL, assembled by chargen/wasmkernel.py;
// about 9x plain JavaScript), else in JavaScript. gemm(w, rows, cols, x, n, out): for the n vectors
// at x (cols apart), f[out + v*rows + j] = sum_k f[w + j*cols + k] * f[x + v*cols + k];
// sigmoid(at, n) and tanh(at, n) in place over f[at .. at + n) (in WebAssembly a float32 exp, four
// lanes at a time: about 1 ulp, as numpy's float32 tanh; 6x faster than Math.tanh).
class Kernel {
  constructor(floats) {
    const bytes = typeof WebAssembly === "object" && typeof KERNEL === "string" ? bytesOf(KERNEL) : null;
    this.simd = false;
    if (bytes && WebAssembly.validate(bytes)) {
      try {  // a page's Content-Security-Policy may forbid compiling: then JavaScript it is
        const mem = new WebAssembly.Memory({ initial: Math.ceil((floats * 4) / 65536) + 1 });
        const wasm = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { mem } }).exports;
        this.f = new Float32Array(mem.buffer);
        this.gemm = (w, rows, cols, x, n, out) => wasm.gemm(w * 4, rows, cols, x * 4, n, out * 4);
        // Four lanes at a time in WebAssembly; the last n % 4 values here.
        this.sigmoid = (at, n) => { const n4 = n & ~3; wasm.sigmoid(at * 4, n4); jsSigmoid(this.f, at + n4, n - n4); };
        this.tanh = (at, n) => { const n4 = n & ~3; wasm.tanh(at * 4, n4); jsTanh(this.f, at + n4, n - n4); };
        this.simd = true;
      } catch (err) { /* below */ }
    }
    if (!this.simd) {
      this.f = new Float32Array(floats);
      this.gemm = (w, rows, cols, x, n, out) => jsGemm(this.f, w, rows, cols, x, n, out);
      this.sigmoid = (at, n) => jsSigmoid(this.f, at, n);
      this.tanh = (at, n) => jsTanh(this.f, at, n);
    }
  }
}

function jsGemm(f, w, rows, cols, x, n, out) {
  for (let v = 0; v < n; v++) {
    const xv = x + v * cols, ov = out + v * rows;
    for (let j = 0; j < rows; j++) {
      const r = w + j * cols;
      let a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      for (let k = 0; k < cols; k += 4) {
        a0 += f[r + k] * f[xv + k]; a1 += f[r + k + 1] * f[xv + k + 1];
        a2 += f[r + k + 2] * f[xv + k + 2]; a3 += f[r + k + 3] * f[xv + k + 3];
      }
      f[ov + j] = (a0 + a1) + (a2 + a3);
    }
  }
}

function jsSigmoid(f, at, n) { for (let j = at; j < at + n; j++) f[j] = 1 / (1 + Math.exp(-f[j])); }
function jsTanh(f, at, n) { for (let j = at; j < at + n; j++) f[j] = Math.tanh(f[j]); }

const pad16 = (n) => Math.ceil(n / 16) * 16, pad4 = (n) => Math.ceil(n / 4) * 4;
// How many states a step takes at once (Network.stepMany)
const STEP_BATCH = 16;

class Network {
  constructor(model) {
    const cfg = model.config, W = {};
    for (const [name, t] of Object.entries(model.weights)) W[name] = decodeTensor(t);
    this.cell = cfg.cell; this.layers = cfg.layers; this.H = cfg.hidden; this.V = cfg.vocab_size;
    this.G = { lstm: 4, gru: 3, rnn: 1 }[cfg.cell] * cfg.hidden;
    this.stateTensors = cfg.cell === "lstm" ? 2 : 1;
    this.S = this.layers * this.stateTensors * this.H;  // a state's numbers
    const G = this.G, H = this.H, E = cfg.embed, V = this.V, Hp = pad16(H), B = STEP_BATCH;
    this.Hp = Hp; this.Gp = pad4(G); this.Vp = pad4(V);
    // The workspace: per layer W_ih (but the first's) and W_hh, (Gp, Hp) each; the head (Vp, Hp); for
    // each of B states at once the vector multiplied (Hp), the products (Gp) and (max(Gp, Vp)), a
    // layer's gates (Gp) and tanh(c) (LSTM) or the candidate (GRU) (Hp).
    let at = 0;
    const take = (n) => { const here = at; at += n; return here; };
    this.wih = []; this.whh = [];
    for (let l = 0; l < this.layers; l++) { this.wih.push(l ? take(this.Gp * Hp) : -1); this.whh.push(take(this.Gp * Hp)); }
    this.head = take(this.Vp * Hp); this.x = take(B * Hp); this.gi = take(B * this.Gp);
    this.gh = take(B * Math.max(this.Gp, this.Vp)); this.pre = take(B * this.Gp); this.tc = take(B * Hp);
    this.kernel = new Kernel(at);
    const f = this.kernel.f;
    const put = (src, rows, cols, dst) => {
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) f[dst + r * Hp + c] = src[r * cols + c];
    };
    this.bih = []; this.bhh = [];
    for (let l = 0; l < this.layers; l++) {
      if (l) put(W[`rnn.weight_ih_l${l}`], G, H, this.wih[l]);
      put(W[`rnn.weight_hh_l${l}`], G, H, this.whh[l]);
      let bi = W[`rnn.bias_ih_l${l}`], bh = W[`rnn.bias_hh_l${l}`];
      if (this.cell !== "gru") { bi = bi.map((v, j) => v + bh[j]); bh = null; }  // one bias suffices
      this.bih.push(bi); this.bhh.push(bh);
    }
    put(W["head.weight"], V, H, this.head);
    this.headB = W["head.bias"];
    // The first layer's input projection of every character, looked up instead of multiplied.
    this.table = new Float64Array(V * G);
    const wih0 = W["rnn.weight_ih_l0"], emb = W["embedding.weight"];
    for (let v = 0; v < V; v++) {
      for (let j = 0; j < G; j++) {
        let s = 0;
        for (let k = 0; k < E; k++) s += wih0[j * E + k] * emb[v * E + k];
        this.table[v * G + j] = s + this.bih[0][j];
      }
    }
    // [h] or [h, c], each (layers, H); a labelled model's (labels, layers, H): one start per label.
    this.start = model.start_state ? model.start_state.map(decodeTensor) : null;
  }

  // A fresh state: one Float64Array(S), per layer h then (LSTM) c, H numbers each; the
  // start-of-line state if any (a labelled model's: label k's).
  initState(label = 0) {
    const state = new Float64Array(this.S), H = this.H, at = label * this.layers * H;
    if (this.start) {
      for (let l = 0; l < this.layers; l++) {
        for (let s = 0; s < this.stateTensors; s++) {
          state.set(this.start[s].subarray(at + l * H, at + (l + 1) * H), (l * this.stateTensors + s) * H);
        }
      }
    }
    return state;
  }

  copyState(state) { return state.slice(); }

  // One character in: the state advances in place, the next character's logits come out.
  step(id, state, logits) { this.stepBatch(id, [state], [logits]); return logits; }

  // The same character into each of `states` (each advances in place), each one's next logits
  // into `logits`' arrays: up to STEP_BATCH at a time, each weight loaded once for two states.
  stepMany(id, states, logits) {
    for (let b = 0; b < states.length; b += STEP_BATCH) {
      this.stepBatch(id, states.slice(b, b + STEP_BATCH), logits.slice(b, b + STEP_BATCH));
    }
  }

  // The h of layer `at` (its offset in a state) of each state into the workspace's vectors
  gather(states, at) {
    const f = this.kernel.f, H = this.H, Hp = this.Hp;
    states.forEach((state, b) => { for (let k = 0; k < H; k++) f[this.x + b * Hp + k] = state[at + k]; });
  }

  // stepMany for at most STEP_BATCH states: each layer's products for all of them in one gemm,
  // then each state's gates
  stepBatch(id, states, logitsOut) {
    const H = this.H, G = this.G, Gp = this.Gp, Hp = this.Hp, n = states.length, k = this.kernel, f = k.f;
    let x = -1;  // where the layer below's h starts in a state
    for (let l = 0; l < this.layers; l++) {
      const h = l * this.stateTensors * H, bi = this.bih[l], bh = this.bhh[l], t = id * G;
      this.gather(states, h);
      k.gemm(this.whh[l], Gp, Hp, this.x, n, this.gh);
      if (l > 0) { this.gather(states, x); k.gemm(this.wih[l], Gp, Hp, this.x, n, this.gi); }
      for (let b = 0; b < n; b++) {
        const state = states[b], gi = this.gi + b * Gp, gh = this.gh + b * Gp, pre = this.pre + b * Gp, tc = this.tc + b * Hp;
        if (l === 0) { for (let j = 0; j < G; j++) f[gi + j] = this.table[t + j]; }  // input part and bias, looked up
        else { for (let j = 0; j < G; j++) f[gi + j] += bi[j]; }
        if (this.cell === "lstm") {  // gates i, f, g, o
          const c = h + H;
          for (let j = 0; j < G; j++) f[pre + j] = f[gi + j] + f[gh + j];
          k.sigmoid(pre, 2 * H); k.tanh(pre + 2 * H, H); k.sigmoid(pre + 3 * H, H);
          for (let j = 0; j < H; j++) {
            state[c + j] = f[pre + H + j] * state[c + j] + f[pre + j] * f[pre + 2 * H + j]; f[tc + j] = state[c + j];
          }
          k.tanh(tc, H);
          for (let j = 0; j < H; j++) state[h + j] = f[pre + 3 * H + j] * f[tc + j];
        } else if (this.cell === "gru") {  // gates r, z, n; the hidden part keeps its own bias
          for (let j = 0; j < G; j++) f[gh + j] += bh[j];
          for (let j = 0; j < 2 * H; j++) f[pre + j] = f[gi + j] + f[gh + j];
          k.sigmoid(pre, 2 * H);
          for (let j = 0; j < H; j++) f[tc + j] = f[gi + 2 * H + j] + f[pre + j] * f[gh + 2 * H + j];
          k.tanh(tc, H);
          for (let j = 0; j < H; j++) { const z = f[pre + H + j]; state[h + j] = (1 - z) * f[tc + j] + z * state[h + j]; }
        } else {
          for (let j = 0; j < H; j++) f[pre + j] = f[gi + j] + f[gh + j];
          k.tanh(pre, H);
          for (let j = 0; j < H; j++) state[h + j] = f[pre + j];
        }
      }
      x = h;
    }
    this.gather(states, x);
    k.gemm(this.head, this.Vp, Hp, this.x, n, this.gh);
    for (let b = 0; b < n; b++) {
      const logits = logitsOut[b], out = this.gh + b * this.Vp;
      for (let v = 0; v < this.V; v++) logits[v] = f[out + v] + this.headB[v];
    }
  }
}

// --- counter-based random numbers (chargen.sampling.randomness) -------------------------------

const M64 = (1n << 64n) - 1n, M1 = 0xbf58476d1ce4e5b9n, M2 = 0x94d049bb133111ebn, GOLD = 0x9e3779b97f4a7c15n;

function mix(z) {
  z = ((z ^ (z >> 30n)) * M1) & M64;
  z = ((z ^ (z >> 27n)) * M2) & M64;
  return z ^ (z >> 31n);
}

function deriveKey(seed, ...stream) {
  let z = mix(seed & M64);
  for (const s of stream) z = mix(z ^ mix((BigInt(s) + GOLD) & M64));
  return z;
}

// The U[0, 1) that picks character t of attempt i: a pure function of (key, i, t).
function uniform(key, i, t) {
  let z = mix((BigInt(i) * GOLD + BigInt(t) + key) & M64);
  z = mix(z ^ key);
  return Number(z >> 11n) * (1 / 9007199254740992);
}

function randomSeed() {
  const w = new Uint32Array(2);
  if (globalThis.crypto && globalThis.crypto.getRandomValues) globalThis.crypto.getRandomValues(w);
  else for (let i = 0; i < 2; i++) w[i] = Math.floor(Math.random() * 2 ** 32);  // Node 18 has no global crypto
  return ((BigInt(w[1]) << 32n) | BigInt(w[0])) >> 1n;
}

// --- one step's distribution (chargen.sampling.engine) ------------------------------------------

// The softmax's normaliser: {m, ls} with log p(v) = (logits[v] - m) - ls.
function logNormalizer(logits, V) {
  let m = -Infinity;
  for (let v = 0; v < V; v++) if (logits[v] > m) m = logits[v];
  let s = 0;
  for (let v = 0; v < V; v++) s += Math.exp(logits[v] - m);
  return { m, ls: Math.log(s) };
}

const logAdd = (a, b) => a === -Infinity ? b : b === -Infinity ? a : Math.max(a, b) + Math.log1p(Math.exp(-Math.abs(a - b)));
const logSumExp = (a) => { const m = Math.max(...a); return m === -Infinity ? m : m + Math.log(a.reduce((s, x) => s + Math.exp(x - m), 0)); };

// A binary heap of [key, tie, ...] arrays, the least (key, then tie) on top.
class Heap {
  constructor() { this.a = []; }
  less(i, j) { const x = this.a[i], y = this.a[j]; return x[0] < y[0] || (x[0] === y[0] && x[1] < y[1]); }
  swap(i, j) { [this.a[i], this.a[j]] = [this.a[j], this.a[i]]; }
  push(e) {
    this.a.push(e);
    for (let i = this.a.length - 1; i > 0 && this.less(i, (i - 1) >> 1); i = (i - 1) >> 1) this.swap(i, (i - 1) >> 1);
  }
  pop() {
    const a = this.a, top = a[0], last = a.pop();
    if (a.length) {
      a[0] = last;
      for (let i = 0; ;) {
        const l = 2 * i + 1, r = l + 1;
        let m = i;
        if (l < a.length && this.less(l, m)) m = l;
        if (r < a.length && this.less(r, m)) m = r;
        if (m === i) break;
        this.swap(i, m); i = m;
      }
    }
    return top;
  }
}

function logSoftmaxAt(logits, V, id) {
  const { m, ls } = logNormalizer(logits, V);
  return (logits[id] - m) - ls;
}

// Probabilities after temperature, top-k and top-p, into p (Float64Array(V)).
function samplingProbs(logits, V, temperature, topK, topP, p) {
  let top = -Infinity;  // (the max first, as chargen.sampling.engine.sampling_probs: a tiny temperature overflows)
  for (let v = 0; v < V; v++) if (logits[v] > top) top = logits[v];
  for (let v = 0; v < V; v++) p[v] = (logits[v] - top) / temperature;
  if (topK !== null && topK < V) {  // (the max, 0, is among the k kept: p's max stays 0)
    const kth = Array.from(p).sort((a, b) => b - a)[topK - 1];
    for (let v = 0; v < V; v++) if (p[v] < kth) p[v] = -Infinity;
  }
  let s = 0;
  for (let v = 0; v < V; v++) { p[v] = Math.exp(p[v]); s += p[v]; }
  for (let v = 0; v < V; v++) p[v] /= s;
  if (topP !== null && topP < 1) {
    const order = Array.from({ length: V }, (_, v) => v).sort((a, b) => p[b] - p[a] || a - b);  // stable
    let cum = 0, kept = 0;
    const keep = new Uint8Array(V);
    for (const v of order) { cum += p[v]; if (cum - p[v] < topP) keep[v] = 1; }
    for (let v = 0; v < V; v++) { if (!keep[v]) p[v] = 0; kept += p[v]; }
    for (let v = 0; v < V; v++) p[v] /= kept;
  }
  return p;
}

// The first id whose cumulative probability exceeds u (times the total).
function inverseCdf(p, V, u) {
  let total = 0;
  for (let v = 0; v < V; v++) total += p[v];
  const target = u * total;
  let cum = 0, id = 0;
  for (let v = 0; v < V; v++) { cum += p[v]; if (cum < target) id++; }
  return Math.min(id, V - 1);
}

function argmax(logits, V, allowed) {
  let best = -1, m = -Infinity;
  for (let v = 0; v < V; v++) if ((!allowed || allowed[v]) && logits[v] > m) { m = logits[v]; best = v; }
  return best < 0 ? 0 : best;
}

// --- regular expressions: `regex` parsed as chargen parses it (interegular's syntax) -----------

// A pattern's tree: {set: Set of characters, neg} (one character), {cat: [...]}, {alt: [...]},
// {rep: node, min, max (null: unbounded)}, {flags: "i"/"", off: "i"/"", node}. The parser is a port
// of interegular's (the library chargen compiles `regex` with), quirks included: each rule gives
// its characters back when it fails, and what it cannot read is an error, as there.
class NoMatch extends Error {}  // a rule did not match here (another may)
class RegexSyntax extends Error {}  // the pattern cannot be compiled
const WORD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_";
const CLASSES = { w: [WORD, false], W: [WORD, true], d: ["0123456789", false], D: ["0123456789", true],
  s: [" \t\n\r\f\v", false], S: [" \t\n\r\f\v", true], a: ["\x07", false], b: ["\b", false], f: ["\f", false],
  n: ["\n", false], r: ["\r", false], t: ["\t", false], v: ["\v", false] };
const SPECIAL = "+?*.$^\\()[|", SPECIAL_INNER = "\\]", RESERVED = "uUAZbB";
const charSet = (chars, neg = false) => ({ set: new Set(Array.from(chars)), neg });

class RegexParser {
  constructor(pattern) { this.s = Array.from(pattern); this.i = 0; this.global = ""; this.flagsEnd = 0; }
  parse() {
    let tree;
    try { tree = this.rule("pattern"); } catch (e) { if (e instanceof NoMatch) this.fail(); throw e; }
    if (this.i < this.s.length) this.fail();
    return this.global ? { flags: this.global, off: "", node: tree } : tree;
  }
  fail(why) { throw new RegexSyntax(why || "invalid syntax"); }
  rule(name, ...args) {  // interegular's every rule: on failure, the characters it read are given back
    const at = this.i;
    try { return this[name](...args); } catch (e) { if (e instanceof NoMatch) this.i = at; throw e; }
  }
  eat(c) { if (this.s[this.i] === c) { this.i++; return true; } return false; }
  need(c) { if (!this.eat(c)) throw new NoMatch(); }
  any() { if (this.i >= this.s.length) throw new NoMatch(); return this.s[this.i++]; }
  anyBut(chars) { if (this.i >= this.s.length || chars.includes(this.s[this.i])) throw new NoMatch(); return this.s[this.i++]; }
  digits(chars, lo, hi) {
    let out = "";
    for (let k = 0; k < lo; k++) { if (this.i + k >= this.s.length || !chars.includes(this.s[this.i + k])) throw new NoMatch(); }
    out = this.s.slice(this.i, this.i + lo).join(""); this.i += lo;
    while ((hi === null || out.length < hi) && this.i < this.s.length && chars.includes(this.s[this.i])) out += this.s[this.i++];
    return out;
  }
  pattern() {
    const options = [this.rule("conc")];
    while (this.eat("|")) options.push(this.rule("conc"));
    return options.length === 1 ? options[0] : { alt: options };
  }
  conc() {
    const parts = [];
    for (;;) { try { parts.push(this.rule("obj")); } catch (e) { if (e instanceof NoMatch) break; throw e; } }
    return { cat: parts };
  }
  obj() {
    if (this.eat("(")) return this.rule("group");
    const atom = this.rule("atom");
    if (atom.rep && "*?{".includes(this.s[this.i] || "~")) this.fail("multiple repeat");  // as Python's re
    return this.rule("repetition", atom);
  }
  group() {
    if (this.eat("?")) return this.rule("extension");
    const p = this.rule("pattern");
    this.need(")");
    return this.rule("repetition", p);
  }
  flagLetters(lo) { return this.digits("aiLmsux", lo, null); }
  extension() {
    const at = this.i - 2, c = this.any();  // at: where "(?" began
    if ("aiLmsux-".includes(c)) {
      this.i--;
      const added = this.flagLetters(0), removed = this.eat("-") ? this.flagLetters(1) : "";
      const flags = (f) => { for (const x of f) if (!"is".includes(x)) this.fail(`the flag ${x} is not supported`); return f; };
      if (this.eat(":")) {
        const p = this.rule("pattern");
        this.need(")");
        return this.rule("repetition", { flags: flags(added), off: flags(removed), node: p });
      }
      if (removed !== "") throw new NoMatch();
      this.need(")");
      if (at !== this.flagsEnd) this.fail("global flags not at the start of the expression");  // as Python's re
      this.flagsEnd = this.i;
      this.global = flags(added);
      return { cat: [] };
    }
    if (c === ":") { const p = this.rule("pattern"); this.need(")"); return this.rule("repetition", p); }
    if (c === "P" && this.eat("<")) {
      this.digits(WORD, 1, null); this.need(">");
      const p = this.rule("pattern"); this.need(")");
      return this.rule("repetition", p);
    }
    // A lookaround: a part of a concatenation that reads nothing (not repeatable, as there).
    if (c === "=" || c === "!") { const p = this.rule("pattern"); this.need(")"); return { look: p, neg: c === "!", back: false }; }
    if (c === "<" && (this.eat("=") || this.eat("!"))) {
      const neg = this.s[this.i - 1] === "!", p = this.rule("pattern");
      this.need(")");
      return { look: p, neg, back: true };
    }
    this.fail("this group is not supported");
  }
  atom() {
    if (this.eat("[")) return this.rule("repetition", this.rule("chargroup"));
    if (this.eat("\\")) return this.rule("repetition", this.rule("escaped", false));
    if (this.eat(".")) return this.rule("repetition", { set: new Set(["\n"]), neg: true });
    if (this.s[this.i] === "$" || this.s[this.i] === "^") this.fail(`'${this.s[this.i]}' is only allowed at the ends`);
    return this.rule("repetition", charSet(this.anyBut(SPECIAL)));
  }
  repetition(base) {
    const lazy = () => this.eat("?");
    if (this.eat("*")) { lazy(); return { rep: base, min: 0, max: null }; }
    if (this.eat("+")) { lazy(); return { rep: base, min: 1, max: null }; }
    if (this.eat("?")) { lazy(); return { rep: base, min: 0, max: 1 }; }
    if (this.eat("{")) {
      let n = 0, m;
      try { n = Number(this.rule("digits", "0123456789", 1, null)); } catch (e) { if (!(e instanceof NoMatch)) throw e; }
      if (this.eat(",")) {
        m = null;
        try { m = Number(this.rule("digits", "0123456789", 1, null)); } catch (e) { if (!(e instanceof NoMatch)) throw e; }
      } else m = n;
      this.need("}");
      lazy();
      if (m !== null && m < n) this.fail(`{${n},${m}}: the minimum is above the maximum`);
      return { rep: base, min: n, max: m };
    }
    return base;
  }
  escaped(inner) {
    if (this.eat("x")) return charSet(String.fromCodePoint(parseInt(this.rule("digits", "0123456789abcdefABCDEF", 2, 2), 16)));
    if (this.eat("0")) return charSet(String.fromCodePoint(parseInt(this.rule("digits", "01234567", 1, 2), 8)));
    if ("NpPuU".includes(this.s[this.i])) this.fail("unicode properties are not supported");
    const octal = (lo, hi) => { try { return this.rule("digits", "01234567", lo, hi); } catch (e) { if (e instanceof NoMatch) return null; throw e; } };
    if (!inner) {
      const o = octal(3, 3);
      if (o !== null) return charSet(String.fromCodePoint(parseInt(o, 8)));
      if (/[0-9]/.test(this.s[this.i] || "")) this.fail("group references are not supported");
      if (RESERVED.includes(this.s[this.i] || "~")) this.fail(`the escape \\${this.s[this.i]} is not supported`);
    } else {
      const o = octal(1, 3);
      if (o !== null) return charSet(String.fromCodePoint(parseInt(o, 8)));
    }
    const c = this.s[this.i];
    if (c !== undefined && c in CLASSES) { this.i++; return charSet(...CLASSES[c]); }
    const lit = this.anyBut("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ");
    if (/\p{L}/u.test(lit)) throw new NoMatch();
    return charSet(lit);
  }
  chargroup() {
    const negate = this.eat("^"), groups = [];
    // "[]" is an empty class to chargen's parser; Python's re, which checks a pattern first, reads
    // the "]" as a character and needs another to close the class
    if (this.s[this.i] === "]" && !this.s.slice(this.i + 1).includes("]")) this.fail("unterminated character set");
    for (;;) { try { groups.push(this.rule("chargroupInner")); } catch (e) { if (e instanceof NoMatch) break; throw e; } }
    this.need("]");
    if (groups.length === 1) return { set: groups[0].set, neg: negate !== groups[0].neg };
    if (groups.length === 0) return { set: new Set(), neg: negate };
    const pos = new Set(), negs = new Set();
    for (const g of groups) for (const c of g.set) (g.neg ? negs : pos).add(c);
    if (negs.size) return { set: new Set([...negs].filter((c) => !pos.has(c))), neg: !negate };
    return { set: pos, neg: negate };  // (pos less the empty negs)
  }
  chargroupInner() {
    const start = this.i;
    const base = this.eat("\\") ? this.rule("escaped", true) : charSet(this.anyBut(SPECIAL_INNER));
    if (!this.eat("-")) return base;
    let end;
    if (this.eat("\\")) end = this.rule("escaped", true);
    else if (this.s[this.i] === "]") return { set: new Set([...base.set, "-"]), neg: false };
    else end = charSet(this.anyBut(SPECIAL_INNER));
    if (base.set.size !== 1 || end.set.size !== 1) this.fail(`invalid range ${this.s.slice(start, this.i).join("")}`);
    const lo = [...base.set][0].codePointAt(0), hi = [...end.set][0].codePointAt(0);
    if (lo > hi) this.fail(`invalid range ${this.s.slice(start, this.i).join("")}`);
    const set = new Set();
    for (let k = lo; k <= hi; k++) set.add(String.fromCodePoint(k));
    return { set, neg: false };
  }
}

// How many characters a regex tree reads: [least, most (null: unbounded)]; lookarounds read none.
function regexLengths(node) {
  if (node.set) return [1, 1];
  if (node.flags !== undefined) return regexLengths(node.node);
  if (node.cat) {
    let lo = 0, hi = 0;
    for (const p of node.cat) if (!p.look) { const [a, b] = regexLengths(p); lo += a; hi = hi === null || b === null ? null : hi + b; }
    return [lo, hi];
  }
  if (node.alt) {
    const all = node.alt.map(regexLengths);
    return [Math.min(...all.map((x) => x[0])), all.some((x) => x[1] === null) ? null : Math.max(...all.map((x) => x[1]))];
  }
  const [a, b] = regexLengths(node.rep);
  return [a * node.min, b === null || node.max === null ? null : b * node.max];
}

// How far a tree's lookarounds reach past its ends, [before, after] (interegular's prefix_postfix):
// that many "any character"s pad it.
function regexReach(node) {
  if (node.set) return [0, 0];
  if (node.flags !== undefined) return regexReach(node.node);
  if (node.rep) return regexReach(node.rep);
  if (node.alt) return node.alt.map(regexReach).reduce((x, y) => [Math.max(x[0], y[0]), Math.max(x[1], y[1])], [0, 0]);
  let pre = 0, post = 0, off = 0;
  for (const p of node.cat) {
    if (!p.look) { off += regexLengths(p)[0]; continue; }
    if (!p.back) continue;
    const [a, b] = regexLengths(p.look);
    if (a !== b) throw new RegexSyntax("lookbehinds need a fixed length");
    pre = Math.max(pre, a - off);
  }
  off = 0;
  for (const p of [...node.cat].reverse()) {
    if (!p.look) { off += regexLengths(p)[0]; continue; }
    if (p.back) continue;
    const [a, b] = regexLengths(p.look);
    post = Math.max(post, (b === null ? a : b) - off);
  }
  return [pre, post];
}

// A Thompson NFA over the vocabulary's ids (the newline left out: it ends a sample), built from a
// regex tree, and the DFAs of its fragments ({next: a row of next states per state, -1 where
// none; accepting}, state 0 first). A fragment is [start, end].
class Nfa {
  constructor(vocab, newline, what) {
    this.vocab = vocab; this.newline = newline; this.what = what; this.V = vocab.length;
    this.eps = []; this.edges = [];  // per state: epsilon targets; [matches (Uint8Array over ids), target]
    this.anyChar = new Uint8Array(this.V).map((_, v) => (v !== newline ? 1 : 0));
  }
  state() {
    this.eps.push([]); this.edges.push([]);
    if (this.eps.length > 200000) throw new ChargenError(`${this.what} is too large to compile here`);
    return this.eps.length - 1;
  }
  chain(fragments) {  // one after the other
    const s = this.state();
    let end = s;
    for (const [a, b] of fragments) { this.eps[end].push(a); end = b; }
    return [s, end];
  }
  anyOf(n, loop = false) {  // n any characters, or (loop) any number of them
    const s = this.state();
    if (loop) { this.edges[s].push([this.anyChar, s]); return [s, s]; }
    let end = s;
    for (let k = 0; k < n; k++) { const e = this.state(); this.edges[end].push([this.anyChar, e]); end = e; }
    return [s, end];
  }
  // A tree's fragment: ci, case-insensitive; pad, the any-characters around a concatenation.
  build(node, ci, pad) {
    if (node.flags !== undefined) return this.build(node.node, (ci || node.flags.includes("i")) && !node.off.includes("i"), pad);
    if (node.alt) {
      const s = this.state(), e = this.state();
      for (const option of node.alt) { const [a, b] = this.build(option, ci, pad); this.eps[s].push(a); this.eps[b].push(e); }
      return [s, e];
    }
    if (node.cat) {
      const [pre, post] = regexReach(node);
      if (pre > pad[0] || post > pad[1]) throw new RegexSyntax("a lookaround may not reach past its group");
      if (pad[0] || pad[1] || node.cat.some((p) => p.look)) return this.embed(this.lookahead(node.cat, ci, pad));
      return this.chain(node.cat.map((p) => this.build(p, ci, [0, 0])));
    }
    const s = this.state();
    if (node.set) {
      const chars = new Set(node.set);
      if (ci) for (const c of node.set) { chars.add(c.toLowerCase()); chars.add(c.toUpperCase()); }
      const m = new Uint8Array(this.V);
      for (let v = 0; v < this.V; v++) m[v] = v !== this.newline && chars.has(this.vocab[v]) !== node.neg ? 1 : 0;
      const e = this.state(); this.edges[s].push([m, e]); return [s, e];
    }
    let end = s;  // a repetition: min copies, then max - min optional ones (or a loop)
    for (let k = 0; k < node.min; k++) { const [a, b] = this.build(node.rep, ci, [0, 0]); this.eps[end].push(a); end = b; }
    const e = this.state();
    if (node.max === null) {
      const [a, b] = this.build(node.rep, ci, [0, 0]);
      this.eps[end].push(a, e); this.eps[b].push(a, e);
      return [s, e];
    }
    for (let k = node.min; k < node.max; k++) { const [a, b] = this.build(node.rep, ci, [0, 0]); this.eps[end].push(a, e); end = b; }
    this.eps[end].push(e);
    return [s, e];
  }
  // A padded concatenation with lookaheads as a DFA (interegular's _Concatenation.to_fsm): from the
  // right, each lookahead intersects what follows it with its own language followed by anything
  // (or, negated, subtracts that).
  lookahead(parts, ci, pad) {
    const pieces = [];
    let current = [this.anyOf(pad[0])];
    for (const p of parts) {
      if (!p.look) { current.push(this.build(p, ci, [0, 0])); continue; }
      if (p.back) throw new RegexSyntax("lookbehind is not supported");
      pieces.push([null, current], [p, this.determinize(this.build(p.look, ci, [0, 0]))]);
      current = [];
    }
    current.push(this.anyOf(pad[1]));
    let dfa = this.determinize(this.chain(current));
    for (let k = pieces.length - 1; k >= 0; k--) {
      const [look, part] = pieces[k];
      dfa = look === null ? this.determinize(this.chain([...part, this.embed(dfa)]))
        : this.combine(dfa, this.determinize(this.chain([this.embed(part), this.anyOf(0, true)])), look.neg);
    }
    return dfa;
  }
  embed(dfa) {  // a DFA as a fragment
    const at = dfa.next.map(() => this.state()), end = this.state();
    dfa.next.forEach((row, i) => {
      const to = new Map();
      for (let v = 0; v < this.V; v++) {
        if (row[v] < 0) continue;
        if (!to.has(row[v])) to.set(row[v], new Uint8Array(this.V));
        to.get(row[v])[v] = 1;
      }
      for (const [t, m] of to) this.edges[at[i]].push([m, at[t]]);
      if (dfa.accepting[i]) this.eps[at[i]].push(end);
    });
    return [at[0], end];
  }
  closure(set) {
    const out = new Set(set), stack = [...set];
    while (stack.length) for (const t of this.eps[stack.pop()]) if (!out.has(t)) { out.add(t); stack.push(t); }
    return [...out].sort((a, b) => a - b);
  }
  determinize([start, final]) {  // the subsets of states that the characters reach
    const [order, next] = explore(this.closure([start]), this.V, (set, v) => {
      const moved = [];
      for (const q of set) for (const [m, t] of this.edges[q]) if (m[v]) moved.push(t);
      return moved.length ? this.closure(moved) : null;
    });
    return { next, accepting: order.map((set) => set.includes(final)) };
  }
  combine(a, b, negated) {  // a's strings that b accepts (negated: that b does not), by pairs of states
    const [order, next] = explore([0, 0], this.V, ([x, y], v) => {
      const x2 = a.next[x][v], y2 = y < 0 ? -1 : b.next[y][v];
      return x2 < 0 || (y2 < 0 && !negated) ? null : [x2, y2];
    });
    return { next, accepting: order.map(([x, y]) => a.accepting[x] && (y >= 0 && b.accepting[y]) !== negated) };
  }
}

// The states reachable from `first` one character at a time, numbered in the order found (first:
// 0), each an array named by its joined values: step(state, v) gives the next, or null where there
// is no way on. Returns [the states, a row of next numbers per state (-1: none)].
function explore(first, V, step) {
  const order = [first], number = new Map([[first.join(","), 0]]), rows = [];
  for (let i = 0; i < order.length; i++) {
    const row = new Int32Array(V).fill(-1);
    for (let v = 0; v < V; v++) {
      const to = step(order[i], v);
      if (to === null) continue;
      const key = to.join(",");
      let t = number.get(key);
      if (t === undefined) { tooMany(order.length); t = order.length; number.set(key, t); order.push(to); }
      row[v] = t;
    }
    rows.push(row);
  }
  return [order, rows];
}

// `regex` as a DFA over the vocabulary, compiled as interegular compiles it for chargen, quirks
// included: a lookahead that reaches past the pattern's end pads it with that many any-characters
// ("a(?!b)" is "a" then one character other than "b"; every top-level option gets the largest
// padding), a group's lookaheads may not reach past it, and lookbehind is refused.
function regexPart(vocab, newline, pattern) {
  if (pattern.startsWith("^")) pattern = pattern.slice(1);  // chargen strips the ends' anchors too
  if (pattern.endsWith("$") && !pattern.endsWith("\\$")) pattern = pattern.slice(0, -1);
  const what = `\`regex\` ${JSON.stringify(pattern.length <= 80 ? pattern : pattern.slice(0, 60) + "...")}`;  // one readable line
  try {
    let tree = new RegexParser(pattern).parse();
    // interegular's simplify(): a pattern that is one group is that group (its lookaheads then
    // reach past the pattern's ends, not the group's)
    while (tree.cat && tree.cat.length === 1 && (tree.cat[0].cat || tree.cat[0].alt || tree.cat[0].flags !== undefined)) tree = tree.cat[0];
    const nfa = new Nfa(vocab, newline, what);
    return nfa.determinize(nfa.build(tree, false, regexReach(tree)));
  } catch (e) {
    if (e instanceof RangeError) throw new ChargenError(`${what} nests its groups too deeply`);  // the parser's stack
    if (!(e instanceof RegexSyntax)) throw e;
    throw new ChargenError(`${what} is not a regular expression an exported model compiles (${e.message}); see \`chargen sample --help\` for the syntax`);
  }
}

function tooMany(states) {
  if (states >= MODEL.max_states) {
    throw new ChargenError(`the constraints together need more than ${MODEL.max_states.toLocaleString("en-US")} automaton states; simplify the \`regex\`, drop a \`contains\` or shorten a text`);
  }
}

// --- constraints: an ending, texts to contain, a regex, length bounds (chargen.sampling.constraints)

// One text constraint as a KMP automaton over the vocabulary: state k means the text so far ends
// with pat[:k], its longest such prefix. `absorb` (contains) keeps state |pat| once reached; an
// ending goes on from it as KMP does. Accepting: state |pat|. (A part: {next: a row of next states
// per state, -1 where none; accepting}, state 0 first.) Built as chargen's _kmp builds it: row k
// is the row of the state text[1:k] falls back to, but for text[k], in O(|pat| x V).
function kmp(vocab, pat, absorb) {
  const L = pat.length, V = vocab.length, next = [new Int32Array(V)];
  let restart = 0;  // where text[1:k] leads
  for (let k = 0; k < L; k++) {
    const id = vocab.indexOf(pat[k]);
    if (k) { next.push(next[restart].slice()); restart = next[restart][id]; }
    next[k][id] = k + 1;
  }
  next.push(absorb ? new Int32Array(V).fill(L) : next[restart].slice());
  return { next, accepting: next.map((_, k) => k === L) };
}

// The constraints as one automaton over the vocabulary: the product of the parts (an ending's, each
// contained text's, the regex's), over the reachable tuples of their states (at most
// MODEL.max_states, as chargen caps it), with feasible(n)[s]: from state s after n characters an
// accepted end within [minLen, maxLen] is reachable. With no text constraint, one state. The states
// are numbered otherwise than chargen's (its regex automata come from interegular), but a state allows the
// same ids, so the draws match.
class Constraint {
  constructor(vocab, newline, endsWith, contains, regex, minLen, maxLen) {
    const V = vocab.length;
    tooMany(Math.max(0, ...[...contains, endsWith ?? ""].map((t) => Array.from(t).length)));  // a text's states are all reachable
    const parts = contains.map((t) => kmp(vocab, Array.from(t), true));
    if (endsWith) parts.push(kmp(vocab, Array.from(endsWith), false));
    if (regex !== null) parts.push(regexPart(vocab, newline, regex));
    this.V = V; this.newline = newline; this.minLen = minLen; this.maxLen = maxLen;
    const [order, rows] = explore(parts.map(() => 0), V, (state, v) => {
      if (v === newline) return null;  // -1 for the newline: it ends the sample instead
      const tuple = parts.map((p, j) => p.next[state[j]][v]);
      return tuple.includes(-1) ? null : tuple;
    });
    const S = this.S = order.length;
    this.trans = new Int32Array(S * V);  // next state; -1 for the newline and where there is no way on
    rows.forEach((row, i) => this.trans.set(row, i * V));
    const final = order.map((tuple) => parts.every((p, j) => p.accepting[tuple[j]]));
    this.accepting = (s) => final[s];
    // feasible(n)[s] for n in 0..maxLen+1, from the rows that differ (chargen's Feasibility): read
    // from maxLen + 1 down, each row a function of the one above (at minLen and above: s can end or go
    // on to a feasible state; below: go on), so the rows repeat from the first repeat on.
    const go = (row) => {
      const out = new Uint8Array(S);
      for (let s = 0; s < S; s++) {
        for (let v = 0; v < V && !out[s]; v++) { const t = this.trans[s * V + v]; out[s] = t >= 0 && row[t] === 1 ? 1 : 0; }
      }
      return out;
    };
    const low = Math.min(minLen, maxLen + 1);  // the first length that may end
    const upper = repeating(new Uint8Array(S), (row) => {
      const out = go(row);
      for (let s = 0; s < S; s++) if (final[s]) out[s] = 1;
      return out;
    }, maxLen + 2 - low);
    const lower = repeating(go(upper(maxLen + 1 - low)), go, low);
    this.feasible = (n) => n >= low ? upper(maxLen + 1 - n) : lower(low - 1 - n);
  }

  // Which ids keep a complete sample reachable from state s after n characters.
  allowed(s, n, out) {
    const V = this.V, f = this.feasible(Math.min(n + 1, this.maxLen + 1));
    for (let v = 0; v < V; v++) { const t = this.trans[s * V + v]; out[v] = t >= 0 && f[t] ? 1 : 0; }
    out[this.newline] = this.accepting(s) && n >= this.minLen && n <= this.maxLen ? 1 : 0;
    return out;
  }

  // Distinct samples from state `start` after n0 characters (as a float), or a number of at least
  // `enough` once that many are found: counted length by length from n0 up, as chargen counts them.
  count(start, n0, enough = Infinity) {
    let ways = new Float64Array(this.S);  // the texts of the current length that lead to each state
    ways[start] = 1;
    let found = 0;
    for (let n = n0; n <= this.maxLen; n++) {
      if (n >= this.minLen) for (let s = 0; s < this.S; s++) if (this.accepting(s)) found += ways[s];
      if (found >= enough || n === this.maxLen || ways.every((w) => w === 0)) break;
      const next = new Float64Array(this.S);
      for (let s = 0; s < this.S; s++) {
        if (ways[s]) for (let v = 0; v < this.V; v++) { const t = this.trans[s * this.V + v]; if (t >= 0) next[t] += ways[s]; }
      }
      ways = next;
    }
    return found;
  }
}

// The `count` rows first, step(first), step(step(first)), ... as a function of k, stored up to the
// first repeat (chargen.sampling.constraints._repeating).
function repeating(first, step, count) {
  const rows = [], seen = new Map();
  let start = 0, period = 1;
  for (let k = 0, row = first; k < count; k++, row = step(row)) {
    const key = row.join("");
    if (seen.has(key)) { start = seen.get(key); period = k - start; break; }
    seen.set(key, k);
    rows.push(row);
  }
  return (k) => rows[k < rows.length ? k : start + (k - start) % period];
}

// --- drawing (chargen.sampling.drawing) -------------------------------------------------------

const OPTIONS = Object.keys(MODEL.defaults);  // chargen's sampling options that an export takes, camelCase

// A value as an error message shows it: JSON, a number as itself (NaN, not null), a BigInt as 10n
// (JSON.stringify throws on one).
const shown = v => typeof v === "number" ? String(v) : typeof v === "bigint" ? `${v}n`
  : JSON.stringify(v, (k, x) => typeof x === "bigint" ? `${x}n` : x) ?? String(v);

function checkOptions(opts) {
  if (opts === undefined || opts === null) opts = {};
  if (typeof opts !== "object" || Array.isArray(opts)) throw new ChargenError(`the options must be an object (got ${shown(opts)})`);
  for (const k of Object.keys(opts)) {
    if (OPTIONS.includes(k) || opts[k] === undefined) continue;
    if (k in MODEL.not_exported) throw new ChargenError(`\`${k}\` ${MODEL.not_exported[k]}`);
    throw new ChargenError(`unknown option \`${k}\`; the options are ${OPTIONS.join(", ")}`);
  }
  const o = { ...MODEL.defaults };
  for (const k of OPTIONS) if (opts[k] !== undefined && opts[k] !== null) o[k] = opts[k];
  const int = (k, lo, hi = Infinity) => {
    if (o[k] === null) return;
    if (!Number.isInteger(o[k]) || o[k] < lo || o[k] > hi) {
      const range = hi === Infinity ? `of at least ${lo}` : `between ${lo} and ${hi.toLocaleString("en-US")}`;
      throw new ChargenError(`\`${k}\` must be an integer ${range} (got ${shown(o[k])})`);
    }
  };
  int("n", 1); int("length", 1, MODEL.max_length); int("topK", 1); int("minLen", 0); int("maxLen", 1);
  for (const k of ["unique", "novel", "rejection", "lines"]) {
    if (o[k] !== null && typeof o[k] !== "boolean") throw new ChargenError(`\`${k}\` must be true or false (got ${shown(o[k])})`);
  }
  if (typeof o.temperature !== "number" || !(o.temperature >= 0) || o.temperature === Infinity) {
    throw new ChargenError(`\`temperature\` must be 0 (greedy) or more (got ${shown(o.temperature)})`);
  }
  if (o.topP !== null && !(typeof o.topP === "number" && o.topP > 0 && o.topP <= 1)) {
    throw new ChargenError(`\`topP\` must be in (0, 1] (got ${shown(o.topP)})`);
  }
  if (o.minLen !== null && o.maxLen !== null && o.minLen > o.maxLen) {
    throw new ChargenError(`\`minLen\` ${o.minLen} is above \`maxLen\` ${o.maxLen}: no sample can satisfy both`);
  }
  const texts = (a) => Array.isArray(a) && a.every((t) => typeof t === "string");
  if (typeof o.prompt !== "string" && !texts(o.prompt)) throw new ChargenError(`\`prompt\` must be a text or a list of texts (got ${o.prompt})`);
  if (o.exclude !== null && !texts(o.exclude)) throw new ChargenError("`exclude` must be a list of texts");
  if (typeof o.contains === "string") o.contains = [o.contains];  // one text, as the Python API takes it
  if (!texts(o.contains)) throw new ChargenError("`contains` must be a text or a list of texts");
  o.contains = o.contains.filter((t) => t.length > 0);
  if (o.endsWith !== null && typeof o.endsWith !== "string") throw new ChargenError("`endsWith` must be a text");
  if (o.regex !== null && typeof o.regex !== "string") throw new ChargenError("`regex` must be a text");
  if (o.label != null && typeof o.label === "object" && !Array.isArray(o.label)) o.label = labelSpec(o.label);
  if (o.label != null && typeof o.label !== "string") {  // (null or undefined: none given, or no labels)
    throw new ChargenError(`\`label\` must be text or a mapping of labels to weights (got ${shown(o.label)})`);
  }
  // A call without a seed may take a warm tree (WarmTrees)
  o.warm = o.seed === null;
  if (o.seed === null) o.seed = randomSeed();
  const seedError = () => new ChargenError(`\`seed\` must be an integer (got ${JSON.stringify(String(o.seed))})`);
  // a number, a BigInt or a decimal string (a seed past 2**53 is exact only so); not true, "0x10" or 1.5
  if (!["number", "bigint", "string"].includes(typeof o.seed) || (typeof o.seed === "string" && !/^\s*\d+\s*$/.test(o.seed))) throw seedError();
  try { o.seed = BigInt(o.seed); } catch { throw seedError(); }
  if (o.seed < 0n || o.seed >= 1n << 63n) throw new ChargenError("`seed` must be between 0 and 2**63-1");
  if (o.novel && MODEL.training_lines === null) {
    throw new ChargenError(MODEL.training_lines_note || "this model has no training lines to check `novel` against");
  }
  return o;
}

// --- exact adaptive constrained sampling (chargen.sampling.tree) -------------------------------

// A tree of the prefixes drawn, each with an upper bound psi on the chance that the model completes
// it into an accepted sample (kept in its parent's `psi` row; the root's in rootPsi). A draw at s:
// N = sum_c p(c|s) psi(sc); go on with probability N / psi(s), else it is rejected; pick c with
// probability p(c|s) psi(sc) / N. Accepted draws follow the conditional distribution exactly; after
// each round psi(s) := N(s) on the nodes visited, deepest first. Rounds as chargen's: the attempts
// of a round draw with the bounds of its start, so the same seed gives the CLI's samples (the
// order of node creation differs, which changes nothing until the tree fills its memory cap).
// `primed`: a root per [logits, state] (a blend's labels: LabelTree picks each draw's root; their
// prefixes share the tree's memory, root k's named from k).
class PrefixTree {
  constructor(sampler, guide, o, key, primed, cap) {
    this.sm = sampler; this.g = guide; this.o = o; this.key = key; this.V = sampler.V;
    this.cap = cap; this.count = 0; this.round = 0; this.rootPsi = new Float64Array(primed.length).fill(1);
    this.full = false;
    // The nodes eviction may take: kept, not a root, never had a child kept
    this.leaves = new Set();
    // What the draws say of Z (tree.ConstraintMass)
    this.draws = 0; this.massSum = 0;
    // Distinct accepted samples ("root\ntext"): their probability at the settings, summed per root
    this.found = new Map(); this.foundMass = new Float64Array(primed.length);
    // The probability of the accepted samples ruled out (tree.Excluded), per root; its part ruled
    // out for good; the nodes and roots of those ruled out for the call drawing now
    this.gone = new Float64Array(primed.length); this.goneForGood = new Float64Array(primed.length); this.forCall = [];
    this.roots = primed.map((pr, k) => this.node(null, -1, guide.s, pr[0].slice(), this.sm.net.copyState(pr[1]), false, k));
  }

  // As chargen counts a tree's nodes
  get memory() { return this.count * MODEL.tree_node_bytes; }

  // One root's (a blend's is its LabelTree's)
  get mass() { return constraintMass(this.massSum, this.draws, this.foundMass[0], this.rootPsi[0] + this.gone[0]); }

  // No draw can be accepted any more (one root's tree)
  get exhausted() { return this.rootPsi[0] <= 0; }

  // Draw with another call's random key (a warm tree)
  useKey(key) { this.key = key; }

  // A node for a prefix whose next-character `logits` and `state` it keeps (its own arrays, not copied)
  node(parent, ch, dfa, logits, state, temp, root = parent && parent.root) {
    const V = this.V, n = { parent, ch, dfa, depth: parent ? parent.depth + 1 : 0, state, temp, root,
      key: parent ? mix((parent.key * GOLD + BigInt(ch) + 1n) & M64) : BigInt(root),  // tree.prefix_key
      logits, probs: new Float64Array(V), psi: new Float64Array(V),
      child: new Array(V).fill(null), children: 0, pristine: true, pinned: false, used: this.round };
    const o = this.o;
    samplingProbs(n.logits, V, o.temperature, o.topK, o.topP, n.probs);
    const allowed = this.g.c.allowed(dfa, this.g.n0 + n.depth, new Uint8Array(V));
    for (let v = 0; v < V; v++) n.psi[v] = allowed[v];
    // Its normaliser {m, ls}, for a draw's log-probability at each visit
    n.norm = logNormalizer(n.logits, V);
    n.kept = keptMass(n.logits, V, allowed, n.norm);
    this.count++;
    if (parent !== null && !temp) this.leaves.add(n);
    return n;
  }

  childOf(n, c) {
    let ch = n.child[c];
    if (ch === null) {
      const state = this.sm.net.copyState(n.state), logits = new Float64Array(this.V);
      this.sm.net.step(c, state, logits);
      const temp = n.temp || this.full;
      ch = n.child[c] = this.node(n, c, this.g.c.trans[n.dfa * this.V + c], logits, state, temp);
      if (!temp) { n.children++; n.pristine = false; this.leaves.delete(n); }
    }
    ch.used = this.round;
    return ch;
  }

  // One round: the attempts `indices`, each from its root (`roots`, else the first), with the bounds
  // as they are; then the bounds tighten, and the accepted samples `excluded(root, text)` rules out
  // are never drawn again (tree.PrefixTree.run).
  run(indices, newline, excluded = null, roots = null) {
    const V = this.V, out = [], visited = [], w = new Float64Array(V), cdf = new Float64Array(V), ends = [];
    const psiRoots = Float64Array.from(this.rootPsi), goneRoots = Float64Array.from(this.gone);
    const accepted = new Array(this.roots.length).fill(0), drawn = new Array(this.roots.length).fill(0);
    this.full = this.count >= this.cap;  // then this round's new nodes live for the round only
    for (let j = 0; j < indices.length; j++) {
      const i = indices[j], r = roots === null ? 0 : roots[j];
      drawn[r]++;
      let n = this.roots[r], psi = this.rootPsi[r], text = "", logprob = 0, kept = 0, logq = 0, d = 0, ok = false;
      for (; d < this.g.steps; d++) {
        if (visited[d] === undefined) visited[d] = new Set();
        visited[d].add(n);
        let total = 0;
        for (let v = 0; v < V; v++) { w[v] = n.probs[v] * n.psi[v]; total += w[v]; }
        if (!(total > 0) || !(uniform(this.key, i, 2 * d) * psi < total)) break;
        const c = pickWeighted(w, V, uniform(this.key, i, 2 * d + 1), cdf);
        // logSoftmaxAt's, with the node's normaliser
        logprob += (n.logits[c] - n.norm.m) - n.norm.ls;
        logq += Math.log(n.probs[c]);
        kept += n.kept;
        if (c === newline) { ok = true; d++; ends.push({ n, r, text, logq }); break; }
        text += this.sm.vocab[c];
        psi = n.psi[c];
        n = this.childOf(n, c);
      }
      if (ok) {
        accepted[r]++;
        const found = `${r}\n${text}`;
        if (!this.found.has(found) && this.found.size < MODEL.found_kept) {
          const q = Math.exp(logq);
          this.found.set(found, q); this.foundMass[r] += q;
        }
      }
      out.push({ text: ok ? text : null, logprob, kept, chars: d });
    }
    this.draws += indices.length;
    drawn.forEach((k, r) => { if (k) this.massSum += psiRoots[r] * accepted[r] + goneRoots[r] * k; });
    // The accepted draws `excluded` rules out: their newline's bound 0, their node pinned (never evicted)
    if (excluded !== null) {
      for (const { n, r, text, logq } of ends) {
        if (n.temp || n.psi[newline] === 0) continue;
        const how = excluded(r, text);
        if (how === KEPT) continue;
        const q = Math.exp(logq);
        n.psi[newline] = 0; n.pinned = true; this.leaves.delete(n);
        this.gone[r] += q;
        if (how === FOR_CALL) this.forCall.push([n, r]); else this.goneForGood[r] += q;
      }
    }
    for (let d = visited.length - 1; d >= 0; d--) {
      for (const n of visited[d]) {
        if (n.temp) continue;  // a round-only node passes no bound up
        let total = 0;
        for (let v = 0; v < V; v++) total += n.probs[v] * n.psi[v];
        if (n.parent === null) this.rootPsi[n.root] = total; else n.parent.psi[n.ch] = total;
      }
    }
    for (const set of visited) for (const n of set) for (let v = 0; v < V; v++) {
      const ch = n.child[v];
      if (ch !== null && ch.temp) { n.child[v] = null; this.count--; }
    }
    this.evict();
    this.round++;
    return out;
  }

  // Give back what the call drawing now ruled out for itself (tree.PrefixTree.end_call): each
  // sample's newline slot 1 again, every bound on its path raised by what that adds below it.
  endCall(newline) {
    for (let [n, r] of this.forCall) {
      n.psi[newline] = 1; n.pinned = false;
      if (n.pristine && n.parent !== null) this.leaves.add(n);
      let rise = n.probs[newline];
      while (n.parent !== null) { n.parent.psi[n.ch] += rise; rise *= n.parent.probs[n.ch]; n = n.parent; }
      this.rootPsi[r] += rise;
    }
    this.gone = Float64Array.from(this.goneForGood); this.forCall = [];
  }

  // Down to 80% of the cap: the least recently used leaves that never had a child.
  evict() {
    const over = this.count - Math.floor(this.cap * 4 / 5);
    if (over <= 0) return;
    // (Each never had a child kept, so none has children.)
    const leaves = Array.from(this.leaves);
    leaves.sort((a, b) => a.used - b.used || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    for (const n of leaves.slice(0, over)) {
      n.parent.child[n.ch] = null; n.parent.children--; this.count--; this.leaves.delete(n);
    }
  }
}

// What a tree is told of an accepted sample (tree.Excluded): not ruled out, ruled out for good (a
// training line), ruled out for the call drawing now (its repeats, its `exclude`)
const KEPT = 0, FOR_GOOD = 1, FOR_CALL = 2;

// What the draws say of Z, the probability the model gives the constraints (tree.ConstraintMass.of):
// the unbiased mean, moved into the certain bounds [lower, upper].
function constraintMass(massSum, draws, lower, upper) {
  const mean = draws ? massSum / draws : upper;
  return { estimate: Math.min(Math.max(mean, lower), upper), lower, upper };
}

// The log of the mass (at temperature 1) of the characters `allowed` next: a step's part of a
// constrained sample's `kept`, as chargen's engine and tree add it up.
function keptMass(logits, V, allowed, { m, ls }) {
  let s = 0;
  for (let v = 0; v < V; v++) if (allowed[v]) s += Math.exp((logits[v] - m) - ls);
  return Math.log(s);
}

// The weighted pick of chargen.sampling.tree: the first id whose cumulative weight passes u * total
// (`cdf`: room for V sums, a caller's to reuse).
function pickWeighted(w, V, u, cdf = new Float64Array(V)) {
  let cum = 0, last = 0;
  for (let v = 0; v < V; v++) { cum += w[v]; cdf[v] = cum; if (w[v] > 0) last = v; }
  const thr = u * cdf[V - 1];
  let c = 0;
  for (let v = 0; v < V; v++) if (cdf[v] <= thr) c++;
  return Math.min(c, last);
}

// Each prefix plain draws reach is stepped once (chargen.sampling.prefixes): its state and logits
// are kept, within `memory` bytes and for prefixes of up to MODEL.prefix_depth characters, and a
// later draw that reaches it copies them instead of stepping, so the samples are the same. Node 0
// is the primed start (its state is the draw's own copy); a node's children are found by
// node * V + character. Each node's draw at one setting (`draw`) is kept with it too.
class Prefixes {
  constructor(net, V, memory) {
    this.S = net.S; this.V = V; this.memory = memory;
    this.cap = Math.floor(memory / (8 * (this.S + 2 * V + 2) + 1));
    this.child = new Map();
    this.states = []; this.logits = []; this.p = []; this.norm = []; this.drawn = [];  // chunks of 256 nodes
    this.count = 1;
    this.drawKey = null;
    this.chunk();  // node 0's draw
  }

  chunk() {
    this.states.push(new Float64Array(256 * this.S)); this.logits.push(new Float64Array(256 * this.V));
    this.p.push(new Float64Array(256 * this.V)); this.norm.push(new Float64Array(512)); this.drawn.push(new Uint8Array(256));
  }

  // Node `node`'s probabilities at the settings of `o` (as samplingProbs gives them) and its
  // normaliser {m, ls} (as logNormalizer), from its `logits` the first time: kept until the
  // settings change.
  draw(node, o, logits) {
    const key = `${o.temperature} ${o.topK} ${o.topP}`;
    if (key !== this.drawKey) { this.drawKey = key; for (const d of this.drawn) d.fill(0); }
    const c = node >> 8, j = node & 255, p = this.p[c].subarray(j * this.V, (j + 1) * this.V), norm = this.norm[c];
    if (!this.drawn[c][j]) {
      samplingProbs(logits, this.V, o.temperature, o.topK, o.topP, p);
      const { m, ls } = logNormalizer(logits, this.V);
      norm[2 * j] = m; norm[2 * j + 1] = ls; this.drawn[c][j] = 1;
    }
    return { p, m: norm[2 * j], ls: norm[2 * j + 1] };
  }

  find(node, id) { const n = this.child.get(node * this.V + id); return n === undefined ? -1 : n; }

  load(node, state, logits) {
    const k = (node & 255) * this.S;
    state.set(this.states[node >> 8].subarray(k, k + this.S));
    const at = (node & 255) * this.V;
    logits.set(this.logits[node >> 8].subarray(at, at + this.V));
  }

  // Prefix `node` + `id`, just stepped into `state` and `logits`: its node, or -1 past the cap.
  add(node, id, state, logits) {
    if (this.count >= this.cap) return -1;
    const n = this.count++;
    if (this.states.length <= n >> 8) this.chunk();
    this.states[n >> 8].set(state, (n & 255) * this.S);
    this.logits[n >> 8].set(logits, (n & 255) * this.V);
    this.drawn[n >> 8][n & 255] = 0;
    this.child.set(node * this.V + id, n);
    return n;
  }
}

// How many nodes a tree keeps within `memory` bytes (chargen.sampling.tree.node_cap).
function nodeCap(memory) { return Math.max(16, Math.floor(memory / MODEL.tree_node_bytes)); }

// A blend of labels under exact constraints (chargen.sampling.tree.LabelTree): the label is the
// draw's first choice, above a PrefixTree with a root per label. With w_k the blend's weights and
// psi_k the bound of label k's root, N = sum_k w_k psi_k: go on with probability N / psi, pick label
// k with probability w_k psi_k / N, draw from k's root; after each round psi := N.
class LabelTree {
  constructor(tree, weights, key) {
    this.tree = tree; this.weights = weights; this.key = key; this.psi = 1; this.draws = 0; this.massSum = 0;
  }

  get mass() { return constraintMass(this.massSum, this.draws, this.weighted(this.tree.foundMass), this.psi + this.weighted(this.tree.gone)); }

  get exhausted() { return this.psi <= 0; }

  // PrefixTree.endCall, and this top node's bound raised by what its roots' rose
  endCall(newline) {
    const before = Float64Array.from(this.tree.rootPsi);
    this.tree.endCall(newline);
    this.psi += this.weighted(this.tree.rootPsi.map((a, k) => a - before[k]));
  }

  // sum_k w_k v_k, added in order (tree._weighted)
  weighted(values) {
    let s = 0;
    this.weights.forEach((w, k) => { s += w * values[k]; });
    return s;
  }

  get memory() { return this.tree.memory; }

  useKey(key) { this.key = key; this.tree.useKey(key); }

  mixed() {
    const w = new Float64Array(this.weights.length);
    let total = 0;
    for (let k = 0; k < w.length; k++) { w[k] = this.weights[k] * this.tree.rootPsi[k]; total += w[k]; }
    return [w, total];
  }

  run(indices, newline, excluded = null) {
    const P = this.weights.length, [w, total] = this.mixed(), psi = this.psi, gone = this.weighted(this.tree.gone);
    const picked = indices.map((i) => {
      if (!(total > 0) || !(uniform(this.key, i, LABEL_GO) * psi < total)) return -1;
      return pickWeighted(w, P, uniform(this.key, i, LABEL_PICK));
    });
    const out = indices.map(() => ({ text: null, logprob: 0, kept: 0, chars: 0 }));
    const rows = [];
    picked.forEach((p, r) => { if (p >= 0) rows.push(r); });
    if (rows.length) {
      const res = this.tree.run(rows.map((r) => indices[r]), newline, excluded, rows.map((r) => picked[r]));
      rows.forEach((r, j) => { out[r] = res[j]; });
    }
    out.forEach((a, r) => { a.label = picked[r]; });
    this.draws += indices.length; this.massSum += psi * out.filter((a) => a.text !== null).length + gone * indices.length;
    this.psi = this.mixed()[1];
    return out;
  }
}

// Trees kept between calls without a seed (chargen.sampling.tree.WarmTrees), by what decides their
// bounds: the prompt, line mode, labels, constraints and settings. A call takes its tree out (or
// makes one) and gives it back when it has all its samples; every draw is exact whatever the bounds
// are, so a warm tree only makes later calls need fewer draws. At most `memory` bytes of nodes, as
// chargen counts them (an export's: one tree's worth), the least recently given back going first.
class WarmTrees {
  constructor(memory) { this.memory = memory; this.trees = new Map(); }

  take(key) {
    const tree = this.trees.get(key);
    if (tree === undefined) return null;
    this.trees.delete(key);
    return tree;
  }

  giveBack(key, tree) {
    if (tree.memory > this.memory) return;
    this.trees.delete(key);
    // (A Map iterates in insertion order: the least recent first.)
    this.trees.set(key, tree);
    let total = 0;
    for (const t of this.trees.values()) total += t.memory;
    for (const [k, t] of this.trees) {
      if (total <= this.memory) break;
      this.trees.delete(k);
      total -= t.memory;
    }
  }
}

// --- labels (chargen.sampling.labels) ------------------------------------------------------------

// An attempt's random stream at these "characters": the label it draws; a blend's go-on and pick
// in the adaptive exact sampler.
const LABEL_DRAW = 1n << 62n, LABEL_GO = (1n << 62n) + 1n, LABEL_PICK = (1n << 62n) + 2n;

// What asks for a label besides its name: each ':'-separated part, a locale's language and
// territory (el_GR:first: el_GR, first, el and GR), their English names (greek, greece) and the
// kind's other words (given, forename, firstname): `tables` holds labels.py's LANGUAGES,
// TERRITORIES and KINDS.
function labelParts(name, tables) {
  const parts = name.split(":"), out = new Set(parts);
  for (const p of parts) {
    const i = p.indexOf("_");
    if (i >= 0) { out.add(p.slice(0, i)); out.add(p.slice(i + 1)); }
  }
  for (const p of Array.from(out)) {
    if (Object.hasOwn(tables.languages, p)) out.add(tables.languages[p]);
    if (Object.hasOwn(tables.territories, p)) for (const t of tables.territories[p]) out.add(t);
    if (Object.hasOwn(tables.kinds, p)) for (const w of tables.kinds[p]) out.add(w);
  }
  return out;
}

// A term's pieces (labels.py's _pieces, before "names" is dropped): apart by ':' or spaces, the
// words that make a part or a place's name together taken together ("united states cities":
// united states, cities).
function termPieces(label, every, known) {
  const words = label.replace(/:/g, " ").split(" ").filter((w) => w), pieces = [];
  const joined = (k) => words.slice(0, k).join(" ").toLowerCase();
  while (words.length) {
    let k = words.length;
    while (k > 1 && !every.has(joined(k)) && !known.has(joined(k))) k--;
    pieces.push(k > 1 ? joined(k) : words[0]);
    words.splice(0, k);
  }
  return pieces;
}

// A language or territory a piece names, as an unknown label's error says it (labels.py's
// _known_place): "in Russian (ru)", "from Russia (RU)"; null for any other piece.
function knownPlace(piece, tables) {
  const low = piece.toLowerCase(), upper = piece === piece.toUpperCase() && piece !== low;
  const langs = Object.keys(tables.languages).filter((c) => (low === c || low === tables.languages[c]) && (c === piece || piece.length > 3));
  const terrs = Object.keys(tables.territories).filter((c) => (piece.length <= 3 && c === piece.toUpperCase()) || tables.territories[c].includes(low));
  const capital = (w) => w.charAt(0).toUpperCase() + w.slice(1);
  if (langs.length && !(terrs.length && upper)) return `in ${capital(tables.languages[langs[0]])} (${langs[0]})`;
  if (terrs.length) return `from ${tables.territories[terrs[0]][0].split(" ").map(capital).join(" ")} (${terrs[0]})`;
  return null;
}

// What a piece of a term asks as among the labels' parts `every` (labels.py's _own_forms): itself, and
// unless a code (3 letters or fewer) in lower case and a plural as its singular; a language's name
// in any case; a territory's code typed in lower case where no label has it so (us: US).
function ownForms(piece, known, every) {
  const low = piece.toLowerCase();
  if (piece.length <= 3) {
    const up = piece === low && !every.has(piece) ? [piece.toUpperCase()] : [];
    return (known.has(low) ? [piece, low] : [piece]).concat(up);
  }
  return [piece, low, low.endsWith("ies") ? low.slice(0, -3) + "y" : low.endsWith("s") ? low.slice(0, -1) : low];
}

// One of labels.py's FILLERS (name, names, people, person) where no label has the word itself
function isFiller(piece, known, every, tables) {
  return tables.fillers.includes(piece.toLowerCase()) && !ownForms(piece, known, every).some((f) => every.has(f));
}

// labels.py's _forms: a filler asks for people's names
function labelForms(piece, known, every, tables) {
  const forms = ownForms(piece, known, every);
  return isFiller(piece, known, every, tables) ? forms.concat(tables.people) : forms;
}

// difflib.SequenceMatcher(None, a, b).ratio() for short texts (no junk; b under 200 characters, so
// no "popular" characters): 2 M / (|a| + |b|), M the characters of the matching blocks, each the
// longest match left (the earliest in a, then in b) with the blocks on either side of it matched alike.
function ratio(a, b) {
  const x = Array.from(a), y = Array.from(b), b2j = new Map();
  y.forEach((c, j) => { if (!b2j.has(c)) b2j.set(c, []); b2j.get(c).push(j); });
  let matched = 0;
  const queue = [[0, x.length, 0, y.length]];
  while (queue.length) {
    const [alo, ahi, blo, bhi] = queue.pop();
    let besti = alo, bestj = blo, best = 0, j2len = new Map();
    for (let i = alo; i < ahi; i++) {
      const next = new Map();
      for (const j of b2j.get(x[i]) || []) {
        if (j < blo) continue;
        if (j >= bhi) break;
        const k = (j2len.get(j - 1) || 0) + 1;
        next.set(j, k);
        if (k > best) { besti = i - k + 1; bestj = j - k + 1; best = k; }
      }
      j2len = next;
    }
    if (!best) continue;
    matched += best;
    if (alo < besti && blo < bestj) queue.push([alo, besti, blo, bestj]);
    if (besti + best < ahi && bestj + best < bhi) queue.push([besti + best, ahi, bestj + best, bhi]);
  }
  return x.length + y.length ? 2 * matched / (x.length + y.length) : 1;
}

// A blend given as a mapping, {"it": 0.7, "es": 0.3}, as the text that asks for it: it=0.7,es=0.3
// (config.py's label_spec; no label holds ',' or '=').
function labelSpec(weights) {
  const entries = Object.entries(weights);
  if (!entries.length) throw new ChargenError("`label` is an empty mapping; give a label and its weight, or leave it out");
  for (const [name, w] of entries) {
    if (typeof w !== "number" || !Number.isFinite(w)) throw new ChargenError(`\`label\` must map text to numbers (got ${shown(weights)})`);
    if (!name.trim() || name.includes(",") || name.includes("=")) throw new ChargenError(`\`label\`: '${name}' names no label (labels hold no ',' or '=')`);
  }
  return entries.map(([name, w]) => `${name}=${w}`).join(",");
}

// What the terms of a `label` ask for among a model's labels (labels.py's _matching and _unknown).
class LabelTerms {
  constructor(labels) {
    const tables = this.tables = labels.tables;
    this.names = labels.names; this.summary = labels.summary;
    // names asked in any case: the languages' and the territories'
    this.known = new Set([...Object.values(tables.languages), ...Object.values(tables.territories).flat()]);
    this.partsOf = this.names.map((n) => labelParts(n, tables));
    this.every = new Set(this.names);
    for (const ps of this.partsOf) for (const p of ps) this.every.add(p);
    this.kindWords = new Set(Object.entries(tables.kinds).flat(2));
  }

  forms(p) { return labelForms(p, this.known, this.every, this.tables); }
  has(p) { return this.forms(p).some((f) => this.every.has(f)); }
  filler(p) { return isFiller(p, this.known, this.every, this.tables); }

  // A term's pieces (labels.py's _pieces: the fillers dropped where another piece names a kind or
  // no label is a person's name)
  pieces(t) {
    const all = termPieces(t, this.every, this.known);
    const kind = all.some((p) => !this.filler(p) && this.forms(p).some((f) => this.kindWords.has(f)));
    return all.filter((p) => !(this.filler(p) && (kind || !this.has(p))));
  }

  // The labels with each of `pieces` as a part (labels.py's _having)
  having(pieces) {
    return pieces.length ? this.names.flatMap((n, k) =>
      pieces.every((p) => this.forms(p).some((f) => this.partsOf[k].has(f))) ? [k] : []) : [];
  }

  // A label by its name, else every label with each of the term's pieces as a part
  matching(t) { return this.names.includes(t) ? [this.names.indexOf(t)] : this.having(this.pieces(t)); }

  // Labels as an error lists them (labels.py's _shown)
  shown(found) { return found.slice(0, 8).map((k) => this.names[k]).join(", ") + (found.length > 8 ? ", ..." : ""); }

  // The error for a term no label answers (labels.py's _unknown)
  unknown(label) {
    const pieces = this.pieces(label), missing = pieces.filter((p) => !this.has(p));
    if (pieces.length > 1 && !missing.length) {
      return new ChargenError(`unknown label '${label}': no label has all of ${pieces.join(", ")}; ${pieces[0]}: ` +
                              `${this.shown(this.having([pieces[0]]))} (its info lists them)`);
    }
    const look = pieces.length > 1 ? missing[0] : label, word = this.every.has(look) ? look : look.toLowerCase();
    // difflib.get_close_matches(word, every, n=5, cutoff): by ratio, ties the greater word first
    const close = Array.from(this.every).map((p) => [ratio(p, word), p]).filter(([r]) => r >= this.tables.cutoffs.close)
      .sort((a, b) => b[0] - a[0] || (a[1] < b[1] ? 1 : -1)).slice(0, 5);
    const place = knownPlace(look, this.tables);
    const where = place ? `: no label is ${place}` : look !== label ? `: no label has '${look}'` : "";
    let hint = close.length && !place ? `; close: ${close.map(([, p]) => p).join(", ")}`
      : `; it has ${this.names.length}: ${this.summary || this.names.join(", ")}`;
    const rest = pieces.length > 1 && !place ? pieces.filter((p) => !missing.includes(p)) : [], others = this.having(rest);
    // the term with its one unknown word as the closest word that makes it ask for labels (labels.py's _meant)
    const meant = rest.length && missing.length === 1 ? close.filter(([r]) => r >= this.tables.cutoffs.meant)
      .map(([, c]) => label.replace(look, () => c)).find((t) => this.matching(t).length) : undefined;
    if (meant !== undefined) hint = `; did you mean '${meant}'?`;
    else if (others.length) hint += `; ${rest.join(" ")}: ${this.shown(others)}`;  // what the other pieces ask for
    return new ChargenError(`unknown label '${label}'${where}${hint} (its info lists them)`);
  }
}

// The labels `spec` asks for, with their weights (summing to 1): {names, index, weights}.
function resolveLabels(spec, labels) {
  const names = labels.names, counts = labels.counts, weights = new Float64Array(names.length);
  if (!spec) (labels.default || counts).forEach((c, k) => { weights[k] = c; });  // as Checkpoint.label_default
  // a term asks for a label by its name, else for every label with each of its pieces as a part
  const terms = new LabelTerms(labels);
  for (const raw of spec ? String(spec).split(",") : []) {
    const term = raw.trim(), eq = term.indexOf("=");
    let label = (eq < 0 ? term : term.slice(0, eq)).trim();
    if (!names.includes(label)) label = label.normalize("NFC");  // (labels are read in NFC: conform())
    const w = eq < 0 ? 1 : (term.slice(eq + 1).trim() === "" ? NaN : Number(term.slice(eq + 1)));
    if (!(w > 0 && w <= 1e9)) throw new ChargenError(`\`label\`: the weight in '${term}' must be a number above 0 and at most 1,000,000,000 (a blend: it=0.7,es=0.3)`);  // labels.py's MAX_WEIGHT
    if (!label) throw new ChargenError(`\`label\`: '${term}' names no label (a blend: it=0.7,es=0.3)`);
    const found = terms.matching(label);
    if (!found.length) throw terms.unknown(label);
    let within = 0;
    for (const k of found) within += counts[k];
    if (!within) throw new ChargenError(`label '${label}' has no training lines in this model (the run held them all out ` +
                                        "to validate it), so it has learnt nothing to draw from");  // labels.py's words
    for (const k of found) weights[k] += w * counts[k] / within;
  }
  const index = [];
  let total = 0;
  weights.forEach((w, k) => { if (w > 0) { index.push(k); total += w; } });
  return { names: index.map((k) => names[k]), index, weights: Float64Array.from(index, (k) => weights[k] / total) };
}

class Sampler {
  constructor(model) {
    this.net = new Network(model);
    this.vocab = model.vocab;
    this.index = new Map(this.vocab.map((c, i) => [c, i]));
    this.V = this.vocab.length;
    this.lineOriented = model.line_oriented;
    this.training = null;
    this.prefixes = new Map();  // the last call's Prefixes, by primed start (prefixesFor)
    // The adaptive exact sampler's, for calls without a seed
    this.warm = new WarmTrees(MODEL.warm_memory);
    this.logits = new Float64Array(this.V); this.p = new Float64Array(this.V); this.allowed = new Uint8Array(this.V);
  }

  // The Prefixes of each primed start named by `keys` (line mode, label, prompt), sharing
  // MODEL.prefix_memory: kept from the call before where it drew the same, else new.
  prefixesFor(keys) {
    const before = this.prefixes, memory = Math.floor(MODEL.prefix_memory / keys.length);
    this.prefixes = new Map(keys.map((k) => [k, before.has(k) && before.get(k).memory === memory ? before.get(k)
      : new Prefixes(this.net, this.V, memory)]));
    return keys.map((k) => this.prefixes.get(k));
  }

  // `text` spelt as the vocabulary spells it (chargen.tokenizer.Vocab.conform): its NFC form where
  // every character is known, else the text as given, else its NFD form; else NFC
  conform(text) {
    const known = (t) => { for (const ch of t) if (!this.index.has(ch)) return false; return true; };
    const nfc = text.normalize("NFC");
    for (const form of [nfc, text, text.normalize("NFD")]) if (known(form)) return form;
    return nfc;
  }

  encode(text, what) {
    const ids = [];
    for (const ch of text) {
      const id = this.index.get(ch);
      if (id === undefined) throw new ChargenError(`${what} holds ${JSON.stringify(ch)}, not in the model's vocabulary`);
      ids.push(id);
    }
    return ids;
  }

  // Run the start of a line and the prompt through the network once: [logits, state] after them.
  prime(prompt, lines, label = 0) {
    if (lines && prompt.includes("\n")) throw new ChargenError("a prompt in line mode cannot hold a newline");
    const ids = this.encode(prompt, "the prompt");
    const start = this.index.has("\n") ? "\n" : this.index.has(" ") ? " " : this.vocab[0];
    const state = this.net.initState(label), logits = new Float64Array(this.V);
    for (const id of [this.index.get(start), ...ids]) this.net.step(id, state, logits);
    return [logits, state];
  }

  // The constraint and its state after the prompt, checked as chargen.sampling.constraints does.
  // `always`: an automaton with no constraint but the length too (top searches within one)
  guide(o, prompt, lines, cap, always = false) {
    if (!always && o.minLen === null && o.maxLen === null && !o.endsWith && !o.contains.length && o.regex === null) return null;
    if (!lines) throw new ChargenError("constraints apply to line samples only; pass `lines: true`");
    const newline = this.index.get("\n");
    if (newline === undefined) throw new ChargenError("this model's vocabulary has no newline, so its samples have no end to constrain");
    for (const [flag, text] of [["endsWith", o.endsWith || ""], ...o.contains.map((t) => ["contains", t])]) {
      if (text.includes("\n")) throw new ChargenError(`\`${flag}\` cannot hold a newline: a line sample has none`);
      this.encode(text, `\`${flag}\` ${JSON.stringify(text)}`);
    }
    const n0 = Array.from(prompt).length;
    const maxLen = o.maxLen !== null ? Math.min(o.maxLen, n0 + cap) : n0 + cap;
    const c = new Constraint(this.vocab, newline, o.endsWith, o.contains, o.regex, Math.max(o.minLen || 0, 1), maxLen);
    if (n0 > maxLen) throw new ChargenError(`the prompt ${JSON.stringify(prompt)} is longer than the ${maxLen} characters a sample may have`);
    let s = 0;
    for (const id of this.encode(prompt, "the prompt")) if (s >= 0) s = c.trans[s * this.V + id];
    if (s < 0 || !c.feasible(n0)[s]) throw new ChargenError(`no sample ${prompt ? `that starts with the prompt ${JSON.stringify(prompt)} ` : ""}satisfies the constraints within ${maxLen} characters`);
    const possible = o.unique ? c.count(s, n0, o.n) : Infinity;
    if (possible < o.n) throw new ChargenError(`only ${possible} distinct samples satisfy the constraints, fewer than the ${o.n} asked for with \`unique\``);
    return { c, s, n0, steps: maxLen - n0 + 1 };
  }

  // Attempt i: its characters (null if the constraints ruled it out), log-probability, steps scored.
  // `prefixes`: the primed start's Prefixes.
  attempt(primed, key, i, o, newline, steps, guide, prefixes) {
    const V = this.V, logits = this.logits, allowed = guide ? this.allowed : null;
    const state = this.net.copyState(primed[1]);
    logits.set(primed[0]);
    let text = "", logprob = 0, kept = 0, t = 0, dfa = guide ? guide.s : 0, node = 0;
    for (;;) {
      const d = o.temperature > 0 && node >= 0 ? prefixes.draw(node, o, logits) : null;  // the node's own, kept
      if (guide) {
        guide.c.allowed(dfa, guide.n0 + t, allowed);
        kept += keptMass(logits, V, allowed, d || logNormalizer(logits, V));
      }
      const masked = guide && o.temperature === 0 ? allowed : null;  // greedy draws among the allowed only
      const id = o.temperature === 0 ? argmax(logits, V, masked)
        : inverseCdf(d ? d.p : samplingProbs(logits, V, o.temperature, o.topK, o.topP, this.p), V, uniform(key, i, t));
      logprob += d ? (logits[id] - d.m) - d.ls : logSoftmaxAt(logits, V, id);
      t++;
      if (guide && !allowed[id]) return { text: null, logprob, kept, chars: t };
      if (id === newline) break;
      text += this.vocab[id];
      if (t >= steps) break;
      if (guide) dfa = guide.c.trans[dfa * V + id];
      const next = node >= 0 ? prefixes.find(node, id) : -1;
      if (next >= 0) prefixes.load(next, state, logits);
      else this.net.step(id, state, logits);
      node = next >= 0 ? next : node >= 0 && t <= MODEL.prefix_depth ? prefixes.add(node, id, state, logits) : -1;
    }
    return { text, logprob, kept, chars: t };
  }

  // The prompts, and the options' texts, spelt as the vocabulary spells them (chargen.api.Model._config)
  spelt(o) {
    const conform = (t) => this.conform(t);
    if (o.endsWith) o.endsWith = conform(o.endsWith);
    o.contains = o.contains.map(conform);
    if (o.exclude) o.exclude = o.exclude.map(conform);
    if (o.novel && this.training === null) this.training = new Set(decodeLines(MODEL.training_lines));
    return (typeof o.prompt === "string" ? [o.prompt] : Array.from(o.prompt)).map(conform);
  }

  *records(opts = {}, stats = null) {
    const o = checkOptions(opts);
    if (o.lines === false && MODEL.config.learned_start) {  // as chargen.api.Model._line_mode
      throw new ChargenError("this model learnt each line on its own, from a line's start, never what follows a " +
        "line's end: it draws lines only; drop `lines: false` (n for how many)");
    }
    const lines = o.lines === null ? this.lineOriented : o.lines;
    const cap = o.length || (lines ? MODEL.line_length : MODEL.prose_length);
    const prompts = this.spelt(o);
    const guides = prompts.map((p) => this.guide(o, p, lines, cap));
    const exclude = o.exclude ? new Set(o.exclude) : null;
    const seen = new Set(), newline = lines ? this.index.get("\n") ?? -1 : -1;
    const mix = MODEL.labels ? resolveLabels(o.label, MODEL.labels) : null;  // a labelled model's labels to draw from
    const blend = mix !== null && mix.names.length > 1;
    for (let j = 0; j < prompts.length; j++) {
      const prompt = prompts[j], guide = guides[j], key = deriveKey(o.seed, j);
      const primed = mix ? mix.index.map((k) => this.prime(prompt, lines, k)) : [this.prime(prompt, lines)];
      const rejecting = guide !== null && o.temperature > 0;
      const budget = o.n * (rejecting ? MODEL.constrained_tries : MODEL.max_tries) + 100;
      let tree = null, warmKey = null;
      // A warm tree (no seed), else a new one (a blend's: a root per label)
      if (rejecting && !o.rejection) {
        warmKey = o.warm ? JSON.stringify([prompt, lines, mix && [mix.names, Array.from(mix.weights)], o.endsWith,
          o.contains, o.regex, o.minLen, o.maxLen, o.temperature, o.topK, o.topP, guide.steps, o.novel]) : null;
        tree = warmKey !== null ? this.warm.take(warmKey) : null;
        if (tree !== null) tree.useKey(key);
        else {
          const t = new PrefixTree(this, guide, o, key, primed, nodeCap(MODEL.tree_memory));
          tree = blend ? new LabelTree(t, mix.weights, key) : t;
        }
      }
      // What the tree is told of the samples kept out after the constraints (Drawing._exclusions):
      // the training lines for good, the call's repeats and `exclude` for the call
      const training = o.novel ? this.training : null, excl = exclude !== null && exclude.size ? exclude : null;
      const ruledOut = [["a training line", "novel", training !== null], ["one drawn already", "unique", o.unique],
        ["excluded", "exclude", excl !== null]].filter((x) => x[2]);
      const excluded = tree === null || !ruledOut.length ? null : (r, text) => {
        text = prompt + text;
        if (training !== null && training.has(mix ? `${mix.names[r]}\t${text}` : text)) return FOR_GOOD;
        return o.unique || (excl !== null && excl.has(text)) ? FOR_CALL : KEPT;
      };
      let produced = 0, i = 0, issued = 0, met = 0, last = null;
      const keep = (a, mass = null) => {  // what chargen.sampling.Drawing.take keeps
        last = mass;
        if (a.text === null) return null;
        met++;
        const text = prompt + a.text, label = mix ? mix.names[a.label ?? 0] : null;
        if ((lines && !text) || (o.unique && seen.has(text)) || (o.novel && this.training.has(label === null ? text : `${label}\t${text}`)) ||
            (exclude && exclude.has(text))) return null;
        if (o.unique) seen.add(text);
        produced++;
        const r = { text, prompt, logprob: a.logprob, logprob_per_char: a.chars ? a.logprob / a.chars : 0, chars: a.chars };
        if (label !== null) r.label = label;
        // As Sample.record under constraints
        if (guide) {
          r.kept = a.kept; r.logprob_guided = a.logprob - a.kept;
          if (mass) { r.p_constraints = mass.estimate; r.p_constraints_lower = mass.lower; r.p_constraints_upper = mass.upper; }
        }
        return r;
      };
      while (tree !== null && produced < o.n && issued < budget && !tree.exhausted) {  // rounds sized as Drawing.wanted sizes them
        const rate = i ? produced / i : 0.5, target = Math.floor((o.n - produced) / Math.max(rate, 0.02) * 1.1) + 8;
        const b = Math.max(1, Math.min(target - (issued - i), budget - issued, MODEL.max_batch));
        const results = tree.run(Array.from({ length: b }, (_, r) => issued + r), newline, excluded), mass = tree.mass;
        issued += b;
        for (const a of results) {
          if (produced >= o.n) break;
          i++;
          const r = keep(a, mass);
          if (r !== null) yield r;
        }
      }
      if (warmKey !== null && produced >= o.n) { tree.endCall(newline); this.warm.giveBack(warmKey, tree); }
      const prefixes = tree === null ? this.prefixesFor(primed.map((pr, k) => `${lines} ${mix ? mix.index[k] : -1} ${prompt}`)) : null;
      for (; tree === null && produced < o.n && i < budget; i++) {
        const k = blend ? inverseCdf(mix.weights, mix.weights.length, uniform(key, i, LABEL_DRAW)) : 0;
        const a = this.attempt(primed[k], key, i, o, newline, guide ? guide.steps : cap, guide, prefixes[k]);
        a.label = k;
        const r = keep(a);
        if (r !== null) yield r;
      }
      if (stats !== null) { stats.draws = (stats.draws || 0) + i; stats.accepted = (stats.accepted || 0) + produced; }
      if (produced < o.n) {
        // How rare the constraints are, as chargen.sampling.drawing._how_rare says
        const hold = " of the model's samples at these settings", m = tree !== null && tree.exhausted ? tree.mass : last;
        if (tree !== null && tree.exhausted && ruledOut.length && m.upper > 0) {
          throw new ChargenError(`the model produced only ${produced} of ${o.n} samples in ${i} draws: every sample that satisfies ` +
            `the constraints at these settings is ${ruledOut.map((x) => x[0]).join(" or ")}; loosen the constraints or drop ` +
            ruledOut.map((x) => `\`${x[1]}\``).join(" or "));
        }
        const rare = !rejecting ? "" : m && m.upper <= 0 ? ": the constraints rule out every sample the model can draw at these settings"
          : !met ? `: the constraints hold less than ${Math.min(3 / i, m ? m.upper : 1).toPrecision(2)}${hold} (95% confidence)`
            : m ? `: the constraints hold about ${m.estimate.toPrecision(2)}${hold}` : "";
        throw new ChargenError(`the model produced only ${produced} of ${o.n} samples in ${i} draws${rare}; ` +
          (rejecting ? "loosen the constraints or raise `temperature`" : "ask for fewer, raise `temperature`, or drop `unique`/`novel`/`exclude`"));
      }
    }
  }

  // The n most likely line samples per prompt, best first (chargen.api.Model.top), under the labels
  // asked (ranked by their mixture) and the constraints; `novel` and `exclude` skip samples.
  // `progress(k)`, if given, is told the prefixes searched so far (each prompt's from 0) every 64 expansions.
  *topRecords(opts = {}, progress = null) {
    const o = checkOptions(opts), refused = Object.keys(opts || {}).filter((k) => MODEL.top_refused.includes(k) && opts[k] != null && opts[k] !== false);
    if (refused.length) throw new ChargenError(`\`top\` ranks by the model's own probabilities and never repeats; drop ${refused.map((k) => `\`${k}\``).join(", ")}`);
    if (!(o.lines ?? this.lineOriented)) {
      throw new ChargenError(`\`top\` applies to line samples only; ${o.lines === false ? "drop `lines: false`" : "this model writes prose: pass `lines: true` to sample lines from it"}`);
    }
    const prompts = this.spelt(o), cap = o.length || MODEL.line_length;
    const guides = prompts.map((p) => this.guide(o, p, true, cap, true));
    const mix = MODEL.labels ? resolveLabels(o.label, MODEL.labels) : null, keys = mix ? mix.names : [null];
    const exclude = new Set(o.exclude || []), training = o.novel ? this.training : null;
    const skip = (text) => exclude.has(text) || (training !== null && keys.some((l) => training.has(l === null ? text : `${l}\t${text}`)));
    for (let j = 0; j < prompts.length; j++) {
      const primed = mix ? mix.index.map((k) => this.prime(prompts[j], true, k)) : [this.prime(prompts[j], true)];
      yield* this.search(prompts[j], primed, mix ? Array.from(mix.weights, Math.log) : [0], guides[j], o.n, skip, mix && mix.names, progress);
    }
  }

  // Exact best-first search (chargen.sampling.search): a prefix is never less likely than a sample
  // that extends it, so a complete sample at the queue's front is the likeliest left. A node keeps a
  // state per label it keeps; a label whose mass stays below e^-search_drop of the prefix's mixture,
  // or while the mass dropped on its path stays below e^-search_behind of the floor (the n-th
  // likeliest complete sample met so far), is dropped, its mass kept as a bound (frozen), and a
  // complete sample holding one is scored under every label and queued again at that. A node keeps
  // only the children that may reach the floor, and queues only its likeliest not yet taken. The
  // nodes' states and next-character log-probabilities are a cache of search_cache bytes, the
  // oldest dropped first; a node's are computed again from its nearest ancestor's when needed.
  *search(prompt, primed, logW, g, n, skip, names, progress) {
    const V = this.V, net = this.net, queue = new Heap(), S = net.S;
    const cache = new Map(), row = (S + V) * 8;
    let bytes = 0, cached = 0, expanded = 0, tie = 0, found = 0;
    const seen = new Heap(), rescored = new Map();  // the n likeliest complete samples met (at their labels kept)
    const floor = () => (seen.a.length === n ? seen.a[0][0] : -Infinity);
    const see = (text, lp) => {
      if (seen.a.length === n && lp <= seen.a[0][0]) return;
      if (skip(text)) return;
      if (seen.a.length === n) seen.pop();
      seen.push([lp, 0]);
    };
    const lsmOf = (lg) => { const { m, ls } = logNormalizer(lg, V); return lg.map((x) => x - m - ls); };
    const keep = (p, rows) => {
      cache.set(p, rows); cached += p.labels.length * row;
      for (const [q, r] of cache) {  // the oldest first
        if (cached <= MODEL.search_cache || q === p) break;
        if (q.parent) { cache.delete(q); cached -= r.states.length * row; }
      }
      return rows;
    };
    const rowsOf = (p) => {  // the node's {states, lsm}, a row per label it keeps
      if (cache.has(p)) return cache.get(p);
      const path = [];
      let a = p;
      for (; !cache.has(a); a = a.parent) path.push(a.id);
      const from = cache.get(a), states = p.labels.map((k) => net.copyState(from.states[a.labels.indexOf(k)]));
      const logits = states.map(() => new Float64Array(V));
      for (const id of path.reverse()) net.stepMany(id, states, logits);
      return keep(p, { states, lsm: logits.map(lsmOf) });
    };
    const add = (parent, id, text, dfa, len, labels, parts, frozen, rows) => {
      const allowed = g.c.allowed(dfa, len, new Uint8Array(V)), ids = [], lp = [], K = labels.length;
      for (let v = 0; v < V; v++) {  // the mixture as search.logsumexp sums it: one exp a label
        if (!allowed[v]) continue;
        let m = parts[0] + rows.lsm[0][v];
        for (let a = 1; a < K; a++) m = Math.max(m, parts[a] + rows.lsm[a][v]);
        let s = 0;
        if (K > 1 && m > -Infinity) { for (let a = 0; a < K; a++) s += Math.exp(parts[a] + rows.lsm[a][v] - m); }
        ids.push(v); lp.push(K > 1 && m > -Infinity ? m + Math.log(s) : m);
      }
      if (!ids.length) return;
      const end = ids.indexOf(g.c.newline);  // a complete sample: a candidate, at least this likely
      if (end >= 0) see(text, lp[end]);
      const bound = floor(), order = ids.map((_, k) => k).sort((x, y) => lp[y] - lp[x] || x - y)
        .filter((k) => logAdd(lp[k], frozen) >= bound);  // (those below can never be needed)
      if (!order.length) return;
      const node = { parent, id, text, dfa, len, labels, parts, frozen, ids: order.map((k) => ids[k]), lp: order.map((k) => logAdd(lp[k], frozen)) };
      keep(node, rows);
      bytes += 256 + labels.length * 16 + order.length * 16;
      queue.push([-node.lp[0], tie++, node, 0]);
    };
    const child = (p, r, id) => {  // one network step a label the child keeps
      const rows = rowsOf(p), parts = p.parts.map((x, a) => x + rows.lsm[a][id]);
      const order = parts.map((_, a) => a).sort((x, y) => parts[x] - parts[y] || x - y), keeps = parts.map(() => true);
      let low = -Infinity, frozen = p.frozen;
      const below = floor() - MODEL.search_behind;
      for (const a of order.slice(0, -1)) {
        low = logAdd(low, parts[a]);
        if (low < p.lp[r] - MODEL.search_drop || logAdd(low, p.frozen) < below) keeps[a] = false;
      }
      const labels = [], kept = [], states = [];
      for (let a = 0; a < parts.length; a++) {
        if (!keeps[a]) { frozen = logAdd(frozen, parts[a]); continue; }
        labels.push(p.labels[a]); kept.push(parts[a]); states.push(net.copyState(rows.states[a]));
      }
      const logits = states.map(() => new Float64Array(V));
      net.stepMany(id, states, logits);  // the labels' states together
      add(p, id, p.text + this.vocab[id], g.c.trans[p.dfa * V + id], p.len + 1, labels, kept, frozen,
          { states, lsm: logits.map(lsmOf) });
    };
    const byLabel = (p, id) => {  // log(w_l) + log P_l(sample) under every label, the dropped ones' scored now
      const rows = rowsOf(p), ids = [...this.encode(p.text.slice(prompt.length), "a sample"), id];
      const x = logW.map((w, k) => {
        const a = p.labels.indexOf(k);
        return a >= 0 ? p.parts[a] + rows.lsm[a][id] : w + logSoftmaxAt(primed[k][0], V, ids[0]);
      });
      const dropped = logW.flatMap((_, k) => p.labels.includes(k) ? [] : [k]);  // stepped together
      const states = dropped.map((k) => net.copyState(primed[k][1])), logits = dropped.map(() => new Float64Array(V));
      for (let t = 0; t + 1 < ids.length && dropped.length; t++) {
        net.stepMany(ids[t], states, logits);
        dropped.forEach((k, i) => { x[k] += logSoftmaxAt(logits[i], V, ids[t + 1]); });
      }
      return x;
    };
    add(null, -1, prompt, g.s, g.n0, logW.map((_, k) => k), logW, -Infinity,
        { states: primed.map((p) => net.copyState(p[1])), lsm: primed.map((p) => lsmOf(p[0])) });
    while (found < n) {
      const e = queue.pop();
      if (e === undefined) return;  // the constraints hold fewer samples than asked
      const [neg, t, p, r] = e, id = p.ids[r];
      if (t >= 0 && r + 1 < p.ids.length) queue.push([-p.lp[r + 1], tie++, p, r + 1]);
      if (id !== g.c.newline) {
        if (bytes > MODEL.search_memory) {
          throw new ChargenError(`the search for the ${n.toLocaleString("en-US")} likeliest samples stopped after ${expanded.toLocaleString("en-US")} ` +
            `expansions with ${found} found (those are exact): its prefixes filled its ${MODEL.search_memory / 2 ** 20} MB; ask for fewer` +
            (logW.length > 1 ? ", constrain more or draw from fewer labels (`label`)" : " or constrain more"));
        }
        child(p, r, id);
        expanded++;
        if (progress !== null && expanded % 64 === 0) progress(expanded);
      } else if (t >= 0 && p.frozen > -Infinity) {
        const x = byLabel(p, id);
        rescored.set(p, x);
        queue.push([-logSumExp(x), -1 - tie++, p, r]);  // at its exact probability
      } else if (!skip(p.text)) {
        found++;
        const chars = p.len - g.n0 + 1, rec = { text: p.text, prompt, logprob: -neg, logprob_per_char: -neg / chars, chars };
        if (names) rec.label = names[names.length === 1 ? 0 : argmax(rescored.get(p) || byLabel(p, id), names.length)];
        rescored.delete(p);
        yield rec;
      }
    }
  }
}

// The training lines as webexport.front_coded writes them: each after a character ("0" + k) saying
// it starts with the first k characters of the line before.
function decodeLines(text) {
  let prev = "";
  return text.split("\n").map((s) => (prev = prev.slice(0, s.charCodeAt(0) - 48) + s.slice(1)));
}

let sampler = null;
const getSampler = () => (sampler = sampler || new Sampler(MODEL));

/** Samples with their log-probabilities, as `chargen sample --format jsonl` writes them (unrounded):
 *  [{text, prompt, logprob, logprob_per_char, chars}], n per prompt, in order. `stats`, an object
 *  if given, gets `draws` (the attempts the samples took) and `accepted`, as chargen's SampleStats. */
function sampleRecords(options = {}, stats = null) { return Array.from(getSampler().records(options, stats)); }

/** Samples as strings: n per prompt, in order; the same options and seed give what `chargen sample` prints. */
function sample(options = {}) { return sampleRecords(options).map((r) => r.text); }

/** The n most likely line samples per prompt, best first, with their log-probabilities: what
 *  `chargen sample --top N --format jsonl` writes (unrounded). The options are sample's less the
 *  sampling settings (temperature, topK, topP, seed, unique, rejection). `progress`, a function if
 *  given, is told the prefixes searched so far as the search goes (a wide blend's takes seconds). */
function top(options = {}, progress = null) { return Array.from(getSampler().topRecords(options, progress)); }

/** Which arithmetic draws the samples here: "wasm-simd" or "javascript" (no WebAssembly SIMD). */
function backend() { return getSampler().net.kernel.simd ? "wasm-simd" : "javascript"; }

/** What `chargen info --json` says of the model, and how it was exported. */
const info = MODEL.info;
