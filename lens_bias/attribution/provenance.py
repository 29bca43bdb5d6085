"""Which pairs and which model a scores file was computed on, and the check that it is used with them.

A :class:`~lens_bias.scores.Scores` estimates, per unit, how much a bias metric measured on some
pairs would drop; correlating it with exact effects measured on other pairs, or selecting units
from it for another model, compares unrelated numbers. Every scorer records :func:`provenance` in
the scores' settings: a fingerprint of the pairs (:func:`pairs_fingerprint`), their count and
domains, the model's name and shape. :func:`check_scores_match` compares a scores file with the
pairs and model it is about to be used with; ``lens-bias validate`` and ``lens-bias prune`` call it.

The model is identified by its name (what :func:`lens_bias.load_model` was given) and its shape
(architecture, layers, MLP width, heads). :func:`lens_bias.bridge.weights_version` is not recorded:
it is made of torch's in-process version counters, which start again at 0 on every load, so it
cannot tell two models apart once written to a file.
"""

from __future__ import annotations

import hashlib
import json

from ..bridge import Bridge, model_meta
from ..errors import ProvenanceError
from ..model.chat import chat_enabled
from ..prompts.pairs import PairSet
from ..scores import Scores

HASH_CHARS = 16
SHAPE_KEYS = ("architecture", "n_layers", "d_mlp", "n_heads")
MODEL_FIX = "use the model the scores were computed on (--model)"
PAIRS_FIX = ("use the pairs the scores were computed on (the scan's --pairs, --domain, --per-domain, "
             "--split, --seed and --chat-template)")


def pairs_fingerprint(pairs: PairSet) -> str:
    """A short stable hash of a pair set: the first 16 hex digits of the sha256 of its pairs' ids,
    Black and White texts and pos/neg words, sorted by id (the order of the pairs does not matter;
    a changed id, text or word does).

    Examples:
        >>> from lens_bias import build_pairs
        >>> ps = build_pairs(["hiring"]).sample(3)
        >>> fp = pairs_fingerprint(ps)
        >>> len(fp), fp == pairs_fingerprint(PairSet(list(reversed(ps.pairs))))
        (16, True)
        >>> fp == pairs_fingerprint(ps[:2])
        False
    """
    rows = sorted([p.id, p.black, p.white, list(p.pos), list(p.neg)] for p in pairs)
    blob = json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:HASH_CHARS]


def provenance(bridge: Bridge, pairs: PairSet, **extra) -> dict:
    """What a scorer records about its inputs: ``pairs_hash`` (:func:`pairs_fingerprint`),
    ``n_pairs``, ``domains``, ``model`` (the name :func:`lens_bias.load_model` was given) and
    ``model_shape`` (architecture, n_layers, d_mlp, n_heads), ``chat_template`` (whether the
    prompts went through the chat template, :func:`lens_bias.model.chat.chat_enabled`: the same pairs
    are other token ids with it), plus ``extra`` (e.g. the ``split`` and ``seed`` the pairs were
    drawn with).

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> p = provenance(load_model("tiny-random", device="cpu"), build_pairs(["hiring"]).sample(2), seed=0)
        >>> sorted(p)
        ['chat_template', 'domains', 'model', 'model_shape', 'n_pairs', 'pairs_hash', 'seed']
        >>> p["model"], p["model_shape"]["n_layers"], p["n_pairs"], p["domains"], p["chat_template"]
        ('tiny-random', 2, 2, ['hiring'], False)
    """
    meta = model_meta(bridge)
    return {"pairs_hash": pairs_fingerprint(pairs), "n_pairs": len(pairs), "domains": pairs.domains,
            "model": meta["model"], "model_shape": {k: meta[k] for k in SHAPE_KEYS},
            "chat_template": chat_enabled(bridge), **extra}


def check_scores_match(scores: Scores, pairs: PairSet | None = None, bridge: Bridge | None = None,
                       allow_other: bool = False, what: str = "validate",
                       flag: str = "--allow-other-pairs") -> str | None:
    """Check that ``scores`` are used with the pairs (when ``pairs`` is given) and the model (when
    ``bridge`` is given) they were computed on. ``what`` names the caller in messages, ``flag`` the
    option that accepts a mismatch.

    * the same pairs and model: returns None;
    * other pairs (another fingerprint), the same pairs in the other prompt mode (the scores
      recorded ``chat_template`` and ``bridge`` has the other, :func:`lens_bias.model.chat.chat_enabled`)
      or another model name or architecture: raises
      :class:`~lens_bias.errors.ProvenanceError` naming both sides, or with ``allow_other=True``
      returns that message as a warning (for the caller to print and record);
    * scores of another shape (layers, MLP width, heads) never fit the model: always an error;
    * a scores file written before the pairs were recorded: returns a warning that the pairs are
      unknown (the model is still checked).

    Scores for the ``logit_gap`` metric are computed on the pairs with pos/neg words only, so those
    are what ``pairs`` is compared by.

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> b, ps = load_model("tiny-random", device="cpu"), build_pairs(["hiring"]).sample(4)
        >>> s = Scores(None, None, {}, provenance(b, ps))
        >>> check_scores_match(s, ps, b) is None
        True
        >>> check_scores_match(s, ps[:2], b)  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        lens_bias.errors.ProvenanceError: the scores were computed on 4 pairs (hash ..., domains hiring) but
            validate was given 2 other pairs (hash ..., domains hiring); ...
        >>> check_scores_match(Scores(None, None, {}, {}), ps)  # doctest: +ELLIPSIS
        'provenance unknown: the scores file records no pairs hash ...'
    """
    st = scores.settings
    model = _model_problem(scores, bridge, what) if bridge is not None else None
    other, notes = None, []
    if pairs is not None:
        if st.get("metric") == "logit_gap":
            pairs = pairs.filter(directional=True)
        if not st.get("pairs_hash"):
            notes.append(f"provenance unknown: the scores file records no pairs hash (written before "
                         f"lens_bias recorded it), so {what} cannot check that its {len(pairs)} pairs are "
                         f"those the scores were computed on; run lens-bias scan again to record them")
        elif st["pairs_hash"] != (got := pairs_fingerprint(pairs)):
            other = (f"the scores were computed on {st.get('n_pairs', '?')} pairs (hash {st['pairs_hash']}, "
                     f"domains {_domains(st.get('domains'))}) but {what} was given {len(pairs)} other pairs "
                     f"(hash {got}, domains {_domains(pairs.domains)})")
        if other is None and bridge is not None and (chat := _chat_problem(st, bridge, what)):
            other = chat
    problems = [(m, fix) for m, fix in ((model, MODEL_FIX), (other, PAIRS_FIX)) if m]
    if problems:
        message = "; ".join(m for m, _ in problems)
        if not allow_other:
            fix = " and ".join(f for _, f in problems)
            raise ProvenanceError(f"{message}; {fix}, or pass {flag} to {what} anyway")
        notes.insert(0, f"{message} ({flag} given: compared anyway)")
    return "; ".join(notes) or None


def _model_problem(scores: Scores, bridge: Bridge, what: str) -> str | None:
    """Another model name or architecture (returned, overridable) or None; another shape (raised)."""
    meta, st = model_meta(bridge), scores.settings
    want = {k: meta[k] for k in SHAPE_KEYS}
    have = dict(st.get("model_shape") or {})
    for kind, cols in (("neurons", "d_mlp"), ("heads", "n_heads")):  # old files: the tensors' shape
        t = scores.get(kind)
        if t is not None:
            have.setdefault("n_layers", t.shape[0])
            have.setdefault(cols, t.shape[1])
    bad = [k for k in SHAPE_KEYS[1:] if k in have and have[k] != want[k]]
    if bad:
        raise ProvenanceError(f"the scores were computed on model {st.get('model', '?')!r} ({_shape(have)}) "
                              f"but {what} was given model {meta['model']!r} ({_shape(want)}): the scores do "
                              f"not fit it; score this model with lens-bias scan --model {meta['model']}")
    named, name = st.get("model"), meta["model"]
    other_name = named not in (None, "?") and name != "?" and named != name
    other_arch = have.get("architecture") not in (None, want["architecture"])
    if other_name or other_arch:
        return (f"the scores were computed on model {named!r} ({_shape(have)}) but {what} was given model "
                f"{name!r} ({_shape(want)})")
    return None


def _chat_problem(settings: dict, bridge: Bridge, what: str) -> str | None:
    """The scores' prompt mode against ``bridge``'s, when the scores recorded one (else None)."""
    if "chat_template" not in settings or bool(settings["chat_template"]) == chat_enabled(bridge):
        return None
    mode = {True: "through the chat template", False: "as raw text"}
    return (f"the scores were computed on the pairs' prompts {mode[bool(settings['chat_template'])]} but "
            f"{what} runs them {mode[chat_enabled(bridge)]}")


def _shape(m: dict) -> str:
    """``LlamaForCausalLM, 2 layers, d_mlp 128, 4 heads`` (what is known of it)."""
    parts = [str(m["architecture"])] if m.get("architecture") else []
    parts += [f"{m['n_layers']} layers"] if "n_layers" in m else []
    parts += [f"d_mlp {m['d_mlp']}"] if "d_mlp" in m else []
    parts += [f"{m['n_heads']} heads"] if "n_heads" in m else []
    return ", ".join(parts) or "shape unknown"


def _domains(domains) -> str:
    return ", ".join(domains) if domains else "?"
