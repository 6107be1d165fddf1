"""Where a train step's time goes: the top operations of jaxgan's step (and of its PyTorch twin), by device time.

    python benchmarks/profile_step.py --model=dcgan --image_size=128 --batch_size=128 [--compare_torch] [--top=25]

Takes the flags of ``step_throughput.py``. jaxgan: a few warm steps under ``jax.profiler.trace`` (Perfetto
trace), then the events summed by name per trace process (on GPU the streams' kernels; on CPU the XLA
thunks), per step; each compiled fusion is shown with the convolution/dot or root it computes. torch (with
``--compare_torch``): ``torch.profiler`` over the same number of steps, its ``key_averages`` by device time.
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

import step_throughput  # noqa: E402
from jaxgan import experiment as experiment_lib  # noqa: E402


def fusion_descriptions(hlo_text: str) -> dict[str, str]:
    """Fusion instruction name -> 'kind <- the conv/dot (or root) it computes', from compiled HLO text."""
    bodies, current = {}, None
    for line in hlo_text.splitlines():
        m = re.match(r"^(%\S+) .*\{$", line)
        if m:
            current = m.group(1)
            bodies[current] = []
        elif current:
            bodies[current].append(line)
    desc = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (.*?) (fusion|custom-call|convolution|dot)\((.*)", line)
        if not m:
            continue
        name, kind = m.group(1), m.group(3)
        called = re.search(r"calls=(%[\w.\-]+)", line)
        body = bodies.get(called.group(1), []) if called else []
        core = [x for x in body if " convolution(" in x or " dot(" in x] or [x for x in body if "ROOT" in x]
        text = core[0] if core else line
        target = re.search(r'custom_call_target="([^"]+)"', line)
        window = re.search(r"(window=\{[^}]*\}|dim_labels=\S+)", line)
        extra = " ".join(x for x in (target.group(1) if target else "", window.group(1) if window else "") if x)
        desc[name] = f"{kind} {extra} <- " + re.sub(r", metadata=.*", "", text).strip()
    return desc


def profile_jax(runner, steps: int, top: int) -> None:
    runner.run(2)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            runner.run(steps)
        path = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)[0]
        events = json.load(gzip.open(path))["traceEvents"]
    process = {e["pid"]: e["args"].get("name", "") for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    total, count = collections.defaultdict(collections.Counter), collections.defaultdict(collections.Counter)
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            total[process.get(e["pid"], str(e["pid"]))][e["name"]] += e["dur"]
            count[process.get(e["pid"], str(e["pid"]))][e["name"]] += 1
    desc = fusion_descriptions(runner.compiled.as_text())
    for proc, counter in total.items():
        summed = sum(counter.values()) / steps / 1e3
        print(f"\n--- jaxgan, trace process {proc!r}: {summed:.2f} ms of events per step (nested events overlap)")
        for name, us in counter.most_common(top):
            print(f"{us / steps / 1e3:9.3f} ms  x{count[proc][name] / steps:<4.0f} {name[:60]:<60} "
                  f"{desc.get(name, '')[:200]}")


def profile_torch(torch_step, steps: int, top: int, cuda: bool) -> None:
    from torch.profiler import ProfilerActivity, profile
    torch_step(2)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        torch_step(steps)
    key = "cuda_time_total" if cuda else "self_cpu_time_total"
    print(f"\n--- torch ({steps} steps; totals over all steps)")
    print(prof.key_averages().table(sort_by=key, row_limit=top))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    top = 25
    for a in list(argv):
        if a.startswith("--top="):
            top = int(a.split("=", 1)[1])
            argv.remove(a)
    args = step_throughput.parse_args(argv)
    config = step_throughput.make_config(args)
    exp = experiment_lib.build(config)
    runner = step_throughput.JaxRunner(exp, config, 1, False)
    steps = 5
    profile_jax(runner, steps, top)
    if args.compare_torch:
        counts = tuple(step_throughput.count_params(t) for t in (runner.state.g.params, runner.state.d.params))
        for model in step_throughput.make_torch_twins(args, exp, counts).values():
            profile_torch(step_throughput.torch_runner(model, args), steps, top, model.device.type == "cuda")


if __name__ == "__main__":
    main()
