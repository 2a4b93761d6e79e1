"""Where in time does the quantization error of the Whisper encoder land? Speech vs padding frames.

Whisper pads every clip to 30 s (1500 encoder frames); a 3-4 s espeak-ng sentence fills ~170 of
them. The output SQNR over all frames is then dominated by the padding. This tool splits it:
for each rewritten encoder, the SQNR of the frames that hold speech and of the padding frames,
against the float export, on the first N sentences.

    .venv/bin/python tools/speech_frames.py out/whisper/whisper-tiny-en.onnx out/whisper/*.dct*.onnx ...
"""

from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort

from stamp_onnx.core.quant import sqnr_db
from stamp_onnx.zoo import whisper

FRAMES_PER_SECOND = 50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("float_onnx")
    parser.add_argument("rewritten", nargs="+")
    parser.add_argument("--clips", type=int, default=4)
    args = parser.parse_args()
    clips = whisper.speech_clips(args.clips)
    features = whisper.input_features([wave for _, wave in clips])
    speech = [int(len(wave) / whisper.SAMPLE_RATE * FRAMES_PER_SECOND) for _, wave in clips]
    reference = _run(args.float_onnx, features)
    print(f"{'model':<48} {'speech frames':>14} {'padding frames':>15} {'all frames':>11}  (dB, mean over clips)")
    for path in args.rewritten:
        out = _run(path, features)
        parts = [np.mean([sqnr_db(reference[i, a:b], out[i, a:b]) for i, (a, b) in enumerate(spans)])
                 for spans in ([(0, n) for n in speech], [(n, whisper.FRAMES) for n in speech])]
        print(f"{path:<48} {parts[0]:>14.2f} {parts[1]:>15.2f} {sqnr_db(reference, out):>11.2f}")
    print(f"speech frames per clip: {speech}")


def _run(path: str, features: np.ndarray) -> np.ndarray:
    return np.asarray(ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input_features": features})[0])


if __name__ == "__main__":
    main()
