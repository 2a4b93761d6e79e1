"""A short run of the fuzz harness (tools/fuzz.py): mutated models end in success or one clean error."""

from __future__ import annotations

from pathlib import Path

import models
import tool_modules


def test_short_fuzz_run_finds_no_crash_hang_or_traceback(tmp_path: Path) -> None:
    fuzz = tool_modules.load("fuzz")
    seeds = [models.save(models.mlp_model(), tmp_path / "mlp.onnx"), models.save(models.gemm_model(), tmp_path / "gemm.onnx")]
    outcomes = fuzz.fuzz(seeds, cases=36, seed=7, timeout=60)
    failures = [o for o in outcomes if o.failed]
    assert not failures, failures
    kinds = {o.kind for o in outcomes}
    assert "error" in kinds  # the mutations do break models, and the CLI says so cleanly
    assert {o.mutation for o in outcomes} == set(fuzz.MUTATIONS)  # every mutation ran


def test_harness_reports_a_crash(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The harness itself must see a crash: an exception escaping the CLI is a failure."""
    fuzz = tool_modules.load("fuzz")

    def boom(argv: list[str]) -> int:
        raise RuntimeError("injected")

    monkeypatch.setattr(fuzz, "cli_main", boom)
    seed = models.save(models.mlp_model(), tmp_path / "mlp.onnx")
    [outcome] = fuzz.fuzz([seed], cases=1, seed=0, timeout=60)
    assert outcome.kind == "crash" and "injected" in outcome.detail
