"""The stored DPO-vs-InSPO table (scripts/results/table) says which loss definitions produced each row, and
``scripts/run_table.py`` never reuses a run trained under a loss definition that has since changed (issue 11:
IPO per token, R-DPO's length term added)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "scripts" / "results" / "table"


def load_run_table() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_table", ROOT / "scripts" / "run_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_changed_losses_never_reuse_the_runs_of_their_old_definition():
    """A finished run is reused by folder name; the old IPO and R-DPO runs had the plain names."""
    run_table = load_run_table()
    assert set(run_table.DEFINITIONS) == {"ipo", "rdpo"}
    sweep = json.loads((RESULTS / "sweep.json").read_text())["losses"]
    old_runs = {row["run"] for entry in sweep.values() if entry.get("definition", "").startswith("old:")
                for row in entry["tried"]}
    for loss in run_table.DEFINITIONS:
        for conditioning in run_table.CONDITIONINGS:
            for setting in run_table.GRID[loss]:
                name = run_table.run_name(loss, conditioning, 0, setting)
                assert name not in old_runs
                assert name != f"{loss}-{conditioning}-s0-{run_table.setting_name(setting)}"
    assert run_table.run_name("dpo", "standard", 0, {"lr": 2e-5}) == "dpo-standard-s0-lr2e-05"  # unchanged: reused
    assert run_table.LOSSES["ipo"][1]["average_log_ratios"] is True


def test_stored_rows_name_the_definition_that_produced_them():
    """Every row of a changed loss carries its definition: the current one, or an 'old:' one that the table's
    markdown, the README and the plots' captions flag too."""
    run_table = load_run_table()
    table = json.loads((RESULTS / "table.json").read_text())
    table_md, readme = (RESULTS / "table.md").read_text(), (ROOT / "README.md").read_text()
    for key, row in table["methods"].items():
        if row["loss"] not in run_table.DEFINITIONS:
            assert "definition" not in row, key
            continue
        definition = row["definition"]
        assert definition == run_table.DEFINITIONS[row["loss"]][1] or definition.startswith("old:"), key
        if definition.startswith("old:"):
            marked = f"| {row['loss']} (old def.) | {row['conditioning']} |"
            assert marked in table_md and marked in readme, key
    assert "-log s(beta h + alpha (\\|y_w\\| - \\|y_l\\|))" in readme  # R-DPO's row: the length term is added
