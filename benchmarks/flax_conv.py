"""A user's model built from flax's own `nn.Conv`, trained as the cohort trains it: with the
project's fast formulation for its convolutions (--conv_impl auto: slices on CPU) and with flax's
own (--conv_impl xla, what the model computes untouched). One process, side by side; the first
round (compile included) apart from the median of the others.

    python -m benchmarks.flax_conv [--rounds 20]
"""
import argparse
import statistics

from flax import linen as nn

import flash_jax


class FlaxCNN(nn.Module):
    """Two flax convolutions and a dense layer, as a user would write them."""

    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool, example_mask=None):
        x = nn.relu(nn.Conv(16, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(32, (3, 3), strides=2, name="conv2")(x))
        return nn.Dense(self.num_classes, name="fc")(x.reshape(x.shape[0], -1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    flash_jax.register_model("flax_cnn", lambda num_classes, conv_impl: FlaxCNN(num_classes),
                             mask_pattern=r"^(conv\d|fc)/kernel$", help="two flax convolutions, a dense layer")
    print("| --conv_impl | first round (s, compile included) | median later round (s) | final accuracy |")
    print("|---|---|---|---|")
    for impl in ("auto", "xla"):
        history = flash_jax.run(flash_jax.Config(model_type="flax_cnn", experiment_type="pdst", density=0.3,
                                                 fl_rounds=args.rounds, eval_every=1, quiet=True, conv_impl=impl))
        later = statistics.median(r["round_s"] for r in history[1:])
        print(f"| {impl} | {history[0]['round_s']:.2f} | {later:.3f} | {history[-1]['accuracy']:.4f} |")


if __name__ == "__main__":
    main()
