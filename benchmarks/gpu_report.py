"""benchmarks.gpu_check's record as a markdown report."""
from __future__ import annotations


def markdown(result: dict) -> str:
    """The record as a short report: one line per step, one table row per timed run."""
    env, tests = result.get("environment", {}), result.get("tests", {})
    resnet, torch = result.get("resnet18_conv", {}), result.get("torch_reference", {})
    mnist = result.get("mnistnet", {})
    versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v)
    lines = ["# GPU check", "", f"{env.get('device_kind')} x {env.get('device_count')} ({env.get('backend')}); "
             f"{versions}; peak TFLOP/s {env.get('peak_tflops') or 'unknown'} ({env.get('peak_source')}).", "",
             f"{result['total_s']} s of a {result['budget_s']:g} s budget; "
             f"{'SOME STEPS FAILED' if result['failed'] else 'no step failed'}.", "",
             f"- tests: **{tests.get('status')}**: {tests.get('summary', tests.get('error', tests.get('reason')))}"]
    if resnet:
        lines.append(f"- convolution: fastest by K {resnet['fastest_by_k']}; default (fastest at the largest K) "
                     f"**{resnet['chosen']}**; 'auto' resolves to {resnet['auto']} (agrees: {resnet['auto_agrees']}); "
                     f"MNISTNet and the reference used {resnet['used_by_the_others']}")
    if torch:
        lines.append(f"- PyTorch reference: {torch['status']} {torch.get('reason', '')}"
                     f"{torch.get('torch_version', '')} {torch.get('device', '')}".rstrip())
    if mnist:
        lines.append(f"- MNISTNet data: {mnist['data']}")
    lines += ["", "| setup | K | users | chunk | conv | status | compile s | s/round | TFLOP/s | of FP32 peak "
              "| of TF32 peak | torch s/round | ratio |", "|" + "---|" * 13]
    for run in resnet.get("runs", []) + torch.get("runs", []) + mnist.get("runs", []):
        peak = run.get("of_peak") or {}
        cells = [run.get("setup"), run.get("clients_per_round"), run.get("num_users"), run.get("clients_per_chunk"),
                 run.get("conv_impl"), run["status"] if run["status"] == "ok" else
                 f"{run['status']}: {run.get('error', run.get('reason'))}"[:120], run.get("compile_s"),
                 run.get("round_s"), run.get("achieved_tflops"), peak.get("fp32"), peak.get("tf32"),
                 run.get("torch_round_s"), run.get("ratio_vs_torch")]
        lines.append("| " + " | ".join("" if c is None else str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"
