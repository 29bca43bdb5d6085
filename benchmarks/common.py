"""What the benchmarks share: synchronised and interleaved timing, peak GPU memory, the JSON record
they print, the import of TransformerLens where ``datasets`` cannot be imported, the Llama shapes,
and random Llamas fed through a word-level tokenizer whose word ``t<i>`` is token ``i``.

The benchmarks run as ``python benchmarks/<name>.py``; Python puts the script's folder first on
``sys.path``, so they import this module as ``common``.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

# Llama shapes of real models (random weights are built in them; nothing is downloaded)
LLAMA32_1B_SHAPE = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)
LLAMA3_8B_SHAPE = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)
LLAMA_70B_SHAPE = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                       num_attention_heads=64, num_key_value_heads=8, vocab_size=128256)


# ----------------------------------------------------------------------------- environment


def import_transformer_lens() -> str:
    """Make ``import transformer_lens`` work where ``datasets`` cannot be imported: TransformerLens
    imports it at import time for its dataset helpers (unused here), so empty stand-ins take its
    place. Returns what the record says: ``"datasets"``, or ``"stub (<error>)"``."""
    try:
        import datasets  # noqa: F401

        return "datasets"
    except Exception as e:  # noqa: BLE001 - ImportError, or a datasets too new for the pyarrow there
        reason = f"{type(e).__name__}: {str(e)[:200]}"

        def load_dataset(*args, **kwargs):
            raise ImportError(f"datasets is stubbed out by the benchmark ({reason})")

        for name, attrs in {"datasets": {"load_dataset": load_dataset},
                            "datasets.arrow_dataset": {"Dataset": type("Dataset", (), {})},
                            "datasets.iterable_dataset": {"IterableDataset": type("IterableDataset", (), {})},
                            "datasets.load": {"load_dataset": load_dataset}}.items():
            mod = types.ModuleType(name)
            mod.__dict__.update(attrs)
            sys.modules[name] = mod
        return f"stub ({reason})"


def versions(*extra: str) -> dict:
    """The installed versions of torch, transformers, TransformerLens and the distributions
    ``extra`` (None where absent), keyed by the name with ``-`` written ``_``."""
    out = {}
    for pkg in ("torch", "transformers", "transformer-lens", *extra):
        try:
            out[pkg.replace("-", "_")] = version(pkg)
        except PackageNotFoundError:
            out[pkg.replace("-", "_")] = None
    return out


def emit(record: dict, out: str | Path | None = None, indent: int | None = None) -> None:
    """Print ``record`` as one JSON line; with ``out``, write it there too (that line, or indented
    by ``indent``), its folder created if needed."""
    line = json.dumps(record, default=str)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text((line if indent is None else json.dumps(record, indent=indent, default=str)) + "\n")
    print(line, flush=True)


def proc_status_kib(pid: int | str = "self") -> dict[str, int]:
    """The ``kB`` fields of ``/proc/<pid>/status`` (VmRSS, VmHWM, ...) in KiB; empty where unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[key] = int(parts[0])
    return out


# ----------------------------------------------------------------------------- timing


def _devices(devices: str | Iterable[str]) -> list[str]:
    return [devices] if isinstance(devices, str) else list(dict.fromkeys(devices))


def sync(devices: str | Iterable[str]) -> None:
    """Wait for the work queued on each CUDA device of ``devices`` (a name or several)."""
    for d in _devices(devices):
        if d.startswith("cuda"):
            torch.cuda.synchronize(d)


def timed(fn: Callable[[], object], devices: str | Iterable[str]) -> float:
    """Seconds of one call of ``fn``, synchronised on ``devices`` before and after."""
    sync(devices)
    t0 = time.perf_counter()
    fn()
    sync(devices)
    return time.perf_counter() - t0


def interleaved(systems: dict[str, Callable[[], object]], devices: str | Iterable[str], repeats: int,
                warmup: int = 0,
                after_round: Callable[[int, dict], None] | None = None) -> dict[str, list[float]]:
    """Seconds of each system's calls, side by side: ``warmup`` rounds (not kept), then ``repeats``
    rounds, each call :func:`timed`; the order rotates by one each round so no system always runs
    first. ``after_round(r, times)`` is called after round ``r``."""
    names = list(systems)
    for _ in range(warmup):
        for k in names:
            timed(systems[k], devices)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for k in names[r % len(names):] + names[: r % len(names)]:
            times[k].append(timed(systems[k], devices))
        if after_round is not None:
            after_round(r, times)
    return times


def median_ms(times: dict[str, list[float]], ndigits: int | None = 2) -> dict[str, float]:
    """The median of each list of seconds, in ms (rounded to ``ndigits``; None: not rounded)."""
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return med if ndigits is None else {k: round(v, ndigits) for k, v in med.items()}


def rounded_ms(times: dict[str, list[float]]) -> dict[str, list[float]]:
    """Every time of :func:`interleaved`, in ms to two decimals (for the record)."""
    return {k: [round(x * 1e3, 2) for x in v] for k, v in times.items()}


def interleaved_ms(systems: dict[str, Callable[[], object]], devices: str | Iterable[str], repeats: int,
                   warmup: int = 0) -> tuple[dict[str, float], dict[str, list[float]]]:
    """:func:`interleaved`, reported as the median ms of each system and all its times in ms."""
    times = interleaved(systems, devices, repeats, warmup)
    return median_ms(times), rounded_ms(times)


def median_seconds(fn: Callable[[], object], repeats: int, devices: str | Iterable[str] = "cpu",
                   warmup: int = 1) -> float:
    """The median seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
    return statistics.median(interleaved({"fn": fn}, devices, repeats, warmup)["fn"])


def peak_mib(fn: Callable[[], object], devices: str | Iterable[str]) -> dict[str, float]:
    """The peak GPU memory (MiB) of each CUDA device of ``devices`` while ``fn`` runs (empty
    without CUDA devices)."""
    cuda = [d for d in _devices(devices) if d.startswith("cuda")]
    sync(devices)
    for d in cuda:
        torch.cuda.reset_peak_memory_stats(d)
    fn()
    sync(devices)
    return {d: round(torch.cuda.max_memory_allocated(d) / 2**20, 1) for d in cuda}


def rel_error(ref: torch.Tensor, x: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in float64 on the CPU."""
    ref, x = ref.double().cpu(), x.double().cpu()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))


# ----------------------------------------------------------------------------- random models and inputs


def new_llama(cfg, device: str | torch.device, dtype: torch.dtype):
    """``LlamaForCausalLM(cfg)`` built straight on ``device`` in ``dtype`` (``"meta"``: no memory)."""
    from transformers import LlamaForCausalLM

    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)


def build_models(shape: dict, device: str, dtype: torch.dtype, seed: int = 0):
    """The plain HF Llama of ``shape`` with random weights, and a twin that shares its weight tensors
    (the one a bridge wraps: TransformerLens rewires the modules of the model it is given)."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(**shape, max_position_embeddings=8192, tie_word_embeddings=False, bos_token_id=1,
                      eos_token_id=2, pad_token_id=0, architectures=["LlamaForCausalLM"])
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    plain = new_llama(cfg, device, dtype)
    twin = new_llama(copy.deepcopy(cfg), "meta", dtype)
    twin.load_state_dict(plain.state_dict(), assign=True, strict=True)
    for name, buf in plain.named_buffers():  # non-persistent buffers (rotary inv_freq)
        mod, _, leaf = name.rpartition(".")
        twin.get_submodule(mod).register_buffer(leaf, buf.clone(), persistent=False)
    return plain.eval(), twin.eval()


def word_tokenizer(vocab_size: int):
    """Word ``t<i>`` is token ``i`` for i >= 3; ``<pad>``, ``<bos>``, ``<eos>`` are 0, 1, 2 (special
    tokens are matched anywhere in the text, so their names must not be prefixes of words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, **{f"t{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<pad>")
    fast.init_kwargs["name_or_path"] = "word-ids"  # in memory only: TransformerLens must not reload it
    fast.init_kwargs["add_bos_token"] = True
    return fast


def random_pairs(n: int, seq: int, vocab: int, seed: int = 0):
    """n pairs of ``seq`` tokens (BOS + seq-1 random words of :func:`word_tokenizer`) that differ in
    the token at position 2."""
    from lens_bias.prompts.pairs import ContrastivePair, PairSet

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, seq - 1), generator=g)
    swap = torch.randint(3, vocab, (n,), generator=g)
    swap = torch.where(swap == ids[:, 1], 3 + (swap - 2) % (vocab - 3), swap)
    out = []
    for i in range(n):
        b = ids[i].tolist()
        w = list(b)
        w[1] = int(swap[i])
        out.append(ContrastivePair(id=f"r{i}", domain="general", template="random",
                                   black=" ".join(f"t{x}" for x in b), white=" ".join(f"t{x}" for x in w)))
    return PairSet(out)
