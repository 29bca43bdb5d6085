"""How much does one validation split of the train templates say? For several seeds, the train
split's templates are split again (a third for validation, as the learned mask's early stopping
does); each candidate of `--selector auto` selects on the fit templates and is measured on the
validation templates and on the 156 held-out pairs, each reduction with its 95 % interval
(templates resampled). Shows the level of the validation reading moving with the split, and
whether the candidates' order on validation agrees with held-out.

    python benchmarks/validation_splits.py OUT.json --seeds 3

SmolLM2 (or --model), the default split, 0.5 % of MLP neurons. About 2 min a seed on 2 cores.
"""

import argparse
import json
import time
from pathlib import Path

from lens_bias.attribution.per_template import template_scores
from lens_bias.measures.changes import js_reduction
from lens_bias.prompts.pairs import neutral_text
from lens_bias.prompts.splits import validation_split
from lens_bias.selection.auto import default_candidates
from lens_bias.selection.registry import SelectionInputs, select_units
from lens_bias.studies import selectors as S
from lens_bias.studies.setup import study_inputs


def main(a: argparse.Namespace) -> None:
    t0 = time.time()
    bridge, train, ev = study_inputs(a.model, None, None, 24, 26, 0, ppl_tokens=512)
    ts, cost = template_scores(bridge, train, progress=False)
    held_before = S.js_items(bridge, ev.pairs, None, 16)
    rows = []
    for seed in range(a.seeds):
        fit, val = validation_split(train, seed)
        val_before = S.js_items(bridge, val, None, 16)
        for spec in default_candidates():
            inputs = SelectionInputs(bridge, fit, a.budget, "neurons", cost, neutral_text(),
                                     template_scores=ts.restrict(fit.templates))
            m = select_units(spec, inputs).mask
            rv = js_reduction(val_before, S.js_items(bridge, val, m, 16))
            rh = js_reduction(held_before, S.js_items(bridge, ev.pairs, m, 16))
            rows.append({"seed": seed, "candidate": spec.label(), "n_val_templates": len(val.templates),
                         "validation": rv["reduction_pct"], "validation_ci": rv["reduction_ci"],
                         "held_out": rh["reduction_pct"], "held_out_ci": rh["reduction_ci"]})
            print(f"split {seed}  {spec.label():32s} validation {rv['reduction_pct']:5.1f} % "
                  f"[{rv['reduction_ci'][0]:.1f}, {rv['reduction_ci'][1]:.1f}]  "
                  f"held-out {rh['reduction_pct']:5.1f} % "
                  f"[{rh['reduction_ci'][0]:.1f}, {rh['reduction_ci'][1]:.1f}]", flush=True)
            a.out.write_text(json.dumps({"rows": rows, "seconds": round(time.time() - t0, 1)}, indent=1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--budget", default="0.5%")
    ap.add_argument("--seeds", type=int, default=3)
    main(ap.parse_args())
