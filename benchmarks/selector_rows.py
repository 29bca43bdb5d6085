"""The rows of `lens-bias experiment selectors`, written to JSON after every row, so that a run
stopped early keeps every row it finished (the CLI writes once, at the end).

    python benchmarks/selector_rows.py OUT.json --methods oneshot,iterative,learned,stable,auto \
        --lodo oneshot,stable,iterative --budgets 0.5%
    python benchmarks/selector_rows.py OUT.json --methods oneshot,stable,iterative --budgets 0.25%,1%
    python benchmarks/selector_rows.py OUT.json --model gemma3-270m --methods oneshot,stable,iterative

The default split (144 train / 156 held-out pairs; ``--per-domain 48``: 288 train pairs from the
same templates, the same held-out pairs), capability quantile 0.5, the capability filter
of the ablation pruned with (zero), CrowS-Pairs and 4,096 WikiText-2 tokens. For every budget,
every method gets a neurons row (in the order given; leave-one-domain-out too for ``--lodo``),
and one-shot also the heads row at the parameters of its neurons (one-shot and stable pick the
same heads). The file has the CLI's result.json layout (`lens_bias.studies.selectors.selector_rows`
makes its table).
"""

import argparse
import json
import time
from pathlib import Path

from lens_bias.attribution.per_template import template_scores
from lens_bias.measures.evaluation import evaluate
from lens_bias.prompts.pairs import neutral_text
from lens_bias.selection.registry import SelectorSpec
from lens_bias.studies import selectors as S
from lens_bias.studies.setup import study_inputs

SEED, BATCH = 0, 16


def main(a: argparse.Namespace) -> None:
    t0 = time.time()
    budgets, methods, lodo = a.budgets.split(","), a.methods.split(","), set(filter(None, a.lodo.split(",")))
    bridge, train, ev = study_inputs(a.model, None, None, a.per_domain, 26, SEED, ppl_tokens=4096)
    ts, cost = template_scores(bridge, train, progress=False)
    before = evaluate(bridge, ev, None, crows=True, lambada=False, batch_size=BATCH, per_item=True)
    train_before = S.js_items(bridge, train, None, BATCH)
    base_dom = {d: S.js_items(bridge, ev.pairs.filter(domains=[d]), None, BATCH) for d in ev.pairs.domains}
    res = {"rows": [], "before": {k: v for k, v in before.items() if k != "per_item"}, "model": a.model,
           "held_out_pairs": S.held_out_pairs(before),
           "settings": {"budgets": budgets, "lodo_budgets": budgets, "lodo_selectors": sorted(lodo),
                        "seed": SEED, "per_domain": a.per_domain, "n_train": len(train),
                        "n_held_out": len(ev.pairs), "n_train_templates": len(train.templates),
                        "n_held_out_templates": len(ev.pairs.templates)}}
    total = sum(p.numel() for p in bridge.parameters())

    def row(spec, budget, kind, with_lodo):
        res["rows"].append(S.selector_row(bridge, ts, train, ev, spec, budget, kind, cost, neutral_text(),
                                          before, train_before, base_dom, with_lodo, SEED, BATCH))
        S.add_versus(res)
        res["seconds"] = round(time.time() - t0, 1)
        a.out.write_text(json.dumps(res, indent=1, default=float))
        print(spec.selector, kind, budget, res["seconds"], "s", flush=True)

    for budget in budgets:
        for m in methods:
            spec = SelectorSpec(m, 0.5)
            row(spec, budget, "neurons", m in lodo)
            if m == "oneshot":
                row(spec, f"{100 * res['rows'][-1]['params'] / total:.4f}%params", "heads", False)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--budgets", default="0.5%")
    ap.add_argument("--per-domain", type=int, default=24, help="train pairs a domain (the held-out 156 stay)")
    ap.add_argument("--methods", default="oneshot,stable,iterative,learned,auto")
    ap.add_argument("--lodo", default="", help="methods also measured leave-one-domain-out")
    main(ap.parse_args())
