"""A model card (``README.md``) for a pruned model's Hugging Face folder: base model, what was removed
(in all and per layer), how, a run's before / after measurements with 95 % intervals and p values, the
command that reproduces it, limitations, and lm-evaluation-harness.
:func:`lens_bias.weights.export.write_hf` writes one without measurements; a run
(:func:`lens_bias.pipeline.record.write_record`) rewrites it with them."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from ..bridge import Bridge, model_meta, n_params, params_per_unit
from ..errors import LensBiasError
from ..masks import PruningMask
from ..measures.changes import summary_rows
from ..model.zoo import TINY, ZOO
from ..vocab import KINDS

TAGS = ("lens_bias", "bias-mitigation", "pruning")
METHOD_KEYS = ("scorer", "metric", "budget", "kind", "per_layer", "selector", "selector_chosen", "steps",
               "ablation", "max_cost_quantile", "domains", "seed")
# the RunConfig fields that are `lens-bias run` options (--per-domain for per_domain; crows is --crows-file)
RUN_OPTIONS = ("model", "pairs", "domains", "per_domain", "held_per_domain", "budget", "kind", "metric",
               "selector", "steps", "ablation", "max_cost_quantile", "budgets", "wikitext", "lambada",
               "crows", "seed", "batch_size", "dtype", "device", "device_map")
TABLE_HEADER = ("measure", "before", "after", "change", "95 % CI", "p", "unit", "within noise?")


def fmt(x) -> str:
    """A number as the card writes it, 4 significant digits (``fmt(0.0123456) == '0.01235'``);
    ``None`` as ``-``."""
    return "-" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def hub_id(name: str) -> str | None:
    """The Hugging Face Hub id of a model name (the card's ``base_model``), or None when it is not on the
    Hub (``tiny-random``, local folders, GGUF files).

    Examples:
        >>> hub_id("smollm2-135m"), hub_id("tiny-random"), hub_id("Org/Model-1B"), hub_id("./my-model")
        ('HuggingFaceTB/SmolLM2-135M-Instruct', None, 'Org/Model-1B', None)
    """
    if name in ZOO:
        return ZOO[name].hf_id
    if (name == TINY or name.count("/") != 1 or not all(name.split("/")) or name.startswith((".", "~"))
            or ".gguf" in name):
        return None
    return None if os.path.exists(name) else name


def run_command(config: dict) -> str:
    """The ``lens-bias run`` command line of a run's ``metrics["config"]`` (the options the command has).

    Examples:
        >>> run_command({"model": "tiny-random", "budget": "2%", "max_cost_quantile": None,
        ...              "budgets": ["1%", "2%"], "pairs": None, "trust_remote_code": False,
        ...              "validate_k": 3})  # doctest: +NORMALIZE_WHITESPACE
        'lens-bias run --model tiny-random --budget 2% --max-cost-quantile 1 --budgets 1%,2%
        -o runs/reproduced'
    """
    parts = ["lens-bias run"]
    for key in RUN_OPTIONS:
        v, flag = config.get(key), "--crows-file" if key == "crows" else "--" + key.replace("_", "-")
        v = 1 if key == "max_cost_quantile" and key in config and v is None else v  # None = filter off = 1
        if v is not None:
            parts.append(f"{flag} "
                         f"{shlex.quote(','.join(map(str, v)) if isinstance(v, list | tuple) else str(v))}")
    return " ".join(parts + ["--trust-remote-code"] * bool(config.get("trust_remote_code"))
                    + ["-o runs/reproduced"])


def _removed(mask: PruningMask, model: Bridge | str, metrics: dict | None) -> list[str]:
    """What was removed: counts, parameters and the per-layer table."""
    c, pr = mask.counts(), (metrics or {}).get("pruned")
    if pr is None and not isinstance(model, str):
        p = c["neurons"] * params_per_unit(model, "neurons") + c["heads"] * params_per_unit(model, "heads")
        pr = {"params": p, "params_pct": 100.0 * p / n_params(model)}
    share = f" ({pr['params']:,} parameters, {pr['params_pct']:.3f} % of the model)" if pr else ""
    rows = [f"| {la} | {n} | {h} |"
            for la, (n, h) in enumerate(zip(*map(mask.per_layer, KINDS), strict=True))]
    how = ("their outputs are replaced by their mean on neutral text, folded into biases"
           if mask.meta.get("ablation") == "mean" else
           "their weights are zeroed, or cut in a structural export")
    return ["## What was removed", "",
            f"{c['neurons']} MLP neurons and {c['heads']} attention heads{share}: {how}. Every other weight "
            "is the base model's.", "",
            "| layer | neurons removed | heads removed |", "|---|---|---|", *rows, ""]


def _method(mask: PruningMask) -> list[str]:
    """How the units were chosen: the mask's metadata."""
    items = [f"- {k}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for k in METHOD_KEYS
             if (v := mask.meta.get(k)) is not None]
    return ["## Method and budget", "",
            "lens_bias scored every MLP neuron and attention head by how much it drives the difference "
            "between the model's outputs on Black / White prompt pairs (the scorer below; `ablate` and "
            "`patch` are attribution patching) and removed the top-scoring units within the budget.", "",
            *(items or ["- (the mask records no method settings)"]), ""]


def _measured(metrics: dict | None, model_name: str, meta: dict) -> list[str]:
    """The before / after table of a run, or how to measure a folder that was not."""
    if metrics is None:
        opts = "".join(f" --{k} {shlex.quote(str(meta[k]))}" for k in ("budget", "kind", "metric")
                       if meta.get(k))
        return ["## Measurements", "",
                "**This folder was not measured.** A run measures a pruning chosen this way (bias before and "
                "after on held-out templates with 95 % intervals and p values, perplexity, CrowS-Pairs, a "
                "random control):", "",
                "```bash", f"lens-bias run --model {shlex.quote(model_name)}{opts} -o runs/measured", "```",
                "",
                "and `lens-bias measure --model path/to/this/folder` measures this folder's own bias.", ""]
    # "|logit gap|" in a Markdown table
    p, cell = metrics.get("pairs", {}), lambda x: fmt(x).replace("|", "\\|")
    nt = len(p["held_out_templates"]) if isinstance(p.get("held_out_templates"), list) else "?"
    rows = [f"| {' | '.join(cell(x) for x in r)} |" for r in summary_rows(metrics)]
    return ["## Measurements", "",
            f"Measured by `lens-bias run` on {p.get('held_out', '?')} held-out pairs ({nt} templates never "
            "used to choose the units). Each change has a 95 % bootstrap interval and a paired test; *within "
            "noise* means the interval covers 0 or p >= 0.05, so the change may be luck. Export check: "
            f"{metrics.get('export', {}).get('summary', 'not recorded')}.", "",
            f"| {' | '.join(TABLE_HEADER)} |", "|" + "---|" * len(TABLE_HEADER), *rows, ""]


def _capability(metrics: dict | None) -> str:
    """The perplexity (and LAMBADA) change, quoted for the limitations."""
    if metrics is None:
        return ("It was not measured for this folder: measure it before use (see Measurements and "
                "Evaluate it).")
    t = metrics.get("tests", {})
    out = [f"{name} went from {fmt(x['before'])} to {fmt(x['after'])} ({fmt(x[shown])} {unit}, 95 % CI "
           f"[{fmt(x[shown + '_ci'][0])}, {fmt(x[shown + '_ci'][1])}], p = {fmt(x['p'])})"
           for key, name, shown, unit in (("wikitext_ppl", "WikiText-2 perplexity", "pct", "%"),
                                          ("lambada_acc", "LAMBADA accuracy (%)", "diff", "points"))
           if (x := t.get(key)) and x.get(f"{shown}_ci")]
    kl = (f"KL from the unpruned model on neutral text: {fmt(t['kl_neutral']['after'])} nats"
          if "kl_neutral" in t else "")
    return "; ".join(out or ["No perplexity was measured in this run (no WikiText-2 file)"]
                     + [kl] * bool(kl)) + "."


def _limitations(metrics: dict | None, domains) -> list[str]:
    doms = ", ".join(domains) if isinstance(domains, list) and domains else "its bundled domains"
    return ["## Limitations", "",
            "- **The bias measure is domain-specific.** It covers the prompt domains it was scored on "
            f"({doms}: templated prompts differing only in a Black / White name) and may not transfer to "
            "other domains, wordings or tasks.",
            "- **It is not a fairness guarantee.** Less divergence on these templates does not make the "
            "model fair or safe for decisions about people.",
            f"- **Pruning changes capability.** {_capability(metrics)}",
            "- **The mask was chosen on the model's own templates** (the train split of lens_bias's "
            "templated pairs); the held-out measurements use other templates of the same kind, not "
            "independent data.", ""]


EVALUATE = """## Evaluate it

`AutoModelForCausalLM.from_pretrained("path/to/this/folder")` loads it without lens_bias. For standard \
benchmarks,
[lm-evaluation-harness](https://github.com/EleutherAI/lm-evaluation-harness) (`pip install lm-eval`) takes it:

```bash
lm_eval --model hf --model_args pretrained=path/to/this/folder --tasks lambada_openai,boolq --device cpu
```

```python
import lm_eval
from lm_eval.models.huggingface import HFLM
results = lm_eval.simple_evaluate(model=HFLM(pretrained="path/to/this/folder"), \
tasks=["lambada_openai", "boolq"])
```

lm-eval downloads every task's dataset from the Hugging Face Hub on first use (network once, or a filled \
datasets
cache with `HF_DATASETS_OFFLINE=1`). Run the same tasks on the base model to compare.

The bias measures of this card run in the same harness with no hub: lens_bias ships task configs \
that read local CrowS-Pairs and BBQ files and its knowledge probe (`pip install "lens_bias[harness]"`):

```bash
lm_eval --model hf --model_args pretrained=path/to/this/folder,dtype=float32 \\
  --include_path "$(python -m lens_bias.harness)" \\
  --tasks lens_bias_crows_black,lens_bias_bbq_race,lens_bias_knowledge --device cpu
```
"""


def model_card(mask: PruningMask, bridge_or_model_name: Bridge | str, metrics: dict | None = None,
               command: str | None = None) -> str:
    """The Markdown model card (YAML front matter first) of the model pruned by ``mask``; ``metrics``
    (a run's ``metrics.json``) adds the measurements, ``command`` the command that reproduces it
    (default: the run's, from ``metrics["config"]``, else the ``lens-bias export`` of the mask).

    Examples:
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> m = PruningMask.keep_all(b, budget="1%", kind="neurons"); m.neurons[0, :3] = False
        >>> card = model_card(m, b)
        >>> card.splitlines()[2], "3 MLP neurons and 0 attention heads" in card, "not measured" in card
        ('tags: [lens_bias, bias-mitigation, pruning]', True, True)
    """
    bridge = None if isinstance(bridge_or_model_name, str) else bridge_or_model_name
    meta = {**(model_meta(bridge) if bridge is not None else {}), **mask.meta}
    name = str(meta.get("model") or bridge_or_model_name)
    arch, base = meta.get("architecture", "unknown"), hub_id(name)
    cfg = (metrics or {}).get("config")
    command = command or (run_command(cfg) if cfg else
                          "lens-bias export --mask lens_bias_mask/mask.safetensors "
                          f"--model {shlex.quote(name)} -f hf -o pruned")
    lines = ["---", f"base_model: {base}" if base
             else f"# base_model: none ({name} is not a Hugging Face Hub model)",
             f"tags: [{', '.join(TAGS)}]", "library_name: transformers", "---", "",
             f"# {name}, pruned by lens_bias (Black / White bias mitigation)", "",
             f"Base model: `{name}`" + (f" ([{base}](https://huggingface.co/{base}))" if base else "")
             + f", architecture `{arch}`. Some MLP neurons and attention heads were removed by lens_bias "
             "(an interpretability toolkit); the mask is in `lens_bias_mask/`.", "",
             *_removed(mask, bridge if bridge is not None else name, metrics), *_method(mask),
             *_measured(metrics, name, meta), "## Reproduce", "", "```bash", command, "```", "",
             *(["The command sets the options the command line has; every setting is in the run's "
                "`metrics.json` (`config`): `lens_bias.pipeline.stages.run(RunConfig(**config), folder)` "
                "reproduces them all.", ""] * bool(cfg))]
    return "\n".join(lines + _limitations(metrics, meta.get("domains") or (cfg or {}).get("domains"))
                     + [EVALUATE])


def write_model_card(folder: str | Path, mask: PruningMask, bridge_or_model_name: Bridge | str,
                     metrics: dict | None = None, command: str | None = None) -> Path:
    """Write :func:`model_card` to ``folder/README.md`` atomically (a temporary file renamed); return
    its path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LensBiasError(f"{folder} is not a folder; write the model there first (export_hf)")
    path, tmp = folder / "README.md", folder / ".README.md.tmp"
    tmp.write_text(model_card(mask, bridge_or_model_name, metrics, command), encoding="utf-8")
    return tmp.replace(path)
