"""Check attribution scores against the exact effects they estimate.

A first-order score predicts how much the target metric m (the mean over pairs of ``js`` or
``logit_gap``) drops when a unit is removed. The exact reference measures it: :func:`exact_effects`
runs one ablated forward pass per unit (:func:`lens_bias.hooks.ablation.ablate`), and
:func:`exact_patch_effects` patches the White run's activation of one unit into the Black run
(:func:`lens_bias.hooks.interventions.patch`). :func:`validate` compares the two on the top units by
|score| plus random ones, with rank and linear correlations, where the estimate fails
(:func:`sample_parts`), and the sign agreement.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..bridge import Bridge, tokenizer_of
from ..errors import LensBiasError
from ..hooks.ablation import ablate
from ..hooks.components import Component, hook_name
from ..hooks.interventions import attached, patch
from ..masks import PruningMask
from ..measures.targets import directional_only, pair_metric, sentence_gaps
from ..model.batching import check_finite, chunks, last_logits, pair_batch, widened
from ..prompts.pairs import PairSet
from ..scores import Scores
from ..vocab import KINDS, METRICS, Kind, is_sentence_metric
from .patching import aligned_suffix
from .provenance import check_scores_match


def metric_value(bridge: Bridge, pairs: PairSet, metric="js", batch_size: int = 32) -> float:
    """m = mean over pairs of the target metric, with whatever hooks are attached now."""
    if is_sentence_metric(metric):
        with torch.inference_mode():
            return sum(abs(g) for g in sentence_gaps(bridge, pairs, batch_size)) / len(pairs)
    pairs = directional_only(pairs, metric)
    tok = tokenizer_of(bridge)
    total = 0.0
    for sl in chunks(len(pairs), batch_size):
        chunk = pairs.pairs[sl]
        with torch.inference_mode():
            batch = pair_batch(bridge, chunk)
            last = widened(last_logits(bridge, batch.ids, batch.lengths))
            check_finite(last)
            total += float(pair_metric(metric, last, chunk, tok).sum())
    return total / len(pairs)


def exact_effects(bridge: Bridge, pairs: PairSet, components: Sequence[Component],
                  metric: str | Callable = "js", ablation: str = "zero", means: dict | None = None,
                  batch_size: int = 32, progress: bool = True) -> Float[Tensor, " n"]:
    """The slow reference: ablate each component alone and measure the exact reduction of m."""
    if ablation == "mean" and means is None:
        from ..hooks.capture import mean_activations
        from ..prompts.pairs import neutral_text

        means = mean_activations(bridge, neutral_text())
    base = metric_value(bridge, pairs, metric, batch_size)
    out = []
    it = tqdm(components, desc="exact ablation", leave=False) if progress else components
    for c in it:
        mask = PruningMask.keep_all(bridge)
        mask.tensor(c.kind)[c.layer, c.index] = False
        with ablate(bridge, mask, ablation, means):
            out.append(base - metric_value(bridge, pairs, metric, batch_size))
    return torch.tensor(out, dtype=torch.float64)


def exact_patch_effects(bridge: Bridge, pairs: PairSet, components: Sequence[Component],
                        metric: str | Callable = "js", batch_size: int = 16,
                        progress: bool = True) -> Float[Tensor, " n"]:
    """Exact activation patching: for each component, the White run's activation is patched into
    the Black run on the aligned suffix; returns the exact reduction of m."""
    if is_sentence_metric(metric):
        raise LensBiasError(f"metric {metric!r} has no patch estimator (sentence pairs are not aligned); "
                            "validate it with ablation")
    tok = tokenizer_of(bridge)
    pairs = directional_only(pairs, metric)

    def run(comp: Component | None) -> float:
        total = 0.0
        for sl in chunks(len(pairs), batch_size):
            chunk = pairs.pairs[sl]
            batch = pair_batch(bridge, chunk)
            n = len(chunk)
            hooks = []
            if comp is not None:
                where, src = aligned_suffix(batch, n)
                hooks = [(hook_name(comp.kind, comp.layer), patch(comp.index, where, src))]
            with attached(bridge, hooks), torch.inference_mode():
                last = widened(last_logits(bridge, batch.ids, batch.lengths))
            total += float(pair_metric(metric, last, chunk, tok).sum())
        return total / len(pairs)

    base = run(None)
    it = tqdm(components, desc="exact patching", leave=False) if progress else components
    return torch.tensor([base - run(c) for c in it], dtype=torch.float64)


def _sample_components(scores: Scores, kind: Kind, k: int, n_random: int, seed: int) -> list[Component]:
    s = scores.get(kind)
    cols = s.shape[1]
    top = torch.topk(s.abs().flatten(), min(k, s.numel())).indices.tolist()
    rest = sorted(set(range(s.numel())) - set(top))
    rng = _random.Random(seed)
    rand = rng.sample(rest, min(n_random, len(rest)))
    return [Component(kind, i // cols, i % cols) for i in top + rand]


def correlations(pred: Tensor, true: Tensor) -> tuple[float, float]:
    """(Spearman, Pearson) of ``pred`` against ``true``; NaN for both when there are two values or
    fewer or either side is constant.

    Examples:
        >>> import torch
        >>> correlations(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 4.0, 9.0]))[0]
        1.0
    """
    from scipy.stats import pearsonr, spearmanr

    if len(pred) <= 2 or float(pred.std()) == 0 or float(true.std()) == 0:
        return float("nan"), float("nan")
    return (float(spearmanr(pred.numpy(), true.numpy()).statistic),
            float(pearsonr(pred.numpy(), true.numpy()).statistic))


def _resampled(stat: Callable[[Tensor], float], n: int, n_boot: int, seed: int) -> list[float] | None:
    """``stat(indices)`` over ``n_boot`` bootstrap resamples of ``n`` units (seeded), NaNs skipped,
    sorted; None when fewer than half are left."""
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(n_boot):
        v = stat(torch.randint(n, (n,), generator=g))
        if v == v:  # not NaN
            vals.append(v)
    return sorted(vals) if len(vals) >= n_boot // 2 else None


def _percentile_95(vals: list[float]) -> tuple[float, float]:
    return (vals[int(0.025 * len(vals))], vals[max(int(0.975 * len(vals)) - 1, 0)])


def spearman_ci(pred: Tensor, ref: Tensor, n_boot: int = 1000, seed: int = 0) -> tuple[float, float] | None:
    """95 % percentile bootstrap interval of the Spearman correlation, resampling the units
    (``None`` with fewer than four units; resamples without variation are skipped).

    Examples:
        >>> import torch
        >>> lo, hi = spearman_ci(torch.arange(20.0), torch.arange(20.0) + torch.randn(20) * 0.1)
        >>> 0.9 < lo <= hi <= 1.0
        True
    """
    if len(pred) < 4:
        return None
    vals = _resampled(lambda i: correlations(pred[i], ref[i])[0], len(pred), n_boot, seed)
    return None if vals is None else _percentile_95(vals)


def spearman_difference(pred_a: Float[Tensor, " n"], pred_b: Float[Tensor, " n"], ref: Float[Tensor, " n"],
                        n_boot: int = 1000, seed: int = 0) -> dict:
    """Does scorer b order the units better than scorer a? Both predict the same units' ``ref``
    effects; the difference of their Spearman correlations ``b - a`` with a 95 % bootstrap interval
    and a two-sided bootstrap p, the units resampled together for both (so the comparison is paired:
    two scorers can each have a wide interval and still differ beyond noise). ``{"diff", "ci", "p",
    "n"}``; ``ci`` and ``p`` are None with fewer than four units.

    Examples:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> ref = torch.arange(30.0)
        >>> good, bad = ref + torch.randn(30) * 0.5, ref + torch.randn(30) * 20
        >>> d = spearman_difference(bad, good, ref)
        >>> d["diff"] > 0 and d["ci"][0] > 0 and d["p"] < 0.05
        True
        >>> spearman_difference(good, good, ref)["ci"]
        (0.0, 0.0)
    """
    def diff_of(i=slice(None)) -> float:
        return correlations(pred_b[i], ref[i])[0] - correlations(pred_a[i], ref[i])[0]

    out = {"diff": diff_of(), "ci": None, "p": None, "n": len(ref)}
    vals = _resampled(diff_of, len(ref), n_boot, seed) if len(ref) >= 4 else None
    if vals is not None:
        below = sum(v <= 0 for v in vals) / len(vals)
        above = sum(v >= 0 for v in vals) / len(vals)
        out.update(ci=_percentile_95(vals), p=min(1.0, 2 * min(below, above)))
    return out


def reading(r: dict, kind: str) -> str:
    """One line a user can read from a :func:`validate` result of one kind: the rank correlation
    with its interval and what it can say at this sample size, and how many signs are right.

    Examples:
        >>> line = reading({"spearman": 0.22, "spearman_ci": (-0.3, 0.7), "n": 18, "sign_agreement": 0.89,
        ...                 "spearman_top": 0.1, "spearman_random": 0.9}, "heads")
        >>> line.split(": ")[1], line.split("; ")[-1]
        ('Spearman 0.22 [-0.30, 0.70] on 18 units', '16 of 18 signs right')
        >>> reading({"spearman": 0.52, "spearman_ci": (0.12, 0.82), "n": 36, "sign_agreement": 31 / 36},
        ...         "heads").split(": ")[2]
        'an order beyond chance, on too few units to say how good; 31 of 36 signs right'
    """
    ci, n = r.get("spearman_ci"), r["n"]
    signs = f"{round(r['sign_agreement'] * n)} of {n} signs right"
    if r["spearman"] != r["spearman"]:  # NaN
        return f"{kind}: no rank correlation on {n} units (constant values); {signs}"
    head = f"{kind}: Spearman {r['spearman']:.2f}" + ("" if ci is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]")
    if ci is None or (ci[1] - ci[0] > 0.6 and ci[0] <= 0):
        verdict = "too few, or too alike, for a rank correlation to say much"
    elif ci[1] - ci[0] > 0.6:
        verdict = "an order beyond chance, on too few units to say how good"
    elif ci[0] > 0.7:
        verdict = "the order of the effects is right"
    else:
        verdict = "the order is partly right"
    top, rand = r.get("spearman_top"), r.get("spearman_random")
    if top is not None and rand is not None and top == top and rand == rand and rand - top > 0.2:
        verdict += f" (small effects ordered well, {rand:.2f}; the strongest less so, {top:.2f})"
    return f"{head} on {n} units: {verdict}; {signs}"


def sample_parts(pred: Float[Tensor, " n"], ref: Float[Tensor, " n"], n_top: int | None) -> dict:
    """Where an estimate fails on a sample made of ``n_top`` top units followed by random ones:
    the Spearman of each part (None for both when the split is unknown; NaN for a part of two
    units or fewer) and the fraction of units whose prediction and reference have the same sign.

    Examples:
        >>> import torch
        >>> sample_parts(torch.tensor([3.0, 2.0, 1.0, -1.0]), torch.tensor([3.0, 1.0, 2.0, 1.0]), None)
        {'spearman_top': None, 'spearman_random': None, 'sign_agreement': 0.75}
    """
    top_sp, rand_sp = (None, None) if n_top is None else \
        (correlations(pred[:n_top], ref[:n_top])[0], correlations(pred[n_top:], ref[n_top:])[0])
    same = float((torch.sign(pred) == torch.sign(ref)).double().mean()) if len(pred) else float("nan")
    return {"spearman_top": top_sp, "spearman_random": rand_sp, "sign_agreement": same}


def validate(bridge: Bridge, pairs: PairSet, scores: Scores, k: int = 200, n_random: int = 50, seed: int = 0,
             kinds: Sequence[Kind] = KINDS, batch_size: int = 32, progress: bool = True,
             components: dict[str, Sequence[Component]] | None = None,
             allow_other_pairs: bool = False) -> dict:
    """Compare predicted scores with exact ablation (or exact patching for ``patch`` scores) on the
    top-``k`` components by |score| plus ``n_random`` random ones, per kind -- or on the given
    ``components`` per kind (to compare two scorers on the same sample).

    Returns ``{kind: {"spearman", "spearman_ci", "pearson", "spearman_abs", "pearson_abs",
    "spearman_top", "spearman_random", "sign_agreement", "n", "components", "predicted", "exact",
    "reading"}}`` (``spearman_ci``: :func:`spearman_ci`; ``reading``: :func:`reading`); the ``_abs``
    pair correlates magnitudes (|predicted| vs |exact|), which is what GradDrop scores are compared
    on (their main correlation is with |exact| too). ``spearman_top`` / ``spearman_random`` split
    the sample into its top-k and its random part (None for a given ``components`` sample): a first-
    order estimate is usually close to exact on small effects and loses rank order among the large
    ones. ``sign_agreement`` is the fraction of components whose predicted and exact change have
    the same sign.

    ``pairs`` and ``bridge`` must be those the scores were computed on
    (:func:`lens_bias.attribution.provenance.check_scores_match`; a :class:`~lens_bias.errors.ProvenanceError`
    otherwise); ``allow_other_pairs=True`` compares anyway, and each kind's result then records the
    mismatch as ``provenance_warning`` (None when the pairs and model match).
    """
    warning = check_scores_match(scores, pairs, bridge, allow_other_pairs, "validate",
                                 "allow_other_pairs=True")
    st = scores.settings
    metric = st.get("metric") if st.get("metric") in METRICS else "js"
    out = {}
    for kind in kinds:
        if scores.get(kind) is None:
            continue
        comps = list(components[kind]) if components and kind in components else \
            _sample_components(scores, kind, k, n_random, seed)
        pred = torch.tensor([float(scores.get(kind)[c.layer, c.index]) for c in comps])
        if st.get("estimator") == "patch":
            true = exact_patch_effects(bridge, pairs, comps, metric, batch_size, progress)
        else:
            true = exact_effects(bridge, pairs, comps, metric, st.get("ablation", "zero"), None, batch_size,
                                 progress)
        magnitude = bool(st.get("graddrop"))  # GradDrop scores are magnitudes: compare with |exact|
        ref = true.abs() if magnitude else true
        sp, pe = correlations(pred, ref)
        sp_abs, pe_abs = correlations(pred.abs(), true.abs())
        # where the estimate fails: among the top-k (large effects, where first order is weakest)
        # or among the random units (small effects); the split is unknown for a given sample
        n_top = None if components and kind in components else min(k, scores.get(kind).numel())
        out[kind] = {
            "spearman": sp, "pearson": pe, "spearman_abs": sp_abs, "pearson_abs": pe_abs,
            "spearman_ci": spearman_ci(pred, ref, seed=seed),
            **sample_parts(pred, ref, n_top),
            "compared_with": "|exact|" if magnitude else "exact",
            "n": len(comps), "k": k, "n_random": n_random,
            "components": [[c.layer, c.index] for c in comps],
            "predicted": pred.tolist(), "exact": true.tolist(), "provenance_warning": warning,
        }
        out[kind]["reading"] = reading(out[kind], kind)
    return out
