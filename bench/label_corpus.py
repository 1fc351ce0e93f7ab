"""Labelling a large corpus with `fec predict` (streaming, resumable, over several processes), against baselines
measured in the same run. Four parts, each run alone with `--parts`:

- memory: peak RSS of `fec predict` (a fresh process, tiny random backbones, one thread) on generated inputs of
  20,000 and 200,000 rows, CSV to CSV and Parquet to Parquet. Target: the larger's peak within 15% of the smaller's.
  (200,000 tiny rows take about 10 minutes a format on a loaded 2-core CPU.)
- resume: the command killed (SIGKILL) at about half way, at a random moment inside a chunk, then run again: the
  rows labelled by both runs (an upper bound: the chunk the kill interrupted counts whole) and their seconds against
  an uninterrupted run, and whether the two outputs are byte-equal. Target: at most 1.1x the work, byte-equal.
- torchrun: `torchrun --nproc-per-node 2` (gloo, one thread each) against one process (all threads): equal outputs,
  both timings.
- throughput: the small real trio (`../shared/models/prepare.py`), a `small` preset model with a random head, N texts
  of ED's and GoEmotions' test splits: `fec predict`'s texts/s (its own figure, without loading, and the command's
  whole wall time) against the pipeline's length-sorted texts/s (`bench/bench_pipeline.py`'s figure). Target: at
  least the pipeline's.

    python -m bench.label_corpus                                         # all four, the full sizes
    nice -n 10 python -m bench.label_corpus --parts memory resume torchrun --memory_rows 2000 20000 --rows 4000
    python -m bench.label_corpus --parts throughput --texts 5000
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import HfArgumentParser

from configuration_llm_fusion import LLMFusionConfig
from modeling_llm_fusion import LLMFusionForSequenceClassification
from pipeline_fec import save_for_pipeline
from tests.helpers import CORPUS, build_tiny_backbones

REPO = Path(__file__).resolve().parents[1]
PARTS = ("memory", "resume", "torchrun", "throughput")
FEC = [sys.executable, "-m", "llm_fusion_fec.commands.fec", "predict"]
RATE = re.compile(r"(\d+)/(\d+) texts \(\d+%\), ([\d.]+) texts/s")


@dataclass
class BenchArguments:
    parts: list[str] = field(default_factory=lambda: list(PARTS), metadata={"help": f"Any of {PARTS}."})
    memory_rows: list[int] = field(
        default_factory=lambda: [20_000, 200_000], metadata={"help": "Input sizes of the memory part (first: base)."}
    )
    formats: list[str] = field(
        default_factory=lambda: ["csv", "parquet"], metadata={"help": "Input and output formats of the memory part."}
    )
    rows: int = field(default=20_000, metadata={"help": "Input rows of the resume and torchrun parts."})
    chunk_size: int = field(default=1000, metadata={"help": "fec predict's --chunk-size."})
    batch_size: int = field(default=32, metadata={"help": "fec predict's and the pipeline's batch size."})
    texts: int = field(default=5000, metadata={"help": "ED and GoEmotions test texts of the throughput part."})
    threads: int = field(
        default=1,
        metadata={
            "help": "OMP_NUM_THREADS of the memory and resume parts' runs (tiny backbones: more only add overhead)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Where the resume part's kill lands inside its chunk."})
    data_dir: str = field(default=str(REPO.parent / "shared" / "data"), metadata={"help": "Holds ED/, go_emotion/."})


# ---- inputs and the tiny model ----


def corpus_texts(rows: int) -> list[str]:
    """`rows` texts of 3 to 30 words, varied in length as a real corpus is (the length sort has work to do)."""
    rng = random.Random(rows)
    words = " ".join(CORPUS).split()
    return [" ".join(rng.choices(words, k=rng.randint(3, 30))) for _ in range(rows)]


def write_input(path: Path, rows: int) -> Path:
    """An input of `rows` rows (an id, a text, a source column) as CSV or Parquet, by `path`'s suffix."""
    table = pa.table({"id": range(rows), "text": corpus_texts(rows), "source": ["forum"] * rows})
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(table.column_names)
            writer.writerows(zip(*(table.column(name).to_pylist() for name in table.column_names)))
    return path


def tiny_model(root: Path) -> Path:
    """A fusion model on tiny random backbones saved in local folders under `root` (named by its config)."""
    torch.manual_seed(0)
    labels = ["sad", "joyful", "angry", "afraid", "surprised"]
    config = LLMFusionConfig(
        backbones=build_tiny_backbones(root / "backbones"),
        fusion_dim=16,
        mlp_dims=[16],
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    save_for_pipeline(LLMFusionForSequenceClassification(config), root / "model")
    return root / "model"


def predict_command(model: Path, source: Path, output: Path, args: BenchArguments, *extra: str) -> list[str]:
    options = ["--chunk-size", str(args.chunk_size), "--batch-size", str(args.batch_size), *extra]
    return [*FEC, "--model", str(model), "--input", str(source), "--output", str(output), *options]


def run(command: list[str], env: dict | None = None) -> tuple[float, int, str]:
    """Run `command`; its seconds, its peak RSS in MiB (its own, by `wait4`) and its stderr. Fails if it fails."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})}
    start = time.perf_counter()
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace")
    if process.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{errors[-3000:]}")
    return seconds, usage.ru_maxrss // 1024, errors


# ---- the parts ----


def memory(args: BenchArguments, model: Path, work: Path) -> None:
    print(
        f"\n## memory: peak RSS of fec predict (tiny backbones, {args.threads} thread(s), chunk {args.chunk_size})\n"
    )
    print("| format | rows | seconds (whole command) | texts/s | peak RSS (MiB) | against the first |")
    print("| --- | --- | --- | --- | --- | --- |")
    for suffix in args.formats:
        base = None
        for rows in args.memory_rows:
            source = write_input(work / f"memory_{rows}.{suffix}", rows)
            output = work / f"memory_{rows}.out.{suffix}"
            seconds, peak, _ = run(
                predict_command(model, source, output, args), {"OMP_NUM_THREADS": str(args.threads)}
            )
            base = base or peak
            print(f"| {suffix} | {rows} | {seconds:.1f} | {rows / seconds:.0f} | {peak} | {peak / base:.2f}x |")
            source.unlink()


def kill_half_way(command: list[str], record: Path, rows: int, seed: int, threads: int) -> tuple[float, int]:
    """Start `command`, SIGKILL it at a random moment of the first chunk it labels after half the rows are written;
    its seconds and the rows its record says were written then."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done, changed, previous = 0, start, start
    while done < rows / 2:
        if process.poll() is not None:
            raise SystemExit(f"{' '.join(command)} ended ({process.returncode}) before half way")
        time.sleep(0.02)
        now_done = json.loads(record.read_text() or "{}").get("rows_done", 0) if record.exists() else 0
        if now_done != done:
            done, previous, changed = now_done, changed, time.perf_counter()
    time.sleep(random.Random(seed).uniform(0, changed - previous))  # a chunk's time: somewhere inside the next
    process.send_signal(signal.SIGKILL)
    process.wait()
    return time.perf_counter() - start, json.loads(record.read_text())["rows_done"]


def resume(args: BenchArguments, model: Path, work: Path) -> None:
    from llm_fusion_fec.inference.streaming import record_path

    source = write_input(work / "resume.csv", args.rows)
    whole, resumed = work / "whole.csv", work / "resumed.csv"
    threads = {"OMP_NUM_THREADS": str(args.threads)}
    whole_seconds, _, _ = run(predict_command(model, source, whole, args), threads)
    killed_seconds, written = kill_half_way(
        predict_command(model, source, resumed, args), record_path(resumed), args.rows, args.seed, args.threads
    )
    rerun_seconds, _, _ = run(predict_command(model, source, resumed, args), threads)
    labelled = written + args.chunk_size + (args.rows - written)  # the killed chunk counted whole: an upper bound
    print(f"\n## resume: killed at {written} of {args.rows} rows (SIGKILL inside the next chunk), then rerun\n")
    print("| run | seconds | rows labelled |\n| --- | --- | --- |")
    print(f"| uninterrupted | {whole_seconds:.1f} | {args.rows} |")
    print(f"| killed | {killed_seconds:.1f} | at most {written + args.chunk_size} |")
    print(f"| rerun | {rerun_seconds:.1f} | {args.rows - written} |")
    seconds = (killed_seconds + rerun_seconds) / whole_seconds
    print(
        f"\nwork: at most {labelled / args.rows:.3f}x the rows, {seconds:.2f}x the seconds (each run loads the "
        f"model); output byte-equal: {resumed.read_bytes() == whole.read_bytes()}"
    )


def differences(first: Path, second: Path) -> str:
    """How two labelled CSV files differ: rows, labels and the largest score difference."""
    with open(first, newline="", encoding="utf-8") as a, open(second, newline="", encoding="utf-8") as b:
        rows = list(zip(csv.DictReader(a), csv.DictReader(b), strict=True))
    labels = sum(x["label"] != y["label"] for x, y in rows)
    scores = [abs(float(x["score"]) - float(y["score"])) for x, y in rows if x["score"] and y["score"]]
    return f"{labels} of {len(rows)} labels differ, scores by at most {max(scores, default=0):.1e}"


def torchrun(args: BenchArguments, model: Path, work: Path) -> None:
    source = write_input(work / "torchrun.csv", args.rows)
    launcher = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    torchrun = [launcher, "--nproc-per-node", "2", "-m"]
    threads = torch.get_num_threads()
    runs = {  # name: (command prefix, output, threads a process)
        f"1 process, {threads} threads": ([], work / "one.csv", threads),
        "1 process, 1 thread": ([], work / "one_thread.csv", 1),
        "2 processes (torchrun, gloo), 1 thread each": (torchrun, work / "two.csv", 1),
    }
    print(f"\n## torchrun: {args.rows} rows\n")
    print("| run | seconds | texts/s |\n| --- | --- | --- |")
    for name, (prefix, output, count) in runs.items():
        command = predict_command(model, source, output, args)
        command = [*prefix, *command[2:]] if prefix else command
        seconds, _, _ = run(command, env={"OMP_NUM_THREADS": str(count)})
        print(f"| {name} | {seconds:.1f} | {args.rows / seconds:.0f} |")
    one, one_thread, two = (output for _, output, _ in runs.values())
    # Float sums in another order (another thread count) change a score's last digits, not its label.
    print(f"\n2 processes against 1 process at 1 thread: byte-equal {two.read_bytes() == one_thread.read_bytes()}")
    print(f"2 processes against 1 process at {threads} threads: {differences(two, one)}")


def test_texts(data_dir: str, count: int) -> list[str]:
    """`count` texts: the first halves' worth of ED's test split, then of GoEmotions'."""
    texts = []
    for name, share in (("ED", count - count // 2), ("go_emotion", count // 2)):
        with open(Path(data_dir) / name / "test.csv", newline="", encoding="utf-8") as handle:
            texts += [row["text"] for _, row in zip(range(share), csv.DictReader(handle))]
    return texts


def throughput(args: BenchArguments, work: Path) -> None:
    from bench.bench_extract import small_trio_paths
    from llm_fusion_fec.inference.loading import build_pipeline

    paths = small_trio_paths()
    texts = test_texts(args.data_dir, args.texts)
    source = work / "texts.csv"
    with open(source, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["text"], *([text] for text in texts)])
    model = work / "small"  # the head's weights do not matter for speed
    save_for_pipeline(LLMFusionForSequenceClassification(LLMFusionConfig.from_preset("small", num_labels=32)), model)
    pipe = build_pipeline(model, paths, "cpu", None, args.batch_size, None)
    pipe(texts[: args.batch_size], batch_size=args.batch_size)  # warm-up: first calls allocate
    start = time.perf_counter()
    pipe(texts, batch_size=args.batch_size)
    pipeline_rate = len(texts) / (time.perf_counter() - start)
    del pipe
    extra = [arg for name, folder in paths.items() for arg in ("--backbone-path", f"{name}={folder}")]
    seconds, _, errors = run(predict_command(model, source, work / "texts.out.csv", args, *extra))
    found = RATE.findall(errors)  # its last progress line (one every 10 s where stderr is a file)
    streaming = f"{float(found[-1][2]):.1f}" if found else "n/a (under 10 s: no progress line)"
    print(f"\n## throughput: {len(texts)} ED + GoEmotions test texts, small real trio, CPU, batch {args.batch_size}\n")
    print("| row | texts/s |\n| --- | --- |")
    print(f"| pipeline, sorted (one call on the list, loaded) | {pipeline_rate:.1f} |")
    print(f"| fec predict, its progress figure (labelling, reading, writing) | {streaming} |")
    print(f"| fec predict, whole command (start, loading included) | {len(texts) / seconds:.1f} |")


def main() -> None:
    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses()
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"Unknown --parts {sorted(unknown)}; choose from {PARTS}.")
    print(
        f"bench/label_corpus.py, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, chunk {args.chunk_size}, batch {args.batch_size}"
    )
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        model = tiny_model(work) if set(args.parts) - {"throughput"} else None
        for part in args.parts:
            if part == "throughput":
                throughput(args, work)
            else:
                globals()[part](args, model, work)


if __name__ == "__main__":
    main()
