"""lens_bias attribution on a model split over two GPUs (issue #7, target 4).

The model is spread over the GPUs by accelerate (``lens_bias.model.load.wrap(model, tok,
device_map=...)``, which calls ``accelerate.dispatch_model``): each decoder layer lives on one
GPU, the hidden states move between GPUs at the boundary, and TransformerLens's hooks and the
backward pass run where the layer is. The per-layer scores are gathered on the first GPU.

* ``check``: a model that fits one GPU (Llama-3-8B shape, random bf16 weights built from a
  ``LlamaConfig`` on the GPU, as ``bench_gpu.py`` does) scored once on the first GPU alone and
  once split over both (the same weight values), both estimators (``ablate``, ``patch``) with
  the JS metric: relative error ||split - one|| / ||one|| per kind (expected 0: the same kernels
  on the same inputs), and the times of both, interleaved, median of ``--repeats``.
* ``big``: a Llama-70B-shaped model (hidden 8192, 80 layers, 64 heads, 8 KV heads, intermediate
  28672, vocab 128256; 131 GiB in bf16, more than one 141 GB H200 holds with the activations of
  attribution) built directly onto its GPUs, layer by layer (never on the CPU), with random
  weights; ``attribute`` timed on ``--pairs`` pairs x ``--seq`` tokens (median of ``--repeats``
  after ``--warmup`` rounds), with the peak memory of each GPU.

    python benchmarks/bench_multigpu.py [--part check|big|both] [--devices cuda:0,cuda:1]
        [--pairs 64] [--seq 32] [--repeats 5] [--small] [--out FILE]

``--small`` uses small shapes for both parts (a smoke test). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import torch
from common import (
    LLAMA3_8B_SHAPE,
    LLAMA_70B_SHAPE,
    build_models,
    emit,
    import_transformer_lens,
    interleaved_ms,
    new_llama,
    peak_mib,
    random_pairs,
    rel_error,
    sync,
    versions,
    word_tokenizer,
)

TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512)  # --tiny: a CPU run of the script (devices cpu,cpu)
SMALL_SHAPE = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=8,
                   num_key_value_heads=4, vocab_size=4096)
KINDS = ("neurons", "heads")


def _owner(name: str, device_map: dict) -> str:
    """The device of a parameter or buffer: that of the longest module name in the map it is under."""
    keys = [k for k in device_map if k == "" or name == k or name.startswith(k + ".")]
    return device_map[max(keys, key=len)]


def split_copy(plain, devices, hf_layout: bool = False):
    """The same weight values as ``plain``, spread over ``devices`` with ``split_device_map`` (the
    part on ``plain``'s own device shares its tensors; nothing is written to them). ``hf_layout``:
    the final norm and the unembedding on the last device, as Hugging Face's ``device_map="auto"``
    places them."""
    from lens_bias.model.devices import split_device_map

    model = new_llama(plain.config, "meta", next(plain.parameters()).dtype)
    dm = split_device_map(model, devices)
    if hf_layout:
        dm["model.norm"] = dm["lm_head"] = devices[-1]
    model.load_state_dict({k: v.to(_owner(k, dm)) for k, v in plain.state_dict().items()}, assign=True,
                          strict=True)
    for name, buf in plain.named_buffers():  # non-persistent buffers (rotary inv_freq)
        mod, _, leaf = name.rpartition(".")
        model.get_submodule(mod).register_buffer(leaf, buf.to(_owner(name, dm)).clone(), persistent=False)
    return model.eval(), dm


def build_split_random(shape: dict, devices, dtype: torch.dtype, seed: int = 0):
    """A random-weight Llama of ``shape`` built on the meta device, then materialised module by
    module on the device ``split_device_map`` gives it: normal(0, 0.02) matrices, unit norms."""
    from lens_bias.model.devices import split_device_map

    skeleton, _ = build_models(shape, "meta", dtype)  # the same config as bench_gpu's models; no memory
    dm = split_device_map(skeleton, devices)
    gens = {d: torch.Generator(device=d).manual_seed(seed + i) for i, d in enumerate(devices)}
    with torch.no_grad():
        for name, dev in dm.items():
            mod = skeleton.get_submodule(name)
            mod.to_empty(device=dev)
            for _, p in mod.named_parameters():
                if p.ndim == 1:
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, 0.02, generator=gens[dev])
            if name.endswith("rotary_emb"):  # recompute its (non-persistent, float32) tables
                with torch.device(dev):
                    fresh = type(mod)(skeleton.config)
                for bname, b in fresh.named_buffers():
                    mod.get_buffer(bname).copy_(b)
    return skeleton.eval(), dm


def _allocated(devices) -> dict:
    return {d: round(torch.cuda.memory_allocated(d) / 2**20, 1) for d in dict.fromkeys(devices)
            if d.startswith("cuda")}


def part_check(shape: dict, devices, dtype, n: int, seq: int, repeats: int, warmup: int) -> dict:
    from lens_bias.attribution.patching import attribute
    from lens_bias.model.load import wrap

    t0 = time.perf_counter()
    plain, twin = build_models(shape, devices[0], dtype)
    model, dm = split_copy(plain, devices)
    tok = word_tokenizer(shape["vocab_size"])
    one = wrap(twin, tok, name="one-gpu", device=devices[0])
    split = wrap(model, tok, name="split", device_map=dm)
    build_s = time.perf_counter() - t0
    layers = {d: sum(1 for k, v in dm.items() if ".layers." in k and v == d) for d in devices}
    pairs = random_pairs(n, seq, shape["vocab_size"])

    def run(bridge, est):
        return attribute(bridge, pairs, estimator=est, components=KINDS, batch_size=n, progress=False)

    err, equal, mx, ref = {}, {}, {}, {}
    for est in ("ablate", "patch"):
        a, b = run(one, est), run(split, est)
        ref[est] = a
        for k in KINDS:
            err[f"{est}_{k}"] = rel_error(a.get(k), b.get(k))
            equal[f"{est}_{k}"] = bool(torch.equal(a.get(k), b.get(k)))
            mx[f"{est}_{k}"] = float((a.get(k).double() - b.get(k).double()).abs().max())
    systems = {
        "one_ablate": lambda b=one: run(b, "ablate"),
        "split_ablate": lambda b=split: run(b, "ablate"),
        "one_patch": lambda b=one: run(b, "patch"),
        "split_patch": lambda b=split: run(b, "patch"),
    }
    med, all_ms = interleaved_ms(systems, devices, repeats, warmup)
    mem = {k: peak_mib(systems[k], devices) for k in systems}
    out = {"shape": shape, "layers_per_device": layers, "build_seconds": round(build_s, 1),
           "n_devices_seen_by_transformer_lens": getattr(split.cfg, "n_devices", None),
           "rel_error": err, "bit_identical": equal, "max_abs_diff": mx, "median_ms": med, "ms": all_ms,
           "peak_mib": mem,
           "other_paths_bit_identical": other_paths(one, split, plain, tok, pairs, devices, ref, n)}
    del systems, one, split, plain, twin, model
    gc.collect()
    torch.cuda.empty_cache()
    out["left_allocated_mib"] = _allocated(devices)
    return out


def other_paths(one, split, plain, tok, pairs, devices, ref: dict, n: int) -> dict:
    """The other entry points on the split model, and the layout of Hugging Face's
    ``device_map="auto"`` (final norm and unembedding on the last GPU), against one GPU."""
    from lens_bias.attribution.patching import attribute, capability_cost
    from lens_bias.attribution.scorers import baseline_scores
    from lens_bias.model.devices import final_hidden_to_input_device
    from lens_bias.model.load import wrap

    def same(a, b) -> bool:
        return all(torch.equal(a.get(k), b.get(k)) for k in KINDS)

    out = {}
    model, dm = split_copy(plain, devices, hf_layout=True)
    hf = wrap(model, tok, name="split-hf-layout", device_map=dm)
    for est in ("ablate", "patch"):
        out[f"hf_layout_{est}"] = same(ref[est],
                                       attribute(hf, pairs, estimator=est, batch_size=n, progress=False))
    # without lens_bias's hook that returns the last hidden states to the first GPU
    hooks = model.model._forward_hooks
    ours = final_hidden_to_input_device.__qualname__ + "."
    mine = [k for k, f in hooks.items() if getattr(f, "__qualname__", "").startswith(ours)]
    assert len(mine) == 1, "lens_bias's hook on the decoder is missing"
    saved = {k: hooks.pop(k) for k in mine}
    try:
        attribute(hf, pairs, batch_size=n, progress=False)
        out["hf_layout_without_hook"] = "ran"
    except Exception as e:  # noqa: BLE001 - recorded: the reason for the hook
        out["hf_layout_without_hook"] = f"{type(e).__name__}: {str(e)[:160]}"
    hooks.update(saved)
    out["actdiff_scan"] = same(baseline_scores(one, pairs, "actdiff", batch_size=n),
                               baseline_scores(split, pairs, "actdiff", batch_size=n))
    out["ablate_mean"] = same(attribute(one, pairs, ablation="mean", batch_size=n, progress=False),
                              attribute(split, pairs, ablation="mean", batch_size=n, progress=False))
    texts = [p.black for p in pairs.pairs[:16]]
    out["capability_cost"] = same(capability_cost(one, texts), capability_cost(split, texts))
    del hf, model
    return out


def part_big(shape: dict, devices, dtype, n: int, seq: int, repeats: int, warmup: int) -> dict:
    from lens_bias.attribution.patching import attribute
    from lens_bias.model.load import wrap

    t0 = time.perf_counter()
    model, dm = build_split_random(shape, devices, dtype)
    sync(devices)
    built_s = time.perf_counter() - t0
    weights = _allocated(devices)
    n_params = sum(p.numel() for p in model.parameters())
    tok = word_tokenizer(shape["vocab_size"])
    bridge = wrap(model, tok, name="llama-70b-shaped-random", device_map=dm)
    wrap_s = time.perf_counter() - t0 - built_s
    layers = {d: sum(1 for k, v in dm.items() if ".layers." in k and v == d) for d in devices}
    pairs = random_pairs(n, seq, shape["vocab_size"])
    out = {"shape": shape, "n_params": n_params, "weights_gib": round(n_params * 2 / 2**30, 1),
           "layers_per_device": layers, "weights_mib": weights, "build_seconds": round(built_s, 1),
           "wrap_seconds": round(wrap_s, 1),
           "n_devices_seen_by_transformer_lens": getattr(bridge.cfg, "n_devices", None)}
    batch = n
    while True:
        try:
            systems = {est: (lambda est=est, bs=batch: attribute(bridge, pairs, estimator=est,
                                                                 components=KINDS, batch_size=bs,
                                                                 progress=False))
                       for est in ("ablate", "patch")}
            mem = {k: peak_mib(f, devices) for k, f in systems.items()}
            med, all_ms = interleaved_ms(systems, devices, repeats, warmup)
            break
        except torch.OutOfMemoryError:
            if batch == 1:
                raise
            gc.collect()
            torch.cuda.empty_cache()
            batch //= 2
            print(f"  out of memory: batches of {batch} pairs")
    s = attribute(bridge, pairs, components=KINDS, batch_size=batch, progress=False)
    out.update({"batch_size": batch, "median_ms": med, "ms": all_ms, "peak_mib": mem,
                "pairs_per_s": {k: round(n / (v / 1e3), 2) for k, v in med.items()},
                "scores_finite": bool(torch.isfinite(s.neurons).all() and torch.isfinite(s.heads).all()),
                "scores_shape": {k: list(s.get(k).shape) for k in KINDS}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("check", "big", "both"), default="both")
    ap.add_argument("--devices", default="cuda:0,cuda:1")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--small", action="store_true", help="small shapes for both parts (smoke test)")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny shapes (with --devices cpu,cpu: a CPU test of the script)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    devices = [str(torch.device(d)) for d in args.devices.split(",")]
    dtype = getattr(torch, args.dtype)
    datasets_mode = import_transformer_lens()
    record = {"benchmark": "bench_multigpu", "devices": devices,
              "device_names": [torch.cuda.get_device_name(d) if d.startswith("cuda") else d for d in devices],
              "peer_access": torch.cuda.can_device_access_peer(torch.device(devices[0]).index or 0,
                                                               torch.device(devices[1]).index)
              if len(devices) == 2 and all(d.startswith("cuda") for d in devices) else None,
              "dtype": args.dtype, "pairs": args.pairs, "seq": args.seq, "repeats": args.repeats,
              "warmup": args.warmup, "small": args.small, **versions("accelerate"),
              "datasets_import": datasets_mode}
    size = "tiny" if args.tiny else "small" if args.small else None
    record["size"] = size or "full"
    part_args = (devices, dtype, args.pairs, args.seq, args.repeats, args.warmup)
    if args.part in ("check", "both"):
        c = part_check(TINY_SHAPE if args.tiny else SMALL_SHAPE if args.small else LLAMA3_8B_SHAPE,
                       *part_args)
        record["check"] = c
        print(f"\ncheck ({size or 'Llama-3-8B'} shape, {args.dtype}): one GPU ({devices[0]}) "
              f"against split over {devices} (layers {c['layers_per_device']}), "
              f"{args.pairs} pairs x {args.seq} tokens")
        for k in c["rel_error"]:
            print(f"  {k:<16} rel. error {c['rel_error'][k]:.3g}  max |diff| {c['max_abs_diff'][k]:.3g}  "
                  f"bit-identical {c['bit_identical'][k]}")
        for k, v in c["median_ms"].items():
            print(f"  {k:<16} {v:9.1f} ms")
        for k, v in c["peak_mib"].items():
            print(f"  peak MiB {k:<12} {v}")
        for k, v in c["other_paths_bit_identical"].items():
            print(f"  same as one GPU: {k:<24} {v}")
    if args.part in ("big", "both"):
        b = part_big(TINY_SHAPE if args.tiny else SMALL_SHAPE if args.small else LLAMA_70B_SHAPE, *part_args)
        record["big"] = b
        print(f"\nbig ({size or 'Llama-70B'} shape, {b['weights_gib']} GiB of weights, "
              f"{args.dtype}) split over {devices} (layers {b['layers_per_device']}; "
              f"weights MiB {b['weights_mib']}; "
              f"built in {b['build_seconds']} s, wrapped in {b['wrap_seconds']} s): "
              f"{args.pairs} pairs x {args.seq} tokens, batches of {b['batch_size']}, "
              f"median of {args.repeats}")
        for k, v in b["median_ms"].items():
            print(f"  attribute ({k:<6}) {v:10.1f} ms  {b['pairs_per_s'][k]:7.2f} pairs/s  "
                  f"peak MiB {b['peak_mib'][k]}")
    emit(record, args.out)


if __name__ == "__main__":
    main()
