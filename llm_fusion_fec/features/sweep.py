"""The layer sweep: which hidden layers of an LLM (or which pooling of a backbone) to feed the head, chosen on the
validation split by a cheap probe. It scores each single layer and each window of k consecutive layers of the
backbone's features (best extracted with `--all-layers`), across one or several features folders of the same data
(one per pooling or prompt); `extract_features.py --choose` runs it on its candidates, and `bench/sweep_layers.py` on
folders a user extracted.

The probe is a logistic regression on standardised features (training-set mean and std), fitted in torch by L-BFGS
on the train split: multinomial for single-label data, one-vs-rest for multi-label data. It is fitted at each L2
strength of `cs` (sklearn's C, by default 1e-4 ... 1; strongest first, each fit warm-started from the previous one)
and a candidate scores what its best strength scores on
validation: a weakly regularised probe fits the training rows of wide features almost perfectly and ranks
candidates by how they overfit. Its input for a window is the mean of the window's layer vectors (`combine="mean"`:
the vector the head feeds its MLP directly, and as wide as one layer, so that every candidate is probed at the same
width) or their concatenation (`combine="concat"`). Each candidate is scored on the validation split with the
metric training selects models by (weighted-F1 single-label, macro-F1 multi-label at the threshold of 0.05, ...,
0.95 that scores best). Only the train and validation splits are read: the test split plays no part in the choice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch

from configuration_llm_fusion import LAYER_POOLINGS, BackboneSpec, layer_indices
from llm_fusion_fec.evaluation.metrics import SELECTION_METRICS, choose_threshold, load_metric, score
from llm_fusion_fec.features.metadata import FeatureMetadata, read_metadata

SWEEP_SPLITS = ("train", "validation")
"""The splits a sweep reads. Never the test split: the choice of layers is part of the model."""
COMBINES = ("mean", "concat")
PROBE_STRENGTHS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
"""The probe's inverse L2 strengths (sklearn's C) tried by default; each candidate keeps its best on validation."""
SWEEP_TOLERANCE = 1e-6
"""The sweep's probes stop once a step changes the objective (per row) by less than this (`fit_logistic`'s default,
1e-9, fits a probe that is kept, e.g. the linear baseline's). With the warm start across strengths it halved
`--choose`'s sweep on GoEmotions (250 s against 518), moved no candidate's validation score by more than 0.15 points
and left every candidate's best layers as they were (bench/results/choose_goe_sample3000.txt)."""
READ_ROWS = 4096  # rows read at a time, so that only the float16 features (not float32 copies) are held whole


@dataclass
class LayerScore:
    """One candidate of a sweep: the hidden states it reads (feature order, top first), the features folder they
    come from (its pooling and template) and its validation score."""

    layers: list[int]
    score: float
    features: str = ""
    c: float | None = None  # the probe's inverse L2 strength that scored best


@dataclass
class SweepResult:
    """What a sweep found: every candidate ranked best first, and the winner as a backbone description."""

    backbone: str
    metric: str
    combine: str
    train_rows: int
    validation_rows: int
    scores: list[LayerScore]
    best_spec: BackboneSpec
    poolings: dict[str, str]  # features folder -> its pooling in words, e.g. "layer_last_token, prompted"
    second_view: BackboneSpec | None = None  # the best candidate of another folder than the winner's, as NAME_view2


def swept_split(features_dir: str | Path, split: str) -> datasets.Dataset:
    """One split of a features folder, refused for any split but train and validation."""
    if split not in SWEEP_SPLITS:
        raise ValueError(f"A layer sweep reads only {SWEEP_SPLITS}, not {split!r}.")
    return datasets.load_from_disk(str(Path(features_dir) / split))


def split_labels(features_dir: str | Path, split: str) -> np.ndarray:
    """One split's labels (to check that several folders hold the same rows)."""
    return np.asarray(swept_split(features_dir, split).with_format("numpy")["label"][:])


def read_split(data: datasets.Dataset, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One split's features of backbone `name`, `(rows, layers, width)` as stored (float16 or float32), and labels."""
    data = data.with_format("numpy", columns=[name, "label"])
    first = data[:1][name]
    features = np.empty((len(data), *first.shape[1:]), dtype=first.dtype)
    labels = []
    for start in range(0, len(data), READ_ROWS):
        chunk = data[start : start + READ_ROWS]
        features[start : start + len(chunk[name])] = chunk[name]
        labels.append(np.asarray(chunk["label"]))
    return features, np.concatenate(labels)


def candidates(indices: list[int], window: int) -> list[list[int]]:
    """Each single hidden state, then each window of `window` consecutive ones, among the hidden-state `indices`
    the features hold; a candidate lists its indices top first (the order of the default layers)."""
    if window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}.")
    if min(indices) < 0 <= max(indices):
        raise ValueError(
            f"The features mix negative and non-negative hidden-state indices {indices}, whose order is unknown "
            "without the model; extract them with --all-layers."
        )
    ordered = sorted(indices, reverse=True)
    out = [[i] for i in ordered]
    if window > 1:
        for start in range(len(ordered) - window + 1):
            run = ordered[start : start + window]
            if run[0] - run[-1] == window - 1:  # consecutive hidden states only
                out.append(run)
    return out


def probe_input(features: np.ndarray, positions: list[int], combine: str, device: torch.device) -> torch.Tensor:
    """The probe's input for the layers at `positions` of `features` `(rows, layers, width)`, float32."""
    chosen = torch.from_numpy(features[:, positions]).to(device, torch.float32)
    return chosen.mean(dim=1) if combine == "mean" else chosen.flatten(start_dim=1)


def fit_logistic(
    x: torch.Tensor,
    targets: torch.Tensor,
    c: float,
    iterations: int = 200,
    start: torch.nn.Linear | None = None,
    tolerance: float = 1e-9,
) -> torch.nn.Linear:
    """Logistic regression minimising sklearn's objective (C x the summed log-loss + half the squared weights; the
    intercept is not penalised), fitted by L-BFGS. Integer `targets` (rows,) give a multinomial regression; multi-hot
    float `targets` (rows, labels) one regression per column, fitted together: their losses add up, so the fits stay
    independent. On the LLM's features this takes seconds where sklearn's one-vs-rest takes most of an hour.
    `start`: a probe fitted on the same rows (at another strength) to start from, a warm start: the objective is
    convex, so it reaches the same minimum in fewer steps. The fit stops after `iterations` steps, or once a step
    changes the objective (per row) by less than `tolerance`."""
    torch.manual_seed(0)
    multi_label = targets.is_floating_point()
    outputs = targets.shape[1] if multi_label else int(targets.max()) + 1
    linear = torch.nn.Linear(x.shape[1], outputs, device=x.device)
    if start is not None:
        linear.load_state_dict(start.state_dict())
    optimizer = torch.optim.LBFGS(
        linear.parameters(),
        max_iter=iterations,
        tolerance_grad=1e-9,
        tolerance_change=tolerance,
        line_search_fn="strong_wolfe",
    )
    log_loss = (
        torch.nn.functional.binary_cross_entropy_with_logits if multi_label else torch.nn.functional.cross_entropy
    )

    def objective() -> torch.Tensor:  # divided by C x rows, which leaves the minimum where it is
        optimizer.zero_grad()
        loss = log_loss(linear(x), targets, reduction="sum")
        loss = (loss + linear.weight.square().sum() / (2 * c)) / len(targets)
        loss.backward()
        return loss

    optimizer.step(objective)
    return linear.requires_grad_(False)


@dataclass
class Probe:
    """A fitted probe: its training features' standardisation, its linear layer, and what validation chose."""

    mean: torch.Tensor
    std: torch.Tensor
    linear: torch.nn.Linear
    c: float  # the inverse L2 strength that scored best on validation
    score: float  # its validation score by the selection metric
    threshold: float  # the multi-label decision threshold chosen on validation (single-label: unused, 0.5)

    def logits(self, x: torch.Tensor) -> np.ndarray:
        return self.linear((x - self.mean) / self.std).float().cpu().numpy()


def best_probe(
    x_train: torch.Tensor,
    y_train: np.ndarray,
    x_val: torch.Tensor,
    y_val: np.ndarray,
    problem_type: str,
    cs: Sequence[float],
    metric,
    tolerance: float = 1e-9,
) -> Probe:
    """Fit the probe on standardised training features at each inverse L2 strength of `cs`, strongest penalty first,
    each fit started from the previous one's weights; the one with the best validation score by the selection metric
    (of equals, the strongest penalty). `tolerance`: `fit_logistic`'s."""
    key = SELECTION_METRICS[problem_type]
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    standardised = (x_train - mean) / std
    multi_label = problem_type == "multi_label_classification"
    targets = torch.from_numpy(y_train.astype(np.float32 if multi_label else np.int64)).to(x_train.device)
    best, previous = None, None
    for c in sorted(cs):
        with torch.device(x_train.device):  # the probe's weights live where the features are
            previous = fit_logistic(standardised, targets, c, start=previous, tolerance=tolerance)
            probe = Probe(mean, std, previous, c, 0.0, 0.5)
        logits = probe.logits(x_val)
        if multi_label:
            probe.threshold, scores = choose_threshold(metric, logits, y_val, key)
        else:
            scores = score(metric, logits, y_val, 0.5)
        probe.score = float(scores[key])
        if best is None or probe.score > best.score:
            best = probe
    return best


def check_same_rows(
    first_labels: tuple[np.ndarray, np.ndarray] | None, labels: tuple[np.ndarray, np.ndarray], folder, first_folder
) -> None:
    """Refuse a folder whose train and validation labels differ from the first folder's (`None`: this is the first):
    folders compared must be extracted from the same data."""
    if first_labels is not None and not all(map(np.array_equal, first_labels, labels)):
        raise ValueError(
            f"{folder} holds other train or validation rows than {first_folder}: extract every folder "
            "compared from the same data."
        )


def sweep(
    features_dirs: str | Path | Sequence[str | Path],
    backbone: str | None = None,
    window: int = 5,
    combine: str = "mean",
    cs: Sequence[float] = PROBE_STRENGTHS,
    device: str | None = None,
) -> SweepResult:
    """Score every single layer and every window of `window` consecutive layers of a layer-pooled backbone's
    features (best extracted with `--all-layers`) by a probe trained on train (at each inverse L2 strength of `cs`)
    and scored on validation. Several folders (the same data, the backbone pooled otherwise in each) are swept alike
    and ranked together."""
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {', '.join(COMBINES)}, got {combine!r}.")
    folders = [features_dirs] if isinstance(features_dirs, (str, Path)) else list(features_dirs)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    scores, specs, labels = [], {}, None
    for folder in folders:
        metadata, spec = swept_backbone(folder, backbone)
        y_train, y_val = (split_labels(folder, split) for split in SWEEP_SPLITS)
        check_same_rows(labels, (y_train, y_val), folder, folders[0])
        labels, specs[str(folder)] = (y_train, y_val), spec
        scores += folder_scores(folder, metadata, spec, window, combine, cs, device)
    scores.sort(key=lambda s: (-s.score, len(s.layers), [-i for i in s.layers]))  # stable: folder order breaks ties
    best = chosen_spec(specs[scores[0].features], scores[0].layers)
    other = next((row for row in scores if row.features != scores[0].features), None)
    return SweepResult(
        backbone=best["name"],
        metric=SELECTION_METRICS[metadata.problem_type],
        combine=combine,
        train_rows=len(labels[0]),
        validation_rows=len(labels[1]),
        scores=scores,
        best_spec=best,
        poolings=folder_poolings(specs),
        second_view=None
        if other is None
        else chosen_spec(specs[other.features], other.layers, specs[other.features].name + "_view2"),
    )


def chosen_spec(spec: BackboneSpec, layers: list[int], name: str | None = None) -> BackboneSpec:
    """The backbone `spec` reading `layers` (an encoder pooling: `[]`, its one vector), named `name` (default: its
    own name)."""
    return spec.replace(name=name or spec.name, **({"layers": layers, "num_layers": len(layers)} if layers else {}))


def swept_backbone(features_dir: str | Path, backbone: str | None) -> tuple[FeatureMetadata, dict]:
    """A features folder's metadata and the description of the backbone to sweep: `backbone` (any pooling), or the
    only layer-pooled one."""
    metadata = read_metadata(features_dir)
    if backbone is None:
        layered = [spec for spec in metadata.backbones if spec["pooling"] in LAYER_POOLINGS]
        if len(layered) != 1:
            raise ValueError(f"Name the backbone to sweep (--backbone): layer-pooled ones are {layered}.")
        return metadata, layered[0]
    spec = next((s for s in metadata.backbones if s["name"] == backbone), None)
    if spec is None:
        raise ValueError(
            f"No backbone {backbone!r} in {features_dir}; there are {[s['name'] for s in metadata.backbones]}."
        )
    return metadata, spec


def folder_scores(
    features_dir: str | Path,
    metadata: FeatureMetadata,
    spec: dict,
    window: int,
    combine: str,
    cs: Sequence[float],
    device: torch.device,
    widths: Sequence[int] | None = None,
) -> list[LayerScore]:
    """The validation score of each candidate (single layer, window) of one features folder's backbone `spec` (only
    those of `widths` layers, if given), probed at `SWEEP_TOLERANCE`; an encoder pooling's one vector is its only
    candidate (`layers` `[]`)."""
    metric = load_metric(metadata.problem_type)
    train_features, y_train = read_split(swept_split(features_dir, "train"), spec["name"])
    val_features, y_val = read_split(swept_split(features_dir, "validation"), spec["name"])
    if spec["pooling"] in LAYER_POOLINGS:
        indices = layer_indices(spec)
        found = [layers for layers in candidates(indices, window) if widths is None or len(layers) in widths]
    else:  # one vector a text: a single "layer"
        indices, found, train_features, val_features = [], [[]], train_features[:, None], val_features[:, None]
    scores = []
    for layers in found:
        positions = [indices.index(i) for i in layers] or [0]
        x_train = probe_input(train_features, positions, combine, device)
        x_val = probe_input(val_features, positions, combine, device)
        probe = best_probe(x_train, y_train, x_val, y_val, metadata.problem_type, cs, metric, SWEEP_TOLERANCE)
        scores.append(LayerScore(layers=layers, score=probe.score, features=str(features_dir), c=probe.c))
    return scores


def pooling_words(spec: dict) -> str:
    """A backbone's pooling in a few words: the pooling, and whether a prompt wraps the text."""
    return spec["pooling"] + (", prompted" if spec.get("template") else "")


def folder_poolings(specs: dict[str, dict]) -> dict[str, str]:
    """Each folder's pooling in words (`pooling_words`); folders that pool alike (two prompts, say) are told apart by
    their folder's name."""
    words = {folder: pooling_words(spec) for folder, spec in specs.items()}
    counts = Counter(words.values())
    return {folder: word + (f", {Path(folder).name}" if counts[word] > 1 else "") for folder, word in words.items()}


def chosen_words(spec: dict) -> str:
    """What a sweep chose: the layers of a layer pooling, or an encoder's pooling."""
    return f"layers {spec['layers']}" if spec["pooling"] in LAYER_POOLINGS else f"pooling {spec['pooling']}"


def strengths_words(cs: Sequence[float]) -> str:
    """The probe's inverse L2 strengths in words, as the scripts' reports say them."""
    return f"C = {cs[0]:g}" if len(cs) == 1 else "at the best of C = " + ", ".join(f"{c:g}" for c in cs)


def table(result: SweepResult) -> str:
    """The ranked candidates as a text table, score in %; with several folders, each row's pooling too."""
    pooled = len(result.poolings) > 1
    width = max(map(len, result.poolings.values())) if pooled else 0
    header = f"{'rank':>4}  {'k':>2}  {result.metric + ' (%)':>16}  {'C':>6}  " + (
        f"{'pooling':{width}}  " if pooled else ""
    )
    lines = [header + "layers (hidden_states[i], feature order)"]
    for rank, row in enumerate(result.scores, 1):
        pooling = f"{result.poolings[row.features]:{width}}  " if pooled else ""
        layers = ", ".join(map(str, row.layers)) or "(its one vector)"
        k = len(row.layers) or "-"
        lines.append(f"{rank:>4}  {k:>2}  {100 * row.score:>16.2f}  {row.c:>6g}  {pooling}{layers}")
    return "\n".join(lines)
