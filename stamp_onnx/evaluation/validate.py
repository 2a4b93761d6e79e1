"""Numerical validation of a rewritten ONNX model against PyTorch, on real text.

Four outputs per input batch (logits or last_hidden_state):

    float torch        the PyTorch model                       (the reference)
    float ONNX         the float export, in onnxruntime        (checks the export)
    STaMP torch        PyTorch with :func:`stamp_reference`    (checks the rewrite's math)
    STaMP ONNX         the rewritten model, in onnxruntime     (what a user deploys)

Comparisons, with their tolerances:

- float ONNX vs float torch: max |diff| / max |ref| <= FLOAT_RTOL (checks the export).
- STaMP ONNX vs STaMP torch per layer, stage by stage on the ONNX run's own inputs
  (:mod:`stamp_onnx.evaluation.layer_check`): transforms and matmul within LAYER_RTOL, every quantized
  value bit for bit (checks the custom ops against the math oracle).
- STaMP ONNX vs STaMP torch end to end: reported, no tolerance. At 4 bits they are two
  different noise draws: ~1e-7 float differences flip a few roundings, and the flips grow
  through the layers (SmolLM2, 8/4 bits: ~6 dB end to end vs ~126 dB per layer), so
  bit-exactness is only checked per layer.
- STaMP torch / STaMP ONNX vs float torch: the quality of the quantization; the ONNX one must
  be within SQNR_MATCH_DB of the torch one (same method, same bits, a different noise draw).

Causal LMs also get perplexity on the same windows, twice (docs/design.md, "Causality"):
``all`` scores every position; ``leak-free`` only positions t whose output cannot depend on
tokens after t through the sequence transform (:func:`leak_free_mask`). For ``none`` both are
the same set; for Haar the block ends; for DCT/WHT over a whole window almost nothing.
Metrics accumulate batch by batch (:mod:`stamp_onnx.evaluation.metrics`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

from stamp_onnx.config import StampConfig
from stamp_onnx.core.naming import module_of_layer
from stamp_onnx.errors import ConfigError, ValidationError, first_line
from stamp_onnx.evaluation.layer_check import LayerDiff, per_layer_diffs, recorded_weights
from stamp_onnx.evaluation.metrics import (
    RunningDiff,
    RunningNLL,
    json_finite,
    leak_free_mask,
    word_error_rate,
)
from stamp_onnx.evaluation.reference import stamp_reference
from stamp_onnx.graph import runtime
from stamp_onnx.graph.contract import CONFIG_KEY, read_model
from stamp_onnx.zoo import DEFAULT_WINDOWS
from stamp_onnx.zoo.models import LoadedModel, Samples, evaluation_samples, load_model

logger = logging.getLogger(__name__)

FLOAT_RTOL = 1e-4  # float ONNX vs float torch: max |diff| / max |reference|
LAYER_RTOL = 1e-4  # per layer, transform and matmul+inverse stages: max |diff| / max |ref|
SQNR_MATCH_DB = 3.0  # |SQNR(STaMP ONNX vs float) - SQNR(STaMP torch vs float)|
VARIANTS = ("float torch", "float ONNX", "STaMP torch reference", "STaMP ONNX")
TORCH_VS_FLOAT = "STaMP torch reference vs float torch"  # names of the two quality rows
ONNX_VS_FLOAT = "STaMP ONNX vs float torch"


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One output compared with another over every validation batch."""

    name: str
    max_abs: float
    rel: float
    sqnr_db: float
    cosine: float = math.nan
    criterion: str = ""
    passed: bool | None = None


@dataclasses.dataclass(frozen=True)
class Perplexity:
    variant: str
    all_positions: float
    leak_free: float


@dataclasses.dataclass
class ValidationReport:
    model: str
    description: str
    onnx_path: str
    config: StampConfig
    data: str
    n_windows: int
    seq_len: int
    layers_rewritten: int
    layers_hooked: int
    rows: list[Comparison]
    perplexities: list[Perplexity]
    targets_all: int = 0
    targets_leak_free: int = 0
    layer_diffs: list[LayerDiff] = dataclasses.field(default_factory=list)
    transcripts: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    word_error_rates: dict[str, float] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    kernels: str = runtime.FUNCTION_BODIES  # what ran the ai.stamp ops in onnxruntime
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(row.passed is not False for row in self.rows)

    def comparison(self, name: str) -> Comparison:
        """The row called ``name`` (e.g. ONNX_VS_FLOAT); ValidationError if the report has none."""
        row = next((r for r in self.rows if r.name == name), None)
        if row is None:
            raise ValidationError(f"report of {self.onnx_path} has no {name!r} row")
        return row

    def check(self) -> None:
        """Raise ValidationError naming every comparison that missed its tolerance."""
        failed = [f"{r.name}: {r.criterion} not met (rel {r.rel:.2e}, SQNR {r.sqnr_db:.1f} dB)"
                  for r in self.rows if r.passed is False]
        if failed:
            raise ValidationError(f"{self.onnx_path}: " + "; ".join(failed))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["config"] = dataclasses.asdict(self.config)
        data["ok"] = self.ok
        return json_finite(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationReport:
        """The inverse of :meth:`to_dict` (a cached evaluation read back)."""
        data = _unfinite({k: v for k, v in data.items() if k != "ok"})
        return cls(
            **{
                **data,
                "config": StampConfig.from_dict(data["config"]),
                "rows": [Comparison(**row) for row in data["rows"]],
                "perplexities": [Perplexity(**p) for p in data["perplexities"]],
                "layer_diffs": [
                    LayerDiff(**{**d, "token_energy": tuple(d["token_energy"])}) for d in data["layer_diffs"]
                ],
            }
        )

    def to_table(self) -> str:
        c = self.config
        avg = c.average_bits(self.seq_len)
        lines = [
            f"model    {self.model}: {self.description}",
            f"onnx     {self.onnx_path}",
            f"config   {c.label()} (average {avg:.2f} bits at {self.seq_len} tokens)",
            f"data     {self.n_windows} samples x {self.seq_len} tokens of {self.data}",
            f"layers   {self.layers_rewritten} rewritten in ONNX, {self.layers_hooked} hooked in PyTorch",
            f"runtime  onnxruntime {ort.__version__}, ai.stamp ops run by {self.kernels}",
            "",
            f"{'comparison':<38} {'max |diff|':>10} {'rel err':>9} {'SQNR dB':>8} {'cosine':>8}  check",
        ]
        for r in self.rows:
            check = "" if r.passed is None else ("ok" if r.passed else "FAIL") + f" ({r.criterion})"
            cells = (f"{_cell(r.max_abs, '.3g'):>10} {_cell(r.rel, '.2e'):>9} {_cell(r.sqnr_db, '.2f'):>8} "
                     f"{_cell(r.cosine, '.4f'):>8}")
            lines.append(f"{r.name:<38} {cells}  {check}".rstrip())
        if self.perplexities:
            lines += ["", f"{'perplexity (targets)':<38} {f'all ({self.targets_all})':>14} {f'leak-free ({self.targets_leak_free})':>20}"]
            for p in self.perplexities:
                lines.append(f"{p.variant:<38} {_num(p.all_positions):>14} {_num(p.leak_free):>20}")
        if self.word_error_rates:
            lines += ["", f"{'word error rate vs the spoken text':<38} {'WER':>8}  first transcript"]
            for name, wer in self.word_error_rates.items():
                lines.append(f"{name:<38} {wer:>8.3f}  {self.transcripts[name][0]!r}")
        lines += ["", *(f"note: {n}" for n in self.notes), f"took {self.seconds:.1f} s"]
        return "\n".join(lines)


def read_stamp_metadata(path: str | Path) -> tuple[StampConfig, list[str]]:
    """The config a model was rewritten with and the module names of its rewritten layers."""
    rewritten = read_model(path, ValidationError)
    if rewritten.config is None:
        raise ValidationError(f"{path} has no {CONFIG_KEY!r} metadata: it was not written by stamp-onnx quantize")
    return rewritten.config, rewritten.modules


def validate(
    model_name_or_dir: str | Path | LoadedModel,
    rewritten_onnx_path: str | Path,
    *,
    float_onnx_path: str | Path | None = None,
    batch: int = 1,
    seq_len: int = 128,
    n_windows: int = DEFAULT_WINDOWS,
    seed: int = 0,
    config: StampConfig | None = None,
    per_layer: bool = True,
    native: bool = True,
) -> ValidationReport:
    """Compare float and STaMP outputs of PyTorch and ONNX Runtime; see the module docstring.

    ``config`` overrides the one recorded in the rewritten model (which is then not needed).
    The float export is made in a temporary folder when ``float_onnx_path`` is None.
    ``seed`` only drives random token ids (models without a tokenizer). ``per_layer`` runs
    the per-layer check on the first batch (one more onnxruntime session). ``native`` runs
    the ai.stamp ops with the native kernels when they were built (else the function bodies).
    """
    start = time.perf_counter()
    recorded = read_model(rewritten_onnx_path, ValidationError)  # the file's contract, read once
    config = config or recorded.config
    layers, scales = recorded.modules, recorded.scales_by_module()
    if config is None:
        raise ValidationError(
            f"{rewritten_onnx_path} has no {CONFIG_KEY!r} metadata: it was not written by stamp-onnx quantize"
        )
    for name, value in (("n_windows", n_windows), ("batch", batch)):
        if value < 1:
            raise ConfigError(f"{name}={value} is not allowed; use a positive integer")
    loaded = model_name_or_dir if isinstance(model_name_or_dir, LoadedModel) else load_model(model_name_or_dir)
    samples = evaluation_samples(loaded, n_windows, seq_len, seed)
    seq_len = loaded.tokens or seq_len
    rewritten = _session(rewritten_onnx_path, native)
    if float_onnx_path is None:
        from stamp_onnx.zoo.export import export_onnx

        with tempfile.TemporaryDirectory(prefix="stamp-onnx-") as tmp:
            floated = _session(export_onnx(loaded, Path(tmp) / f"{loaded.name}.onnx"))
    else:
        floated = _session(float_onnx_path)
    by_layer = recorded_weights(recorded, config)
    held = {module_of_layer(layer): w for layer, w in by_layer.items()}
    tiers = recorded.tiers_by_module()
    with stamp_reference(loaded.module, config, layers=layers or None, scales=scales, recorded_weights=held,
                         tiers=tiers) as hooked:
        pass  # resolve and check the layer names once, before the long loop

    reference = functools.partial(stamp_reference, loaded.module, config, layers=hooked, scales=scales,
                                  recorded_weights=held, tiers=tiers)
    diffs, nll, texts = _compare(loaded, samples, batch, (floated, rewritten), config, reference)
    layer_diffs = []
    if per_layer:
        layer_diffs = per_layer_diffs(rewritten_onnx_path, loaded.module, config, samples.rows(0, batch), native=native,
                                      recorded=by_layer)
    torch_row = _row(diffs["torch"], TORCH_VS_FLOAT)
    rows = [
        _row(diffs["float"], "float ONNX vs float torch", rtol=FLOAT_RTOL),
        *(_layer_rows(layer_diffs) if layer_diffs else []),
        _row(diffs["ref"], "STaMP ONNX vs STaMP torch, end to end"),
        torch_row,
        _row(diffs["onnx"], ONNX_VS_FLOAT, near_sqnr=torch_row.sqnr_db),
    ]
    return ValidationReport(
        model=loaded.name,
        description=loaded.description,
        onnx_path=str(rewritten_onnx_path),
        config=config,
        data=samples.description,
        n_windows=n_windows,
        seq_len=seq_len,
        layers_rewritten=len(layers),
        layers_hooked=len(hooked),
        rows=rows,
        perplexities=[
            Perplexity(name, acc.perplexity(leak_free=False), acc.perplexity(leak_free=True))
            for name, acc in nll.items()
        ],
        targets_all=nll["float torch"].count_all if nll else 0,
        targets_leak_free=nll["float torch"].count_leak_free if nll else 0,
        layer_diffs=layer_diffs,
        transcripts=texts,
        word_error_rates=_word_error_rates(samples, texts),
        seconds=time.perf_counter() - start,
        kernels=runtime.kernels(native),
        notes=_notes(loaded, layers, hooked, layer_diffs)
        + ([f"the per-layer check does not cover integer GEMMs (--target integer) yet: its {integer} integer layers are "
            "checked end to end only"]
           if (integer := sum(layer.integer for layer in recorded.layers)) else []),
    )


# --- internals ----------------------------------------------------------------------------


def _session(path: str | Path, native: bool = False) -> ort.InferenceSession:
    try:
        return runtime.session(path, native)
    except Exception as err:
        raise ValidationError(f"onnxruntime cannot load {path}: {first_line(err)}") from err


def _run_all(
    loaded: LoadedModel,
    feeds: dict[str, np.ndarray],
    floated: ort.InferenceSession,
    rewritten: ort.InferenceSession,
    reference: Callable[[], AbstractContextManager[list[str]]],
) -> list[np.ndarray]:
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        float_torch = loaded.module(**tensors)[0].numpy()
        with reference():
            stamp_torch = loaded.module(**tensors)[0].numpy()
    return [float_torch, _run(floated, feeds), stamp_torch, _run(rewritten, feeds)]


def _compare(
    loaded: LoadedModel,
    samples: Samples,
    batch: int,
    sessions: tuple[ort.InferenceSession, ort.InferenceSession],
    config: StampConfig,
    reference: Callable[[], AbstractContextManager[list[str]]],
) -> tuple[dict[str, RunningDiff], dict[str, RunningNLL], dict[str, list[str]]]:
    """Run the four variants batch by batch; accumulate the comparisons, NLLs and transcripts."""
    causal = loaded.kind == "causal-lm"
    mask = leak_free_mask(samples.feeds["input_ids"].shape[1], config) if causal else np.ones(0, bool)
    diffs = {k: RunningDiff() for k in ("float", "ref", "torch", "onnx")}
    nll = {k: RunningNLL() for k in VARIANTS} if causal else {}
    texts: dict[str, list[str]] = {k: [] for k in VARIANTS} if loaded.transcribe else {}
    for lo in tqdm(range(0, len(samples), batch), desc="validate", unit="batch", disable=None):
        feeds = samples.rows(lo, lo + batch)
        outs = dict(zip(VARIANTS, _run_all(loaded, feeds, *sessions, reference), strict=True))
        ref = outs["float torch"]
        diffs["float"].update(ref, outs["float ONNX"])
        diffs["ref"].update(outs["STaMP torch reference"], outs["STaMP ONNX"])
        diffs["torch"].update(ref, outs["STaMP torch reference"])
        diffs["onnx"].update(ref, outs["STaMP ONNX"])
        for name, acc in nll.items():
            acc.update(outs[name], feeds["input_ids"], mask)
        for name, got in texts.items():
            got += loaded.transcribe(outs[name]) if loaded.transcribe else []
    return diffs, nll, texts


def _word_error_rates(samples: Samples, texts: dict[str, list[str]]) -> dict[str, float]:
    """Per variant, the word error rate of its transcripts against what was said (all clips pooled)."""
    if not texts or not samples.texts:
        return {}
    return {name: word_error_rate(samples.texts, got) for name, got in texts.items()}


def _notes(loaded: LoadedModel, layers: list[str], hooked: list[str], layer_diffs: list[LayerDiff]) -> list[str]:
    notes = []
    if "GGUF" in loaded.description:
        notes.append(f"float reference: {loaded.description}")
    if layers and len(layers) != len(hooked):
        notes.append(f"{len(layers)} layers rewritten but {len(hooked)} hooked")
    if layer_diffs:
        worst = min(layer_diffs, key=lambda d: d.sqnr_db)
        codes = sum(d.qdq_elements for d in layer_diffs)
        notes.append(f"per-layer check on batch 1: {len(layer_diffs)} layers, {codes} quantized values compared; "
                     f"lowest whole-layer SQNR {worst.sqnr_db:.1f} dB ({worst.layer})")
    if loaded.kind == "causal-lm":
        notes.append("leak-free perplexity scores only positions that cannot see later tokens through L")
        notes.append("STaMP torch and STaMP ONNX are two draws of the rounding noise: at low bits their "
                      "end-to-end outputs and perplexities differ by chance, not by a bug")
    return notes


def _run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> np.ndarray:
    wanted = {i.name for i in session.get_inputs()}
    missing = wanted - set(feeds)
    if missing:
        raise ValidationError(f"the ONNX model wants inputs {sorted(missing)} that the PyTorch model does not take")
    return np.asarray(session.run(None, {k: v for k, v in feeds.items() if k in wanted})[0])


def _row(diff: RunningDiff, name: str, *, rtol: float | None = None, near_sqnr: float | None = None) -> Comparison:
    """A table row; with ``rtol`` or ``near_sqnr`` it also carries a pass/fail criterion."""
    rel = diff.max_abs / diff.ref_max if diff.ref_max else math.inf
    sqnr, cos = diff.sqnr_db(), diff.cosine()
    if rtol is not None:
        return Comparison(name, diff.max_abs, rel, sqnr, cos, f"rel <= {rtol:g}", rel <= rtol)
    if near_sqnr is not None:
        close = sqnr == near_sqnr or abs(sqnr - near_sqnr) <= SQNR_MATCH_DB
        return Comparison(name, diff.max_abs, rel, sqnr, cos, f"within {SQNR_MATCH_DB:g} dB of torch", close)
    return Comparison(name, diff.max_abs, rel, sqnr, cos)


def _layer_rows(diffs: list[LayerDiff]) -> list[Comparison]:
    """The per-layer check as table rows, each the worst layer of one stage (see layer_check)."""
    nan = math.nan
    t_rel = max(d.transform_rel for d in diffs)
    y_rel = max(d.output_rel for d in diffs)
    mismatches = sum(d.qdq_mismatches for d in diffs)
    rtol = f"rel <= {LAYER_RTOL:g}"
    return [
        Comparison("per layer: transform L x", nan, t_rel, nan, nan, rtol, t_rel <= LAYER_RTOL),
        Comparison("per layer: TokenQDQ codes differing", mismatches, nan, nan, nan, "bit-exact", mismatches == 0),
        Comparison("per layer: W and inverse L^-1", nan, y_rel, nan, nan, rtol, y_rel <= LAYER_RTOL),
        Comparison("per layer: whole layer (lowest)", nan, nan, min(d.sqnr_db for d in diffs)),
        Comparison("per layer: STaMP ONNX vs float layer (mean)", nan, nan, mean_layer_sqnr(diffs)),
    ]


def mean_hp_energy(diffs: list[LayerDiff]) -> float:
    """Mean over layers of the share of L x's energy held by the first hp_tokens tokens."""
    return float(np.mean([d.hp_energy for d in diffs])) if diffs else math.nan


def mean_layer_sqnr(diffs: list[LayerDiff]) -> float:
    """Mean over layers of the SQNR (dB) of each layer's output vs its float output, same input."""
    return float(np.mean([d.float_sqnr_db for d in diffs])) if diffs else math.nan


def _cell(value: float, spec: str) -> str:
    return "" if math.isnan(value) else format(value, spec)


def layer_check_summary(report: ValidationReport) -> str:
    """'ok' or 'FAIL' over the per-layer rows, with the QDQ mismatch count ('' if not run)."""
    rows = [r for r in report.rows if r.name.startswith("per layer:")]
    if not rows:
        return ""
    codes = next(r for r in rows if "TokenQDQ" in r.name)
    verdict = "ok" if all(r.passed is not False for r in rows) else "FAIL"
    return f"{verdict} ({int(codes.max_abs)} codes differ)"


def _num(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _unfinite(value: Any) -> Any:
    """Undo :func:`_finite`: the strings 'inf', '-inf' and 'nan' become floats again."""
    if value in ("inf", "-inf", "nan"):
        return float(value)
    if isinstance(value, dict):
        return {k: _unfinite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unfinite(v) for v in value]
    return value


