"""Throughput of saved models through their pipeline, side by side in one run: each model labels the same ED test
texts (sorted into batches by the pipeline), alternately, and the best of the repeats is kept.

    python -m bench.bench_models outputs/llm-fusion-ed outputs/llm-fusion-ed-tokens --data-dir ../shared/data \
        --backbone-path llama=SMOLLM2 bert=MINILM roberta=MPNET

One line a model: texts/s, and its ratio to the first model's.
"""

from __future__ import annotations

import argparse
import time

from transformers import pipeline

from llm_fusion_fec.data.datasets import load_data


def texts_per_second(classifier, texts: list[str], batch_size: int) -> float:
    start = time.perf_counter()
    classifier(texts, batch_size=batch_size)
    return len(texts) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="saved model folders (or Hub ids)")
    parser.add_argument("--data-dir", help="a local copy of the built-in data sets (e.g. ../shared/data)")
    parser.add_argument("--num-texts", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backbone-path", nargs="*", default=[], help="NAME=FOLDER: a local copy of a backbone")
    options = parser.parse_args(argv)
    paths = dict(pair.split("=", 1) for pair in options.backbone_path)
    texts = load_data("ED", options.data_dir)[0]["test"]["text"][: options.num_texts]
    classifiers = {
        model: pipeline("text-classification", model=model, trust_remote_code=True, backbone_paths=paths)
        for model in options.models
    }
    for classifier in classifiers.values():
        classifier(texts[:8])  # warm-up
    best = dict.fromkeys(classifiers, 0.0)
    for _ in range(options.repeats):
        for model, classifier in classifiers.items():
            best[model] = max(best[model], texts_per_second(classifier, texts, options.batch_size))
    first = best[options.models[0]]
    for model, speed in best.items():
        print(f"{model}: {speed:.1f} texts/s ({speed / first:.2f}x the first), {len(texts)} ED test texts")


if __name__ == "__main__":
    main()
