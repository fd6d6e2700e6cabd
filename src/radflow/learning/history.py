"""A model directory's training history in DVCLive's format, written with dvclive.Live:

    <model dir>/dvclive/metrics.json              the last epoch's values, `step` (that epoch),
                                                  `best_epoch` and `best_val_metric` (the kept
                                                  epoch: meta.json's)
    <model dir>/dvclive/plots/metrics/<name>.tsv  one row per epoch: `step` (the epoch), value

one file per column of the engine's history (train_loss, val_loss, val_metric, lr,
seconds). dvc.yaml's top-level `plots:` and `metrics:` name these files, so `dvc plots
show`, `dvc metrics show` and `dvc exp show` read them.

The history is written after training, by replaying the frame engine.fit returns, one
Live step per epoch. That gives the same files as logging during fit: DVCLive's files depend
only on the values and steps logged (no timestamps are logged). The fit loop stays free of
file output beside its checkpoint, which already carries the rows for a resumed run, and
the model directory is built beside its target and swapped in whole, so a directory logged
into during training would be thrown away anyway. What replaying gives up is watching the
curves while a model trains (DVC's VS Code extension, Studio).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

DIRNAME = "dvclive"
STEP = "epoch"  # DVCLive's `step` column is the epoch


def write(model_dir: Path, history: pd.DataFrame, kept: Mapping[str, Any]) -> None:
    """<model_dir>/dvclive from one history row per epoch (an `epoch` column and one column
    per metric); kept adds keys to metrics.json (best_epoch, best_val_metric)."""
    _refuse_dvc_init()
    from dvclive import Live

    columns = [c for c in history.columns if c != STEP]
    with Live(dir=str(model_dir / DIRNAME), save_dvc_exp=False, dvcyaml=False) as live:
        for row in history.to_dict("records"):
            live.step = int(row[STEP])
            for name in columns:
                live.log_metric(name, float(row[name]))
            live.next_step()
        live.summary.update({key: _plain(value) for key, value in kept.items()})


def read(model_dir: Path) -> pd.DataFrame | None:
    """The history write wrote: one row per epoch, `epoch` then the metrics in the order they
    were logged (None when the directory has none, e.g. an untrained segmenter)."""
    folder = Path(model_dir) / DIRNAME / "plots" / "metrics"
    files = sorted(folder.glob("*.tsv"))
    if not files:
        return None
    summary = Path(model_dir) / DIRNAME / "metrics.json"
    order = list(json.loads(summary.read_text())) if summary.exists() else []
    files.sort(key=lambda f: order.index(f.stem) if f.stem in order else len(order))
    frame: pd.DataFrame | None = None
    for path in files:
        series = pd.read_csv(path, sep="\t").set_index("step")[path.stem]
        frame = series.to_frame() if frame is None else frame.join(series, how="outer")
    assert frame is not None
    return frame.rename_axis(STEP).reset_index()


def _refuse_dvc_init() -> None:
    """dvclive.Live runs `dvc init` in a git repository that is not yet a DVC project (its
    get_dvc_repo): refuse that instead of changing the user's repository behind their back."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo
    from scmrepo.exceptions import SCMError
    from scmrepo.git import Git

    try:
        Repo.find_root()
    except NotDvcRepoError:
        try:
            root = Git().root_dir
        except SCMError:
            return  # no git either: DVCLive writes the files and nothing else
        raise ValueError(
            f"the training history is written with DVCLive, which would run `dvc init` in the "
            f"git repository {root}: run radflow train from the radflow project (a DVC "
            "repository), run `dvc init` there yourself, or run it outside git"
        ) from None


def _plain(value: Any) -> Any:
    """A JSON value of metrics.json: numbers as Python numbers, NaN as DVCLive writes it."""
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value.item() if hasattr(value, "item") else value
