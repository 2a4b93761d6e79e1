"""Quality of models quantized with ``--target htp``: ``validate --ep htp`` and ``eval --ep htp``.

A ``--target htp`` file is a static QDQ model, so there is no STaMP reference in PyTorch to hold it
to layer by layer (the per-token ai.stamp math is not what it computes). What it is held to:

    float          the float export in onnxruntime (CPU), every sample      (the reference)
    CPU            the HTP file on the CPU provider at ORT_DISABLE_ALL      (the file's own arithmetic)
    HTP            the HTP file on the HTP, CPU fallback disabled, the first ``htp_samples``

The HTP simulator takes seconds to minutes per inference and its wall time follows the host, so
quality comes from the CPU run over every sample and the HTP runs a few of them to show the two
agree (SQNR of HTP vs CPU, and both against float on the same samples). The QNN graph of that
run proves the file integer on the NPU and gives its activation bytes. Causal LMs get perplexity
over all targets and over the leak-free ones (:func:`leak_free_mask`), speech models word error
rates.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stamp_onnx.config import StampConfig
from stamp_onnx.core.quant import sqnr_db
from stamp_onnx.errors import ConfigError, ValidationError
from stamp_onnx.evaluation.evaluate import parse_config_spec, spec_number
from stamp_onnx.evaluation.metrics import RunningNLL, leak_free_mask, word_error_rate
from stamp_onnx.graph import runtime
from stamp_onnx.graph.contract import HTP_KEY
from stamp_onnx.targets import htp_model, htp_runtime
from stamp_onnx.zoo import CALIBRATION_SAMPLES
from stamp_onnx.zoo.export import export_onnx
from stamp_onnx.zoo.models import (
    LoadedModel,
    Samples,
    calibration_samples,
    evaluation_samples,
    load_model,
)

logger = logging.getLogger(__name__)

HTP_SAMPLES = 1  # the simulator's default share of the samples
BASELINE = "baseline"  # the config spec of onnxruntime's QNN quantizer alone (A16W8)
BASELINE_LABEL = "A16W8 (QNN quantizer alone)"


@dataclasses.dataclass
class HtpEvaluation:
    """One ``--target htp`` file against float: on the CPU (all samples) and the HTP (the first few)."""

    label: str
    path: str
    samples: int
    sqnr_cpu_db: float
    htp_samples: int = 0
    sqnr_cpu_first_db: float | None = None  # the CPU on the samples the HTP ran
    sqnr_htp_db: float | None = None
    sqnr_htp_vs_cpu_db: float | None = None
    perplexity: dict[str, float] = dataclasses.field(default_factory=dict)  # variant -> all targets
    perplexity_leak_free: dict[str, float] = dataclasses.field(default_factory=dict)
    word_error_rates: dict[str, float] = dataclasses.field(default_factory=dict)
    integer_only: bool | None = None
    float_ops: list[str] = dataclasses.field(default_factory=list)
    qnn_ops: int | None = None
    activation_mb: dict[str, float] = dataclasses.field(default_factory=dict)  # by QNN type, graph I/O included
    hp_tokens: list[int] = dataclasses.field(default_factory=list)  # the K each unit uses (band-rounded)
    linear_input_ratio: float | None = None  # bytes of the rewritten layers' inputs as the units read them / at A16
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def evaluate_file(path: str | Path, label: str, reference: np.ndarray, feeds: Sequence[dict[str, np.ndarray]], *,
                  htp_samples: int = HTP_SAMPLES, input_ids: np.ndarray | None = None,
                  config: StampConfig | None = None, loaded: LoadedModel | None = None,
                  spoken: Sequence[str] = ()) -> HtpEvaluation:
    """Run ``path`` on the CPU reference for every feed and on the HTP for the first ``htp_samples``.

    ``reference``: the float model's first output, one row per feed. ``input_ids`` (causal LMs)
    adds perplexities; ``config`` sets their leak-free positions (the transform's blocks).
    ``loaded`` with ``spoken`` (a speech model and what each sample says) adds word error rates.
    """
    cpu_session = htp_runtime.cpu_reference_session(path)
    cpu = np.concatenate([cpu_session.run(None, f)[0] for f in feeds])
    result = HtpEvaluation(label=label, path=str(path), samples=len(feeds), sqnr_cpu_db=_db(reference, cpu))
    outputs = {"float": reference, "CPU": cpu}  # name -> logits or hidden states, one row per sample
    n = min(htp_samples, len(feeds))
    if not n:
        result.note = "HTP not run (--htp-samples 0): quality from the CPU provider only, integer-only not checked"
    elif not htp_runtime.available():
        result.note = f"HTP not run: onnxruntime-qnn is not installed ({htp_runtime.INSTALL_HINT})"
    else:
        with tempfile.TemporaryDirectory() as dump:
            session = htp_runtime.htp_session(path, dump_dir=dump)
            htp = np.concatenate([session.run(None, f)[0] for f in feeds[:n]])
            report = htp_runtime.integer_report(dump)
        outputs |= {f"HTP, first {n}": htp, f"CPU, first {n}": cpu[:n]}  # like with like
        result.htp_samples = n
        result.sqnr_cpu_first_db = _db(reference[:n], cpu[:n])
        result.sqnr_htp_db = _db(reference[:n], htp)
        result.sqnr_htp_vs_cpu_db = _db(cpu[:n], htp)
        result.integer_only = report.integer_only
        result.float_ops = [f"{op} {node}" for op, node, _ in report.float_ops[:5]]
        result.qnn_ops = sum(report.op_counts.values())
        result.activation_mb = {t: round(b / 1e6, 1) for t, b in report.activation_bytes.items()}
    if input_ids is not None:
        mask = leak_free_mask(input_ids.shape[1], config or StampConfig(transform="none"))
        for name, logits in outputs.items():
            nll = RunningNLL()
            nll.update(logits, input_ids[: len(logits)], mask)
            result.perplexity[name] = round(nll.perplexity(leak_free=False), 3)
            result.perplexity_leak_free[name] = round(nll.perplexity(leak_free=True), 3)
    if loaded is not None and loaded.transcribe is not None and spoken:
        result.word_error_rates = {name: round(word_error_rate(spoken[: len(out)], loaded.transcribe(out)), 3)
                                   for name, out in outputs.items()}
    return result


# --- validate --ep htp ------------------------------------------------------------------------


def read_htp_settings(path: str | Path) -> dict[str, Any]:
    """The settings ``quantize --target htp`` recorded in ``path`` (seq_len, batch, fold_inputs, ...)."""
    from stamp_onnx.graph.model_io import load_model as load_onnx

    props = load_onnx(path, ValidationError).metadata_props
    if HTP_KEY not in props:
        raise ValidationError(f"{path} has no {HTP_KEY!r} metadata: it was not written by quantize --target htp "
                              "(run validate without --ep htp)")
    settings: dict[str, Any] = json.loads(props[HTP_KEY])
    return settings


def validate_htp(model: str | Path | LoadedModel, path: str | Path, *, float_onnx_path: str | Path | None = None,
                 n_windows: int, htp_samples: int = HTP_SAMPLES) -> HtpEvaluation:
    """``stamp-onnx validate MODEL FILE --ep htp``: FILE (from ``quantize --target htp``) against the
    float export of MODEL, on MODEL's evaluation samples at FILE's fixed shape."""
    settings = read_htp_settings(path)
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    samples = evaluation_samples(loaded, n_windows, settings["seq_len"], 0)
    with tempfile.TemporaryDirectory(prefix="stamp-onnx-") as tmp:
        float_path = float_onnx_path or export_onnx(loaded, Path(tmp) / f"{loaded.name}.onnx")
        reference = _float_outputs(float_path, samples)
    baseline = bool(settings.get("baseline"))
    label = BASELINE_LABEL if baseline else _label(settings)
    config = None if baseline else StampConfig(transform=settings["transform"], levels=settings["levels"],
                                               prefix_tokens=settings["prefix_tokens"],
                                               grid_width=settings["grid_width"])  # the leak-free mask's transform
    return _evaluate(path, label, reference, samples, loaded, htp_samples, config)


def _label(settings: dict[str, Any]) -> str:
    levels = f" L={settings['levels']}" if settings["transform"] != "none" else ""
    return (f"{settings['transform']}{levels} K={settings['hp_tokens']} {settings['hp_bits']}/{settings['lp_bits']}"
            f" W{settings['weight_bits']}")


def _float_outputs(float_path: str | Path, samples: Samples) -> np.ndarray:
    session = runtime.session(float_path, native=False)
    return np.concatenate([session.run(None, samples.rows(i, i + 1))[0] for i in range(len(samples))])


def _evaluate(path: str | Path, label: str, reference: np.ndarray, samples: Samples, loaded: LoadedModel,
              htp_samples: int, config: StampConfig | None) -> HtpEvaluation:
    rows = [samples.rows(i, i + 1) for i in range(len(samples))]
    try:
        feeds = [next(htp_model.model_feeds(path, row)) for row in rows]
    except ConfigError as err:
        raise ValidationError(f"{path}: {err}") from err
    if feeds and (got := next(iter(feeds[0].values())).shape[0]) != 1:
        raise ValidationError(f"{path} has batch {got}; validate --ep htp evaluates files quantized with --batch 1")
    ids = samples.feeds.get("input_ids") if loaded.kind == "causal-lm" else None
    return evaluate_file(path, label, reference, feeds, htp_samples=htp_samples, input_ids=ids, config=config,
                         loaded=loaded, spoken=samples.texts)


# --- eval --ep htp -----------------------------------------------------------------------------


_OPTION_KINDS: dict[str, type] = {"hp_bits": int, "lp_bits": int, "weight_bits": int, "percentile": float, "calibrator": str}


def parse_htp_spec(spec: str, seq_len: int, fold_inputs: Sequence[str]) -> tuple[StampConfig, htp_model.HtpOptions]:
    """``baseline`` (the QNN quantizer alone, A16W8) or a transform with ``key=value`` overrides of the
    StampConfig and of the HTP's options (hp_bits, lp_bits, weight_bits, calibrator, percentile), e.g.
    ``haar,hp_tokens=32``, ``none,lp_bits=16`` or ``haar,calibrator=mse``."""
    head, *pairs = [part.strip() for part in spec.split(",")]
    options: dict[str, Any] = {}
    rest = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if sep and key in _OPTION_KINDS:
            kind = _OPTION_KINDS[key]
            options[key] = value if kind is str else spec_number(spec, key, value, kind)
        else:
            rest.append(pair)
    if head == BASELINE and rest:
        raise ConfigError(f"config spec {spec!r}: the baseline takes only {', '.join(sorted(_OPTION_KINDS))}")
    config = parse_config_spec(",".join(["haar" if head == BASELINE else head, *rest]))
    if config.transform not in ("haar", "haar2d", "none"):
        raise ConfigError(f"config spec {spec!r}: the HTP takes the transforms haar, haar2d and none")
    htp_options = htp_model.HtpOptions(seq_len=seq_len, fold_inputs=tuple(fold_inputs), baseline=head == BASELINE,
                                       **options)
    return config.replace(hp_bits=htp_options.hp_bits, lp_bits=htp_options.lp_bits, weight_bits=0), htp_options



def evaluate_htp_configs(model: str, out_dir: Path, specs: Sequence[str], *, seq_len: int, n_windows: int,
                         htp_samples: int = HTP_SAMPLES, fold_inputs: Sequence[str] = ()) -> list[HtpEvaluation]:
    """``stamp-onnx eval MODEL --ep htp --configs baseline haar none``: export MODEL once (cached in
    ``out_dir``), calibrate on :data:`CALIBRATION_SAMPLES` samples held out from the ``n_windows``
    evaluation samples, quantize with ``--target htp`` per spec, evaluate each file."""
    parsed = [(spec, *parse_htp_spec(spec, seq_len, fold_inputs)) for spec in specs]  # bad specs fail first
    if not htp_runtime.available():
        raise ConfigError(f"eval --ep htp needs onnxruntime-qnn for the QNN quantizer: {htp_runtime.INSTALL_HINT}")
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = load_model(model)
    float_path = out_dir / f"{loaded.name}.onnx"
    if float_path.exists():
        logger.info("reusing the float export %s (delete it to export again)", float_path)
    else:
        export_onnx(loaded, float_path)
    calibration = calibration_samples(loaded, CALIBRATION_SAMPLES, seq_len, held_out=n_windows).feeds
    samples = evaluation_samples(loaded, n_windows, seq_len, 0)
    reference = _float_outputs(float_path, samples)
    results = []
    for spec, config, options in parsed:
        name = spec.replace(",", "_").replace("=", "-")
        path = out_dir / f"{loaded.name}.htp.{name}.onnx"
        logger.info("quantizing %s for the HTP: %s", loaded.name, spec)
        # the HTP run below opens the file with fallback disabled, naming any node it refuses; with
        # --htp-samples 0 the HTP is not used at all (quality on the CPU only)
        report = htp_model.quantize_for_htp(float_path, path, calibration, config, options, check_htp=False)
        label = BASELINE_LABEL if options.baseline else spec
        result = _evaluate(path, label, reference, samples, loaded, htp_samples, None if options.baseline else config)
        result.hp_tokens = sorted({layer["hp_tokens"] for layer in report["layers"]})
        if report["layers"]:
            result.linear_input_ratio = round(sum(layer["input_bytes"] for layer in report["layers"])
                                              / sum(layer["a16_input_bytes"] for layer in report["layers"]), 3)
        logger.info("%s", json.dumps(result.to_dict()))
        results.append(result)
    return results


# --- tables ------------------------------------------------------------------------------------


def markdown_table(results: Sequence[HtpEvaluation]) -> str:
    """One row per file: quality on the CPU (all samples), CPU and HTP on the HTP's samples, their
    agreement, integer-only, QNN op count and activation MB by type."""
    first = results[0]
    lm = bool(first.perplexity)
    n, k = first.samples, first.htp_samples
    quality = f"perplexity CPU, {n}" if lm else f"SQNR CPU, {n}"
    head = ["config", "hp tokens", quality, f"CPU, first {k}", f"HTP, first {k}", "HTP vs CPU (dB)",
            "integer-only", "QNN ops", "activation MB", "layer-input bytes vs A16", "all activation bytes vs A16W8"]
    base = next((r for r in results if r.label == BASELINE_LABEL and r.activation_mb), None)
    if first.word_error_rates:
        head.insert(3, f"WER CPU, {n}")
    if lm:
        head.insert(3, f"leak-free, {n}")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        if lm:
            cells = [_f(r.perplexity.get("CPU")), _f(r.perplexity.get(f"CPU, first {r.htp_samples}")),
                     _f(r.perplexity.get(f"HTP, first {r.htp_samples}"))]
        else:
            cells = [_f(r.sqnr_cpu_db), _f(r.sqnr_cpu_first_db), _f(r.sqnr_htp_db)]
        if first.word_error_rates:
            cells.insert(1, _f(r.word_error_rates.get("CPU")))
        if lm:
            cells.insert(1, f"{_f(r.perplexity_leak_free.get('CPU'))} (float {_f(r.perplexity_leak_free.get('float'))})")
        integer = "—" if r.integer_only is None else ("yes" if r.integer_only else "NO: " + "; ".join(r.float_ops))
        row = [r.label, ", ".join(map(str, r.hp_tokens)) or "all", *cells, _f(r.sqnr_htp_vs_cpu_db), integer,
               "—" if r.qnn_ops is None else str(r.qnn_ops),
               " / ".join(f"{_SHORT.get(t, t)} {mb}" for t, mb in r.activation_mb.items() if mb) or "—",
               "1.00" if r.label == BASELINE_LABEL else _f(r.linear_input_ratio),
               _f(_fixed_point_mb(r) / _fixed_point_mb(base)) if base and r.activation_mb else "—"]
        lines.append("| " + " | ".join(row) + " |")
    if lm:
        lines.append(f"\nfloat perplexity: {_f(first.perplexity.get('float'))} on {n} windows; leak-free: only the "
                     "targets no later token reaches through the config's transform, float on the same targets")
    notes = sorted({r.note for r in results if r.note})
    return "\n".join(lines + [f"note: {note}" for note in notes])


def _fixed_point_mb(result: HtpEvaluation) -> float:
    return sum(mb for t, mb in result.activation_mb.items() if "fixed_point" in t)


_SHORT = {"ufixed_point_16": "u16", "ufixed_point_8": "u8", "sfixed_point_8": "s8", "sfixed_point_16": "s16",
          "float_32": "f32", "float_16": "f16", "int_32": "i32", "int_64": "i64"}


def _f(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _db(reference: np.ndarray, got: np.ndarray) -> float:
    return round(float(sqnr_db(reference, got)), 2)
