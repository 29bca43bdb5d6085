"""Where one evaluation of a pruning goes: the inner loop of every pruning curve and experiment.

`evaluation.evaluate` measures a (simulated) pruning on the held-out pairs, WikiText-2 perplexity
and KL from the unpruned model on neutral text. This script times one evaluation of a random
0.5 % neuron mask the way `lens-bias experiment curve` runs it (its 36 held-out pairs, 2,048
WikiText tokens), part by part, as medians of ``--repeats`` after a warm-up, and the KL both ways:
with the unpruned model's log-probs kept (`EvalSet.kl_reference`, what `evaluate` does) and
recomputed (two passes). It also counts each part's tokens and the share of the forward's matrix
work that is the unembedding (vocabulary x d_model per token with full logits).

    python benchmarks/bench_evaluate.py [--model gemma3-270m] [--threads 2] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse

import torch
from common import emit, median_seconds

from lens_bias import load_model
from lens_bias.bridge import tokenizer_of
from lens_bias.hooks.ablation import ablate
from lens_bias.measures.capability import kl_from_reference, leading_tokens, perplexity
from lens_bias.measures.evaluation import evaluate, standard_evalset
from lens_bias.measures.metrics import measure
from lens_bias.prompts.pairs import load_pairs
from lens_bias.prompts.splits import template_split
from lens_bias.selection.topk import random_mask


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--per-domain", type=int, default=24)
    ap.add_argument("--ppl-tokens", type=int, default=2048)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bridge = load_model(args.model, device="cpu")
    _, held = template_split(load_pairs(per_domain=args.per_domain))
    ev = standard_evalset(held, ppl_tokens=args.ppl_tokens)
    mask = random_mask(bridge, "0.5%", "neurons", seed=0)

    def ctx():
        return ablate(bridge, mask)

    def pairs():
        with ctx():
            measure(bridge, ev.pairs, progress=False)

    def ppl():
        with ctx():
            perplexity(bridge, ev.wikitext, max_tokens=ev.ppl_tokens, progress=False)

    parts = {
        "held-out pairs": pairs,
        "perplexity": ppl,
        "KL, reference kept": lambda: kl_from_reference(bridge, ev.neutral, ctx,
                                                        reference=ev.kl_reference(bridge)),
        "KL, two passes": lambda: kl_from_reference(bridge, ev.neutral, ctx),
        "evaluate (all of it)": lambda: evaluate(bridge, ev, mask, lambada=False),
    }
    times = {name: median_seconds(fn, args.repeats) for name, fn in parts.items()}
    tok = tokenizer_of(bridge)
    cfg = bridge.cfg
    body = sum(p.numel() for n, p in bridge.original_model.named_parameters()
               if "embed" not in n and "lm_head" not in n)
    unembed = cfg.d_vocab * cfg.d_model
    record = {
        "model": args.model, "threads": torch.get_num_threads(), "repeats": args.repeats,
        "seconds": {k: round(v, 2) for k, v in times.items()},
        "tokens": {"held-out prompts": 2 * len(ev.pairs),
                   "perplexity": len(leading_tokens(tok, ev.wikitext, ev.ppl_tokens)),
                   "neutral (KL)": sum(x.shape[0] for x in ev.kl_reference(bridge).logprobs)},
        "unembedding_share_of_full_logit_forward": round(unembed / (unembed + body), 3),
        "kl_speedup": round(times["KL, two passes"] / times["KL, reference kept"], 2),
    }
    for name, t in times.items():
        print(f"{name:<24} {t:7.2f} s")
    print(f"tokens: {record['tokens']}; the unembedding is "
          f"{100 * record['unembedding_share_of_full_logit_forward']:.0f} % "
          f"of a full-logit forward's matrix work; keeping the KL reference: {record['kl_speedup']}x")
    if args.json:
        emit(record)


if __name__ == "__main__":
    main()
