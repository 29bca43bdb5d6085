"""How well do the attribution estimators predict exact ablation / patching on a real model?

Compares, on the bundled train split of SmolLM2 (or --model):
  * ``ablate`` zero, plain AtP vs AtP* GradDrop, on one shared sample (top-k of each + random),
    against exact zero ablation (GradDrop is a magnitude: compared with |exact|, and plain AtP's
    magnitude too, so the two are on equal terms);
  * ``ablate`` mean (ablation to the mean activation on neutral text) against exact mean ablation;
  * ``patch`` against exact activation patching (White activations into the Black run);
  * integrated gradients (``--ig joint:2,layer:4``: path and points of each configuration) on the
    zero-ablation study's shared sample, against the same exact effects (``--only zero`` runs it).

Each Spearman also gets a 95 % bootstrap interval over the sampled units
(``lens_bias.attribution.validation.spearman_ci``).

Prints a table and one JSON line; ``--out FILE`` keeps the per-component detail.

    python benchmarks/validation_study.py --domains finance,hiring,general --per-domain 4 --k 60 --n-random 30
    python benchmarks/validation_study.py --per-domain 1 --only zero --ig joint:2,layer:2,layer:4
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from common import emit

from lens_bias import load_model
from lens_bias.attribution.integrated import integrated_gradients
from lens_bias.attribution.patching import attribute
from lens_bias.attribution.validation import (
    correlations,
    sample_parts,
    spearman_ci,
    spearman_difference,
    validate,
)
from lens_bias.hooks.components import Component
from lens_bias.prompts.pairs import load_pairs
from lens_bias.prompts.splits import template_split


def shared_sample(kind: str, scores: list, k: int, n_random: int, seed: int) -> tuple[list[Component], int]:
    """Top-k by |score| of each scorer, plus random others (seeded), without repeats; and how many
    of them are random (the last ones). ``validate`` draws such a sample for one scorer; this one
    is shared by several, so their exact effects are computed once."""
    shape = scores[0].get(kind).shape
    chosen: list[int] = []
    for s in scores:
        for i in torch.topk(s.get(kind).abs().flatten(), min(k, s.get(kind).numel())).indices.tolist():
            if i not in chosen:
                chosen.append(i)
    rest = sorted(set(range(shape[0] * shape[1])) - set(chosen))
    rand = random.Random(seed).sample(rest, min(n_random, len(rest)))
    return [Component(kind, i // shape[1], i % shape[1]) for i in chosen + rand], len(rand)


def ig_rows(bridge, train, configs: str, sample: dict, drawn: dict, exact: dict, atp: dict, times: dict,
            detail: dict) -> list:
    """Each IG configuration (``path:points``) scored on the shared sample against its exact effects,
    and against AtP's predictions ``atp`` on the same units (the paired Spearman difference)."""
    rows = []
    for spec in [c for c in configs.split(",") if c]:
        path, m = spec.split(":")
        t = time.time()
        s = integrated_gradients(bridge, train, steps=int(m), path=path, progress=True)
        times[f"ig_{path}_{m}"] = time.time() - t
        res = {}
        for kind in sample:
            pred = torch.tensor([float(s.get(kind)[c.layer, c.index]) for c in sample[kind]],
                                dtype=torch.float64)
            true = torch.tensor(exact[kind], dtype=torch.float64)
            sp, pe = correlations(pred, true)
            spa, pea = correlations(pred.abs(), true.abs())
            plain = torch.tensor(atp[kind], dtype=torch.float64)
            res[kind] = {"n": len(pred), "compared_with": "exact", "spearman": sp, "pearson": pe,
                         "spearman_abs": spa, "pearson_abs": pea, "spearman_ci": spearman_ci(pred, true),
                         "vs_atp": spearman_difference(plain, pred, true),
                         "predicted": pred.tolist(), **sample_parts(pred, true, len(pred) - drawn[kind][1])}
        detail[f"ig_{path}_{m}"] = res
        rows.append((f"ig {path}, m = {m}", summary(res)))
    return rows


def _rounded(v):
    if isinstance(v, float):
        return round(v, 3)
    return [round(x, 3) for x in v] if isinstance(v, (list, tuple)) else v


def summary(res: dict) -> dict:
    return {kind: {x: _rounded(r[x])
                   for x in ("n", "compared_with", "spearman", "pearson", "spearman_abs", "pearson_abs",
                             "spearman_top", "spearman_random", "sign_agreement", "spearman_ci", "vs_atp")
                 if x in r}
            for kind, r in res.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--per-domain", type=int, default=2)
    ap.add_argument("--domains", default=None, help="comma-separated bundled domains (default: all six)")
    ap.add_argument("--k", type=int, default=60)
    ap.add_argument("--n-random", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="zero,mean,patch", help="which studies to run")
    ap.add_argument("--ig", default="", help="IG configurations path:points, comma-separated (e.g. layer:4)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    bridge = load_model(args.model)
    ps = load_pairs(domains=args.domains.split(",") if args.domains else None, per_domain=args.per_domain,
                    seed=args.seed)
    train, _ = template_split(ps, seed=args.seed)
    kinds = ("neurons", "heads")
    rows, detail, times = [], {}, {}
    todo = args.only.split(",")

    if "zero" in todo:
        t = time.time()
        plain = attribute(bridge, train, progress=True)
        times["atp"] = time.time() - t
        t = time.time()
        gd = attribute(bridge, train, graddrop=True, progress=True)
        times["atp_graddrop"] = time.time() - t
        drawn = {kind: shared_sample(kind, [plain, gd], args.k, args.n_random, args.seed) for kind in kinds}
        sample = {kind: comps for kind, (comps, _) in drawn.items()}
        t = time.time()
        r_plain = validate(bridge, train, plain, components=sample)
        times["exact_zero"] = time.time() - t
        # the exact effects are the same: score GradDrop on them without re-running
        r_gd = {}
        for kind in kinds:
            pred = torch.tensor([float(gd.get(kind)[c.layer, c.index]) for c in sample[kind]])
            true = torch.tensor(r_plain[kind]["exact"])
            sp, pe = correlations(pred, true.abs())
            r_gd[kind] = {"n": len(pred), "compared_with": "|exact|", "spearman": sp, "pearson": pe,
                          "spearman_abs": sp, "pearson_abs": pe, "predicted": pred.tolist(),
                          "spearman_ci": spearman_ci(pred, true.abs()),
                          # against AtP's magnitudes, on |exact| too
                          "vs_atp": spearman_difference(torch.tensor(r_plain[kind]["predicted"]).abs(), pred,
                                                        true.abs())}
            n_top = len(pred) - drawn[kind][1]  # the shared sample ends with its random units
            r_gd[kind].update(sample_parts(pred, true.abs(), n_top))
            r_plain[kind].update(sample_parts(torch.tensor(r_plain[kind]["predicted"]), true, n_top))
        detail["ablate_zero"], detail["ablate_zero_graddrop"] = r_plain, r_gd
        rows += [("ablate zero (AtP)", summary(r_plain)), ("ablate zero (AtP* GradDrop)", summary(r_gd))]
        rows += ig_rows(bridge, train, args.ig, sample, drawn, {k: r_plain[k]["exact"] for k in kinds},
                        {k: r_plain[k]["predicted"] for k in kinds}, times, detail)

    studies = (("mean", "ablate_mean", "ablate mean (AtP)", {"ablation": "mean"}),
               ("patch", "patch", "patch (AtP)", {"estimator": "patch"}))
    for study, key, label, settings in studies:
        if study not in todo:
            continue
        t = time.time()
        s = attribute(bridge, train, progress=True, **settings)
        r = validate(bridge, train, s, k=args.k, n_random=args.n_random, seed=args.seed)
        times[f"{key}_total"] = time.time() - t
        detail[key] = r
        rows.append((label, summary(r)))

    print(f"\n{args.model}, {len(train)} train pairs, top-{args.k} + {args.n_random} random per kind")
    print(f"{'setting':30s} {'kind':8s} {'n':>4s} {'vs':8s} {'Spearman':>9s} {'Pearson':>8s} "
          f"{'Sp |.|':>7s} {'Pe |.|':>7s} {'Sp top':>7s} {'Sp rand':>7s} {'sign':>7s}")
    for name, res in rows:
        for kind, r in res.items():
            print(f"{name:30s} {kind:8s} {r['n']:4d} {r['compared_with']:8s} {r['spearman']:9.3f} "
                  f"{r['pearson']:8.3f} {r['spearman_abs']:7.3f} {r['pearson_abs']:7.3f} "
                  f"{r['spearman_top']:7.3f} {r['spearman_random']:7.3f} {r['sign_agreement']:7.3f}"
                  f"  {r.get('spearman_ci', '')}"
                  + (f"  vs AtP {r['vs_atp']['diff']:+.3f} {_rounded(r['vs_atp']['ci'])} p={r['vs_atp']['p']}"
                     if r.get("vs_atp") else ""))
    result = {"model": args.model, "n_pairs": len(train), "k": args.k, "n_random": args.n_random,
              "results": {name: res for name, res in rows},
              "seconds": {k: round(v, 1) for k, v in times.items()}}
    emit(result)
    if args.out:
        args.out.write_text(json.dumps({**result, "detail": detail}))


if __name__ == "__main__":
    main()
