"""Is a selector beyond noise of one-shot? Each selector's mask on the same 156 held-out pairs,
compared with the first one's pair by pair (sign-flip test by template:
`lens_bias.studies.selectors.versus`), without the slow measures of `experiment selectors`.

    python benchmarks/held_out_paired.py OUT.json --methods oneshot,iterative,stable --budgets 0.5%,1%

SmolLM2 (or --model), the default split, capability quantile 0.5 (zero-ablation filter).
"""

import argparse
import json
import time
from pathlib import Path

from lens_bias.attribution.per_template import template_scores
from lens_bias.measures.changes import js_reduction
from lens_bias.prompts.pairs import neutral_text
from lens_bias.selection.registry import SelectionInputs, SelectorSpec, select_units
from lens_bias.studies import selectors as S
from lens_bias.studies.setup import study_inputs

SEED, BATCH = 0, 16


def main(a: argparse.Namespace) -> None:
    t0 = time.time()
    bridge, train, ev = study_inputs(a.model, None, None, a.per_domain, 26, SEED, ppl_tokens=512)
    ts, cost = template_scores(bridge, train, progress=False)
    before = S.js_items(bridge, ev.pairs, None, BATCH)
    res = {"model": a.model, "held_out_pairs": S.held_out_pairs(before), "rows": [],
           "settings": {"seed": SEED, "per_domain": a.per_domain}}
    for budget in a.budgets.split(","):
        for m in a.methods.split(","):
            spec = SelectorSpec(m, 0.5)
            inputs = SelectionInputs(bridge, train, budget, "neurons", cost, neutral_text(),
                                     template_scores=ts, seed=SEED, batch_size=BATCH)
            mask = select_units(spec, inputs).mask
            after = S.js_items(bridge, ev.pairs, mask, BATCH)
            res["rows"].append({"label": spec.label(), "budget": budget, "kind": "neurons",
                                "held_out": js_reduction(before, after, seed=SEED),
                                "held_out_js": [float(x) for x in after["per_item"]["js"]]})
            r = S.add_versus(res)["rows"][-1]
            print(f"{budget:6s} {spec.label():32s} held-out {S.format_cell(r['held_out'])}  "
                  f"vs first {S.format_cell(r['vs_first'])}", flush=True)
            res["seconds"] = round(time.time() - t0, 1)
            a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--methods", default="oneshot,iterative,stable")
    ap.add_argument("--budgets", default="0.5%")
    ap.add_argument("--per-domain", type=int, default=24)
    main(ap.parse_args())
