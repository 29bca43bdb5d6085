"""The whole ``lens-bias run`` on a model of a real shape, stage by stage (issue #21, item 4).

Builds a ``LlamaForCausalLM`` of a real shape with random weights (bf16 by default; speed does not
depend on the values) and SmolLM2-135M-Instruct's real tokenizer (vocab 49152, so the vocabulary
of the model is 49152 too), saves it with ``save_pretrained`` (sharded safetensors, tokenizer
included) into ``WORK/model``, then runs

    lens-bias run --model WORK/model --out WORK/run [--wikitext ... --crows-file ...] EXTRA...

as a child process and measures, while it runs:

* the wall clock, and each stage's seconds (``timings_s`` of ``WORK/run/metrics.json``; also the
  times between the ``[lens-bias] <stage> ...`` lines the run prints, which exist even when the run
  fails and writes no metrics.json);
* the peak GPU memory (``nvidia-smi`` every 0.5 s, all GPUs summed, minus what was used before the
  run; overall and per stage) and, with the default launcher, torch's own peak
  (``max_memory_allocated`` / ``max_memory_reserved``) overall and per stage;
* the peak host memory of the child (VmHWM from /proc, polled; psutil RSS as a fallback; the
  child's own ``ru_maxrss`` with the default launcher), overall and per stage (RSS samples);
* the size of the export (``WORK/run/model``) against the source checkpoint.

Shapes (``--shape``):

* ``llama-3.2-1b``: hidden 2048, 16 layers, 32 heads / 8 KV heads, intermediate 8192, tied embeddings;
* ``llama-3-8b``: hidden 4096, 32 layers, 32 heads / 8 KV heads, intermediate 14336, untied;
* ``tiny``: hidden 64, 2 layers, 4 heads / 2 KV heads, intermediate 256, tied (a CPU smoke test
  of this script; the real 49152 vocabulary is kept).

Usage (arguments after ``--`` go to ``lens-bias run`` unchanged)::

    python benchmarks/bench_run_gpu.py --shape llama-3-8b --tokenizer .tok/smollm2 \\
        --work /tmp/brg8b --out $OUT/run_8b.json -- --dtype bfloat16

The child is started with this process's working directory and environment, so the
``lens_bias`` it imports is the one this process would import from there (the working
directory first). By default it is ``python -c <launcher>``, which calls ``lens_bias.cli.main``'s
``app`` and records torch's peak memory per stage; ``--cli "lens-bias"`` (any command line, split
like a shell would) runs that instead. When ``datasets`` cannot be imported (TransformerLens
imports it at import time; a carried ``datasets`` may need a newer pyarrow than the image has),
the launcher puts empty stand-ins in its place (``common.import_transformer_lens``, as the other
benchmarks do) and records so.

Capability data: ``--data DIR`` (default: ``.tok/data`` of this checkout when it exists) passes
``--wikitext DIR/wikitext2_test.txt`` and ``--crows-file DIR/crows_pairs_anonymized.csv`` (and
LAMBADA, BBQ's ``bbq_race_ethnicity.jsonl`` and BOLD's ``bold_race_prompts.json`` when present)
unless the extra arguments name them; without them lens_bias looks in ``../shared/data``, which a
GPU machine does not have. ``--data none`` passes nothing.

The checkpoint is reused when ``WORK/model/bench_shape.json`` matches the shape, seed and dtype
(``--rebuild`` forces a new one). Prints a table, then one JSON line; ``--out FILE`` writes the
JSON there too. A failed run (non-zero exit) still reports what exists: the stderr tail, the stage
times seen, whatever metrics.json holds. The exit status is the run's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import (
    LLAMA3_8B_SHAPE,
    LLAMA32_1B_SHAPE,
    emit,
    new_llama,
    proc_status_kib,
    versions,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _run_shape(shape: dict, tied: bool) -> dict:
    """``shape`` without its vocabulary (the tokenizer's is used), with Llama 3's rope_theta."""
    return {**{k: v for k, v in shape.items() if k != "vocab_size"}, "tie_word_embeddings": tied,
            "rope_theta": 500000.0}


SHAPES = {
    "llama-3.2-1b": _run_shape(LLAMA32_1B_SHAPE, tied=True),
    "llama-3-8b": _run_shape(LLAMA3_8B_SHAPE, tied=False),
    "tiny": _run_shape(dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2), tied=True),
}
DEFAULT_TOKENIZER = REPO / ".tok" / "smollm2"
DEFAULT_DATA = REPO / ".tok" / "data"
GiB = 2**30
STAGE_RE = re.compile(r"^\[lens-bias\] (.+?) \.\.\.\s*$")

# The default child: lens_bias's CLI, with torch's peak memory recorded per stage. Arguments:
# sys.argv[1:] (after ``-c``) are the CLI's. BENCH_RUN_GPU_STATS names the JSON file to write;
# BENCH_RUN_GPU_HERE is this folder, where ``common`` is (after the working directory, whose
# lens_bias comes first).
LAUNCHER = (r'''
import atexit, json, os, resource, sys, time
STATS = {"datasets_import": None, "stages": {}, "t_start": time.time()}
sys.path.insert(1, os.environ["BENCH_RUN_GPU_HERE"])
from common import import_transformer_lens
STATS["datasets_import"] = import_transformer_lens()

def _cuda():
    t = sys.modules.get("torch")
    try:
        return t if t is not None and t.cuda.is_available() and t.cuda.is_initialized() else None
    except Exception:
        return None

def _dump():
    t = _cuda()
    if t is not None:
        try:
            STATS["max_memory_allocated"] = sum(t.cuda.max_memory_allocated(i) '''
            r'''for i in range(t.cuda.device_count()))
            STATS["max_memory_reserved"] = sum(t.cuda.max_memory_reserved(i) '''
            r'''for i in range(t.cuda.device_count()))
            STATS["overall_max_allocated"] = max([STATS.get("max_memory_allocated", 0)]
                                                 + [s.get("max_allocated", 0) '''
            r'''for s in STATS["stages"].values()])
            STATS["overall_max_reserved"] = max([STATS.get("max_memory_reserved", 0)]
                                                + [s.get("max_reserved", 0) '''
            r'''for s in STATS["stages"].values()])
        except Exception as e:
            STATS["cuda_error"] = repr(e)
    STATS["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    STATS["t_end"] = time.time()
    p = os.environ.get("BENCH_RUN_GPU_STATS")
    if p:
        with open(p, "w") as f:
            json.dump(STATS, f)

atexit.register(_dump)

import lens_bias.cli.main as _cli
STATS["lens_bias_file"] = getattr(sys.modules.get("lens_bias"), "__file__", None)

try:  # per-stage torch peaks, through the pipeline's public stage listeners
    import lens_bias.pipeline.stages as _pl

    def _on_stage(name, event):
        t = _cuda()
        if event == "start":
            if t is not None:
                try:
                    for i in range(t.cuda.device_count()):
                        t.cuda.reset_peak_memory_stats(i)
                except Exception:
                    pass
            STATS["stages"][name] = {"t0": time.time()}
            return
        rec = STATS["stages"].setdefault(name, {})
        rec["t1"] = time.time()
        if t is not None:
            try:
                n = t.cuda.device_count()
                t.cuda.synchronize()
                rec["max_allocated"] = sum(t.cuda.max_memory_allocated(i) for i in range(n))
                rec["max_reserved"] = sum(t.cuda.max_memory_reserved(i) for i in range(n))
                rec["allocated_at_end"] = sum(t.cuda.memory_allocated(i) for i in range(n))
            except Exception as e:
                rec["cuda_error"] = repr(e)

    _pl.STAGE_LISTENERS.append(_on_stage)
    STATS["stage_hook"] = True
except Exception as e:
    STATS["stage_hook"] = "off (%r)" % (e,)

sys.argv[0] = "lens-bias"
_cli.app()
''')


# ----------------------------------------------------------------------------------------- build
def build(shape_name: str, tokenizer: str, dest: Path, dtype_name: str, seed: int, max_shard: str) -> dict:
    """Runs in its own process (``--_build``): random weights on the GPU when there is one."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig

    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(tokenizer)
    vocab = len(tok)
    shape = dict(SHAPES[shape_name])
    rope_theta = shape.pop("rope_theta")
    dtype = getattr(torch, dtype_name)
    cfg = LlamaConfig(**shape, vocab_size=vocab, max_position_embeddings=8192,
                      rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                      architectures=["LlamaForCausalLM"])
    cfg.dtype = dtype
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    model = new_llama(cfg, dev, dtype).eval()
    if dev == "cuda":
        torch.cuda.synchronize()
    t_init = time.time() - t0
    n_params = sum(p.numel() for p in model.parameters())
    if dest.exists():
        shutil.rmtree(dest)
    t1 = time.time()
    model.save_pretrained(dest, max_shard_size=max_shard)
    tok.save_pretrained(dest)
    t_save = time.time() - t1
    info = {"shape": shape_name, "config": {**SHAPES[shape_name], "vocab_size": vocab}, "dtype": dtype_name,
            "seed": seed, "params": n_params, "build_device": dev, "init_s": round(t_init, 2),
            "save_s": round(t_save, 2)}
    (dest / "bench_shape.json").write_text(json.dumps(info, indent=1))
    return info


def _build_key(info: dict) -> tuple:
    return (info.get("shape"), info.get("dtype"), info.get("seed"))


def ensure_checkpoint(args, dest: Path) -> dict:
    marker = dest / "bench_shape.json"
    if marker.is_file() and not args.rebuild:
        try:
            old = json.loads(marker.read_text())
            if _build_key(old) == (args.shape, args.dtype, args.seed) and any(dest.glob("*.safetensors")):
                return {**old, "reused": True, "build_wall_s": 0.0}
        except (OSError, ValueError):
            pass
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_build", "--shape", args.shape,
           "--tokenizer", str(args.tokenizer), "--dtype", args.dtype, "--seed", str(args.seed),
           "--max-shard", args.max_shard, "--work", str(args.work)]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-4000:] + r.stderr[-8000:])
        raise SystemExit(f"building the checkpoint failed (exit {r.returncode})")
    info = json.loads(marker.read_text())
    return {**info, "reused": False, "build_wall_s": round(time.time() - t0, 2)}


# -------------------------------------------------------------------------------------- measure
def _nvidia_smi(query: str) -> list[str] | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        r = subprocess.run([exe, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    return [ln.strip() for ln in r.stdout.strip().splitlines() if ln.strip()]


def _gpu_used_mib() -> list[float] | None:
    rows = _nvidia_smi("memory.used")
    try:
        return [float(x) for x in rows] if rows else None
    except ValueError:
        return None


def _proc_mem_kib(pid: int) -> tuple[int | None, int | None]:
    """(VmHWM, VmRSS) of ``pid`` in KiB from /proc, or psutil's RSS; None where unknown."""
    status = proc_status_kib(pid)
    if status:
        return status.get("VmHWM"), status.get("VmRSS")
    try:
        import psutil

        return None, psutil.Process(pid).memory_info().rss // 1024
    except Exception:  # noqa: BLE001 - psutil missing, or the process is gone
        return None, None


class Sampler(threading.Thread):
    """Every ``interval`` s: GPU memory used (nvidia-smi, MiB, per GPU) and the child's host memory."""

    def __init__(self, pid: int, interval: float, gpu: bool):
        super().__init__(daemon=True)
        self.pid, self.interval, self.gpu = pid, interval, gpu
        # t, gpu MiB sum, hwm, rss
        self.samples: list[tuple[float, float | None, int | None, int | None]] = []
        self.gpu_peak_per_device: list[float] | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.time()
            g = _gpu_used_mib() if self.gpu else None
            if g is not None:
                self.gpu_peak_per_device = (
                    g if self.gpu_peak_per_device is None else
                    [max(a, b) for a, b in zip(self.gpu_peak_per_device, g, strict=False)])
            hwm, rss = _proc_mem_kib(self.pid)
            self.samples.append((t, sum(g) if g is not None else None, hwm, rss))
            self.stop.wait(max(0.0, self.interval - (time.time() - t)))


def _du(path: Path) -> int:
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _find_timings(metrics: dict) -> dict | None:
    for k in ("timings_s", "timings", "stage_timings", "stages_s"):
        v = metrics.get(k)
        if isinstance(v, dict) and v:
            return v
    for k, v in metrics.items():  # a renamed key: the first dict of numbers whose name says timing
        if ("timing" in k.lower() and isinstance(v, dict)
                and all(isinstance(x, (int, float)) for x in v.values())):
            return v
    return None


def _has(extra: list[str], *flags: str) -> bool:
    return any(a == f or a.startswith(f + "=") for a in extra for f in flags)


def _gpu_info() -> dict:
    rows = _nvidia_smi("name,memory.total,driver_version")
    if not rows:
        return {"gpus": []}
    gpus = []
    for r in rows:
        name, total, driver = [x.strip() for x in r.split(",")]
        gpus.append({"name": name, "memory_total_mib": float(total), "driver": driver})
    return {"gpus": gpus}


def measure(args, ckpt: Path, run_dir: Path, extra: list[str]) -> dict:
    cli = shlex.split(args.cli) if args.cli else [sys.executable, "-c", LAUNCHER]
    data_args: list[str] = []
    data = None if args.data in ("none", "") else Path(args.data)
    if data is not None and data.is_dir():
        for flag, name in (("--wikitext", "wikitext2_test.txt"),
                           ("--crows-file", "crows_pairs_anonymized.csv"),
                           ("--lambada", "lambada_openai_test.jsonl"),
                           ("--bbq-file", "bbq_race_ethnicity.jsonl"),
                           ("--bold-file", "bold_race_prompts.json")):
            if (data / name).is_file() and not _has(extra, flag):
                data_args += [flag, str(data / name)]
    cmd = [*cli, "run", "--model", str(ckpt), "--out", str(run_dir), *data_args, *extra]
    if run_dir.exists():
        shutil.rmtree(run_dir)
    for p in run_dir.parent.glob(f".{run_dir.name}.*"):  # leftovers of an atomic folder killed midway
        shutil.rmtree(p, ignore_errors=True)
    stats_file = args.work / "launcher_stats.json"
    stats_file.unlink(missing_ok=True)
    stderr_file = args.work / "run_stderr.txt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "BENCH_RUN_GPU_STATS": str(stats_file),
           "BENCH_RUN_GPU_HERE": str(HERE)}

    gpu_before = _gpu_used_mib()
    print("[bench] " + " ".join(shlex.quote(c) if c != LAUNCHER else "<launcher>" for c in cmd), flush=True)
    t0 = time.time()
    with open(stderr_file, "w") as errf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf, text=True, env=env, cwd=os.getcwd(),
                                bufsize=1)
        sampler = Sampler(proc.pid, args.interval, gpu_before is not None)
        sampler.start()
        stage_starts: list[tuple[str, float]] = []
        stdout_tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.time()
            m = STAGE_RE.match(line.rstrip("\n"))
            if m:
                stage_starts.append((m.group(1), now))
            stdout_tail.append(line.rstrip("\n"))
            del stdout_tail[:-200]
            if not args.silent:
                print(f"  | {line.rstrip()}", flush=True)
        rc = proc.wait()
        t_end = time.time()
        sampler.stop.set()
        sampler.join()
    wall = t_end - t0
    try:
        import resource

        ru_children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    except Exception:  # noqa: BLE001
        ru_children_kib = None

    launcher = {}
    if stats_file.is_file():
        try:
            launcher = json.loads(stats_file.read_text())
        except ValueError:
            pass

    # stage windows: the launcher's hook (exact) where it ran, else the printed lines (a stage ends
    # where the next begins, the last at exit); the memory samples are taken inside each window
    windows = {}
    for i, (name, ts) in enumerate(stage_starts):
        te = stage_starts[i + 1][1] if i + 1 < len(stage_starts) else t_end
        windows[name] = {"s_from_output": round(te - ts, 2), "w": (ts, te)}
    for name, ls in launcher.get("stages", {}).items():
        rec = windows.setdefault(name, {"s_from_output": None})
        rec["w"] = (ls["t0"], ls["t1"])
        rec["s_from_hook"] = round(ls["t1"] - ls["t0"], 2)
        if "max_allocated" in ls:
            rec["torch_max_allocated_gib"] = round(ls["max_allocated"] / GiB, 2)
            rec["torch_max_reserved_gib"] = round(ls["max_reserved"] / GiB, 2)
            rec["torch_allocated_at_end_gib"] = round(ls["allocated_at_end"] / GiB, 2)
    base_gpu = sum(gpu_before) if gpu_before else 0.0
    samples = sampler.samples
    per_stage = {}
    for name, rec in sorted(windows.items(), key=lambda kv: kv[1]["w"][0]):
        ts, te = rec.pop("w")
        inside = [s for s in samples if ts <= s[0] <= te]
        g = [s[1] for s in inside if s[1] is not None]
        rss = [s[3] for s in inside if s[3] is not None]
        rec["gpu_peak_gib"] = round((max(g) - base_gpu) / 1024, 2) if g else None
        rec["host_rss_peak_gib"] = round(max(rss) / 2**20, 2) if rss else None
        per_stage[name] = rec
    g_all = [s[1] for s in samples if s[1] is not None]
    hwm_all = [s[2] for s in samples if s[2] is not None]
    rss_all = [s[3] for s in samples if s[3] is not None]
    host_peak_kib = max(hwm_all) if hwm_all else (max(rss_all) if rss_all else None)
    if launcher.get("ru_maxrss_kib"):
        host_peak_kib = max(host_peak_kib or 0, launcher["ru_maxrss_kib"])

    metrics_path = run_dir / "metrics.json"
    metrics = None
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except ValueError:
            metrics = None
    timings = _find_timings(metrics) if metrics else None
    first_stage_s = round(stage_starts[0][1] - t0, 2) if stage_starts else None

    ckpt_bytes = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    export_dir = run_dir / "model"
    export_st = sum(p.stat().st_size for p in export_dir.glob("*.safetensors")) if export_dir.is_dir() else 0
    stderr_text = stderr_file.read_text(errors="replace") if stderr_file.is_file() else ""
    res = {
        "rc": rc,
        "wall_s": round(wall, 2),
        "startup_s": first_stage_s,  # process start, imports, up to the first stage line
        "timings_s": timings,
        "stages": per_stage,
        "gpu": {
            "baseline_used_gib": round(base_gpu / 1024, 2) if gpu_before else None,
            "peak_used_gib": round((max(g_all) - base_gpu) / 1024, 2) if g_all else None,
            "peak_used_per_device_abs_gib": ([round(x / 1024, 2) for x in sampler.gpu_peak_per_device]
                                         if sampler.gpu_peak_per_device else None),
            "torch_max_allocated_gib": (round(launcher["overall_max_allocated"] / GiB, 2)
                                        if "overall_max_allocated" in launcher else None),
            "torch_max_reserved_gib": (round(launcher["overall_max_reserved"] / GiB, 2)
                                       if "overall_max_reserved" in launcher else None),
            "nvidia_smi_samples": len(g_all),
        },
        "host": {
            "peak_rss_gib": round(host_peak_kib / 2**20, 2) if host_peak_kib else None,
            "peak_rss_sampled_gib": round(max(rss_all) / 2**20, 2) if rss_all else None,
            "ru_maxrss_children_gib": round(ru_children_kib / 2**20, 2) if ru_children_kib else None,
        },
        "sizes": {
            "checkpoint_safetensors_bytes": ckpt_bytes,
            "checkpoint_gib": round(ckpt_bytes / GiB, 3),
            "export_safetensors_bytes": export_st,
            "export_total_bytes": _du(export_dir),
            "export_gib": round(export_st / GiB, 3),
            "export_over_checkpoint": round(export_st / ckpt_bytes, 3) if ckpt_bytes and export_st else None,
            "run_folder_bytes": _du(run_dir),
        },
        "run_folder_files": sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else [],
        "launcher": {k: launcher.get(k)
                     for k in ("datasets_import", "stage_hook", "lens_bias_file", "cuda_error")
                     if k in launcher},
        "command": [c if c != LAUNCHER else "<launcher>" for c in cmd],
    }
    att = [st for name, st in per_stage.items() if "attribut" in name.lower()]
    if att and ckpt_bytes:
        a = att[0]
        peak = a.get("torch_max_allocated_gib") or a.get("gpu_peak_gib")
        res["gpu"]["attribution_peak_gib"] = peak
        res["gpu"]["attribution_peak_over_checkpoint"] = round(peak / (ckpt_bytes / GiB), 3) if peak else None
    if metrics:
        keep = {}
        for k in ("export", "export_check", "verify", "versions", "status", "error", "config"):
            if k in metrics:
                keep[k] = metrics[k]
        ch = metrics.get("change")
        if isinstance(ch, dict):
            keep["change"] = ch
        res["metrics"] = keep
    if rc != 0:
        res["stderr_tail"] = stderr_text[-3000:]
        res["stdout_tail"] = "\n".join(stdout_tail[-30:])
    return res


# ----------------------------------------------------------------------------------------- main
def _print_table(out: dict) -> None:
    r = out["run"]
    rows = []
    timings = r.get("timings_s") or {}
    names = list(dict.fromkeys([*timings.keys(), *r["stages"].keys()]))
    for name in names:
        st = r["stages"].get(name, {})
        sec = st.get("s_from_hook", st.get("s_from_output"))
        rows.append([name, timings.get(name), sec, st.get("gpu_peak_gib"),
                     st.get("torch_max_allocated_gib"), st.get("host_rss_peak_gib")])
    hdr = ["stage", "s (metrics)", "s (seen)", "GPU peak GiB (smi)", "torch max alloc GiB", "host RSS GiB"]
    cells = [hdr] + [["-" if c is None else (f"{c:.2f}" if isinstance(c, float) else str(c)) for c in row]
                     for row in rows]
    w = [max(len(row[i]) for row in cells) for i in range(len(hdr))]
    line = lambda row: "  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(row))  # noqa: E731
    print(line(cells[0]))
    print("  ".join("-" * x for x in w))
    for row in cells[1:]:
        print(line(row))
    b = out["build"]
    print(f"total wall {r['wall_s']} s (startup {r['startup_s']} s), exit {r['rc']}; "
          f"shape {out['shape']} ({b.get('params', 0) / 1e9:.2f} B params, {b.get('dtype')}), "
          f"checkpoint {r['sizes']['checkpoint_gib']} GiB, export {r['sizes']['export_gib']} GiB "
          f"(x{r['sizes']['export_over_checkpoint']}); GPU peak {r['gpu']['peak_used_gib']} GiB (smi) / "
          f"{r['gpu']['torch_max_allocated_gib']} GiB (torch), in attribution "
          f"{r['gpu'].get('attribution_peak_gib')} GiB = x{r['gpu'].get('attribution_peak_over_checkpoint')} "
          f"the checkpoint; host peak {r['host']['peak_rss_gib']} GiB")
    if r["rc"] != 0:
        print("---- stderr tail ----")
        print(r.get("stderr_tail", ""))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama-3-8b")
    ap.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER, help="a saved tokenizer folder")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_run_gpu"))
    ap.add_argument("--dtype", default="bfloat16", help="dtype of the random checkpoint")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-shard", default="5GB")
    ap.add_argument("--rebuild", action="store_true", help="build the checkpoint even when one matches")
    ap.add_argument("--data", default=str(DEFAULT_DATA),
                    help="folder with wikitext2_test.txt / crows_pairs_anonymized.csv ('none': pass nothing)")
    ap.add_argument("--cli", default=None, help="command line of lens-bias (default: python -c <launcher>)")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples")
    ap.add_argument("--clean", action="store_true",
                    help="delete the checkpoint and the run folder afterwards")
    ap.add_argument("--silent", action="store_true", help="do not echo the run's output")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--copy-to", type=Path, default=None,
                    help="copy the run's metrics.json here as <shape>_metrics.json (before --clean)")
    ap.add_argument("--_build", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.work = args.work.resolve()
    ckpt = args.work / "model"

    if args._build:
        info = build(args.shape, str(args.tokenizer), ckpt, args.dtype, args.seed, args.max_shard)
        print(json.dumps(info))
        return 0

    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    binfo = ensure_checkpoint(args, ckpt)
    print(f"[bench] checkpoint {ckpt}: {'reused' if binfo['reused'] else 'built'} "
          f"({binfo.get('params', 0) / 1e9:.3f} B params, init {binfo.get('init_s')} s, "
          f"save {binfo.get('save_s')} s, "
          f"{time.time() - t0:.1f} s)", flush=True)
    res = measure(args, ckpt, args.work / "run", extra)
    out = {
        "bench": "bench_run_gpu",
        "shape": args.shape,
        "build": binfo,
        "extra_args": extra,
        "cwd": os.getcwd(),
        "versions": {"python": sys.version.split()[0],
                     **versions("accelerate", "safetensors", "tokenizers", "huggingface-hub", "datasets",
                                "pyarrow", "fsspec", "typer", "pydantic", "plotly", "gguf", "lens_bias")},
        **_gpu_info(),
        "host_cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "run": res,
    }
    if args.copy_to and (args.work / "run" / "metrics.json").is_file():
        args.copy_to.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.work / "run" / "metrics.json", args.copy_to / f"{args.shape}_metrics.json")
    if args.clean:
        shutil.rmtree(args.work / "run", ignore_errors=True)
        shutil.rmtree(ckpt, ignore_errors=True)
    _print_table(out)
    emit(out, args.out, indent=1)
    return res["rc"]


if __name__ == "__main__":
    sys.exit(main())
