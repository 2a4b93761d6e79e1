"""A self-contained Markdown report of ``stamp-onnx eval``: the table, four PNG figures, the data.

::

    out_dir/
        report.md          title, command, the table, one figure per section with a caption
        report.json        every ValidationReport.to_dict(), to re-plot a run without re-running it
        fig_energy.png     cumulative share of energy vs transformed token, a few layers
        fig_layer_sqnr.png SQNR (dB) of every rewritten layer vs its float output, per config
        fig_bits.png       bits of every transformed token index, per config
        fig_quality.png    ONNX perplexity per config (causal LMs), else output SQNR per config

Figures are drawn on bare :class:`matplotlib.figure.Figure` objects, which render with Agg and
never touch pyplot's global state or a display. A figure whose data is missing (no per-layer
check was run) is left out and the Markdown says why.
"""

from __future__ import annotations

import json
import logging
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from stamp_onnx.config import BitAllocation, StampConfig, tier_spans
from stamp_onnx.errors import ValidationError
from stamp_onnx.evaluation.validate import ONNX_VS_FLOAT, ValidationReport
from stamp_onnx.graph.contract import read_model

logger = logging.getLogger(__name__)

DPI = 110
MANY_LAYERS = 40  # above this, the per-layer figure draws lines instead of grouped bars
MAX_ENERGY_LAYERS = 4
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
           "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan")


def write_report(
    reports: list[ValidationReport],
    out_dir: Path,
    *,
    title: str,
    table_markdown: str,
    command: str | None = None,
) -> Path:
    """Write ``out_dir/report.md``, its figures and ``report.json``; return the .md path.

    ``table_markdown`` is put in as given (``evaluate.markdown_table``). One config per report,
    in the order given; a config keeps its colour in every figure.
    """
    if not reports:
        raise ValidationError("no reports to write: evaluate at least one config")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = _labels([r.config for r in reports])
    sections = [
        _energy_figure(reports, labels, out_dir),
        _layer_sqnr_figure(reports, labels, out_dir),
        _bits_figure(reports, labels, out_dir),
        _quality_figure(reports, labels, out_dir),
    ]
    lines = [f"# {title}", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [table_markdown.strip(), ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", *body, ""]
    notes = _notes(reports, labels)
    if notes:
        lines += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    lines += ["The data behind every figure is in [report.json](report.json).", ""]
    data = {"title": title, "command": command, "reports": [r.to_dict() for r in reports]}
    # compact: the per-token energies are layers x tokens floats per report
    (out_dir / "report.json").write_text(json.dumps(data, separators=(",", ":"), allow_nan=False) + "\n")
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    logger.info("wrote %s", path)
    return path


# --- figures: each returns (section heading, Markdown lines) ---------------------------------

Section = tuple[str, list[str]]


def _energy_figure(reports: list[ValidationReport], labels: list[str], out_dir: Path) -> Section:
    heading = "Energy per transformed token"
    layers = _energy_layers(reports)
    if not layers:
        return heading, ["_Not drawn: the reports carry no per-token energies (per-layer check not run)._"]
    cols = 2 if len(layers) == 4 else len(layers)
    rows = math.ceil(len(layers) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.6 * rows + 0.3 * len(reports)), layout="constrained")
    for i, layer in enumerate(layers):
        ax = fig.add_subplot(rows, cols, i + 1)
        ks = set()
        for j, report in enumerate(reports):
            diff = next(d for d in report.layer_diffs if d.layer == layer)
            cumulative = np.cumsum(diff.token_energy)
            ax.plot(np.arange(1, len(cumulative) + 1), cumulative, color=_color(j),
                    label=f"{100 * diff.hp_energy:.0f}%")
            ks.add(min(report.config.hp_tokens, len(cumulative)))
        for k in sorted(ks - {0}):  # K=0: nothing at high precision, and log x has no 0
            ax.axvline(k, color="black", linestyle="--", linewidth=0.8)
            ax.annotate(f"K={k}", (k, 1.0), xycoords=("data", "axes fraction"), xytext=(-3, -3),
                        textcoords="offset points", ha="right", va="top", fontsize=7)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(_PLAIN)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("first n transformed tokens (log scale)")
        ax.set_ylabel("cumulative share of energy of L x")
        ax.set_title(_short(layer), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right", title="in first K", title_fontsize=7)
    fig.legend(handles=ax.get_lines()[: len(reports)], labels=labels, loc="outside lower center",
               ncols=min(len(reports), 3), fontsize=8)
    name = _save(fig, out_dir, "fig_energy.png")
    return heading, [
        f"![cumulative energy per transformed token]({name})",
        "",
        "_Share of the energy of L x held by the first n transformed tokens (the first "
        f"validation batch) in {len(layers)} rewritten layers from first to last; the dashed line is K, "
        "the high-precision tokens, and each panel's legend gives the share below it. Look at the height of each curve at K: the higher, the more of the "
        "signal is quantized at high precision. With `none` the tokens keep their order, so the curve "
        "only shows where the energy sits in the sequence (an attention sink lifts its first point)._",
    ]


def _layer_sqnr_figure(reports: list[ValidationReport], labels: list[str], out_dir: Path) -> Section:
    heading = "SQNR of each rewritten layer"
    layers = list(dict.fromkeys(d.layer for r in reports for d in r.layer_diffs))
    if not layers:
        return heading, ["_Not drawn: the reports carry no per-layer results (per-layer check not run)._"]
    index = {layer: i for i, layer in enumerate(layers)}
    n = len(layers)
    wide = 14.0 if n > MANY_LAYERS else min(18.0, max(8.0, n * (0.2 + 0.08 * len(reports))))
    fig = Figure(figsize=(wide, 4.8), layout="tight")
    ax = fig.add_subplot()
    width = 0.8 / len(reports)
    for j, (report, label) in enumerate(zip(reports, labels, strict=True)):
        db = np.full(n, np.nan)
        for d in report.layer_diffs:
            db[index[d.layer]] = d.float_sqnr_db if math.isfinite(d.float_sqnr_db) else np.nan
        legend = f"{label} (mean {np.nanmean(db):.1f} dB)" if np.isfinite(db).any() else label
        if n > MANY_LAYERS:
            ax.plot(np.arange(n), db, color=_color(j), marker="o", markersize=3, linewidth=0.8, label=legend)
        else:
            ax.bar(np.arange(n) + (j - (len(reports) - 1) / 2) * width, db, width, color=_color(j), label=legend)
    step = max(1, math.ceil(n / MANY_LAYERS))
    ticks = np.arange(0, n, step)
    ax.set_xticks(ticks, [_short(layers[i]) for i in ticks], rotation=90, fontsize=7)
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_xlabel("rewritten layer, in graph order" + (f" (one in {step} labelled)" if step > 1 else ""))
    ax.set_ylabel("SQNR vs float layer (dB)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    name = _save(fig, out_dir, "fig_layer_sqnr.png")
    return heading, [
        f"![per-layer SQNR]({name})",
        "",
        "_Each rewritten layer's ONNX output vs the float layer on the same input (the first validation batch), in dB; "
        "higher is better. Look for the layers where a config falls well below the others: the "
        "quantization error of the model is made there._",
    ]


def _bits_figure(reports: list[ValidationReport], labels: list[str], out_dir: Path) -> Section:
    heading = "Bits per transformed token"
    groups: dict[tuple[float, ...], list[str]] = {}
    for report, label in zip(reports, labels, strict=True):
        groups.setdefault(tuple(_token_widths(report).tolist()), []).append(label)
    fig = Figure(figsize=(8.5, 3.6 + 0.35 * len(groups)), layout="constrained")
    ax = fig.add_subplot()
    for j, (widths, names) in enumerate(groups.items()):
        text = "; ".join(names) + f" (average {np.mean(widths):.2f} bits)"
        # earlier lines wider, so a later line drawn on top leaves them visible where they coincide
        ax.stairs(widths, color=_color(j), linewidth=max(1.2, 4.5 - 1.1 * j), label=textwrap.fill(text, 70), baseline=None)
    ax.set_ylim(0, max(max(w) for w in groups) + 1)
    ax.set_xlim(0, max(len(w) for w in groups))
    ax.set_xlabel("transformed token index")
    ax.set_ylabel("activation bits")
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside lower center", fontsize=8)
    name = _save(fig, out_dir, "fig_bits.png")
    return heading, [
        f"![bits per transformed token]({name})",
        "",
        "_Bit-width of every transformed token index at the evaluated sequence length: the first K "
        "tokens (kept prefix tokens included) at high precision, the rest at low; with energy allocation, "
        "the mean over the rewritten layers of each one's width (the widths differ per layer). Configs with "
        "the same allocation share a line; the area under a line is the activation bit budget._",
    ]


def _token_widths(report: ValidationReport) -> np.ndarray:
    """The width of each transformed token at the report's length: the config's two tiers, or with
    energy allocation the mean over the layers of the tiers the rewritten model records."""
    c = report.config
    if c.bit_allocation != BitAllocation.ENERGY:
        spans = tier_spans(report.seq_len, c.hp_tokens, c.hp_bits, c.lp_bits)
    else:
        tiers = read_model(report.onnx_path, ValidationError).tiers_by_module().values()
        return np.mean([_widths_of(q.spans(report.seq_len), report.seq_len) for q in tiers], axis=0)
    return _widths_of(spans, report.seq_len)


def _widths_of(spans: list[tuple[int, int, int]], tokens: int) -> np.ndarray:
    widths = np.zeros(tokens)
    for start, end, bits in spans:
        widths[start:end] = bits
    return widths


def _quality_figure(reports: list[ValidationReport], labels: list[str], out_dir: Path) -> Section:
    fig = Figure(figsize=(max(6.0, 1.1 * len(reports) + 3), 4.6), layout="tight")
    ax = fig.add_subplot()
    x = np.arange(len(reports))
    ppl = [{p.variant: p for p in r.perplexities} for r in reports]
    if all("STaMP ONNX" in p for p in ppl):
        heading = "Perplexity of the rewritten ONNX model"
        every = [p["STaMP ONNX"].all_positions for p in ppl]
        leak_free = [p["STaMP ONNX"].leak_free for p in ppl]
        _bars(ax, x - 0.2, every, 0.4, [_color(j) for j in x], "{:.1f}", label="all positions")
        _bars(ax, x + 0.2, leak_free, 0.4, [_color(j) for j in x], "{:.1f}", label="leak-free positions",
              hatch="//", alpha=0.45)
        float_ppl = ppl[0].get("float ONNX")
        if float_ppl is not None and math.isfinite(float_ppl.all_positions):
            ax.axhline(float_ppl.all_positions, color="black", linestyle="--", linewidth=1,
                       label=f"float ONNX ({float_ppl.all_positions:.2f})")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(_PLAIN)
        ax.yaxis.set_minor_formatter(_minor_log_labels(*ax.get_ylim()))
        ax.tick_params(axis="y", which="both", labelsize=7)
        ax.set_ylabel("perplexity (log scale, lower is better)")
        ax.legend(fontsize=8, loc="best")
        caption = ("_Perplexity of the rewritten ONNX model per config, over every position (solid) and "
                   "over the positions that cannot see later tokens through L (hatched); the dashed line "
                   "is the float model. Lower is better; compare leak-free bars across transforms, since "
                   "DCT/WHT over a whole window leak later tokens into the all-position score "
                   "(n/a: no position is leak-free under that transform)._")
    elif all("STaMP ONNX" in r.word_error_rates for r in reports):
        heading = "Word error rate of the rewritten ONNX encoder"
        wer = [100 * r.word_error_rates["STaMP ONNX"] for r in reports]
        _bars(ax, x, wer, 0.6, [_color(j) for j in x], "{:.1f}")
        float_wer = reports[0].word_error_rates.get("float ONNX")
        if float_wer is not None:
            ax.axhline(100 * float_wer, color="black", linestyle="--", linewidth=1,
                       label=f"float ONNX ({100 * float_wer:.1f}%)")
            ax.legend(fontsize=8, loc="best")
        ax.set_ylabel("word error rate (%, lower is better)")
        caption = ("_Word error rate of the transcripts decoded (float decoder, greedy) from the rewritten ONNX "
                   "encoder's outputs, against the sentences that were spoken; the dashed line is the float "
                   "encoder. Lower is better; the output SQNR is in the table above._")
    else:
        heading = "Output SQNR of the rewritten ONNX model"
        db = [r.comparison(ONNX_VS_FLOAT).sqnr_db for r in reports]
        _bars(ax, x, db, 0.6, [_color(j) for j in x], "{:.1f}")
        ax.set_ylabel("SQNR vs float PyTorch (dB, higher is better)")
        caption = ("_SQNR of the rewritten ONNX model's output vs the float PyTorch model, per config, over "
                   "every validation window. Higher is better; 6 dB is about one bit._")
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_xlabel("config")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    name = _save(fig, out_dir, "fig_quality.png")
    return heading, [f"![{heading.lower()}]({name})", "", caption]


# --- helpers ---------------------------------------------------------------------------------


def _bars(ax: Axes, x: np.ndarray, values: Sequence[float], width: float, colors: list[str], fmt: str,
          **style: Any) -> None:
    """Bars with their value written on top; non-finite values are left out (no bar, 'n/a')."""
    finite = np.array([v if math.isfinite(v) else np.nan for v in values])
    bars = ax.bar(x, finite, width, color=colors, edgecolor="black", linewidth=0.5, **style)
    ax.bar_label(bars, labels=[fmt.format(v) if math.isfinite(v) else "" for v in values], fontsize=7)
    for xi in np.asarray(x)[np.isnan(finite)]:  # no bar to label: say so at the axis
        ax.annotate("n/a", (xi, 0), xycoords=("data", "axes fraction"), xytext=(0, 3),
                    textcoords="offset points", ha="center", fontsize=7)


def _notes(reports: list[ValidationReport], labels: list[str]) -> list[str]:
    """Notes every report carries once, then each config's own notes under its label."""
    shared = [n for n in dict.fromkeys(reports[0].notes) if all(n in r.notes for r in reports)]
    own = [f"{label}: {n}" for label, r in zip(labels, reports, strict=True) for n in r.notes if n not in shared]
    return shared + own


def _energy_layers(reports: list[ValidationReport]) -> list[str]:
    """Up to MAX_ENERGY_LAYERS layers with per-token energies in every report: first, ..., last."""
    have = [{d.layer for d in r.layer_diffs if d.token_energy} for r in reports]
    common = [d.layer for d in reports[0].layer_diffs if all(d.layer in h for h in have)]
    if not common:
        return []
    picks = np.linspace(0, len(common) - 1, min(MAX_ENERGY_LAYERS, len(common))).round().astype(int)
    return [common[i] for i in dict.fromkeys(picks.tolist())]


def _labels(configs: list[StampConfig]) -> list[str]:
    """StampConfig.label() of each config, numbered where two configs would otherwise share a label."""
    labels = [c.label() for c in configs]
    return [f"{label} #{i + 1}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def _short(layer: str) -> str:
    """'model.layers.3.self_attn.q_proj' -> 'layers.3.self_attn.q_proj' (drop a leading 'model.')."""
    return layer.removeprefix("model.")


_PLAIN = FuncFormatter(lambda value, _pos: f"{value:g}")


def _minor_log_labels(low: float, high: float) -> FuncFormatter:
    """Label the minor ticks of a log axis from low to high: all within a decade, fewer beyond."""
    decades = math.log10(high / low) if low > 0 and high > low else 0.0
    keep = "23456789" if decades < 1 else "25" if decades < 2.5 else ""
    return FuncFormatter(lambda value, _pos: f"{value:g}" if f"{value:g}"[0] in keep else "")


def _color(i: int | np.integer) -> str:
    return _COLORS[int(i) % len(_COLORS)]


def _save(fig: Figure, out_dir: Path, name: str) -> str:
    fig.savefig(out_dir / name, dpi=DPI)
    fig.clear()  # a bare Figure is not registered with pyplot: clearing frees its artists
    return name
