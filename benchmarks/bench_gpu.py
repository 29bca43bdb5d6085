"""lens_bias attribution on a GPU against the floor the model itself sets (issue #7, targets 2-3).

A Llama-3-8B-shaped ``LlamaForCausalLM`` (hidden 4096, 32 layers, 32 heads, 8 KV heads,
intermediate 14336, vocab 128256) is built from a ``LlamaConfig`` on the device with random bf16
weights (speed does not depend on the values; nothing is downloaded). Prompts are random token
ids written as words of a word-level tokenizer whose word ``t<i>`` is token ``i``, so lens_bias
runs its ordinary string path and the model sees exactly these ids. A pair differs in one token.

Timed side by side, interleaved (the order rotates each repeat), after warm-up rounds, median of
``--repeats``, each call synchronised:

* ours: ``attribute(bridge, pairs, components=("neurons", "heads"), batch_size=pairs)``, the
  default ``ablate`` estimator (JS metric) and ``patch``; and the forward-only ``actdiff`` scan;
* the floor, on the plain HF model (the same weight tensors; the bridge wraps a twin that shares
  them): one no-grad forward of the n White prompts plus one forward+backward of the n Black
  prompts to the input embeddings (what attribution patching needs at least: two forwards and one
  backward), the logits at the last position only. ``ablate`` needs gradients of both prompts, so
  its own floor, forward+backward of all 2n rows, is reported as well.

Then the peak GPU memory of ``attribute`` for ``--mem-pairs`` (default 64 and 1024), each asked
for in one batch (``batch_size`` = the pair count), so that the padded-token budget from the free
memory (``lens_bias.model.memory.token_budget``, recorded) alone cuts the passes. Prints a table,
then one JSON line.

    python benchmarks/bench_gpu.py [--pairs 64] [--seq 32] [--repeats 7] [--tiny] [--profile]

``--tiny`` builds a 2-layer model instead (a CPU smoke test of the script).
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import torch
from common import (
    LLAMA3_8B_SHAPE,
    build_models,
    emit,
    import_transformer_lens,
    interleaved,
    median_ms,
    peak_mib,
    random_pairs,
    rel_error,
    rounded_ms,
    sync,
    versions,
    word_tokenizer,
)

TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=1024)
CHECK_SHAPE = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
                   num_key_value_heads=4, vocab_size=2048)


def capture_hooks(kinds, n_layers: int, store: dict) -> list:
    """The hooks ``attribute`` attaches: every layer's activations of ``kinds`` kept in
    ``store[(kind, layer)]``, gradients flowing to them."""
    from lens_bias.hooks.components import hook_name
    from lens_bias.hooks.interventions import collect

    return [(hook_name(k, layer), collect(store, k, layer)) for k in kinds for layer in range(n_layers)]


def breakdown(bridge, plain, batch, pairs, n: int, dev: str, repeats: int, warmup: int) -> dict:
    """Where the time of ``attribute`` goes: the bridge's own forward/backward against the plain
    model's, with and without the activation hooks."""
    from lens_bias.attribution.patching import attribute
    from lens_bias.hooks.interventions import attached
    from lens_bias.vocab import KINDS

    ids = batch.ids
    L = bridge.cfg.n_layers

    def bridge_fwd():
        with torch.no_grad():
            bridge(ids, logits_to_keep=1)

    def bridge_fwdbwd_embed():
        store = {}
        with (attached(bridge, [("hook_embed", lambda t, hook: store.setdefault("e", t))]),
              torch.enable_grad()):
            out = bridge(ids, logits_to_keep=1)
            torch.autograd.grad(out.float().logsumexp(-1).sum(), store["e"])

    def bridge_fwdbwd_hooks():
        store = {}
        with attached(bridge, capture_hooks(KINDS, L, store)), torch.enable_grad():
            out = bridge(ids, logits_to_keep=1)
            torch.autograd.grad(out.float().logsumexp(-1).sum(), list(store.values()))

    def plain_eager_fwdbwd():
        impl = plain.config._attn_implementation
        plain.config._attn_implementation = "eager"
        try:
            x = plain.get_input_embeddings()(ids).detach().requires_grad_(True)
            out = plain(inputs_embeds=x, logits_to_keep=1).logits
            torch.autograd.grad(out.float().logsumexp(-1).sum(), x)
        finally:
            plain.config._attn_implementation = impl

    def plain_fwdbwd():
        x = plain.get_input_embeddings()(ids).detach().requires_grad_(True)
        out = plain(inputs_embeds=x, logits_to_keep=1).logits
        torch.autograd.grad(out.float().logsumexp(-1).sum(), x)

    def fwd_rows(model, rows):
        def f():
            with torch.no_grad():
                (model(ids[:rows], logits_to_keep=1) if model is bridge
                 else model(input_ids=ids[:rows], logits_to_keep=1))
        return f

    def bridge_fwd_hooks_white():
        store = {}
        with attached(bridge, capture_hooks(KINDS, L, store)), torch.no_grad():
            bridge(ids[n:], logits_to_keep=1)

    def bridge_fwdbwd_hooks_black():
        store = {}
        with attached(bridge, capture_hooks(KINDS, L, store)), torch.enable_grad():
            out = bridge(ids[:n], logits_to_keep=1)
            torch.autograd.grad(out.float().logsumexp(-1).sum(), list(store.values()))

    systems = {
        "plain_fwd_2rows": fwd_rows(plain, 2),
        "bridge_fwd_2rows": fwd_rows(bridge, 2),
        "plain_fwd_n": fwd_rows(plain, n),
        "bridge_fwd_n": fwd_rows(bridge, n),
        "bridge_fwd_hooks_white_n": bridge_fwd_hooks_white,
        "bridge_fwdbwd_hooks_black_n": bridge_fwdbwd_hooks_black,
        "plain_fwdbwd_both": plain_fwdbwd,
        "plain_eager_fwdbwd_both": plain_eager_fwdbwd,
        "bridge_fwd_both": bridge_fwd,
        "bridge_fwdbwd_embed_both": bridge_fwdbwd_embed,
        "bridge_fwdbwd_hooks_both": bridge_fwdbwd_hooks,
        "ours_ablate": lambda: attribute(bridge, pairs, components=KINDS, batch_size=n, progress=False),
        "ours_patch": lambda: attribute(bridge, pairs, estimator="patch", components=KINDS, batch_size=n,
                                        progress=False),
    }
    out = {"median_ms": median_ms(interleaved(systems, dev, repeats, warmup))}
    if dev.startswith("cuda"):
        from torch.profiler import ProfilerActivity, profile

        per_op = {}
        peaks = {k: peak_mib(systems[k], dev)[dev] for k in ("ours_ablate", "ours_patch")}
        out["peak_gpu_mib"] = peaks
        print(f"  breakdown peak GPU MiB: {peaks}")
        for k in ("plain_fwdbwd_both", "bridge_fwdbwd_embed_both", "ours_ablate", "ours_patch"):
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                systems[k]()
                sync(dev)
            ev = prof.key_averages()
            per_op[k] = {e.key: round(e.self_device_time_total / 1e3, 2) for e in ev
                         if e.key.startswith("aten::") and e.self_device_time_total > 0}
            per_op[k]["_total_device_ms"] = round(sum(e.self_device_time_total for e in ev) / 1e3, 1)
            per_op[k]["_total_cpu_ms"] = round(sum(e.self_cpu_time_total for e in ev) / 1e3, 1)
            per_op[k]["_calls"] = sum(e.count for e in ev if e.key.startswith("aten::"))
        out["per_op_device_ms"] = per_op
        ops = sorted({o for d in per_op.values() for o in d if not o.startswith("_")},
                     key=lambda o: -max(d.get(o, 0) for d in per_op.values()))[:16]
        print(f"{'op (device ms)':<32}" + "".join(f"{k[:22]:>24}" for k in per_op))
        for o in ["_total_device_ms", "_total_cpu_ms", "_calls", *ops]:
            print(f"{o[:32]:<32}" + "".join(f"{per_op[k].get(o, 0):>24}" for k in per_op))
    for k, v in out["median_ms"].items():
        print(f"  breakdown {k:<34} {v:9.1f} ms")
    return out


def check_against_float32(dev: str, dtype: torch.dtype, n: int = 16, seq: int = 32) -> dict:
    """Correctness on the benchmark's device: the same small random Llama (``CHECK_SHAPE``) scored in
    ``dtype`` on ``dev`` and in float32 on the CPU, both estimators; relative error
    ||ours - ref|| / ||ref|| per kind (goal <= 1e-2 in bf16), and how well the rankings agree
    (Spearman, overlap of the top 1 %).

    The reference is the *same model*: the weights rounded to ``dtype`` once, then run in float32,
    so the error measured is that of computing in ``dtype`` (what our code controls), not that of
    storing the weights in it. The error against the original float32 weights is reported beside it
    (``vs_float32_weights``): that is what a user comparing a bf16 checkpoint with its float32
    original would see."""
    from lens_bias.attribution.patching import attribute
    from lens_bias.model.load import wrap
    from lens_bias.vocab import KINDS

    plain, twin = build_models(CHECK_SHAPE, "cpu", torch.float32, seed=3)
    low = copy.deepcopy(plain).to(device=dev, dtype=dtype)
    same = copy.deepcopy(plain).to(dtype=dtype).to(dtype=torch.float32)  # the low model's weights, in float32
    floor = plain_precision_floor(copy.deepcopy(same), copy.deepcopy(low), n, seq, dev)
    tok = word_tokenizer(CHECK_SHAPE["vocab_size"])
    refs = {"same_weights": wrap(same, tok, name="check-rounded-float32-cpu", device="cpu"),
            "vs_float32_weights": wrap(twin, tok, name="check-float32-cpu", device="cpu")}
    low_bridge = wrap(low, tok, name=f"check-{dtype}-{dev}", device=dev)
    from scipy.stats import spearmanr

    pairs = random_pairs(n, seq, CHECK_SHAPE["vocab_size"], seed=2)
    out, ranks, extra = {}, {}, {}
    for est in ("ablate", "patch"):
        got = attribute(low_bridge, pairs, estimator=est, batch_size=n, progress=False)
        for which, ref_bridge in refs.items():
            ref = attribute(ref_bridge, pairs, estimator=est, batch_size=n, progress=False)
            for k in KINDS:
                r, x = ref.get(k).double(), got.get(k).double().cpu()
                err = round(rel_error(r, x), 5)
                if which != "same_weights":
                    extra[f"{est}_{k}"] = err
                    continue
                out[f"{est}_{k}"] = err
                top = max(5, r.numel() // 100)  # what pruning uses: the top 1 % (at least 5 units)
                a = set(torch.topk(r.flatten(), top).indices.tolist())
                b = set(torch.topk(x.flatten(), top).indices.tolist())
                ranks[f"{est}_{k}"] = {
                    "spearman": round(float(spearmanr(r.flatten(), x.flatten()).statistic), 5),
                    "top1pct_overlap": round(len(a & b) / top, 3)}
    ranks["vs_float32_weights"] = extra
    ranks["plain_model_floor"] = floor
    print(f"  the plain HF model's own error in {dtype} (no lens_bias code): {floor}")
    print(f"  scores in {dtype} on {dev} vs the same weights in float32 on the CPU (relative error): {out}")
    print(f"  against the unrounded float32 weights: {extra}")
    print(f"  ranking agreement: {ranks}")
    return out, ranks


def plain_precision_floor(ref, low, n: int, seq: int, dev: str) -> dict:
    """What ``low``'s dtype costs the plain HF model itself, with no lens_bias code in the way:
    relative error against ``ref`` (the same weights in float32, on the CPU) of the last-token
    logits and of the gradient of KL(Black || White) at the last token with respect to the input
    embeddings, on random pairs that differ in one token. Scores are products of activations and
    such gradients, so their error cannot be much below this."""
    vocab = ref.config.vocab_size
    g = torch.Generator().manual_seed(5)
    black = torch.cat([torch.ones(n, 1, dtype=torch.long),
                       torch.randint(3, vocab, (n, seq - 1), generator=g)], 1)
    white = black.clone()
    white[:, 2] = 3 + (white[:, 2] - 2) % (vocab - 3)
    ids = torch.cat([black, white])

    def run(model, device):
        emb = model.get_input_embeddings()(ids.to(device)).detach().requires_grad_(True)
        logits = model(inputs_embeds=emb).logits[:, -1].float()
        logp = logits.log_softmax(-1)
        (logp[:n].exp() * (logp[:n] - logp[n:])).sum().backward()
        return logits.detach().double().cpu(), emb.grad.double().cpu()

    (l_ref, g_ref), (l_low, g_low) = run(ref, "cpu"), run(low, dev)
    return {"logits": round(rel_error(l_ref, l_low), 5), "grad_embeddings": round(rel_error(g_ref, g_low), 5)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--mem-pairs", default="64,1024")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--tiny", action="store_true", help="2-layer model (smoke test)")
    ap.add_argument("--profile", action="store_true", help="print the top kernels of one ablate attribution")
    ap.add_argument("--breakdown", action="store_true",
                    help="time the bridge's own passes against the plain model's")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--max-batch-tokens", type=int, default=None,
                    help="attribution's padded-token budget instead of the one from free memory")
    ap.add_argument("--check-only", action="store_true",
                    help="only the correctness check, in --dtype and in float32 on the device, then exit")
    args = ap.parse_args()
    from lens_bias.model.memory import max_batch_tokens

    with max_batch_tokens(args.max_batch_tokens):
        run(args)


def run(args: argparse.Namespace) -> None:
    """The benchmark itself (see the module docstring)."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    dtype = getattr(torch, args.dtype)
    dev = args.device
    cuda = dev.startswith("cuda")
    datasets_mode = import_transformer_lens()

    if args.check_only:
        res = {str(d): check_against_float32(dev, d) for d in dict.fromkeys([dtype, torch.float32])}
        emit({"benchmark": "bench_gpu --check-only", "device": dev, "check": res})
        return

    from lens_bias.attribution.patching import attribute
    from lens_bias.attribution.scorers import baseline_scores
    from lens_bias.model.batching import pair_batch
    from lens_bias.model.load import wrap
    from lens_bias.model.memory import token_budget

    shape = TINY_SHAPE if args.tiny else LLAMA3_8B_SHAPE
    t0 = time.perf_counter()
    plain, twin = build_models(shape, dev, dtype)
    weights_mib = torch.cuda.memory_allocated() / 2**20 if cuda else None
    tok = word_tokenizer(shape["vocab_size"])
    bridge = wrap(twin, tok, name="llama3-8b-shaped-random" if not args.tiny else "tiny-shaped-random",
                  device=dev)
    build_s = time.perf_counter() - t0
    after_wrap_mib = torch.cuda.memory_allocated() / 2**20 if cuda else None
    assert type(plain.model.layers[0].mlp).__name__ == "LlamaMLP", "the plain model must stay unwrapped"
    shared = all(
        p.data_ptr() == q.data_ptr()
        for p, q in zip(plain.parameters(), bridge.original_model.parameters(), strict=True)
    )

    n = args.pairs
    pairs = random_pairs(n, args.seq, shape["vocab_size"])
    batch = pair_batch(bridge, pairs.pairs)  # [2n, seq]: the n Black rows, then the n White rows
    assert tuple(batch.ids.shape) == (2 * n, args.seq) and bool((batch.lengths == args.seq).all())
    black, white = batch.ids[:n], batch.ids[n:]
    emb = plain.get_input_embeddings()

    def fwd(ids):
        with torch.no_grad():
            plain(input_ids=ids, logits_to_keep=1)

    def fwd_bwd(ids):
        x = emb(ids).detach().requires_grad_(True)
        logits = plain(inputs_embeds=x, logits_to_keep=1).logits
        torch.autograd.grad(logits.float().logsumexp(-1).sum(), x)

    systems = {
        "floor_fwd_white": lambda: fwd(white),
        "floor_fwdbwd_black": lambda: fwd_bwd(black),
        "floor_fwdbwd_both": lambda: fwd_bwd(batch.ids),
        "floor_fwd_both": lambda: fwd(batch.ids),
        "ours_ablate": lambda: attribute(bridge, pairs, components=("neurons", "heads"), batch_size=n,
                                         progress=False),
        "ours_patch": lambda: attribute(bridge, pairs, estimator="patch", components=("neurons", "heads"),
                                        batch_size=n, progress=False),
        "ours_scan": lambda: baseline_scores(bridge, pairs, "actdiff", batch_size=n),
    }
    times = interleaved(systems, dev, args.repeats, args.warmup)
    med = median_ms(times, ndigits=None)
    floor = med["floor_fwd_white"] + med["floor_fwdbwd_black"]
    ratios = {
        "ablate_vs_floor": med["ours_ablate"] / floor,
        "patch_vs_floor": med["ours_patch"] / floor,
        "ablate_vs_its_floor": med["ours_ablate"] / med["floor_fwdbwd_both"],
        "scan_vs_fwd_both": med["ours_scan"] / med["floor_fwd_both"],
    }

    mem = {}
    for m in [int(x) for x in args.mem_pairs.split(",")]:
        ps = random_pairs(m, args.seq, shape["vocab_size"], seed=1)
        t = time.perf_counter()
        budget = token_budget(bridge)  # before the pass: what the free memory holds now
        peak = peak_mib(lambda ps=ps, m=m: attribute(bridge, ps, components=("neurons", "heads"),
                                                     batch_size=m, progress=False), dev)
        secs = time.perf_counter() - t
        mem[m] = {"seconds": round(secs, 3), "pairs_per_s": round(m / secs, 1), "token_budget": budget}
        if cuda:
            mem[m]["peak_gpu_mib"] = peak[dev]
    lo, hi = min(mem), max(mem)
    mem_ratio = mem[hi]["peak_gpu_mib"] / mem[lo]["peak_gpu_mib"] if cuda else None

    check, check_ranks = check_against_float32(dev, dtype)
    extra = (breakdown(bridge, plain, batch, pairs, n, dev, args.repeats, args.warmup) if args.breakdown
             else None)

    prof_rows = []
    if args.profile:  # last, and never fatal: the numbers above are the result
        try:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with profile(activities=acts) as prof:
                systems["ours_ablate"]()
                sync(dev)
            key = "self_device_time_total" if cuda else "self_cpu_time_total"
            events = sorted(prof.key_averages(), key=lambda e: -getattr(e, key))
            print(prof.key_averages().table(sort_by=key, row_limit=20, max_name_column_width=60))
            prof_rows = [{"name": e.key[:80], "calls": e.count,
                          "self_device_ms": round(getattr(e, "self_device_time_total", 0) / 1e3, 3),
                          "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 3)} for e in events[:25]]
        except Exception as e:  # noqa: BLE001
            prof_rows = [{"error": repr(e)}]

    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"\n{'tiny' if args.tiny else 'Llama-3-8B-shaped'} {args.dtype} on {device_name}: "
          f"{n} pairs x {args.seq} tokens, median of {args.repeats} (ms)")
    labels = {
        "floor_fwd_white": "floor: no-grad fwd, n White rows",
        "floor_fwdbwd_black": "floor: fwd+bwd to embeddings, n Black",
        "floor_fwdbwd_both": "fwd+bwd to embeddings, all 2n rows",
        "floor_fwd_both": "no-grad fwd, all 2n rows",
        "ours_ablate": "lens_bias attribute (ablate)",
        "ours_patch": "lens_bias attribute (patch)",
        "ours_scan": "lens_bias actdiff scan (fwd only)",
    }
    for k in systems:
        print(f"  {labels[k]:<40} {med[k]:9.1f}")
    print(f"  {'floor = fwd(n) + fwd+bwd(n)':<40} {floor:9.1f}")
    for k, v in ratios.items():
        print(f"  {k:<40} {v:9.2f}x")
    for m, row in mem.items():
        print(f"  memory {m:>5} pairs: " + (f"peak GPU {row['peak_gpu_mib']:.0f} MiB, " if cuda else "")
              + f"{row['pairs_per_s']} pairs/s, token budget {row['token_budget']}")
    if cuda:
        print(f"  peak GPU ratio {hi}/{lo} pairs: {mem_ratio:.3f}  (weights {weights_mib:.0f} MiB)")
    record = {
        "benchmark": "bench_gpu", "max_batch_tokens": args.max_batch_tokens,
        "device": device_name, "shape": "tiny" if args.tiny else "llama3-8b",
        "dtype": args.dtype, "pairs": n, "seq": args.seq, "repeats": args.repeats, "warmup": args.warmup,
        **versions(), "datasets_import": datasets_mode,
        "build_seconds": round(build_s, 1), "weights_mib": weights_mib, "after_wrap_mib": after_wrap_mib,
        "bridge_shares_weights": shared,
        "median_ms": {k: round(v, 2) for k, v in med.items()},
        "ms": rounded_ms(times),
        "floor_ms": round(floor, 2), "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "goal_ratio": 1.3, "goal_met": ratios["ablate_vs_floor"] <= 1.3,
        "memory": {str(k): v for k, v in mem.items()}, "peak_gpu_ratio": mem_ratio,
        "memory_goal_met": (mem_ratio <= 1.10) if mem_ratio is not None else None,
        "profile_top": prof_rows, "breakdown": extra,
        "check_vs_float32_cpu": check, "check_goal_met": max(check.values()) <= 1e-2,
        "check_ranking": check_ranks,
    }
    emit(record, args.out)


if __name__ == "__main__":
    main()
