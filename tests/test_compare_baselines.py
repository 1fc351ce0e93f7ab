"""The comparison with what a user would pick instead (bench/compare_baselines.py): its quick run produces and scores
every row on the same test rows, and a second run reads the rows back instead of training them again."""

import json

import pytest

pytest.importorskip("setfit", reason="the comparison's SetFit row needs `pip install setfit`")
pytest.importorskip("model2vec.distill", reason="the comparison's static-embedding row needs model2vec[distill]")


@pytest.mark.real
def test_quick_run_scores_every_row_on_the_same_test_rows(small_models, data_dir, tmp_path, capsys):
    from bench import compare_baselines
    from llm_fusion_fec.data.datasets import data_digest, load_data

    work = tmp_path / "compare"
    quick = [
        *("--dataset", "ED", "--data_dir", str(data_dir), "--limit", "200", "--work_dir", str(work)),
        *("--seeds", "2", "--finetune_lrs", "5e-5", "--finetune_epochs", "1", "--shots", "2", "--draws", "1"),
        *("--setfit_max_steps", "4", "--cs", "1", "--infer_texts", "16"),
    ]
    results = compare_baselines.main(quick)
    assert [result["row"] for result in results] == list(compare_baselines.ROWS)
    test = load_data("ED", str(data_dir), limit=200)[0]["test"]
    records = [record for result in results for record in result["records"]]
    assert len(records) == len(compare_baselines.ROWS) - 1 + 3  # SetFit's draw brings the head and probe on it
    for record in records:
        assert record["test_rows"] == 200
        assert record["test_digest"] == data_digest(test), record["method"]
        assert 0 <= record["test"]["accuracy"] <= 1 and 0 <= record["test"]["weighted_f1"] <= 1
        assert record["train_s"] > 0
    served = [record for record in records if "texts_per_s" in record]
    assert len(served) == 6 and all(record["texts_per_s"] > 0 and record["disk_mb"] > 0 for record in served)
    (fused,) = json.loads((work / "rows" / "fused.json").read_text())["records"]
    assert fused["method"] == "fused head, 2 seeds + ensemble"
    table = capsys.readouterr().out
    assert "| fused head, 2 seeds + ensemble |" in table
    assert "| SetFit (all-mpnet-base-v2), 2 per label, draw 0 |" in table

    linear = work / "rows" / "linear.json"
    linear.write_text(json.dumps({**json.loads(linear.read_text()), "wall_s": -1}))
    again = compare_baselines.main([*quick, "--rows", "linear"])
    assert again[0]["wall_s"] == -1  # read back, not computed again
