"""Speed, agreement and memory of the backbone backends on a CPU: PyTorch eager float32 against ONNX Runtime in
float32 (`--backend onnx`) and with int8 weights (`--backend onnx-int8`), the small real trio, ED test texts.

For each model of the `small` preset (SmolLM2's two views from one prompted pass, MiniLM, mpnet) alone and for the
preset together: texts/s of each backend (the three loaded side by side, timed in an order that alternates round by
round, as the machine's cores are shared), the matmul rate each reaches (2 x the weights of its linear layers x the
padded tokens it ran, a second) as a fraction of this CPU's float32 rate (torch.mm) or int8 rate (ONNX Runtime's
MatMulInteger) measured in the same run; the features' agreement with float32's on the views the preset reads
(cosine, max abs difference); the size of what each backend loads; and the pipeline (a `small` head, random weights:
speed does not depend on them) in a process of its own per backend: texts/s and peak RSS.

    nice -n 10 python -m bench.bench_backend --num_texts 640
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import HfArgumentParser

from bench.bench_extract import small_trio_paths
from configuration_llm_fusion import PRESETS, BackboneSpec, LLMFusionConfig
from modeling_llm_fusion import (
    FeaturePlan,
    LLMFusionForSequenceClassification,
    length_sorted_batches,
)

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ("torch", "onnx", "onnx-int8")


@dataclass
class BenchArguments:
    num_texts: int = field(default=640, metadata={"help": "How many ED test texts (the first N)."})
    batch_size: int = field(default=32, metadata={"help": "Texts a forward pass."})
    rounds: int = field(default=2, metadata={"help": "Timed passes over the texts by each backend."})
    data_dir: str = field(default=str(REPO.parent / "shared" / "data"), metadata={"help": "Holds ED/test.csv."})
    pipeline_only: str | None = field(default=None, metadata={"help": "(internal) one backend's pipeline run."})


def read_texts(data_dir: str, num_texts: int) -> list[str]:
    with open(Path(data_dir) / "ED" / "test.csv", newline="", encoding="utf-8") as file:
        return [row["text"] for _, row in zip(range(num_texts), csv.DictReader(file))]


def small_specs(backend: str) -> list[BackboneSpec]:
    """The `small` preset's views, run by `backend`."""
    return [BackboneSpec.from_dict(spec).replace(backend=backend) for spec in PRESETS["small"]["backbones"]]


def matmul_rates(size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """This CPU's float32 (torch.mm) and int8 (ONNX Runtime MatMulInteger, uint8 activations times int8 or uint8
    weights) matrix product rates, in GOP/s, on `size` x `size` matrices."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rates = {}
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    rates["float32"] = 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9
    for name, weight_type in (("int8 (u8s8)", TensorProto.INT8), ("int8 (u8u8)", TensorProto.UINT8)):
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["a", "b"], ["c"])],
            "matmul",
            [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size])],
            [helper.make_tensor_value_info("c", TensorProto.INT32, [size, size])],
            [helper.make_tensor("b", weight_type, [size, size], np.random.randint(0, 100, size * size).tolist())],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        inputs = {"a": np.random.randint(0, 255, (size, size)).astype(np.uint8)}
        session.run(None, inputs)
        start = time.perf_counter()
        for _ in range(repeats):
            session.run(None, inputs)
        rates[name] = 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9
    return rates


def load_group(specs: list[BackboneSpec], paths: dict[str, str]) -> tuple[list, float]:
    """The views `specs` (of one model) loaded by their backend, and the seconds it took (an export included)."""
    start = time.perf_counter()
    plan = FeaturePlan(specs, paths)
    return plan.load(specs, "cpu"), time.perf_counter() - start


def padded_tokens(view, texts: list[str], batch_size: int) -> int:
    lengths = view.count_tokens(texts)
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in length_sorted_batches(lengths, batch_size))


def time_backends(loaded: dict[str, list], texts: list[str], args: BenchArguments) -> tuple[dict, dict]:
    """Seconds of one pass over `texts` by each backend's views (the mean of `rounds`, alternating order), and the
    features of each."""
    seconds, features = dict.fromkeys(loaded, 0.0), {}
    for views in loaded.values():
        views[0].extract_views(texts[: args.batch_size], views, args.batch_size)  # warm-up
    for number in range(args.rounds):
        for backend in list(loaded)[:: 1 if number % 2 == 0 else -1]:
            views = loaded[backend]
            start = time.perf_counter()
            values = views[0].extract_views(texts, views, args.batch_size)
            seconds[backend] += (time.perf_counter() - start) / args.rounds
            features[backend] = dict(zip((view.spec.name for view in views), values, strict=True))
    return seconds, features


def agreement(reference: torch.Tensor, other: torch.Tensor) -> str:
    rows = reference.flatten(0, -2).float(), other.flatten(0, -2).float()
    cosine = torch.nn.functional.cosine_similarity(*rows, dim=-1)
    return f"cos mean {cosine.mean():.4f} min {cosine.min():.4f}, max abs diff {(rows[0] - rows[1]).abs().max():.3g}"


def loaded_size(view, paths: dict[str, str], backend: str) -> float:
    """MB of what a backend loads: the model folder's weights for PyTorch, the exported model for ONNX Runtime."""
    files = [view.model.path] if backend != "torch" else Path(paths[view.spec.name]).glob("*.safetensors")
    return sum(Path(file).stat().st_size for file in files) / 1e6


def bench_models(texts: list[str], args: BenchArguments, rates: dict[str, float]) -> None:
    paths = small_trio_paths()
    paths["llama_window"] = paths["llama"]
    groups = FeaturePlan(small_specs("torch"), paths).models()
    totals = dict.fromkeys(BACKENDS, 0.0)
    print("| model | backend | load s | texts/s | x torch | GOP/s | of peak | MB loaded |\n" + "| --- " * 8 + "|")
    agreements = []
    for group in groups:
        loaded, load_s, sizes = {}, {}, {}
        for backend in BACKENDS:
            specs = [spec.replace(backend=backend) for spec in group]
            loaded[backend], load_s[backend] = load_group(specs, paths)
            sizes[backend] = loaded_size(loaded[backend][0], paths, backend)
        weights = sum(m.weight.numel() for m in loaded["torch"][0].model.modules() if isinstance(m, torch.nn.Linear))
        tokens = padded_tokens(loaded["torch"][0], texts, args.batch_size)
        seconds, features = time_backends(loaded, texts, args)
        for backend in BACKENDS:
            totals[backend] += seconds[backend]
            gops = 2 * weights * tokens / seconds[backend] / 1e9
            peak = rates["int8 (u8u8)"] if backend == "onnx-int8" else rates["float32"]
            speed, ratio = len(texts) / seconds[backend], seconds["torch"] / seconds[backend]
            print(
                f"| {Path(group[0].model).name} | {backend} | {load_s[backend]:.1f} | {speed:.1f} | {ratio:.2f} "
                f"| {gops:.0f} | {gops / peak:.0%} | {sizes[backend]:.0f} |"
            )
        for spec in group:
            for backend in BACKENDS[1:]:
                reference, other = features["torch"][spec.name], features[backend][spec.name]
                agreements.append(f"| {spec.name} | {backend} | {agreement(reference, other)} |")
        del loaded
    for backend in BACKENDS:
        print(
            f"| small preset, together | {backend} | | {len(texts) / totals[backend]:.1f} "
            f"| {totals['torch'] / totals[backend]:.2f} | | | |"
        )
    print("\n| view | backend | agreement with torch float32 |\n| --- | --- | --- |")
    print("\n".join(agreements))


def pipeline_run(backend: str, texts: list[str], args: BenchArguments) -> dict:
    """One backend's pipeline on `texts` (in this process: its peak RSS is the pipeline's)."""
    from pipeline_fec import FECPipeline

    paths = small_trio_paths()
    config = LLMFusionConfig.from_preset("small", num_labels=32)
    config.backbones = small_specs(backend)
    pipe = FECPipeline(model=LLMFusionForSequenceClassification(config), backbone_paths=paths, device="cpu")
    pipe(texts[: args.batch_size], batch_size=args.batch_size)  # warm-up
    start = time.perf_counter()
    for _ in range(args.rounds):
        pipe(texts, batch_size=args.batch_size)
    speed = args.rounds * len(texts) / (time.perf_counter() - start)
    return {"texts_per_s": speed, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike `ru_maxrss`, which Linux carries over from the parent
    through fork and exec, it starts afresh in a new program)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def bench_pipelines(args: BenchArguments) -> None:
    print("\n| pipeline (small preset) | texts/s | x torch | peak RSS MB |\n| --- | --- | --- | --- |")
    runs = {}
    for backend in BACKENDS:
        command = [sys.executable, "-m", "bench.bench_backend", "--pipeline_only", backend]
        command += ["--num_texts", str(args.num_texts), "--batch_size", str(args.batch_size)]
        command += ["--rounds", str(args.rounds), "--data_dir", args.data_dir]
        out = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=True).stdout
        runs[backend] = json.loads(out.strip().splitlines()[-1])
        speed = runs[backend]["texts_per_s"] / runs["torch"]["texts_per_s"]
        print(f"| {backend} | {runs[backend]['texts_per_s']:.1f} | {speed:.2f} | {runs[backend]['peak_rss_mb']:.0f} |")


def main() -> None:
    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses()
    texts = read_texts(args.data_dir, args.num_texts)
    if args.pipeline_only:
        print(json.dumps(pipeline_run(args.pipeline_only, texts, args)))
        return
    rates = matmul_rates()
    print(
        f"{len(texts)} ED test texts, batch {args.batch_size}, {args.rounds} rounds; CPU, {torch.get_num_threads()} "
        f"threads; matmul 2048x2048: " + ", ".join(f"{name} {rate:.0f} GOP/s" for name, rate in rates.items())
    )
    bench_models(texts, args, rates)
    bench_pipelines(args)


if __name__ == "__main__":
    main()
