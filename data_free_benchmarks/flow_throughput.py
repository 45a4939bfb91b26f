"""Training steps and one-shot samples per second of the shipped ALDP flow, against commit 5af5968.

One run measures, on the same machine and in fresh processes (one per setting, so thread counts
and compiled kernels never leak between settings):

* **implementation**: this checkout, and the flowcg of commit ``5af5968`` (the flow engine before
  the fast path), unpacked with ``git archive`` into a temporary folder and imported from there;
* **path**: ``eager`` (flow eager) and, for this checkout, ``fast`` (coupling layers through the
  compiled kernels, ``StructuredFlow.use_compile``) and ``fast-bf16`` (the same, its training steps in
  mixed precision: ``train.conditioner_dtype=bfloat16``; sampling is at full precision, as ``fast``);
* **threads**: 1 and 2 (``torch.set_num_threads``; this checkout runs the force field on one
  thread inside either setting, :mod:`flowcg.threads`);
* **batch**: 256, 1024 and 4096.

The model is ``flowcg/pretrained/aldp_implicit`` of each implementation: the same weights, layers,
widths and bins. The target is aldp_implicit on the torch force field with compiled kernels
(``compile=True``), the same in every setting. A training step is ``Trainer.train_step`` at β = 1
(draw, log q, energy, backward, clipping, Adam update) of that implementation's own trainer; a
sampling call is ``model.sample(batch)`` without gradients (draw, push-forward, log q; no energy).
Each is timed by wall clock over repeated calls for at least ``--seconds`` after warm-up calls
(the first call, which compiles or loads cached kernels, is timed apart).

    .venv/bin/python data_free_benchmarks/flow_throughput.py          # ≈ 15 min on 2 cores
    .venv/bin/python data_free_benchmarks/flow_throughput.py --batch 1024 --threads 2 --seconds 4 --name flow_throughput_spot

writes ``results/<name>.json`` and ``results/<name>.md`` (``--name``, default ``flow_throughput``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
BASELINE_COMMIT = "5af5968"
BATCH_SIZES = (256, 1024, 4096)
THREADS = (1, 2)


def _timed(call, seconds: float, min_calls: int = 3) -> tuple[float, int]:
    """Mean wall seconds per call over ≥ ``min_calls`` calls and ≥ ``seconds``, and the count."""
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        call()
        calls += 1
    return (time.perf_counter() - start) / calls, calls


#: the paths of this checkout: compiled flow, conditioner dtype of the training steps
PATHS = {"eager": (False, None), "fast": (True, None), "fast-bf16": (True, "bfloat16")}


def add_in_process_arguments(parser: argparse.ArgumentParser, blocks: int) -> None:
    """The options of an in-process A/B of training steps (``mixed_precision_step.py``, ``compiled_map_step.py``)."""
    parser.add_argument("--blocks", type=int, default=blocks, help="alternations of the settings")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per block")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)


def alternating_step_times(trainers: dict, blocks: int, steps: int, warmup: int = 3) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each trainer's ``train_step`` wall times (s), ``steps`` per trainer in each of ``blocks`` alternations, so that
    the VM's drift falls on every setting alike; before, ``warmup`` untimed steps each (their compilation), whose
    wall seconds per trainer are returned too."""
    first: dict[str, float] = {}
    for name, trainer in trainers.items():
        start = time.perf_counter()
        for _ in range(warmup):
            trainer.train_step()
        first[name] = time.perf_counter() - start
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(blocks):
        for name, trainer in trainers.items():
            for _ in range(steps):
                start = time.perf_counter()
                trainer.train_step()
                times[name].append(time.perf_counter() - start)
    return times, first


def step_trainer(model, target, batch: int, run_dir: str, **settings):
    """A trainer whose ``train_step`` is the timed step: β = 1, batch ``batch``, a learning rate too small
    to move the weights measurably; ``settings`` add TrainConfig fields (absent from 5af5968's)."""
    from flowcg.training import Trainer, TrainConfig, build_schedule

    config = TrainConfig(batch_size=batch, lr=1e-6, final_steps=10**9, show_progress=False, **settings)
    trainer = Trainer(model, target, build_schedule("constant"), config, run_dir)
    trainer.state["beta"] = 1.0
    model.train()
    return trainer


def worker(threads: int, batch: int, path: str, seconds: float) -> dict:
    """One setting, measured in this process with the flowcg found on ``sys.path``."""
    import torch

    torch.set_num_threads(threads)
    from flowcg import load_target
    from flowcg.builders import load_run

    run = load_run(Path("flowcg/pretrained/aldp_implicit").resolve())
    model, target = run.model, load_target("aldp_implicit", compile=True)
    fast, conditioner_dtype = PATHS[path]
    if fast:
        model.use_compile()
    from flowcg.training import TrainConfig

    # each path of this checkout names its precision (the default, auto, picks bfloat16 on a CPU with
    # bfloat16 units); 5af5968's TrainConfig has no such field
    settings = {"conditioner_dtype": conditioner_dtype} if hasattr(TrainConfig, "conditioner_dtype") else {}
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = step_trainer(model, target, batch, run_dir, **settings)
        start = time.perf_counter()
        trainer.train_step()
        first_step_s = time.perf_counter() - start
        for _ in range(2):
            trainer.train_step()
        step_s, steps = _timed(trainer.train_step, seconds)
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        model.sample(batch)
        first_sample_s = time.perf_counter() - start
        model.sample(batch)
        sample_s, calls = _timed(lambda: model.sample(batch), seconds)
    return {
        "threads": threads, "batch": batch, "path": path,
        "step_s": step_s, "steps_per_s": 1 / step_s, "samples_per_s_training": batch / step_s, "timed_steps": steps,
        "sample_call_s": sample_s, "samples_per_s": batch / sample_s, "timed_sample_calls": calls,
        "first_step_s": first_step_s, "first_sample_s": first_sample_s,
        "flow_compiled": bool(getattr(model, "compiled", False)), "forcefield_compiled": target.forcefield.compiled,
    }


def _measure(root: Path, implementation: str, threads: int, batch: int, path: str, seconds: float, cache: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root), "TORCHINDUCTOR_CACHE_DIR": cache, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", str(threads), str(batch), path, "--seconds", str(seconds)]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{implementation} threads={threads} batch={batch} path={path} failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["implementation"] = implementation
    print(json.dumps(row), flush=True)
    return row


def _table(rows: list[dict]) -> str:
    baseline = {(r["threads"], r["batch"]): r for r in rows if r["implementation"] == BASELINE_COMMIT}
    lines = [
        "| implementation | path | threads | batch | step (ms) | steps/s | × 5af5968 | samples/s (sampling) | × 5af5968 | first step (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = baseline[(r["threads"], r["batch"])]
        lines.append(
            f"| {r['implementation']} | {r['path']} | {r['threads']} | {r['batch']} | {1e3 * r['step_s']:.0f} | {r['steps_per_s']:.2f} | "
            f"{base['step_s'] / r['step_s']:.2f} | {r['samples_per_s']:.0f} | {r['samples_per_s'] / base['samples_per_s']:.2f} | {r['first_step_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=3, metavar=("THREADS", "BATCH", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=8.0, help="minimum timed wall seconds per measurement")
    parser.add_argument("--batch", type=int, nargs="*", default=list(BATCH_SIZES))
    parser.add_argument("--threads", type=int, nargs="*", default=list(THREADS))
    parser.add_argument("--name", default="flow_throughput", help="results/<name>.{json,md} (a spot check keeps the full table)")
    args = parser.parse_args()
    if args.worker:
        threads, batch, path = args.worker
        print(json.dumps(worker(int(threads), int(batch), path, args.seconds)))
        return

    sys.path.insert(0, str(ROOT))
    from flowcg.builders import cpu_model

    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        baseline_root = Path(scratch) / "baseline"
        baseline_root.mkdir()
        archive = subprocess.run(["git", "archive", BASELINE_COMMIT], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline_root)], input=archive, check=True)
        cache = str(Path(scratch) / "inductor")  # one cold cache for all: compile times as a new user sees them
        for threads in args.threads:
            for batch in args.batch:
                rows.append(_measure(baseline_root, BASELINE_COMMIT, threads, batch, "eager", args.seconds, cache))
                for path in PATHS:
                    rows.append(_measure(ROOT, "this checkout", threads, batch, path, args.seconds, cache))
    result = {
        "command": "python data_free_benchmarks/flow_throughput.py " + " ".join(sys.argv[1:]),
        "cpu": cpu_model(), "cores": os.cpu_count(), "baseline_commit": BASELINE_COMMIT,
        "model": "flowcg/pretrained/aldp_implicit (8 mixed spline couplings, hidden 128, 2 blocks, 8 bins)",
        "target": "aldp_implicit, torch force field, compile=True",
        "wall_s": time.perf_counter() - started, "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    for path, text in ((RESULTS / f"{args.name}.json", json.dumps(result, indent=2)), (RESULTS / f"{args.name}.md", _table(rows) + "\n")):
        partial = path.with_suffix(path.suffix + ".partial")
        partial.write_text(text)
        os.replace(partial, path)
    print(_table(rows))


if __name__ == "__main__":
    main()
