"""What a pruned unit should output: zero, its mean, or a learned constant (optimal ablation)?

One mask (the run's default: iterative selection of 0.5 % of MLP neurons under the zero-ablation
capability filter, on the default 144 train pairs), measured three ways on the 156 held-out pairs,
CrowS-Pairs and 4,096 WikiText-2 tokens:

* ``zero``: the pruned neurons output 0 (what `lens-bias run` exports);
* ``mean``: their mean over the bundled neutral text;
* ``fitted``: constants learned by `lens_bias.weights.optimal_ablation.fit_constants` (KL to the unpruned
  model) on the neutral lines the evaluation's KL does not use.

Every measure has its interval and test against the unpruned model (`evaluation_changes`);
held-out JS (`js_reduction`) and WikiText-2 perplexity are also compared with zero ablation's,
pair by pair and window by window. Neither the
held-out pairs, CrowS-Pairs nor WikiText-2 is seen by the selection or the fit.

    python benchmarks/optimal_ablation.py OUT.json [--selector iterative] [--budget 0.5%] [--steps 100]
        [--per-domain 24] [--model smollm2-135m]
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

from lens_bias.attribution.per_template import template_scores
from lens_bias.hooks.capture import mean_activations
from lens_bias.measures.changes import evaluation_changes, js_reduction
from lens_bias.measures.evaluation import evaluate
from lens_bias.prompts.pairs import neutral_text
from lens_bias.selection.registry import SelectionInputs, SelectorSpec, select_units
from lens_bias.studies.setup import study_inputs
from lens_bias.weights.optimal_ablation import fit_constants

SEED, BATCH = 0, 16
SHOWN = ("js", "abs_logit_gap", "seqgap", "crows_black_rate", "crows_race_color_rate", "wikitext_ppl")


def main(a: argparse.Namespace) -> None:
    t0 = time.time()
    bridge, train, ev = study_inputs(a.model, None, None, a.per_domain, 26, SEED, ppl_tokens=4096)
    ts, cost = template_scores(bridge, train, progress=False)
    inputs = SelectionInputs(bridge, train, a.budget, "neurons", cost, scores=ts.scores(), template_scores=ts,
                             seed=SEED, batch_size=BATCH, progress=True)
    mask = select_units(SelectorSpec(a.selector, 0.5), inputs).mask
    seen = set(ev.neutral or ())
    fit_texts = [t for t in neutral_text() if t not in seen]
    t1 = time.time()
    fitted, info = fit_constants(bridge, mask, fit_texts, steps=a.steps, lr=a.lr, seed=SEED)
    fit_s = time.time() - t1
    ways = {"zero": ("zero", None), "mean": ("mean", mean_activations(bridge, neutral_text())),
            "fitted": ("mean", fitted)}
    before = evaluate(bridge, ev, None, crows=True, lambada=False, batch_size=BATCH, per_item=True)
    res = {"model": a.model, "selector": a.selector, "budget": a.budget,
           "n_neurons": mask.counts()["neurons"], "per_domain": a.per_domain, "n_train_pairs": len(train),
           "fit": {**{k: v for k, v in info.items() if k != "losses"}, "steps": a.steps, "lr": a.lr,
                   "n_texts": len(fit_texts), "seconds": round(fit_s, 1), "losses": info["losses"]},
           "rows": []}
    after = {}
    for name, (mode, consts) in ways.items():
        after[name] = evaluate(bridge, ev, mask, mode, consts, crows=True, lambada=False, batch_size=BATCH,
                               per_item=True)
        ch = evaluation_changes(before, after[name], seed=SEED)
        row = {"ablation": name, "kl_neutral": after[name].get("kl_neutral"),
               **{k: dataclasses.asdict(ch[k]) for k in SHOWN if k in ch},
               "vs_zero": None if name == "zero" else js_reduction(after["zero"], after[name], seed=SEED),
               "vs_zero_ppl": None if name == "zero" else dataclasses.asdict(
                   evaluation_changes(after["zero"], after[name], seed=SEED)["wikitext_ppl"])}
        res["rows"].append(row)
        print(name, {k: (round(row[k]["pct"], 1), row[k]["pct_ci"], row[k]["p"]) for k in SHOWN if k in row},
              "vs zero:", row["vs_zero"] and (round(row["vs_zero"]["reduction_pct"], 1), row["vs_zero"]["p"],
                                              round(row["vs_zero_ppl"]["pct"], 2), row["vs_zero_ppl"]["p"]),
              flush=True)
        res["seconds"] = round(time.time() - t0, 1)
        a.out.write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--selector", default="iterative")
    ap.add_argument("--budget", default="0.5%")
    ap.add_argument("--per-domain", type=int, default=24, help="train pairs a domain (the held-out 156 stay)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.01)
    main(ap.parse_args())
