"""Which selection generalizes from the train wording to held-out templates? (SmolLM2, CPU)

Scores the bundled train split per template (24 and N pairs a domain), selects 0.5 % of MLP
neurons with one-shot (with and without a filter keeping units whose score is positive in 80 % of
the domains: stability selection with one resample of every template), stability selection (with
and without that filter) and,
optionally, the learned mask, at two capability quantiles, and measures each mask's JS reduction on
the 156 held-out pairs (95 % interval, templates resampled), on the 144 default train pairs, and
its WikiText-2 perplexity change. Prints one JSON line per mask; the held-out measures only (the
full comparison with CrowS-Pairs and seqgap is `lens-bias experiment selectors`).

    python benchmarks/generalize_probe.py [--big 96] [--quantiles 0.5,0.25] [--learned]
"""

from __future__ import annotations

import argparse
import json
import time

from lens_bias import load_model
from lens_bias.attribution.patching import capability_cost
from lens_bias.attribution.per_template import attribute_templates
from lens_bias.measures.changes import js_reduction
from lens_bias.measures.evaluation import EvalSet, evaluate
from lens_bias.prompts.corpora import load_wikitext, shared_data_file
from lens_bias.prompts.pairs import neutral_text
from lens_bias.prompts.splits import split_pairs
from lens_bias.selection.registry import SelectionInputs, SelectorSpec, select_units
from lens_bias.selection.topk import random_mask


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--big", type=int, default=96, help="train pairs a domain of the larger scoring set")
    ap.add_argument("--quantiles", default="0.5,0.25")
    ap.add_argument("--learned", action="store_true", help="also the learned mask (minutes on a CPU)")
    args = ap.parse_args()
    bridge = load_model(args.model)
    train24, held = split_pairs(per_domain=24)
    big = split_pairs(per_domain=args.big)[0]
    wt = shared_data_file("wikitext2_test.txt")
    ev = EvalSet(held, wikitext=load_wikitext(wt) if wt else [], ppl_tokens=4096)
    cost = capability_cost(bridge, neutral_text(), ablation="zero")
    scored = {str(n): (p, attribute_templates(bridge, p, components=("neurons",), progress=False))
              for n, p in ((24, train24), (args.big, big))}

    def measure(mask):
        return (evaluate(bridge, ev, mask, per_item=True, lambada=False, sentences=False),
                evaluate(bridge, EvalSet(train24), mask, per_item=True, lambada=False, sentences=False))

    base, base_train = measure(None)
    variants = [(n, q, SelectorSpec(s, q, o)) for q in map(float, args.quantiles.split(",")) for n in scored
                for s, o in (("oneshot", {}),
                             ("stable", {"n_resamples": 1, "fraction": 1.0, "min_sign_share": 0.8}),
                             ("stable", {}), ("stable", {"min_sign_share": 0.8}))]
    if args.learned:
        variants.append(("24", 0.5, SelectorSpec("learned", 0.5)))
    for n, _q, spec in [*variants, ("-", None, None)]:
        t0 = time.time()
        if spec is None:
            mask = random_mask(bridge, "0.5%", "neurons")
        else:
            pairs, ts = scored[n]
            inputs = SelectionInputs(bridge, pairs, "0.5%", "neurons", cost, neutral_text(),
                                     template_scores=ts)
            mask = select_units(spec, inputs).mask
        seconds = time.time() - t0
        after, after_train = measure(mask)
        ppl = 100 * (after["wikitext_ppl"] / base["wikitext_ppl"] - 1) if wt else None
        print(json.dumps({"selection": "random" if spec is None else spec.label(),
                          "train_pairs_per_domain": n, "held_out": js_reduction(base, after),
                          "train": js_reduction(base_train, after_train),
                          "wikitext_ppl_change_pct": ppl, "select_seconds": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
