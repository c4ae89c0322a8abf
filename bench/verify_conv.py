"""Conv section of bench/verify.py: CROWN and alpha-CROWN on the OVAL21 CIFAR conv nets and on cnn_small, ours
against auto_LiRPA measured in the same run.

    python bench/verify.py --sections conv [--threads 1] [--n-conv 4] [--steps 20] [--device cpu|cuda]

For each of VNN-COMP 2021's oval21 nets (cifar_base_kw, cifar_wide_kw, cifar_deep_kw; ONNX loaded with
robustopt.onnx.load) the first ``--n-conv`` of its own properties give the inputs: the vnnlib box (already in
normalized space) as the input set, the spec rows e_label - e_j. ``cnn_small`` is robustopt.models.cnn_small on
MNIST (trained here for one epoch; random weights when the MNIST files are missing), eps 0.02, box [0, 1]. Both
sides bound the same rows over the same boxes, in float32 (auto_LiRPA's dtype), lower bounds only, alpha-CROWN
with the same iterations / step size / decay. Ours runs with its default ``skip_stable=True`` (a neuron's
stability taken per example from IBP); for CROWN the last column re-runs ours with auto_LiRPA's rule
(``skip_stable="batch"``), which should give its bounds. Each (net, method, side) runs in a fresh interpreter so that its
peak memory can be read (growth of the peak resident set size over the process's size before the call), the
sides interleaved; times are best of ``--repeats`` (CROWN) or one run (alpha-CROWN), seconds per example;
peak memory is the largest resident set size sampled every 2 ms during the (last) run minus the size before it
(on CUDA: torch's peak allocation above the allocation before it).
"""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OVAL = ROOT.parent / "shared" / "data" / "vnncomp2021_oval21"

_MEASURE = r"""
import sys, threading, time, torch
job = torch.load(sys.argv[1], weights_only=False)
torch.set_num_threads(int(job["threads"]))
device = torch.device(job["device"])
model = job["model"].to(device).eval()
x, lower, upper, C = (job[k].to(device) for k in ("x", "lower", "upper", "C"))
def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
class Peak:
    # peak memory over the run, above what the process held before it (a 2 ms RSS sampler on CPU)
    def __enter__(self):
        if device.type == "cuda":
            torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated() / 2 ** 20
            return self
        self.base = self.peak = rss_mib(); self.running = True
        def sample():
            while self.running:
                self.peak = max(self.peak, rss_mib()); time.sleep(0.002)
        self.thread = threading.Thread(target=sample, daemon=True); self.thread.start()
        return self
    def __exit__(self, *exc):
        if device.type == "cuda":
            torch.cuda.synchronize(); self.mib = torch.cuda.max_memory_allocated() / 2 ** 20 - self.base
        else:
            self.running = False; self.thread.join(); self.mib = max(self.peak, rss_mib()) - self.base
"""

OURS = "import os\n" + _MEASURE + r"""
from robustopt.verify import spec_bounds
eps = (upper - lower).amax() / 2 * 1.0000001  # the ball contains the box; ball ∩ box = the box
opts = {"skip_stable": job["skip_stable"]}
if job["method"] != "crown":
    opts |= {"steps": int(job["steps"]), "lr": float(job["lr"]), "lr_decay": float(job["lr_decay"])}
def run():
    return spec_bounds(model, (lower + upper) / 2, C, float(eps), lower=lower, upper=upper, method=job["method"],
                       dtype=torch.float32, batch_size=len(x), **opts)
best = float("inf")
for _ in range(int(job["repeats"])):
    with Peak() as peak:
        tic = time.perf_counter(); lb = run()
        if device.type == "cuda": torch.cuda.synchronize()
        best = min(best, time.perf_counter() - tic)
torch.save({"lower": lb.cpu(), "seconds": best, "peak_mib": peak.mib}, sys.argv[2])
"""

PEER = "import os\n" + _MEASURE + r"""
from auto_LiRPA import BoundedModule, BoundedTensor
from auto_LiRPA.perturbations import PerturbationLpNorm
opts = {"optimize_bound_args": {"iteration": int(job["steps"]), "lr_alpha": float(job["lr"]),
                                "lr_decay": float(job["lr_decay"])}, "verbosity": 0}
bounded = BoundedModule(model, torch.zeros_like(x[:1]), bound_opts=opts, device=device)
eps = float((upper - lower).amax() / 2)
ptb = PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=lower, x_U=upper)
method = {"crown": "CROWN", "alpha-crown": "CROWN-Optimized"}[job["method"]]
best = float("inf")
for _ in range(int(job["repeats"])):
    with Peak() as peak:
        tic = time.perf_counter()
        lb, _ = bounded.compute_bounds(x=(BoundedTensor((lower + upper) / 2, ptb),), method=method, C=C,
                                       bound_upper=False)
        if device.type == "cuda": torch.cuda.synchronize()
        best = min(best, time.perf_counter() - tic)
torch.save({"lower": lb.detach().cpu(), "seconds": best, "peak_mib": peak.mib}, sys.argv[2])
"""


def oval_setups(n):
    """(name, model, x, lower, upper, C) for the oval21 nets, the first n properties of each."""
    from robustopt import onnx, vnnlib

    out = []
    for name in ("cifar_base_kw", "cifar_wide_kw", "cifar_deep_kw"):
        path = OVAL / "nets" / f"{name}.onnx"
        if not path.exists():
            print(f"[skip] {name}: {path} not found")
            continue
        props = [vnnlib.load(p) for p in sorted(glob.glob(str(OVAL / "vnnlib" / f"{name}-*.vnnlib")))][:n]
        boxes = [p.input_box((3, 32, 32), dtype=torch.float32) for p in props]
        lower, upper = torch.stack([b[0] for b in boxes]), torch.stack([b[1] for b in boxes])
        C = torch.stack([p.spec_matrix(dtype=torch.float32) for p in props])
        out.append((name, onnx.load(str(path)).float().eval(), (lower + upper) / 2, lower, upper, C))
    return out


def cnn_small_setup(args, n):
    from robustopt import data, models
    from robustopt.verify.api import margin_spec

    torch.manual_seed(0)
    model = models.cnn_small(1, 28, 10)
    try:
        X, y = data.load_mnist(args.mnist_root, split="train", flatten=False)
        Xt, yt = data.load_mnist(args.mnist_root, split="test", flatten=False)
        models.fit(model, X[:20000], y[:20000], epochs=1, lr=1e-3, batch_size=128, progress=False, device="cpu")
        name = "cnn_small (MNIST, 1 epoch)"
    except FileNotFoundError:
        Xt, yt = torch.rand(n, 784).numpy(), torch.randint(0, 10, (n,)).numpy()
        name = "cnn_small (random weights, random inputs)"
    x = torch.as_tensor(Xt[:n], dtype=torch.float32).view(-1, 1, 28, 28)
    eps = 0.02
    C = margin_spec(torch.as_tensor(yt[:n]), 10, torch.float32)
    return name, model.float().eval(), x, (x - eps).clamp(0, 1), (x + eps).clamp(0, 1), C


def _measure(python, script, job, env=None):
    with tempfile.TemporaryDirectory() as tmp:
        path, out = os.path.join(tmp, "job.pt"), os.path.join(tmp, "out.pt")
        torch.save(job, path)
        proc = subprocess.run([python, "-c", script, path, out], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            return f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
        return torch.load(out, weights_only=True)


def conv_section(args, peer):
    """The table; ``peer`` is the auto_LiRPA interpreter (or None: ours only)."""
    n = args.n_conv
    setups = oval_setups(n) + [cnn_small_setup(args, n)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    print(f"\n## Conv nets: CROWN / alpha-CROWN ({args.steps} steps), ours vs auto_LiRPA 0.7.1, float32, "
          f"{args.device}, {args.threads} thread(s), {n} properties per net")
    print("| net | method | ours s/ex | theirs s/ex | time ours/theirs | ours peak MiB | theirs peak MiB | "
          "mean bound ours | mean bound theirs | max rel. diff | max rel. diff, ours skip_stable='batch' |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for name, model, x, lower, upper, C in setups:
        for method in ("crown", "alpha-crown"):
            job = {"model": model, "x": x, "lower": lower, "upper": upper, "C": C, "method": method,
                   "steps": args.steps, "lr": 0.5, "lr_decay": 0.98, "threads": args.threads, "device": args.device,
                   "repeats": args.repeats if method == "crown" else 1, "skip_stable": True}
            ours = _measure(sys.executable, OURS, job, env)
            theirs = _measure(peer, PEER, job) if peer else "no peer interpreter"
            same_rule = _measure(sys.executable, OURS, job | {"skip_stable": "batch", "repeats": 1}, env) \
                if method == "crown" else None
            results.append(_row(name, method, len(x), ours, theirs, same_rule))
    return results


def _rel_diff(ours, theirs):
    if isinstance(ours, (str, type(None))) or isinstance(theirs, str):
        return "-"
    scale = theirs["lower"].double().abs().clamp(min=1e-3)
    return f"{float(((ours['lower'].double() - theirs['lower'].double()) / scale).abs().max()):.1e}"


def _row(name, method, n, ours, theirs, same_rule=None):
    def cells(r):
        if isinstance(r, str):
            return [r, "-", "-"]
        return [f"{r['seconds'] / n:.3f}", f"{r['peak_mib']:.0f}", f"{float(r['lower'].mean()):.4f}"]

    o, t = cells(ours), cells(theirs)
    ratio = "-"
    if not isinstance(ours, str) and not isinstance(theirs, str):
        ratio = f"{ours['seconds'] / theirs['seconds']:.2f}"
    print(f"| {name} | {method} | {o[0]} | {t[0]} | {ratio} | {o[1]} | {t[1]} | {o[2]} | {t[2]} | "
          f"{_rel_diff(ours, theirs)} | {_rel_diff(same_rule, theirs)} |")
    return {"net": name, "method": method, "ours": _plain(ours), "theirs": _plain(theirs)}


def _plain(r):
    if isinstance(r, str):
        return r
    return {"seconds": r["seconds"], "peak_mib": r["peak_mib"], "lower": r["lower"].tolist()}
