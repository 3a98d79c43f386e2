"""Training curves: loss and accuracy per epoch as a PNG."""

from __future__ import annotations

from pathlib import Path

from facerank import atomic


def plot_history(history: list[dict], path: Path, *, held_out_label: str = "held-out") -> None:
    """Loss and accuracy per epoch, train and held-out, as a two-panel PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, title in ((loss_axis, "loss", "Loss"), (accuracy_axis, "accuracy", "Accuracy")):
        axis.plot(epochs, [row[f"train_{key}"] for row in history], label="train")
        if history and f"val_{key}" in history[0]:
            axis.plot(epochs, [row[f"val_{key}"] for row in history], label=held_out_label)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    atomic.write_with(path, lambda temporary: figure.savefig(temporary, format="png", dpi=100))
    plt.close(figure)
