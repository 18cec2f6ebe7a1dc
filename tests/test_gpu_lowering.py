"""The cohort function as a GPU would run it, checked without one: `train_chunk` lowered for CUDA on
this CPU-only jaxlib. A real round's arguments are captured where run_round hands them to the chunk
call (no CPU compile), then the StableHLO text is searched for what would cost a GPU dearly."""
import re

import jax
import pytest

from flash_jax.config import Config
from flash_jax.fl import cohort
from flash_jax.fl.round import run_round
from flash_jax.fl.state import init_state
from flash_jax.fl.setup import build_setup
from flash_jax.models import CONV_IMPLS, resolve_conv_impl

GPU_DEFAULT = resolve_conv_impl("auto", backend="cuda")


class _Captured(Exception):
    pass


def lowered_round(digits, conv_impl: str, monkeypatch) -> tuple[str, int]:
    """StableHLO of an NST round's chunk call (per-client masks, sparse learning, FMA) on MNISTNet,
    lowered for CUDA, and how many arguments the donated sums are."""
    config = Config(experiment_type="nst", num_users=6, frac=0.5, conv_impl=conv_impl, quiet=True)
    setup = build_setup(config, digits)
    captured = []

    def capture(*args):
        captured.append(args)
        raise _Captured

    monkeypatch.setattr(cohort, "train_chunk", capture)
    with pytest.raises(_Captured):
        run_round(setup, init_state(setup))
    monkeypatch.undo()
    args = captured[0]
    lowered = cohort.train_chunk.trace(*args).lower(lowering_platforms=("cuda",))
    return lowered.as_text(), len(jax.tree.leaves(args[-1]))


@pytest.mark.parametrize("conv_impl", CONV_IMPLS)
def test_the_round_lowers_for_cuda_without_host_work(digits, conv_impl, monkeypatch):
    text, num_sums = lowered_round(digits, conv_impl, monkeypatch)
    targets = set(re.findall(r"custom_call @([\w.$-]+)", text))
    assert not {t for t in targets if re.search("callback|python|host", t, re.I)}, targets
    assert not re.search(r"\bf64\b|xf64>", text), "a float64 tensor inside the round"
    main = re.search(r"func\.func public @main\((.*?)\) ->", text, re.S).group(1)
    arguments = re.split(r", (?=%arg\d+:)", main)
    donated = [i for i, a in enumerate(arguments) if "tf.aliasing_output" in a or "jax.buffer_donor" in a]
    # the sums are the last arguments, and only they are donated
    assert donated == list(range(len(arguments) - num_sums, len(arguments))), main[:2000]
    convolutions, dots = text.count("stablehlo.convolution"), text.count("stablehlo.dot_general")
    if conv_impl == "xla":
        # each of the 3 clients' own kernel: vmap makes one grouped convolution of all of them
        assert convolutions > 0 and "feature_group_count = 3" in text
    elif conv_impl == "patches":
        assert convolutions > 0 and dots > 0  # patch extraction is an identity-kernel convolution
    else:
        assert convolutions == 0 and dots > 0


def test_the_gpu_default_is_xla_and_cpu_keeps_slices():
    assert GPU_DEFAULT == "xla" and resolve_conv_impl("auto", backend="cpu") == "slices"
    assert resolve_conv_impl("patches", backend="cuda") == "patches"
