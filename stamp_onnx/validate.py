"""Numerical validation of a rewritten ONNX model against PyTorch, on real text.

Four outputs per input batch (logits or last_hidden_state):

    float torch        the PyTorch model                       (the reference)
    float ONNX         the float export, in onnxruntime        (checks the export)
    STaMP torch        PyTorch with :func:`stamp_reference`    (checks the rewrite's math)
    STaMP ONNX         the rewritten model, in onnxruntime     (what a user deploys)

Comparisons, with their tolerances:

- float ONNX vs float torch: max |diff| / max |ref| <= FLOAT_RTOL (checks the export).
- STaMP ONNX vs STaMP torch per layer, on identical layer inputs (:mod:`stamp_onnx.layer_check`):
  worst-layer SQNR >= LAYER_MIN_SQNR_DB (checks the custom ops against the math oracle).
- STaMP ONNX vs STaMP torch end to end: reported, no tolerance. At 4 bits they are two
  different noise draws: ~1e-7 float differences flip a few roundings, and the flips grow
  through the layers (SmolLM2 W16A4: ~7 dB), so bit-exactness is only checked per layer.
- STaMP torch / STaMP ONNX vs float torch: the quality of the quantization; the ONNX one must
  be within SQNR_MATCH_DB of the torch one (same method, same bits, a different noise draw).

Causal LMs also get perplexity on the same windows, twice (see /work/shared/STAMP.md):
``all`` scores every position; ``leak-free`` only positions t whose output cannot depend on
tokens after t through the sequence transform (:func:`leak_free_mask`). For ``none`` both are
the same set; for Haar the block ends; for DCT/WHT over a whole window almost nothing.
SQNR is :func:`stamp_onnx.quant.sqnr_db`'s formula with energies summed over all batches.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from passes.linear_layers import LAYER_KEY
from passes.record_config import CONFIG_KEY
from stamp_onnx import ops, transforms
from stamp_onnx.config import StampConfig
from stamp_onnx.errors import ConfigError, ValidationError
from stamp_onnx.layer_check import LayerDiff, per_layer_diffs
from stamp_onnx.models import LoadedModel, load_model, sample_inputs, with_attention_mask
from stamp_onnx.reference import stamp_reference

logger = logging.getLogger(__name__)

FLOAT_RTOL = 1e-4  # float ONNX vs float torch: max |diff| / max |reference|
LAYER_MIN_SQNR_DB = 60.0  # every rewritten layer, ONNX vs torch on the same input
SQNR_MATCH_DB = 3.0  # |SQNR(STaMP ONNX vs float) - SQNR(STaMP torch vs float)|
DEFAULT_WINDOWS = 8


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One output compared with another over every validation batch."""

    name: str
    max_abs: float
    rel: float
    sqnr_db: float
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
    seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(row.passed is not False for row in self.rows)

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
        return _finite(data)

    def to_table(self) -> str:
        c = self.config
        avg = c.average_bits(self.seq_len)
        lines = [
            f"model    {self.model}: {self.description}",
            f"onnx     {self.onnx_path}",
            f"config   transform {c.transform}" + (f" ({c.levels} levels)" if c.transform == "haar" else "")
            + f", first {c.hp_tokens} tokens {c.hp_bits} bits, rest {c.lp_bits} bits "
            f"(average {avg:.2f} bits at {self.seq_len} tokens)",
            f"data     {self.n_windows} windows x {self.seq_len} tokens of {self.data}",
            f"layers   {self.layers_rewritten} rewritten in ONNX, {self.layers_hooked} hooked in PyTorch",
            "",
            f"{'comparison':<38} {'max |diff|':>10} {'rel err':>9} {'SQNR dB':>8}  check",
        ]
        for r in self.rows:
            check = "" if r.passed is None else ("ok" if r.passed else "FAIL") + f" ({r.criterion})"
            lines.append(f"{r.name:<38} {r.max_abs:>10.3g} {r.rel:>9.2e} {r.sqnr_db:>8.2f}  {check}".rstrip())
        if self.perplexities:
            lines += ["", f"{'perplexity':<38} {f'all ({self.targets_all})':>14} {f'leak-free ({self.targets_leak_free})':>20}"]
            for p in self.perplexities:
                lines.append(f"{p.variant:<38} {p.all_positions:>14.3f} {p.leak_free:>20.3f}")
        lines += ["", *(f"note: {n}" for n in self.notes), f"took {self.seconds:.1f} s"]
        return "\n".join(lines)


def read_stamp_metadata(path: str | Path) -> tuple[StampConfig, list[str]]:
    """The config a model was rewritten with and the module names of its rewritten layers."""
    config, layers = _read_metadata(path)
    if config is None:
        raise ValidationError(f"{path} has no {CONFIG_KEY!r} metadata: it was not written by stamp-onnx quantize")
    return config, layers


def _read_metadata(path: str | Path) -> tuple[StampConfig | None, list[str]]:
    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"{path}: no such file; pass the model written by stamp-onnx quantize")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise ValidationError(f"{path} is not a readable ONNX model: {err}") from err
    text = {p.key: p.value for p in proto.metadata_props}.get(CONFIG_KEY)
    try:
        config = None if text is None else StampConfig.from_json(text)
    except ConfigError as err:
        raise ValidationError(f"{path}: the recorded config is invalid: {err}") from err
    layers: set[str] = set()
    for node in proto.graph.node:
        if node.domain == ops.DOMAIN and node.op_type == ops.TOKEN_QDQ:
            name = {p.key: p.value for p in node.metadata_props}.get(LAYER_KEY)
            if name is not None:
                layers.add(re.sub(r"#\d+$", "", name))  # a module called twice: one hook
    return config, sorted(layers)


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
) -> ValidationReport:
    """Compare float and STaMP outputs of PyTorch and ONNX Runtime; see the module docstring.

    ``config`` overrides the one recorded in the rewritten model (which is then not needed).
    The float export is made in a temporary folder when ``float_onnx_path`` is None.
    ``seed`` only drives random token ids (models without a tokenizer). ``per_layer`` runs
    the per-layer check on the first batch (one more onnxruntime session).
    """
    start = time.perf_counter()
    recorded, layers = _read_metadata(rewritten_onnx_path)
    config = config or recorded
    if config is None:
        raise ValidationError(
            f"{rewritten_onnx_path} has no {CONFIG_KEY!r} metadata: it was not written by stamp-onnx quantize"
        )
    if n_windows < 1:
        raise ConfigError(f"n_windows={n_windows} is not allowed; use a positive integer")
    loaded = model_name_or_dir if isinstance(model_name_or_dir, LoadedModel) else load_model(model_name_or_dir)
    ids, data = _windows(loaded, n_windows, seq_len, seed)
    notes = [f"float reference: {loaded.description}"] if "GGUF" in loaded.description else []

    rewritten = _session(rewritten_onnx_path)
    if float_onnx_path is None:
        from stamp_onnx.export import export_onnx

        with tempfile.TemporaryDirectory(prefix="stamp-onnx-") as tmp:
            floated = _session(export_onnx(loaded, Path(tmp) / f"{loaded.name}.onnx"))
    else:
        floated = _session(float_onnx_path)

    mask = leak_free_mask(seq_len, config)
    names = ("float torch", "float ONNX", "STaMP torch reference", "STaMP ONNX")
    diffs = {k: _Diff() for k in ("float", "ref", "torch", "onnx")}
    nll = {k: _NLL() for k in names}
    with stamp_reference(loaded.module, config, layers=layers or None) as hooked:
        pass  # resolve and check the layer names once, before the long loop
    for lo in range(0, n_windows, batch):
        feeds = with_attention_mask(loaded, ids[lo : lo + batch])
        outs = dict(zip(names, _run_all(loaded, feeds, floated, rewritten, config, hooked), strict=True))
        ref = outs["float torch"]
        diffs["float"].update(ref, outs["float ONNX"])
        diffs["ref"].update(outs["STaMP torch reference"], outs["STaMP ONNX"])
        diffs["torch"].update(ref, outs["STaMP torch reference"])
        diffs["onnx"].update(ref, outs["STaMP ONNX"])
        if loaded.kind == "causal-lm":
            for name, logits in outs.items():
                nll[name].update(logits, feeds["input_ids"], mask)
        logger.info("validated windows %d..%d of %d", lo, min(lo + batch, n_windows) - 1, n_windows)

    layer_diffs = []
    if per_layer:
        first = with_attention_mask(loaded, ids[:batch])
        layer_diffs = per_layer_diffs(rewritten_onnx_path, loaded.module, config, first)
    torch_row = diffs["torch"].row("STaMP torch reference vs float torch")
    rows = [
        diffs["float"].row("float ONNX vs float torch", rtol=FLOAT_RTOL),
        *([_layer_row(layer_diffs)] if layer_diffs else []),
        diffs["ref"].row("STaMP ONNX vs STaMP torch, end to end"),
        torch_row,
        diffs["onnx"].row("STaMP ONNX vs float torch", near_sqnr=torch_row.sqnr_db),
    ]
    if layer_diffs:
        worst = min(layer_diffs, key=lambda d: d.sqnr_db)
        notes.append(f"worst layer ONNX vs torch: {worst.layer} ({worst.sqnr_db:.1f} dB, {len(layer_diffs)} layers)")
    perplexities = [] if loaded.kind != "causal-lm" else [
        Perplexity(name, acc.perplexity(leak_free=False), acc.perplexity(leak_free=True)) for name, acc in nll.items()
    ]
    if layers and len(layers) != len(hooked):
        notes.append(f"{len(layers)} layers rewritten but {len(hooked)} hooked")
    return ValidationReport(
        model=loaded.name,
        description=loaded.description,
        onnx_path=str(rewritten_onnx_path),
        config=config,
        data=data,
        n_windows=n_windows,
        seq_len=seq_len,
        layers_rewritten=len(layers),
        layers_hooked=len(hooked),
        rows=rows,
        perplexities=perplexities,
        targets_all=nll["float torch"].count_all,
        targets_leak_free=nll["float torch"].count_leak_free,
        layer_diffs=layer_diffs,
        seconds=time.perf_counter() - start,
        notes=notes,
    )


def leak_free_mask(seq_len: int, config: StampConfig) -> np.ndarray:
    """bool (seq_len,): True where no output at positions <= t depends on tokens after t.

    x_hat = L^T Q(L x) makes x_hat[u] depend on x[j] when some transformed token i has
    L[i, u] != 0 and L[i, j] != 0; position t is leak-free when every u <= t depends on
    nothing after t. Haar with L levels: the ends of aligned 2^L-token blocks.
    """
    if config.transform == "none" or seq_len < 2:
        return np.ones(seq_len, dtype=bool)
    support = (np.abs(transforms.matrix(seq_len, config.transform, config.levels)) > 1e-12).astype(np.float32)
    depends = (support.T @ support) > 0  # depends[u, j]
    last = np.where(depends, np.arange(seq_len)[None, :], -1).max(axis=1)
    return np.maximum.accumulate(last) <= np.arange(seq_len)


# --- internals ----------------------------------------------------------------------------


def _session(path: str | Path) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValidationError(f"onnxruntime cannot load {path}: {first}") from err


def _windows(loaded: LoadedModel, n: int, seq_len: int, seed: int) -> tuple[np.ndarray, str]:
    if loaded.tokenizer is None:
        return sample_inputs(loaded, n, seq_len, seed)["input_ids"], f"random token ids (seed {seed})"
    from stamp_onnx.data import load_corpus, text_windows

    if not 1 <= seq_len <= loaded.max_length:
        raise ConfigError(f"seq_len={seq_len} is not allowed for {loaded.name}; use 1..{loaded.max_length}")
    corpus = load_corpus()
    try:
        ids = text_windows(loaded.tokenizer, n, seq_len, corpus=corpus)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return ids, corpus.name


def _run_all(
    loaded: LoadedModel,
    feeds: dict[str, np.ndarray],
    floated: ort.InferenceSession,
    rewritten: ort.InferenceSession,
    config: StampConfig,
    hooked: list[str],
) -> list[np.ndarray]:
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        float_torch = loaded.module(**tensors)[0].numpy()
        with stamp_reference(loaded.module, config, layers=hooked):
            stamp_torch = loaded.module(**tensors)[0].numpy()
    return [float_torch, _run(floated, feeds), stamp_torch, _run(rewritten, feeds)]


def _run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> np.ndarray:
    wanted = {i.name for i in session.get_inputs()}
    missing = wanted - set(feeds)
    if missing:
        raise ValidationError(f"the ONNX model wants inputs {sorted(missing)} that the PyTorch model does not take")
    return np.asarray(session.run(None, {k: v for k, v in feeds.items() if k in wanted})[0])


class _Diff:
    """Running max |ref - x|, max |ref| and the energies behind quant.sqnr_db (float64)."""

    def __init__(self) -> None:
        self.max_abs = self.ref_max = self.signal = self.noise = 0.0

    def update(self, reference: np.ndarray, approx: np.ndarray) -> None:
        if reference.shape != approx.shape:
            raise ValidationError(f"output shapes differ: {reference.shape} vs {approx.shape}")
        ref = reference.astype(np.float64)
        err = ref - approx.astype(np.float64)
        self.max_abs = max(self.max_abs, float(np.abs(err).max(initial=0.0)))
        self.ref_max = max(self.ref_max, float(np.abs(ref).max(initial=0.0)))
        self.signal += float(np.sum(ref * ref))
        self.noise += float(np.sum(err * err))

    def sqnr_db(self) -> float:
        return math.inf if self.noise == 0.0 else 10.0 * math.log10(self.signal / self.noise)

    def row(self, name: str, *, rtol: float | None = None, near_sqnr: float | None = None) -> Comparison:
        rel = self.max_abs / self.ref_max if self.ref_max else math.inf
        sqnr = self.sqnr_db()
        if rtol is not None:
            return Comparison(name, self.max_abs, rel, sqnr, f"rel <= {rtol:g}", rel <= rtol)
        if near_sqnr is not None:
            close = abs(sqnr - near_sqnr) <= SQNR_MATCH_DB or sqnr == near_sqnr
            return Comparison(name, self.max_abs, rel, sqnr, f"within {SQNR_MATCH_DB:g} dB of torch", close)
        return Comparison(name, self.max_abs, rel, sqnr)


def _layer_row(diffs: list[LayerDiff]) -> Comparison:
    """The worst layer of the per-layer check as one table row."""
    sqnr = min(d.sqnr_db for d in diffs)
    max_abs = max(d.max_abs for d in diffs)
    rel = max(d.max_abs / d.ref_max if d.ref_max else math.inf for d in diffs)
    criterion = f"SQNR >= {LAYER_MIN_SQNR_DB:g} dB"
    return Comparison("STaMP ONNX vs STaMP torch, per layer", max_abs, rel, sqnr, criterion, sqnr >= LAYER_MIN_SQNR_DB)


class _NLL:
    """Summed next-token negative log-likelihood, over all targets and leak-free ones."""

    def __init__(self) -> None:
        self.sum_all = self.sum_leak_free = 0.0
        self.count_all = self.count_leak_free = 0

    def update(self, logits: np.ndarray, input_ids: np.ndarray, mask: np.ndarray) -> None:
        logp = torch.log_softmax(torch.from_numpy(logits[:, :-1]).double(), dim=-1)
        targets = torch.from_numpy(input_ids[:, 1:]).unsqueeze(-1)
        nll = -logp.gather(-1, targets).squeeze(-1).numpy()  # (b, s-1): position t predicts t+1
        keep = mask[:-1]
        self.sum_all += float(nll.sum())
        self.count_all += nll.size
        self.sum_leak_free += float(nll[:, keep].sum())
        self.count_leak_free += int(keep.sum()) * nll.shape[0]

    def perplexity(self, *, leak_free: bool) -> float:
        total, count = (self.sum_leak_free, self.count_leak_free) if leak_free else (self.sum_all, self.count_all)
        return math.exp(total / count) if count else math.nan


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
