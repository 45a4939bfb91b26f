"""Forward + backward time of one compiled coupling layer of the shipped ALDP flow, with its kernel profile.

A training step's flow cost is mostly its eight coupling layers; this times one of them alone
(``flowcg.compiled.compile_transform``, as ``StructuredFlow.use_compile`` does), at batch ``--batch``
on ``--threads`` torch threads, and prints ``torch.profiler``'s table with inductor's kernels named
(``cpp.enable_kernel_profile``). ``--max-fusion-size`` overrides the inductor option the flow compiles
with (``flowcg.compiled.FLOW_INDUCTOR_OPTIONS``), to compare fusion caps in fresh processes:

    .venv/bin/python data_free_benchmarks/coupling_layer_time.py                        # the shipped setting
    .venv/bin/python data_free_benchmarks/coupling_layer_time.py --max-fusion-size 64   # inductor's default

Prints only; a benchmark, not a test (timings need an otherwise idle machine).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=0, help="which coupling layer of the shipped flow")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=50, help="timed forward + backward calls")
    parser.add_argument("--max-fusion-size", type=int, default=None, help="inductor's cap on nodes per fused loop")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch._inductor.config.cpp.enable_kernel_profile = True
    from flowcg import compiled
    from flowcg.builders import load_run

    if args.max_fusion_size is not None:
        compiled.FLOW_INDUCTOR_OPTIONS["max_fusion_size"] = args.max_fusion_size
    model = load_run(ROOT / "flowcg/pretrained/aldp_implicit").model
    layer = model._couplings()[args.layer]
    compiled.allow_recompiles(64)
    compiled.compile_transform(layer, "a coupling layer")
    inputs = 0.5 * torch.randn(args.batch, model.latent.dim, generator=torch.Generator().manual_seed(0))  # every layer acts on the flow space

    def forward_backward():
        x = inputs.clone().requires_grad_(True)
        y, logdet = layer(x)
        (y.square().sum() + logdet.sum()).backward()

    for _ in range(5):  # compiles (cold cache: about a minute) and warms up
        forward_backward()
    start = time.perf_counter()
    for _ in range(args.calls):
        forward_backward()
    milliseconds = (time.perf_counter() - start) / args.calls * 1e3
    print(f"layer {args.layer}, batch {args.batch}, {args.threads} threads, max_fusion_size "
          f"{compiled.FLOW_INDUCTOR_OPTIONS['max_fusion_size']}: {milliseconds:.1f} ms per forward + backward")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for _ in range(10):
            forward_backward()
    print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=70))


if __name__ == "__main__":
    main()
