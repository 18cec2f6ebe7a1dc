"""Communication accounting on hand-computed cases and through the round loop."""
import pytest

from flash_jax.comm import mask_bits, model_bits, sparse_tensor_bits
from flash_jax.config import Config
from flash_jax.fl.loop import run

SIZES = {"conv2/kernel": 5000, "fc1/kernel": 256000}


def test_tensor_and_model_bits_by_hand():
    assert mask_bits(3, 16) == 12            # 3 indices of 4 bits beat a 16-bit bitmap
    assert mask_bits(10, 16) == 16           # the bitmap is cheaper
    assert sparse_tensor_bits(3, 16, mask_known=False) == 3 * 32 + 12
    assert sparse_tensor_bits(3, 16, mask_known=True) == 3 * 32
    assert model_bits({"a": 3, "b": 10}, {"a": 16, "b": 16}, dense_size=5, mask_known=False) == \
        5 * 32 + (96 + 12) + (320 + 16)


def test_dense_ratio_is_one(digits):
    history = run(Config(experiment_type="dense", num_users=4, frac=1.0, fl_rounds=2, eval_every=1, quiet=True),
                  digits)
    assert [m["comm_ratio_vs_dense"] for m in history] == [1.0, 1.0]
    assert history[1]["cumulative_bits"] == 2 * (history[0]["upload_bits"] + history[0]["download_bits"])


@pytest.mark.slow
def test_jmwst_mask_is_paid_once_then_free(digits):
    history = run(Config(experiment_type="jmwst", num_users=4, frac=1.0, init_frac=0.25, init_epoch=1,
                         fl_rounds=3, eval_every=1, jmwst_update_interval=10, quiet=True), digits)
    first, second, third = history
    # round 1 updates the server mask; round 2 sends it to everybody; round 3's downloads are values only
    nnz = {p: round(third["layer_density"][p] * n) for p, n in SIZES.items()}
    assert nnz == {p: round(second["layer_density"][p] * n) for p, n in SIZES.items()}
    assert second["download_bits"] - third["download_bits"] == 4 * sum(mask_bits(nnz[p], n) for p, n in SIZES.items())
    # clients keep the server mask in rounds 2 and 3, so their uploads carry values and no mask
    assert second["upload_bits"] == third["upload_bits"] == third["download_bits"]
    assert first["upload_bits"] > third["upload_bits"]  # round 1's sparse learning changed the masks
    assert third["cumulative_bits"] > first["upload_bits"] + first["download_bits"] + second["upload_bits"]
    assert third["comm_ratio_vs_dense"] < 0.15
