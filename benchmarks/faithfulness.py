"""Faithfulness curves (#33): each scorer's top k neurons removed together, the exact held-out mean
JS measured, for k on a grid; the curve's normalized area (the mean fraction of the bias removed).

    python benchmarks/faithfulness.py OUT.json                                   # SmolLM2, CPU
    python benchmarks/faithfulness.py OUT.json --scorers ablate,ig:joint:2,ig:layer:2,actdiff,random
    python benchmarks/faithfulness.py OUT.json --model gemma3-270m

Scores on the run's train split (24 pairs a domain), measures on its held-out split (26 a domain,
templates never scored). ``ig:path:m`` is integrated gradients (``lens_bias.attribution.integrated``);
the layer path costs m x 2 x n_layers passes a batch (a GPU job on real models). Every scorer's
units pass the run's capability filter (Fisher cost on neutral text, ``--max-cost-quantile``, 0.5;
1 = off), so the comparison isolates the ranking. Every scorer after the first is compared with the
first at each k, paired by template (points more of the bias removed, interval, p).
"""

import argparse
import json
import time
from pathlib import Path

from common import emit

from lens_bias import load_model
from lens_bias.attribution.patching import capability_cost
from lens_bias.attribution.scorers import score
from lens_bias.prompts.pairs import neutral_text
from lens_bias.prompts.splits import split_pairs
from lens_bias.studies.faithfulness import faithfulness_curves


def scorer_kwargs(spec: str) -> tuple[str, dict]:
    """``ablate`` / ``actdiff`` / ``random`` / ``ig:path:m`` as (scorer, its keyword arguments)."""
    if spec.startswith("ig:"):
        _, path, m = spec.split(":")
        return "ig", {"ig_path": path, "ig_steps": int(m), "components": ("neurons",)}
    if spec in ("ablate", "patch"):
        return spec, {"components": ("neurons",)}
    return spec, {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--scorers", default="ablate,ig:joint:2,actdiff,random")
    ap.add_argument("--ks", default="10,30,100,230,460")
    ap.add_argument("--max-cost-quantile", type=float, default=0.5)
    ap.add_argument("--per-domain", type=int, default=24, help="train pairs a domain (the run's: 24)")
    ap.add_argument("--device", default=None)
    a = ap.parse_args()
    bridge = load_model(a.model, device=a.device)
    train, held = split_pairs(None, None, a.per_domain, 26, 0.25, 0)
    scorers, seconds = {}, {}
    for spec in a.scorers.split(","):
        name, kw = scorer_kwargs(spec)
        t = time.time()
        scorers[spec] = score(bridge, train, name, progress=True, **kw) if name in ("ablate", "patch", "ig") \
            else score(bridge, train, name)
        seconds[spec] = round(time.time() - t, 1)
    q = None if a.max_cost_quantile >= 1 else a.max_cost_quantile
    cost = capability_cost(bridge, neutral_text(), ablation="zero") if q is not None else None
    res = faithfulness_curves(bridge, held, scorers, ks=[int(k) for k in a.ks.split(",")], cost=cost,
                              max_cost_quantile=q)
    res.update(model=a.model, n_train=len(train), score_seconds=seconds)
    a.out.write_text(json.dumps(res, indent=1))
    print(f"{'scorer':16s} " + " ".join(f"k={k:>5d}" for k in res["settings"]["ks"]) + "   area")
    for spec in scorers:
        cells = [r for r in res["rows"] if r["scorer"] == spec]
        print(f"{spec:16s} " + " ".join(f"{r['reduction_pct']:7.1f}{'~' if r['within_noise'] else ' '}"
                                        for r in cells) + f"  {res['area'][spec]:.3f}")
    ref = res["settings"]["reference"]
    print(f"points more than {ref} at the same k (paired by template; ~ within noise)")
    for spec in list(scorers)[1:]:
        cells = [r["vs_first"] for r in res["rows"] if r["scorer"] == spec]
        print(f"{spec:16s} " + " ".join(f"{v['more_pts']:+7.1f}{'~' if v['within_noise'] else ' '}"
                                        for v in cells))
    emit({k: res[k] for k in ("model", "area", "before", "score_seconds")})


if __name__ == "__main__":
    main()
