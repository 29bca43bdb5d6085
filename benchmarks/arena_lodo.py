"""The arena's leave-one-domain-out record alone, for methods already measured in an arena run.

``lens-bias experiment arena --lodo`` measures every method in-domain (every measure) and then fits it
again without each domain. When the in-domain records exist already (an earlier ``arena`` run of the
same model, split and seed), this script runs only the second part, with the same functions
(:func:`lens_bias.studies.arena.leave_one_domain_out` on the same :class:`FitContext`), and writes a
result file that ``benchmarks/result_figures.py arena`` merges into that run: its ``before`` holds the
unmodified model's held-out JS and WikiText-2 perplexity (the merge checks both against the run's,
so only a run of the same set-up can take its records), and each method only ``lodo``.

    python benchmarks/arena_lodo.py OUT.json --model smollm2-135m --methods prune,prune-combined,wanda
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lens_bias.cli.common import load_options
from lens_bias.measures.changes import without_items
from lens_bias.measures.evaluation import evaluate
from lens_bias.mitigation.base import FitContext
from lens_bias.mitigation.registry import check_method
from lens_bias.studies.arena import leave_one_domain_out
from lens_bias.studies.setup import study_inputs


def main(a: argparse.Namespace) -> None:
    t0 = time.time()
    methods = [m for m in a.methods.split(",") if m]
    for m in methods:
        check_method(m)
    bridge, train, ev = study_inputs(a.model, seed=a.seed, load=load_options("auto", None, None, False))
    before = evaluate(bridge, ev, per_item=True, batch_size=a.batch_size, lambada=False, sentences=False)
    ctx = FitContext(bridge, train, a.budget, "neurons", 0.5, a.seed, a.batch_size, progress=True)
    lodo = leave_one_domain_out(ctx, methods, ev, before, a.batch_size)
    out = {"model": a.model, "budget": a.budget, "seed": a.seed, "before": without_items(before),
           "methods": {m: {"lodo": rec} for m, rec in lodo.items()}, "seconds": round(time.time() - t0, 1),
           "command": "python benchmarks/arena_lodo.py " + " ".join(a.argv)}
    Path(a.out).write_text(json.dumps(out, indent=1))
    for m, rec in lodo.items():
        if rec is None:
            print(f"{m:<16} one domain only: no leave-one-domain-out")
            continue
        js = rec["js"]
        lo, hi = (-x for x in reversed(js["pct_ci"]))
        print(f"{m:<16} LODO JS reduction {-js['pct']:.1f} % [{lo:.1f}, {hi:.1f}], p = {js['p']:.3g}")


if __name__ == "__main__":
    import sys

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="prune,prune-combined,wanda,random,leace")
    ap.add_argument("--budget", default="0.5%")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    args.argv = sys.argv[1:]
    main(args)
