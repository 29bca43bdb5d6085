"""The rows of `lens-bias experiment selectors` at one budget, written to JSON after every row, so
that a run stopped early keeps every row it finished (the CLI writes once, at the end).

    python benchmarks/selector_rows.py OUT.json oneshot,learned,stable,auto,iterative oneshot,stable

Arguments: the output file, the selectors (in order), the selectors also measured leave-one-domain-
out. SmolLM2, the default split (144 train / 156 held-out pairs), 0.5 % of MLP neurons, capability
quantile 0.5; one-shot and stable also get the heads row at equal parameters. The file has the
CLI's result.json layout (`lens_bias.selector_study.selector_rows` makes its table).
"""

import json
import sys
import time
from pathlib import Path

from lens_bias import selector_study as S
from lens_bias.cli_experiment import _setup, _template_scores
from lens_bias.experiments import evaluate
from lens_bias.model_selection import SelectorSpec
from lens_bias.pairs import neutral_text

BUDGET, SEED, BATCH = "0.5%", 0, 16


def main(out: Path, methods: list[str], lodo_methods: list[str]) -> None:
    t0 = time.time()
    bridge, train, ev = _setup("smollm2-135m", None, None, 24, 26, SEED, {}, ppl_tokens=4096)
    ts, cost = _template_scores(bridge, train, True)
    before = evaluate(bridge, ev, None, crows=True, lambada=False, batch_size=BATCH, per_item=True)
    train_before = S._js_items(bridge, train, None, BATCH)
    base_dom = {d: S._js_items(bridge, ev.pairs.filter(domains=[d]), None, BATCH) for d in ev.pairs.domains}
    res = {"rows": [], "before": {k: v for k, v in before.items() if k != "per_item"}, "model": "smollm2-135m",
           "settings": {"budgets": [BUDGET], "lodo_budgets": [BUDGET], "seed": SEED, "n_train": len(train),
                        "n_held_out": len(ev.pairs), "n_train_templates": len(train.templates),
                        "n_held_out_templates": len(ev.pairs.templates)}}
    total = sum(p.numel() for p in bridge.parameters())
    def row(spec, budget, kind, lodo):
        res["rows"].append(S._row(bridge, ts, train, ev, spec, budget, kind, cost, neutral_text(), before,
                                  train_before, base_dom, lodo, SEED, BATCH))
        res["seconds"] = round(time.time() - t0, 1)
        out.write_text(json.dumps(res, indent=1, default=float))
        print(spec.selector, kind, res["seconds"], "s", flush=True)

    for m in methods:
        spec = SelectorSpec(m, 0.5)
        row(spec, BUDGET, "neurons", m in lodo_methods)
        if m in ("oneshot", "stable"):  # heads at the parameters of the neuron mask
            row(spec, f"{100 * res['rows'][-1]['params'] / total:.4f}%params", "heads", False)

if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3].split(",") if len(sys.argv) > 3 else [])
