"""Large cohorts through the round loop: chunks, the compile log, and the client axis sharded over 8
devices (a subprocess with XLA's forced host device count) against one device.

The federations train a tiny conv net, registered as a model of its own, in MNISTNet's place (its
compile takes seconds, not tens of seconds); everything else is the real loop on scikit-learn's digits.
"""
import contextlib
import io
import json
import os
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import numpy as np
import pytest

from flash_jax.config import Config
from flash_jax.data.sources import load_dataset
from flash_jax.fl import loop
from flash_jax.models import model_names, register_model

# 9 clients a round of 23 digits each: 3 steps of 8 (sparse learning's mask update after the second);
# on 8 devices a chunk holds 8 clients, so a round is 2 calls, the second padded with 7 weight-0 clients.
# NST with FMA: per-client masks taken from the state's stack, sparse learning, the masked average.
TINY = dict(dataset="digits", num_users=60, frac=0.15, local_bs=8, seed=1, experiment_type="nst", update_mode=1)
COMPARED = ("train_loss", "mask_hamming_clients", "mask_hamming_to_server", "mask_iou_to_server", "union_density")


class TinyNet(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool, example_mask=None):
        x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2), padding="VALID", name="conv")(x))
        x = nn.relu(nn.Dense(16, name="hidden")(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes, name="out")(x)


def tiny_model() -> str:
    """The --model_type of TinyNet, registered on first use: registered when this file is imported, it
    would be in the model list that --help and the README's flag list show to every test."""
    if "scale_tiny" not in model_names():
        register_model("scale_tiny", lambda num_classes, conv_impl: TinyNet(num_classes), r"^(conv|hidden)/kernel$",
                       min_input_size=3, help="a tiny conv net for the tests of large cohorts")
    return "scale_tiny"


def federation(digits, rounds: int = 2, **overrides):
    """Final param leaves and each round's metrics of a tiny digits federation."""
    setup = loop.build_setup(Config(**{**TINY, "model_type": tiny_model(), **overrides}), digits)
    state, infos = loop.init_state(setup), []
    for _ in range(rounds):
        state, info = loop.run_round(setup, state)
        infos.append(info)
    return setup, [np.asarray(leaf) for leaf in jax.tree.leaves(state.model.params)], infos


@pytest.fixture(scope="module")
def one_device(digits):
    """The federation on this process's one device, the whole cohort in one call, its log captured."""
    assert jax.device_count() == 1
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        setup, params, infos = federation(digits)
    return setup, params, infos, log.getvalue()


def test_one_call_logs_its_shape_once_and_wastes_nothing(one_device):
    setup, _, infos, log = one_device
    assert setup.data.mesh is None
    lines = [line for line in log.splitlines() if "new cohort shape" in line]
    assert len(lines) == 1, log
    assert lines[0].endswith("9 clients per call x 1 epoch(s) x 3 steps x batch 8, phases (2, 1), sparse learning, "
                             "per-client masks, FMA"), log
    assert [info["compiled_cohort_shapes"] for info in infos] == [1, 1]
    assert infos[-1]["padding_efficiency"] == 1.0  # equal clients, one call of exactly the cohort


@pytest.mark.slow
def test_eight_devices_equal_one_device(one_device, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    checks = json.loads((tmp_path / "checks.json").read_text())
    assert checks["devices"] == 8 and checks["mesh"] == 8
    assert checks["calls"] == 2 * 2 and checks["compiles"] == 1  # 2 chunks a round, 2 rounds, one shape
    assert checks["split_inputs"] and checks["split_outputs"] and checks["replicated_sums"]
    _, params, infos, _ = one_device
    sharded = np.load(tmp_path / "params.npz")
    chex.assert_trees_all_close([sharded[f"arr_{i}"] for i in range(len(params))], params, rtol=1e-4, atol=1e-5)
    for ours, theirs in zip(infos, checks["infos"], strict=True):
        for key in COMPARED:
            assert theirs[key] == pytest.approx(ours[key], rel=1e-4, abs=1e-6), key
        assert (theirs["upload_bits"], theirs["download_bits"]) == (ours["upload_bits"], ours["download_bits"])
        assert theirs["padding_efficiency"] == pytest.approx(9 / 16)  # 9 clients in 16 slots
        assert theirs["compiled_cohort_shapes"] == 1


def sharded_federation(out: str) -> None:
    """The subprocess: the federation in chunks of 8 clients over 8 devices; records where the cohort
    function's inputs and outputs lived."""
    from jax.sharding import PartitionSpec

    from flash_jax.fl import cohort

    calls, train_chunk = [], cohort.train_chunk

    def recording_train_chunk(*args):
        result = train_chunk(*args)
        sums, (_, losses) = result
        clients = args[4]
        calls.append({
            "split_inputs": all(x.sharding.spec == PartitionSpec("clients") and len(x.sharding.device_set) == 8
                                for x in jax.tree.leaves(clients)),  # NST's packed mask rows too
            "split_outputs": len(losses.sharding.device_set) == 8 and not losses.sharding.is_fully_replicated,
            "replicated_sums": all(x.sharding.is_fully_replicated for x in jax.tree.leaves(sums)),
        })
        return result

    cohort.train_chunk = recording_train_chunk
    setup, params, infos = federation(load_dataset("digits"), clients_per_chunk=8, quiet=True)
    np.savez(os.path.join(out, "params.npz"), *params)
    checks = {"devices": jax.device_count(), "mesh": setup.data.mesh.size, "infos": infos, "calls": len(calls),
              "compiles": train_chunk._cache_size()}
    for key in ("split_inputs", "split_outputs", "replicated_sums"):
        checks[key] = all(call[key] for call in calls)
    with open(os.path.join(out, "checks.json"), "w") as f:
        json.dump(checks, f)


if __name__ == "__main__":
    sharded_federation(sys.argv[1])


@pytest.mark.parametrize("method", [dict(experiment_type="sparsyfed"),
                                    dict(experiment_type="prunefl", prunefl_adjust_every=1)],
                         ids=lambda m: m["experiment_type"])
def test_the_baselines_chunk_like_the_others(digits, method):
    """A cohort in chunks of 4 trains as the whole cohort at once: Powerprop and activation pruning
    (SparsyFed), and the gradient reports that PruneFL's ADJUST reads on round 1."""
    _, whole, infos = federation(digits, update_mode=0, quiet=True, **method)
    _, chunked, chunked_infos = federation(digits, update_mode=0, quiet=True, clients_per_chunk=4, **method)
    chex.assert_trees_all_close(chunked, whole, rtol=1e-4, atol=1e-5)
    for ours, theirs in zip(infos, chunked_infos, strict=True):
        assert theirs["train_loss"] == pytest.approx(ours["train_loss"], rel=1e-5)
        assert theirs["upload_bits"] == ours["upload_bits"]  # the clients' masks: the same in chunks
        # SparsyFed's server mask is the union of theirs; PruneFL's ADJUST ranks the averaged reports,
        # whose sums in chunks may differ in the last bits and swap a near tie (1e-4: 26 entries)
        tolerance = 1e-4 if method["experiment_type"] == "prunefl" else 0.0
        assert theirs["server_mask_density"] == pytest.approx(ours["server_mask_density"], abs=tolerance)
