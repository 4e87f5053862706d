"""How much faster a guided evaluation could get by implementation: the convolutions' share
of its time, their arithmetic rate, and the bounds these set.

One SDA-guided evaluation of the demo's samplers as the workflow runs it: a forward pass with
a graph and the input-gradient backward (the networks are frozen) of a score U-Net of the
preset's size on ``--batch`` Markov-blanket windows (default 48: the demo's 4 members x 12
windows of its 16 days). ``torch.profiler`` splits the time into convolutions (forward and
backward) and the rest; forward hooks count the convolutions' floating-point operations
(2 x C_out x C_in x k^2 per output pixel, the same again for the input gradient). The
reference rate is a large single-precision matrix product on the same device and threads,
the best a convolution lowered to a matrix product can hope for.

Two ceilings on the speed-up of an evaluation by implementation (same arithmetic, same
results): everything but the convolutions made free (``1 / conv share``), and, beyond that,
the convolutions run at the matrix-product rate (or their own, if faster). Usage::

    OMP_NUM_THREADS=1 python benchmarks/conv_share.py [--preset demo] [--batch 48]
        [--layout trained]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from slams.benchmark import network_sizes
from slams.models import for_sampling
from slams.nn import ScoreUNet

CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d",
            "aten::thnn_conv2d", "aten::_convolution")  # fmt: skip


def conv_flops(net: nn.Module, x: torch.Tensor, t: torch.Tensor) -> float:
    """Floating-point operations of the convolutions in one forward pass."""
    total = 0.0

    def hook(module, _inputs, output):
        nonlocal total
        kh, kw = module.kernel_size
        per_pixel = 2 * module.out_channels * (module.in_channels // module.groups) * kh * kw
        total += per_pixel * output.shape[0] * output.shape[-2] * output.shape[-1]

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net(x, t)
    for handle in handles:
        handle.remove()
    return total


def guided_evaluation(net, x, t):
    """Forward with a graph and the gradient with respect to the input, as SDA needs."""
    x = x.detach().requires_grad_(True)
    eps = net(x, t)
    (grad,) = torch.autograd.grad(eps, x, torch.ones_like(eps))
    return grad


def matmul_rate(repeats: int = 5, n: int = 1024) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", nargs="+", default=["demo"], choices=["demo", "paper"])
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--layout",
        choices=["sampling", "trained"],
        default="sampling",
        help="the networks as the workflow samples with them (slams.models.for_sampling: "
        "channels-last on the CPU) or as trained (the default memory layout)",
    )
    args = parser.parse_args()
    rate = matmul_rate()
    print(f"{torch.get_num_threads()} thread(s), {args.layout} layout; 1024 x 1024 matrix product: "
          f"{rate / 1e9:.1f} GFLOP/s")  # fmt: skip
    print("| preset | space | batch | ms per guided evaluation | convolution share "
          "| convolution GFLOP/s | of the matrix-product rate | ceiling: the rest free "
          "| ceiling: convolutions at that rate too |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for preset in args.preset:
        for space, (channels, (height, width), network) in network_sizes(preset).items():
            torch.manual_seed(0)
            net = ScoreUNet(args.window * channels, network["hidden"], network["blocks"])
            net = net.eval().requires_grad_(False)
            if args.layout == "sampling":
                for_sampling(net)
            x = torch.randn(args.batch, args.window * channels, height, width)
            t = torch.full((args.batch,), 0.5)
            flops = 2 * conv_flops(net, x, t)  # forward + input gradient
            guided_evaluation(net, x, t)  # warm-up
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                start = time.perf_counter()
                for _ in range(args.repeats):
                    guided_evaluation(net, x, t)
                seconds = (time.perf_counter() - start) / args.repeats
            events = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in events)
            conv = sum(e.self_cpu_time_total for e in events if e.key in CONV_OPS)
            share = conv / total
            conv_seconds = share * seconds
            conv_rate = flops / conv_seconds
            at_rate = flops / max(rate, conv_rate)  # no slower than they already run
            print(f"| {preset} | {space} | {args.batch} | {1000 * seconds:.0f} | {share:.0%} "
                  f"| {conv_rate / 1e9:.1f} | {conv_rate / rate:.0%} | {1 / share:.2f}x "
                  f"| {seconds / at_rate:.2f}x |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
