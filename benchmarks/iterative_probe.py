"""Does re-attributing between pruning rounds help? (SmolLM2, CPU)

One-shot selection vs :func:`lens_bias.selection.topk.select_iterative` with 2 and 4 rounds, all with
the Fisher capability filter (quantile 0.5) and zero ablation, at the given budgets of MLP neurons.
Held-out mean JS, |logit gap| and WikiText-2 perplexity with ablation hooks. Table + one JSON line.

    python benchmarks/iterative_probe.py [--budgets 0.5%,1%] [--steps 1,2,4] [--per-domain 24]
"""

from __future__ import annotations

import argparse
import time

from common import emit

from lens_bias import load_model
from lens_bias.attribution.patching import attribute, capability_cost
from lens_bias.measures.evaluation import evaluate, standard_evalset
from lens_bias.prompts.pairs import load_pairs, neutral_text
from lens_bias.prompts.splits import template_split
from lens_bias.selection.topk import select_iterative


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--budgets", default="0.5%,1%")
    ap.add_argument("--steps", default="1,2,4")
    ap.add_argument("--per-domain", type=int, default=24)
    ap.add_argument("--quantile", type=float, default=0.5)
    args = ap.parse_args()
    t0 = time.time()
    bridge = load_model(args.model)
    train, held = template_split(load_pairs(per_domain=args.per_domain))
    ev = standard_evalset(held, ppl_tokens=2048)
    ev.lambada, ev.crows = [], []
    base = evaluate(bridge, ev, None)
    cost = capability_cost(bridge, neutral_text())
    first = attribute(bridge, train, components=("neurons",), progress=False)
    rows = []
    for b in args.budgets.split(","):
        for steps in [int(x) for x in args.steps.split(",")]:
            t = time.time()
            mask, _ = select_iterative(bridge, train, b, steps=steps, cost=cost,
                                       max_cost_quantile=args.quantile, first=first, progress=False)
            r = evaluate(bridge, ev, mask)
            rows.append({"budget": b, "steps": steps, "js": r["js"], "abs_logit_gap": r["abs_logit_gap"],
                         "ppl": r.get("wikitext_ppl"), "kl_neutral": r.get("kl_neutral"),
                         "select_seconds": round(time.time() - t, 1)})
            print(f"... {b} steps={steps} done at {time.time() - t0:.0f} s", flush=True)

    def pct(a, b):
        return 100 * (b - a) / a if a and b is not None else float("nan")

    print(f"{'budget':7} {'steps':>5} {'JS':>9} {'change':>8} {'|gap| change':>12} {'ppl':>7} {'change':>8}")
    print(f"{'-':7} {'-':>5} {base['js']:9.5f} {'':>8} {'':>12} "
          f"{base.get('wikitext_ppl') or float('nan'):7.2f}")
    for r in rows:
        print(f"{r['budget']:7} {r['steps']:5d} {r['js']:9.5f} {pct(base['js'], r['js']):+7.1f}% "
              f"{pct(base['abs_logit_gap'], r['abs_logit_gap']):+11.1f}% {r['ppl'] or float('nan'):7.2f} "
              f"{pct(base.get('wikitext_ppl'), r['ppl']):+7.1f}%")
    emit({"model": args.model, "before": {k: base.get(k) for k in ("js", "abs_logit_gap", "wikitext_ppl")},
          "rows": rows, "seconds": round(time.time() - t0)})


if __name__ == "__main__":
    main()
