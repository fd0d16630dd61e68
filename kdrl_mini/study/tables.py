"""The per-variant table of a study (``table.md``): each metric's mean ± 95% t-interval half-width over
seeds, with fixed rows (the untrained student, the teacher) first."""

from __future__ import annotations

from . import stats


def variant_table(records: list[dict], metrics: tuple[str, ...], order: tuple[str, ...],
                  fixed: list[tuple[str, dict]] = ()) -> str:
    """Markdown: one row per variant of ``records`` (``order`` first, then the rest by name), a column per
    metric ("x ± n/a" for one seed, "—" for none); ``fixed`` rows (name, numbers) come first, one
    deterministic value each."""
    rows = ["| variant | seeds | " + " | ".join(m.replace("_", " ") for m in metrics) + " |",
            "|" + "---|" * (len(metrics) + 2)]
    for name, numbers in fixed:
        rows.append(f"| {name} | - | " + " | ".join(f"{numbers[m]:.3f}" if m in numbers else "—" for m in metrics)
                    + " |")
    names = [v for v in order if any(r["variant"] == v for r in records)]
    for name in names + sorted({r["variant"] for r in records} - set(names)):
        rs = [r for r in records if r["variant"] == name]
        cells = []
        for m in metrics:
            values = [r[m] for r in rs if m in r and r[m] == r[m]]  # NaN: does not apply
            if len(values) < 2:
                cells.append(f"{values[0]:.3f} ± n/a" if values else "—")
            else:
                mean, _, hi = stats.t_interval(values, 0.95)
                cells.append(f"{mean:.3f} ± {hi - mean:.3f}")
        rows.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
