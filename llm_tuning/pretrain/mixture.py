"""Data mixtures: the probability of drawing the next text from each source.

    p_i  ∝  weight_i × size_i ** alpha

`size_i` is the source's line count. With every weight 1 and alpha 1 each source is drawn in
proportion to its size (plain concatenation, shuffled). A weight of 2 doubles a source's share
(upsampling a small domain set); alpha < 1 flattens the mixture towards uniform (the temperature
sampling multilingual models use, e.g. alpha 0.3), alpha 0 ignores sizes altogether.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..cli import UserError


@dataclass(frozen=True)
class MixtureRow:
    source: str
    lines: int
    weight: float
    natural_share: float   # size_i / Σ size
    probability: float     # the sampling probability
    epochs: float | None   # expected passes over the source for `total_draws` draws


def parse_weights(spec: str | None, sources: list[str]) -> dict[str, float]:
    """`"zh_general=2,en_general=0.5"` -> weights for every source (unnamed sources weigh 1)."""
    weights = dict.fromkeys(sources, 1.0)
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise UserError(f"--mixture_weights: {item.strip()!r} is not source=weight (e.g. {sources[0]}=2)")
        if name not in weights:
            raise UserError(f"--mixture_weights: unknown source {name!r}; the sources are: {', '.join(sources)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise UserError(f"--mixture_weights: the weight of {name} must be a number, "
                            f"got {value.strip()!r}") from None
        if weights[name] < 0:
            raise UserError(f"--mixture_weights: the weight of {name} must be >= 0, got {weights[name]}")
    return weights


def mixture_probabilities(sizes: dict[str, int], weights: dict[str, float] | None = None,
                          alpha: float = 1.0) -> dict[str, float]:
    """Sampling probability per source: weight × size ** alpha, normalised to sum to 1."""
    weights = weights or {}
    if alpha < 0:
        raise UserError(f"--alpha must be >= 0, got {alpha}")
    scores = {name: weights.get(name, 1.0) * (size ** alpha if size > 0 else 0.0) for name, size in sizes.items()}
    total = sum(scores.values())
    if total <= 0:
        raise UserError("every source has weight 0 (or no lines); give at least one a positive weight")
    return {name: score / total for name, score in scores.items()}


def text_probabilities(token_shares: dict[str, float], tokens_per_text: dict[str, float]) -> dict[str, float]:
    """The probability of drawing a text from each source so that the sources get `token_shares`
    of the tokens: a source whose texts are twice as long is drawn half as often (q_i ∝ p_i / L_i)."""
    scores = {name: share / tokens_per_text[name] for name, share in token_shares.items()}
    total = sum(scores.values())
    return {name: score / total for name, score in scores.items()}


def mixture_table(sizes: dict[str, int], weights: dict[str, float], probabilities: dict[str, float],
                  total_draws: int | None = None) -> list[MixtureRow]:
    total_lines = sum(sizes.values())
    return [
        MixtureRow(
            source=name, lines=sizes[name], weight=weights.get(name, 1.0),
            natural_share=sizes[name] / total_lines, probability=probabilities[name],
            epochs=probabilities[name] * total_draws / sizes[name] if total_draws and sizes[name] else None,
        )
        for name in sizes
    ]


def format_table(rows: list[MixtureRow], unit: str = "lines") -> str:
    """A fixed-width text table of the mixture, one source a row (sizes counted in `unit`)."""
    width = max(len("source"), *(len(r.source) for r in rows))
    with_epochs = any(r.epochs is not None for r in rows)
    header = f"{'source':<{width}}  {unit:>9}  {'weight':>6}  {'share':>7}  {'prob':>7}"
    header += "  {:>7}".format("epochs") if with_epochs else ""
    lines = [header, "-" * len(header)]
    for r in rows:
        line = (f"{r.source:<{width}}  {r.lines:>9,}  {r.weight:>6g}  {r.natural_share:>7.2%}"
                f"  {r.probability:>7.2%}")
        if with_epochs:
            line += f"  {r.epochs:>7.2f}"
        lines.append(line)
    return "\n".join(lines)


def plot_mixture(rows: list[MixtureRow], out_file: str | Path) -> Path:
    """Bar chart: each source's natural share of the corpus next to its sampling probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_file = Path(out_file)
    positions = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(4, 1.5 * len(rows)), 4))
    ax.bar([p - 0.2 for p in positions], [r.natural_share for r in rows], width=0.4, label="share of lines")
    ax.bar([p + 0.2 for p in positions], [r.probability for r in rows], width=0.4, label="sampling probability")
    ax.set_xticks(list(positions), [r.source for r in rows], rotation=20, ha="right")
    ax.set_ylabel("fraction")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out_file
