"""Throughput and memory of lens_bias scoring against optiPfair, side by side (issue #7).

Three systems run on the same model weights and the same contrastive pairs, interleaved in one
process (the order rotates every repeat), after one warm-up round:

* ``scan``: lens_bias's forward-only activation-difference scan,
  ``baseline_scores(bridge, pairs, "actdiff")`` (per-neuron and per-head |a_B - a_W| at the last
  token, overall and per domain);
* ``attribution``: ``attribute(bridge, pairs, components=("neurons", "heads"))`` (one forward and
  one backward per batch; ablate estimator, JS metric: every neuron and head scored);
* ``optipfair``: ``optipfair.bias.analyze_neuron_bias(model, tokenizer, prompt_pairs)``, the peer
  (its own per-prompt loop, defaults: gate_proj/up_proj, mean over pairs, no plots), on a separate
  plain Hugging Face copy of the same weights (the bridge rewires its own copy).

Reported: the median seconds of ``--repeats`` runs per system, pairs/s, and our pairs/s over
optiPfair's. Then peak resident memory (peak GPU memory as well on CUDA) of each lens_bias system
for each of ``--mem-pairs`` (default 64, 256 and 1024), each measured in a fresh subprocess.

    python benchmarks/bench_attribution.py --json [--model smollm2-135m] [--pairs 128] [--repeats 5]
        [--threads 1] [--device cpu] [--mem-pairs 64,256,1024] [--no-memory] [--peer-memory]

Prints a table, then (with ``--json``) one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import emit, interleaved, proc_status_kib, timed, versions

from lens_bias import build_pairs, load_hf, load_model
from lens_bias.attribution.patching import attribute
from lens_bias.attribution.scorers import baseline_scores
from lens_bias.prompts.pairs import PairSet

SYSTEMS = ("scan", "attribution", "optipfair")
OURS = ("scan", "attribution")


# ---------------------------------------------------------------- inputs and the peer


def bench_pairs(n: int, seed: int = 0) -> PairSet:
    """``n`` bundled pairs drawn with a fixed seed from all domains, in bundled order."""
    every = build_pairs()
    if n > len(every):
        raise SystemExit(f"--pairs {n}: only {len(every)} bundled pairs exist")
    keep = sorted(random.Random(seed).sample(range(len(every)), n))
    return PairSet([every.pairs[i] for i in keep])


def optipfair_analyze():
    """``optipfair.bias.analyze_neuron_bias``, loaded the way the arena loads it (without its plotting
    extra, from its own file, unchanged: :func:`lens_bias.mitigation.pruning.optipfair_functions`)."""
    from lens_bias.mitigation.pruning import optipfair_functions

    return optipfair_functions()[0]


def peer_model(name: str, device: str):
    model, tokenizer = load_hf(name)
    return model.to(device).eval(), tokenizer


def same_weights(bridge, model) -> bool:
    """The bridge's HF model (its modules wrapped, names with ``._original_component``) and the
    plain copy hold equal tensors under the same names."""
    a = {k.replace("._original_component", ""): p for k, p in bridge.original_model.named_parameters()}
    b = dict(model.named_parameters())
    return a.keys() == b.keys() and all(torch.equal(a[k].detach().cpu(), b[k].detach().cpu()) for k in a)


def runners(bridge, peer, pairs: PairSet, systems=SYSTEMS) -> dict:
    out = {}
    if "scan" in systems:
        out["scan"] = lambda: baseline_scores(bridge, pairs, "actdiff")
    if "attribution" in systems:
        out["attribution"] = lambda: attribute(bridge, pairs, components=("neurons", "heads"), progress=False)
    if "optipfair" in systems:
        analyze = optipfair_analyze()
        model, tokenizer = peer
        prompt_pairs = [(p.black, p.white) for p in pairs]
        out["optipfair"] = lambda: analyze(model, tokenizer, prompt_pairs, show_progress=False)
    return out


def attribution_batches(bridge, pairs: PairSet) -> tuple[list[list[int]], list]:
    """``attribute``'s batches of pair indices (its default 16 pairs) and the token rows of all
    prompts (the Black prompts, then the White ones)."""
    from lens_bias.bridge import model_device
    from lens_bias.model.batching import tokenize_pairs

    tokens = tokenize_pairs(bridge, pairs)
    return tokens.batches(16, model_device(bridge)), tokens.black + tokens.white


def work_estimate(bridge, peer_tokenizer, pairs: PairSet, device: str) -> dict:
    """Matrix-product work per system in GFLOP (2 x params x tokens; attention scores, norms and
    the like are left out), from the batches each one actually runs: optiPfair one prompt at a
    time with logits at every position; the scan and the attribution padded batches
    (:meth:`lens_bias.model.batching.PairTokens.batches` per domain for the scan, ``attribute``'s own
    length-sorted batches of 16 across domains) with logits only at the last positions. The
    backward for activation gradients costs about what the forward does, so attribution counts its
    passes twice. Equal FLOP/s would make the ratio of these numbers the ratio of the speeds."""
    from lens_bias.model.batching import tokenize_pairs

    model = bridge.original_model
    emb = model.get_input_embeddings().weight
    vocab, d = emb.shape
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight
    tied = head.data_ptr() == emb.data_ptr()
    body = total - vocab * d - (0 if tied else head.numel())  # parameters every token goes through
    unembed = vocab * d
    out = {"optipfair": 0.0, "scan": 0.0, "attribution": 0.0}
    for p in pairs:
        for text in (p.black, p.white):
            t = len(peer_tokenizer(text)["input_ids"])
            out["optipfair"] += 2 * t * (body + unembed)
    for _, sub in pairs.by_domain().items():
        tokens = tokenize_pairs(bridge, sub)
        widths = tokens.widths
        for b in tokens.batches(32, device):
            out["scan"] += 2 * (2 * len(b) * max(widths[i] for i in b)) * body + 2 * (2 * len(b)) * unembed
    # attribute's own batches: length-sorted across domains, 16 pairs
    n = len(pairs)
    batches, rows = attribution_batches(bridge, pairs)
    for idx in batches:
        lengths = [len(rows[i]) for i in idx] + [len(rows[n + i]) for i in idx]
        rows_n, width, kept = len(lengths), max(lengths), len(set(lengths))
        out["attribution"] += 2 * (2 * rows_n * width * body + 2 * rows_n * kept * unembed)
    return {k: v / 1e9 for k, v in out.items()}


# ---------------------------------------------------------------- memory (one subprocess per point)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(system: str, n: int, args) -> dict:
    """Runs in a fresh process: load, reset the peak mark, run ``system`` on ``n`` pairs once."""
    import resource

    if args.threads:
        torch.set_num_threads(args.threads)
    pairs = bench_pairs(n)
    bridge = load_model(args.model, device=args.device) if system in OURS else None
    peer = peer_model(args.model, args.device) if system == "optipfair" else None
    run = runners(bridge, peer, pairs, (system,))[system]
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_loaded = proc_status_kib().get("VmRSS")
    reset = _reset_peak_rss()
    t0 = time.perf_counter()
    run()
    secs = time.perf_counter() - t0
    out = {
        "system": system, "pairs": n, "seconds": secs,
        "rss_after_load_mib": (rss_loaded or 0) / 1024,
        "peak_rss_mib": (proc_status_kib()["VmHWM"] if reset
                         else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024,
        "peak_rss_source": ("VmHWM after clear_refs (peak during the run)" if reset
                            else "ru_maxrss (includes loading)"),
    }
    if cuda:
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if system == "attribution":  # what sets the peak: the largest padded batch (rows x width)
        batches, rows = attribution_batches(bridge, pairs)
        out["largest_batch_tokens"] = max(2 * len(b) * max(max(len(rows[i]), len(rows[n + i])) for i in b)
                                          for b in batches)
    return out


def measure_memory(args, systems) -> list[dict]:
    rows = []
    for system in systems:
        for n in args.mem_pairs:
            cmd = [sys.executable, __file__, "--model", args.model, "--device", args.device,
                   "--memory-child", f"{system}:{n}"]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env={**os.environ, "TQDM_DISABLE": "1"})
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode != 0 or not lines:
                raise SystemExit(f"memory run {system}:{n} failed:\n{proc.stderr[-3000:]}")
            row = json.loads(lines[-1])
            print(f"  memory {system:<12} {n:>5} pairs: peak RSS {row['peak_rss_mib']:8.0f} MiB"
                  + (f", peak GPU {row['peak_gpu_mib']:8.0f} MiB" if "peak_gpu_mib" in row else "")
                  + (f", largest batch {row['largest_batch_tokens']} tokens"
                     if "largest_batch_tokens" in row else "")
                  + f"  ({row['seconds']:.0f} s)", flush=True)
            rows.append(row)
    return rows


def memory_summary(rows: list[dict], counts: list[int]) -> dict:
    """Per system: the peak RSS (and GPU) for each pair count, and each peak over the smallest's."""
    lo = min(counts)
    out = {}
    for system in dict.fromkeys(r["system"] for r in rows):
        by_n = {r["pairs"]: r for r in rows if r["system"] == system}
        if lo not in by_n:
            continue
        s = {
            "peak_rss_mib": {n: round(r["peak_rss_mib"], 1) for n, r in by_n.items()},
            "peak_rss_ratio_to_smallest": {n: round(r["peak_rss_mib"] / by_n[lo]["peak_rss_mib"], 4)
                                           for n, r in by_n.items()},
            "rss_after_load_mib": round(by_n[lo]["rss_after_load_mib"], 1),
            "peak_rss_source": by_n[lo]["peak_rss_source"],
        }
        s["peak_rss_ratio"] = s["peak_rss_ratio_to_smallest"][max(by_n)]
        if "peak_gpu_mib" in by_n[lo]:
            s["peak_gpu_mib"] = {n: round(r["peak_gpu_mib"], 1) for n, r in by_n.items()}
            s["peak_gpu_ratio"] = round(by_n[max(by_n)]["peak_gpu_mib"] / by_n[lo]["peak_gpu_mib"], 4)
        out[system] = s
    return out


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--pairs", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup-pairs", type=int, default=16, help="pairs in the warm-up round of each system")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mem-pairs", default="64,256,1024")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-only", action="store_true", help="skip the timing; measure memory only")
    ap.add_argument("--mem-systems", default="scan,attribution",
                    help="lens_bias systems whose memory is measured")
    ap.add_argument("--peer-memory", action="store_true", help="measure optiPfair's memory too (slow)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.mem_pairs = [int(x) for x in args.mem_pairs.split(",")]
    os.environ.setdefault("TQDM_DISABLE", "1")

    if args.memory_child:
        system, n = args.memory_child.split(":")
        emit(memory_child(system, int(n), args))
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    record = {"benchmark": "bench_attribution", "model": args.model, "device": args.device,
              "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine()}
    if not args.memory_only:
        record.update(timing(args))
    if not args.no_memory:
        print()
        systems = tuple(args.mem_systems.split(",")) + (("optipfair",) if args.peer_memory else ())
        rows = measure_memory(args, systems)
        mem = memory_summary(rows, args.mem_pairs)
        counts = sorted(args.mem_pairs)
        print(f"{'peak memory (MiB)':<38}" + "".join(f"{f'{n} pairs':>12}" for n in counts)
              + f"{f'{counts[-1]}/{counts[0]}':>12}")
        for s, m in mem.items():
            for key, label, rkey in (("peak_rss_mib", "RSS", "peak_rss_ratio"),
                                     ("peak_gpu_mib", "GPU", "peak_gpu_ratio")):
                if key in m:
                    print(f"{NAMES[s] + ' ' + label:<38}" + "".join(f"{m[key].get(n, float('nan')):>12.0f}"
                                                                   for n in counts) + f"{m[rkey]:>12.3f}")
        record.update({"memory": mem, "memory_runs": rows,
                       "memory_goal_met": {s: m["peak_rss_ratio"] <= 1.10 for s, m in mem.items()}})
    if args.json:
        emit({**record, **versions("optipfair")})


NAMES = {"scan": "lens_bias scan (actdiff, fwd only)", "attribution": "lens_bias attribution (fwd+bwd)",
         "optipfair": "optiPfair analyze_neuron_bias"}


def timing(args) -> dict:
    """The three systems side by side: warm-up, then ``args.repeats`` interleaved rounds."""
    pairs = bench_pairs(args.pairs)
    bridge = load_model(args.model, device=args.device)
    peer = peer_model(args.model, args.device)
    if not same_weights(bridge, peer[0]):
        raise SystemExit("the bridge and the optiPfair copy do not hold the same weights")
    run = runners(bridge, peer, pairs)
    warm = runners(bridge, peer, pairs[: min(args.warmup_pairs, len(pairs))])
    for s in SYSTEMS:  # one warm-up round on fewer pairs
        timed(warm[s], args.device)

    def report(r: int, times: dict) -> None:
        print(f"  repeat {r + 1}/{args.repeats}: " + "  ".join(f"{s} {times[s][-1]:.1f}s" for s in SYSTEMS),
              flush=True)

    times = interleaved(run, args.device, args.repeats, after_round=report)

    n = len(pairs)
    work = work_estimate(bridge, peer[1], pairs, args.device)
    med = {s: statistics.median(times[s]) for s in SYSTEMS}
    pps = {s: n / med[s] for s in SYSTEMS}
    ratio = {s: pps[s] / pps["optipfair"] for s in OURS}
    # the same ratio taken within each repeat, then the median: robust to load that drifts
    paired = {s: statistics.median(times["optipfair"][i] / times[s][i] for i in range(args.repeats))
              for s in OURS}
    goals = {"scan": 10.0, "attribution": 2.0}

    print()
    print(f"{args.model} on {args.device} ({torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs), "
          f"{n} pairs, median of {args.repeats} after a warm-up")
    print(f"{'system':<34} {'median s':>9} {'pairs/s':>9} {'vs optiPfair':>13} {'paired':>8} {'goal':>6}"
          f" {'GFLOP':>8} {'GFLOP/s':>8} {'work ratio':>11}")
    for s in SYSTEMS:
        extra = (f"{ratio[s]:>12.2f}x {paired[s]:>7.2f}x {goals[s]:>5.0f}x" if s in OURS
                 else f"{'1.00x':>13} {'':>8} {'':>6}")
        print(f"{NAMES[s]:<34} {med[s]:>9.2f} {pps[s]:>9.2f} {extra} {work[s]:>8.1f} {work[s] / med[s]:>8.1f}"
              f" {work['optipfair'] / work[s]:>10.2f}x")
    print("(work ratio: optiPfair's matrix-product work over the system's, the speed-up at equal FLOP/s)")
    return {
        "pairs": n, "repeats": args.repeats,
        "seconds": {s: [round(t, 4) for t in times[s]] for s in SYSTEMS},
        "median_seconds": {s: round(med[s], 4) for s in SYSTEMS},
        "pairs_per_s": {s: round(pps[s], 3) for s in SYSTEMS},
        "ratio_vs_optipfair": {s: round(ratio[s], 3) for s in OURS},
        "paired_ratio_vs_optipfair": {s: round(paired[s], 3) for s in OURS},
        "gflop": {s: round(work[s], 1) for s in SYSTEMS},
        "gflop_per_s": {s: round(work[s] / med[s], 2) for s in SYSTEMS},
        "work_ratio_vs_optipfair": {s: round(work["optipfair"] / work[s], 3) for s in OURS},
        "goals": goals, "goals_met": {s: ratio[s] >= goals[s] for s in OURS},
    }

if __name__ == "__main__":
    main()
