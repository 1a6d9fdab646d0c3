#!/usr/bin/env python3
"""Build an fp32 ONNX model of all-MiniLM-L6-v2 (a 6-layer BERT encoder) from its safetensors weights,
with numpy + onnx + safetensors only (no torch), and check it against a numpy forward pass.

    build_minilm_onnx.py build  MODEL_DIR OUT.onnx     # MODEL_DIR holds model.safetensors, config.json
    build_minilm_onnx.py verify MODEL_DIR BUILT_DIR    # needs onnxruntime and tokenizers too

The graph (opset 17, IR version 8):
    inputs   input_ids, attention_mask, token_type_ids    int64 [batch, sequence]
    output   last_hidden_state                          float32 [batch, sequence, 384]
Sentence embeddings are the attention-mask-weighted mean of last_hidden_state, L2-normalised
(sentence-transformers' Pooling + Normalize modules, which are not part of the graph).
Sequences can be up to 512 tokens long (the position-embedding table); the model was trained with 256.

Position embeddings are taken with a Slice of the table along axis 0 with 1-D starts/ends (ends =
Shape(input_ids)[1:2]), not with a Gather of a scalar-indexed range: ONNX Runtime's highest graph
optimisation level rejects the latter (seen when this recipe was verified on Debian 12).
Used by scripts/models.sh.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

OPSET = 17  # LayerNormalization is a standard op from opset 17
IR_VERSION = 8  # the oldest IR version that carries opset 17: loadable by older runtimes too
MASK_NEG = -10000.0  # added to attention scores of padding tokens (as in the original BERT)


def load_config(model_dir: Path) -> dict:
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["model_type"] == "bert", cfg["model_type"]
    assert cfg["hidden_act"] == "gelu", cfg["hidden_act"]
    assert cfg["position_embedding_type"] == "absolute", cfg["position_embedding_type"]
    assert cfg["hidden_size"] % cfg["num_attention_heads"] == 0
    return cfg


def load_weights(model_dir: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(model_dir / "model.safetensors"))


# ------------------------------------------------------------------------------------------------
# ONNX graph


class Graph:
    """A small helper that appends nodes and initialisers; every node's output is named after it."""

    def __init__(self):
        from onnx import TensorProto, helper, numpy_helper

        self.helper, self.numpy_helper, self.TensorProto = helper, numpy_helper, TensorProto
        self.nodes, self.initializers = [], []

    def const(self, name: str, value, dtype=None) -> str:
        array = np.asarray(value, dtype=dtype)
        self.initializers.append(self.numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list, name: str, **attrs) -> str:
        self.nodes.append(self.helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    # y = x @ W^T + b, for a PyTorch Linear weight W [out, in]: stored transposed, as [in, out].
    def linear(self, x: str, w: np.ndarray, b: np.ndarray, name: str) -> str:
        wt = self.const(f"{name}.weight_t", np.ascontiguousarray(w.T), np.float32)
        bias = self.const(f"{name}.bias", b, np.float32)
        return self.op("Add", [self.op("MatMul", [x, wt], f"{name}/matmul"), bias], name)

    def layer_norm(self, x: str, gamma: np.ndarray, beta: np.ndarray, eps: float, name: str) -> str:
        g = self.const(f"{name}.weight", gamma, np.float32)
        b = self.const(f"{name}.bias", beta, np.float32)
        return self.op("LayerNormalization", [x, g, b], name, axis=-1, epsilon=eps)

    # GELU, the exact (erf) form used by BERT: 0.5 * x * (1 + erf(x / sqrt(2))).
    def gelu(self, x: str, name: str) -> str:
        erf = self.op("Erf", [self.op("Div", [x, "const/sqrt2"], f"{name}/div")], f"{name}/erf")
        half_x = self.op("Mul", [x, "const/half"], f"{name}/half_x")
        return self.op("Mul", [half_x, self.op("Add", [erf, "const/one"], f"{name}/one_plus")], name)


def build_model(cfg: dict, w: dict):
    from onnx import checker, helper

    hidden = cfg["hidden_size"]  # 384
    heads = cfg["num_attention_heads"]  # 12
    head_dim = hidden // heads  # 32
    eps = cfg["layer_norm_eps"]  # 1e-12
    g = Graph()

    # Shared constants.
    g.const("const/sqrt2", math.sqrt(2.0), np.float32)
    g.const("const/half", 0.5, np.float32)
    g.const("const/one", 1.0, np.float32)
    g.const("const/attn_scale", math.sqrt(head_dim), np.float32)
    g.const("const/mask_neg", MASK_NEG, np.float32)
    g.const("const/zero_1d", [0], np.int64)
    g.const("const/axes_0", [0], np.int64)
    g.const("const/axes_1_2", [1, 2], np.int64)
    g.const("const/split_heads", [0, 0, heads, head_dim], np.int64)  # 0: keep that dimension
    g.const("const/merge_heads", [0, 0, hidden], np.int64)

    # --- Embeddings: word + position + token type, then LayerNorm ------------------------------
    word = g.op("Gather", [g.const("embeddings.word_embeddings", w["embeddings.word_embeddings.weight"]),
                           "input_ids"], "embeddings/word", axis=0)  # [B, S, H]
    # Position embeddings: rows 0..S-1 of the table, by a Slice with 1-D starts/ends/axes.
    seq_len = g.op("Shape", ["input_ids"], "embeddings/seq_len", start=1, end=2)  # [1] = [S]
    position = g.op("Slice", [g.const("embeddings.position_embeddings", w["embeddings.position_embeddings.weight"]),
                              "const/zero_1d", seq_len, "const/axes_0"], "embeddings/position")  # [S, H]
    token_type = g.op("Gather", [g.const("embeddings.token_type_embeddings",
                                         w["embeddings.token_type_embeddings.weight"]),
                                 "token_type_ids"], "embeddings/token_type", axis=0)  # [B, S, H]
    summed = g.op("Add", [g.op("Add", [word, position], "embeddings/word_position"), token_type], "embeddings/sum")
    x = g.layer_norm(summed, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps,
                     "embeddings/LayerNorm")

    # --- Attention bias from the mask: 0 for real tokens, MASK_NEG for padding; [B, 1, 1, S] ------
    mask = g.op("Cast", ["attention_mask"], "mask/float", to=g.TensorProto.FLOAT)
    mask = g.op("Unsqueeze", [mask, "const/axes_1_2"], "mask/b11s")
    mask_bias = g.op("Mul", [g.op("Sub", ["const/one", mask], "mask/inverted"), "const/mask_neg"], "mask/bias")

    # --- Encoder layers ------------------------------------------------------------------------
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."  # weight-name prefix
        n = f"layer{i}"  # node-name prefix

        # Self-attention: project, split into heads.
        q = g.linear(x, w[p + "attention.self.query.weight"], w[p + "attention.self.query.bias"], f"{n}/query")
        k = g.linear(x, w[p + "attention.self.key.weight"], w[p + "attention.self.key.bias"], f"{n}/key")
        v = g.linear(x, w[p + "attention.self.value.weight"], w[p + "attention.self.value.bias"], f"{n}/value")
        q = g.op("Transpose", [g.op("Reshape", [q, "const/split_heads"], f"{n}/query/heads")],
                 f"{n}/query/bhsd", perm=[0, 2, 1, 3])  # [B, heads, S, d]
        k = g.op("Transpose", [g.op("Reshape", [k, "const/split_heads"], f"{n}/key/heads")],
                 f"{n}/key/bhds", perm=[0, 2, 3, 1])  # [B, heads, d, S]
        v = g.op("Transpose", [g.op("Reshape", [v, "const/split_heads"], f"{n}/value/heads")],
                 f"{n}/value/bhsd", perm=[0, 2, 1, 3])  # [B, heads, S, d]

        # Scaled dot-product attention with the padding bias.
        scores = g.op("Div", [g.op("MatMul", [q, k], f"{n}/scores/raw"), "const/attn_scale"], f"{n}/scores/scaled")
        scores = g.op("Add", [scores, mask_bias], f"{n}/scores")  # [B, heads, S, S]
        probs = g.op("Softmax", [scores], f"{n}/probs", axis=-1)
        context = g.op("MatMul", [probs, v], f"{n}/context/bhsd")  # [B, heads, S, d]
        context = g.op("Transpose", [context], f"{n}/context/bshd", perm=[0, 2, 1, 3])
        context = g.op("Reshape", [context, "const/merge_heads"], f"{n}/context")  # [B, S, H]

        # Attention output: dense, residual, LayerNorm.
        attn = g.linear(context, w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"],
                        f"{n}/attention_output")
        x = g.layer_norm(g.op("Add", [attn, x], f"{n}/attention_residual"),
                         w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"],
                         eps, f"{n}/attention_LayerNorm")

        # Feed-forward: dense to 1536, GELU, dense to 384, residual, LayerNorm.
        h = g.linear(x, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"], f"{n}/intermediate")
        h = g.gelu(h, f"{n}/gelu")
        h = g.linear(h, w[p + "output.dense.weight"], w[p + "output.dense.bias"], f"{n}/output")
        x = g.layer_norm(g.op("Add", [h, x], f"{n}/output_residual"),
                         w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps, f"{n}/output_LayerNorm")

    g.op("Identity", [x], "last_hidden_state")

    ids = lambda name: helper.make_tensor_value_info(name, g.TensorProto.INT64, ["batch", "sequence"])
    graph = helper.make_graph(
        g.nodes,
        "all-MiniLM-L6-v2",
        [ids("input_ids"), ids("attention_mask"), ids("token_type_ids")],
        [helper.make_tensor_value_info("last_hidden_state", g.TensorProto.FLOAT, ["batch", "sequence", hidden])],
        initializer=g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="warden/scripts/build_minilm_onnx.py")
    model.ir_version = IR_VERSION
    model.doc_string = ("sentence-transformers/all-MiniLM-L6-v2 BERT encoder (fp32); mean-pool "
                        "last_hidden_state over attention_mask and L2-normalise for sentence embeddings")
    checker.check_model(model, full_check=True)
    return model


def cmd_build(args) -> None:
    import onnx

    started = time.perf_counter()
    model_dir, out = Path(args.model_dir), Path(args.out)
    model = build_model(load_config(model_dir), load_weights(model_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(out))
    print(f"build_minilm_onnx: wrote {out} ({out.stat().st_size / 1e6:.1f} MB, "
          f"{len(model.graph.node)} nodes) in {time.perf_counter() - started:.1f} s", file=sys.stderr)


# ------------------------------------------------------------------------------------------------
# Reference forward pass in numpy (float64), written independently of the graph above.

_erf = np.frompyfunc(math.erf, 1, 1)


def _layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def reference_last_hidden_state(cfg, w, input_ids, attention_mask, token_type_ids):
    f = {k: v.astype(np.float64) for k, v in w.items() if v.dtype == np.float32}
    heads, eps = cfg["num_attention_heads"], cfg["layer_norm_eps"]
    batch, seq = input_ids.shape
    x = (f["embeddings.word_embeddings.weight"][input_ids]
         + f["embeddings.position_embeddings.weight"][np.arange(seq)][None]
         + f["embeddings.token_type_embeddings.weight"][token_type_ids])
    x = _layer_norm(x, f["embeddings.LayerNorm.weight"], f["embeddings.LayerNorm.bias"], eps)
    bias = (1.0 - attention_mask[:, None, None, :].astype(np.float64)) * MASK_NEG
    lin = lambda t, name: t @ f[name + ".weight"].T + f[name + ".bias"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        split = lambda t: t.reshape(batch, seq, heads, -1).transpose(0, 2, 1, 3)
        q, k, v = (split(lin(x, p + f"attention.self.{m}")) for m in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]) + bias
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, -1)
        x = _layer_norm(lin(context, p + "attention.output.dense") + x,
                        f[p + "attention.output.LayerNorm.weight"], f[p + "attention.output.LayerNorm.bias"], eps)
        h = lin(x, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)).astype(np.float64))
        x = _layer_norm(lin(h, p + "output.dense") + x,
                        f[p + "output.LayerNorm.weight"], f[p + "output.LayerNorm.bias"], eps)
    return x


def mean_pool_normalize(hidden, attention_mask):
    m = attention_mask[..., None].astype(hidden.dtype)
    pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def check_c_library(lib_path: Path) -> str:
    """dlopen libonnxruntime.so and ask its C API for the version (what ort's load-dynamic does)."""
    import ctypes

    lib = ctypes.CDLL(str(lib_path))
    lib.OrtGetApiBase.restype = ctypes.POINTER(ctypes.c_void_p * 2)  # {GetApi, GetVersionString}
    get_version = ctypes.CFUNCTYPE(ctypes.c_char_p)(lib.OrtGetApiBase().contents[1])
    return get_version().decode()


def cmd_verify(args) -> None:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    model_dir, built = Path(args.model_dir), Path(args.built_dir)
    cfg, w = load_config(model_dir), load_weights(model_dir)
    ok = True

    lib = Path(args.ort_lib) if args.ort_lib else built.parent / "onnxruntime" / "libonnxruntime.so"
    if lib.exists():
        print(f"C library: {lib} -> {lib.resolve().name}, reports version {check_c_library(lib)}")
    print(f"onnxruntime (Python) {ort.__version__}")

    tok = Tokenizer.from_file(str(built / "tokenizer.json"))
    print(f"tokenizer.json as shipped: truncation={tok.truncation} padding={tok.padding}")

    sentences = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell sharply today."]

    def encode(tokenizer, texts):
        enc = tokenizer.encode_batch(texts)
        arr = lambda attr: np.array([getattr(e, attr) for e in enc], dtype=np.int64)
        return arr("ids"), arr("attention_mask"), arr("type_ids")

    # Padding to the longest in the batch, truncation at 256 (what fastembed does with max_length 256).
    dyn = Tokenizer.from_file(str(built / "tokenizer.json"))
    dyn.no_padding()
    dyn.enable_truncation(max_length=256)
    dyn.enable_padding(pad_id=0, pad_token="[PAD]")  # BatchLongest
    ids, mask, types = encode(dyn, sentences)
    print(f"batch shape (BatchLongest): {ids.shape}; tokens of sentence 1: {dyn.encode(sentences[0]).tokens}")

    started = time.perf_counter()
    ref_hidden = reference_last_hidden_state(cfg, w, ids, mask, types)
    ref_emb = mean_pool_normalize(ref_hidden, mask)
    print(f"numpy float64 reference: {time.perf_counter() - started:.2f} s")

    opts = {}
    for level in ("ORT_ENABLE_ALL", "ORT_DISABLE_ALL"):
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        so.intra_op_num_threads = 2
        t = time.perf_counter()
        sess = ort.InferenceSession(str(built / "model.onnx"), so, providers=["CPUExecutionProvider"])
        load_s = time.perf_counter() - t
        hidden = sess.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]
        emb = mean_pool_normalize(hidden.astype(np.float64), mask)
        real = mask.astype(bool)
        d_hidden = np.abs(hidden - ref_hidden)[real].max()
        d_emb = np.abs(emb - ref_emb).max()
        print(f"{level}: session {load_s:.2f} s; output {hidden.shape} {hidden.dtype}; "
              f"max|diff| vs numpy: last_hidden_state (real tokens) {d_hidden:.2e}, embeddings {d_emb:.2e}")
        ok &= d_hidden < 1e-3 and d_emb < 1e-5
        opts[level] = sess

    sess = opts["ORT_ENABLE_ALL"]
    run = lambda i, m, t: sess.run(["last_hidden_state"], {"input_ids": i, "attention_mask": m, "token_type_ids": t})[0]
    emb = mean_pool_normalize(run(ids, mask, types).astype(np.float64), mask)
    cos = emb @ emb.T
    print(f"cosine(guitar, instrument) = {cos[0, 1]:.4f}")
    print(f"cosine(guitar, stock market) = {cos[0, 2]:.4f}")
    print(f"cosine(instrument, stock market) = {cos[1, 2]:.4f}")
    ok &= cos[0, 1] > cos[0, 2] + 0.3

    # Similarities published for all-MiniLM-L6-v2 in the sentence-transformers documentation.
    published = [("The weather is lovely today.", "It's so sunny outside!", 0.6660),
                 ("The weather is lovely today.", "He drove to the stadium.", 0.1046),
                 ("The new movie is awesome", "The new movie is so great", 0.8939),
                 ("The cat sits outside", "The dog plays in the garden", 0.2838),
                 ("A man is playing guitar", "A woman watches TV", -0.0327)]
    for a, b, expected in published:
        pair_ids, pair_mask, pair_types = encode(dyn, [a, b])
        e = mean_pool_normalize(run(pair_ids, pair_mask, pair_types).astype(np.float64), pair_mask)
        got = float(e[0] @ e[1])
        print(f"cosine({a!r}, {b!r}) = {got:.4f} (published {expected:.4f})")
        ok &= abs(got - expected) < 2e-3

    # The shipped tokenizer settings (fixed padding to 128) give the same pooled embeddings.
    ids128, mask128, types128 = encode(tok, sentences)
    emb128 = mean_pool_normalize(run(ids128, mask128, types128).astype(np.float64), mask128)
    d = np.abs(emb128 - emb).max()
    print(f"shipped tokenizer settings: batch shape {ids128.shape}; max|diff| of embeddings vs BatchLongest {d:.2e}")
    ok &= d < 1e-5

    # One at a time equals batched (padding does not leak into pooled embeddings).
    single = []
    for s in sentences:
        one_ids, one_mask, one_types = encode(dyn, [s])
        single.append(mean_pool_normalize(run(one_ids, one_mask, one_types).astype(np.float64), one_mask)[0])
    d = np.abs(np.stack(single) - emb).max()
    print(f"unbatched vs batched: max|diff| {d:.2e}")
    ok &= d < 1e-5

    # Long input: truncated at 256 tokens; the graph takes up to 512.
    long_ids, long_mask, long_types = encode(dyn, ["word " * 600])
    print(f"long input truncated to {long_ids.shape[1]} tokens: output {run(long_ids, long_mask, long_types).shape}")
    seq512 = np.full((1, 512), 1012, dtype=np.int64)
    print(f"512 tokens: output {run(seq512, np.ones_like(seq512), np.zeros_like(seq512)).shape}")

    # Speed on this machine (2 threads), informational.
    batch = [f"{s} (variant {i})" for i in range(11) for s in sentences][:32]
    b_ids, b_mask, b_types = encode(dyn, batch)
    q_ids, q_mask, q_types = encode(dyn, ["how do I rotate my API key?"])
    run(q_ids, q_mask, q_types)
    t = time.perf_counter()
    for _ in range(20):
        run(q_ids, q_mask, q_types)
    single_ms = (time.perf_counter() - t) / 20 * 1000
    t = time.perf_counter()
    for _ in range(3):
        run(b_ids, b_mask, b_types)
    per_s = 3 * len(batch) / (time.perf_counter() - t)
    print(f"speed: single short query {single_ms:.1f} ms; batch of 32 {per_s:.0f} sentences/s")

    print("verify: OK" if ok else "verify: FAILED")
    sys.exit(0 if ok else 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the ONNX model")
    b.add_argument("model_dir", help="folder with model.safetensors and config.json")
    b.add_argument("out", help="output .onnx path")
    b.set_defaults(func=cmd_build)
    v = sub.add_parser("verify", help="compare the built model (ONNX Runtime) with a numpy forward pass")
    v.add_argument("model_dir", help="folder with model.safetensors and config.json")
    v.add_argument("built_dir", help="folder with model.onnx and tokenizer.json")
    v.add_argument("--ort-lib", help="libonnxruntime.so to dlopen (default: BUILT_DIR/../onnxruntime/)")
    v.set_defaults(func=cmd_verify)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
