"""Which selection rule removes bias without breaking the model? (SmolLM2, CPU)

Scores neurons by first-order attribution (JS, `ablate`) on the bundled train split, then selects
0.5 % of MLP neurons under several capability filters and ablation modes, and measures held-out
mean JS and WikiText-2 perplexity with ablation hooks. Prints a table and one JSON line.

    python benchmarks/selection_probe.py [--model smollm2-135m] [--budget 0.5%] [--per-domain 24]
"""

from __future__ import annotations

import argparse
import time

from common import emit

from lens_bias import load_model
from lens_bias.attribution.patching import attribute, capability_cost
from lens_bias.hooks.capture import mean_activations
from lens_bias.measures.evaluation import EvalSet, evaluate
from lens_bias.prompts.corpora import load_wikitext, shared_data_file
from lens_bias.prompts.pairs import load_pairs, neutral_text
from lens_bias.prompts.splits import template_split
from lens_bias.selection.topk import random_mask, select


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--budget", default="0.5%")
    ap.add_argument("--per-domain", type=int, default=24)
    ap.add_argument("--modes", default="zero,mean")
    ap.add_argument("--quantiles", default="0.5,0.25")
    args = ap.parse_args()
    t0 = time.time()
    bridge = load_model(args.model)
    train, held = template_split(load_pairs(per_domain=args.per_domain))
    wt = shared_data_file("wikitext2_test.txt")
    ev = EvalSet(held, wikitext=load_wikitext(wt) if wt else [], ppl_tokens=2048)
    neutral = neutral_text()
    rows = []
    base = evaluate(bridge, ev, None)
    rows.append({"mode": "-", "filter": "unpruned", "q": None, "js": base["js"],
                 "ppl": base.get("wikitext_ppl")})
    for mode in args.modes.split(","):
        means = mean_activations(bridge, neutral) if mode == "mean" else None
        scores = attribute(bridge, train, ablation=mode, means=means, progress=False)
        r = evaluate(bridge, ev, random_mask(bridge, args.budget, "neurons"), mode, means)
        rows.append({"mode": mode, "filter": "random", "q": None, "js": r["js"],
                     "ppl": r.get("wikitext_ppl")})
        r = evaluate(bridge, ev, select(scores, args.budget, bridge=bridge), mode, means)
        rows.append({"mode": mode, "filter": "none", "q": None, "js": r["js"], "ppl": r.get("wikitext_ppl")})
        for est in ("first_order", "fisher"):
            cost = capability_cost(bridge, neutral, ablation=mode, means=means, estimator=est)
            for q in [float(x) for x in args.quantiles.split(",")]:
                mask = select(scores, args.budget, bridge=bridge, cost=cost, max_cost_quantile=q)
                r = evaluate(bridge, ev, mask, mode, means)
                rows.append({"mode": mode, "filter": est, "q": q, "js": r["js"], "ppl": r.get("wikitext_ppl"),
                             "layer0": mask.per_layer("neurons")[0]})
        print(f"... {mode} done at {time.time() - t0:.0f} s", flush=True)
    print(f"{'mode':6} {'filter':12} {'q':>5} {'held-out JS':>12} {'change':>8} {'ppl':>8} {'change':>8}")
    for r in rows:
        dj = 100 * (r["js"] - base["js"]) / base["js"]
        dp = 100 * (r["ppl"] - base["wikitext_ppl"]) / base["wikitext_ppl"] if r["ppl"] else float("nan")
        print(f"{r['mode']:6} {r['filter']:12} {r['q'] if r['q'] is not None else '-':>5} {r['js']:12.5f} "
              f"{dj:+7.1f}% {r['ppl'] or float('nan'):8.2f} {dp:+7.1f}%")
    emit({"model": args.model, "budget": args.budget, "rows": rows, "seconds": round(time.time() - t0)})


if __name__ == "__main__":
    main()
